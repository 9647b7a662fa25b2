"""Speech-like audio made from nothing: a seeded source-filter synthesiser (no recorded speech).

A clip is a run of syllables and pauses. A voiced syllable is a harmonic source (a speaker's f0
with a slow contour, spectral tilt of -12 dB per octave) shaped by three formant resonances that
move linearly across the syllable; an unvoiced one is band-passed noise (a fricative). Syllable
lengths, formant ranges, f0 ranges and levels are the textbook ranges of adult speech
(Peterson & Barney 1952; syllable rate 4-6 per second), not fitted to any corpus. Quiet
background noise runs under the whole clip. The same seed gives the same samples, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

RATE = 16000
SYLLABLE_S = (0.12, 0.32)
PAUSE_S = (0.08, 0.4)
PAUSE_P = 0.15
UNVOICED_P = 0.2
F0_HZ = (85.0, 255.0)  # the speaker's mean pitch, adult male to female
FORMANTS_HZ = ((250.0, 900.0), (800.0, 2500.0), (2000.0, 3300.0))
BANDWIDTHS_HZ = (80.0, 120.0, 180.0)
LEVEL_DB = (-32.0, -14.0)  # clip RMS level, dB full scale
NOISE_DB = (-72.0, -50.0)


def _formant_gain(freq: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """|H(f)| of a cascade of second-order resonances (rows of ``formants``: centre per sample)."""
    gain = np.ones_like(freq)
    for i, bw in enumerate(BANDWIDTHS_HZ):
        fc = formants[i][None, :]
        gain = gain / np.sqrt((1.0 - (freq / fc) ** 2) ** 2 + (freq * bw / (fc * fc)) ** 2)
    return gain


def _voiced(rng: np.random.Generator, n: int, f0: float, phase: float) -> tuple[np.ndarray, float]:
    t = np.arange(n) / RATE
    contour = f0 * (1.0 + rng.uniform(-0.12, 0.12) * t / max(t[-1], 1e-3)) * (1.0 + 0.02 * np.sin(2 * math.pi * 5 * t))
    phases = phase + 2 * math.pi * np.cumsum(contour) / RATE
    start, end = (np.array([rng.uniform(*r) for r in FORMANTS_HZ]) for _ in range(2))
    formants = start[:, None] + (end - start)[:, None] * (np.arange(n) / max(n - 1, 1))[None, :]
    out = np.zeros(n)
    for h in range(1, int((RATE / 2) / f0 * 0.95) + 1):
        freq = h * contour
        gain = np.where(freq < RATE / 2, _formant_gain(freq[None, :], formants)[0] / h**2, 0.0)
        out += gain * np.sin(h * phases)
    return out, float(phases[-1] % (2 * math.pi))


def _unvoiced(rng: np.random.Generator, n: int) -> np.ndarray:
    noise = rng.standard_normal(n)
    spec = np.fft.rfft(noise)
    freq = np.fft.rfftfreq(n, 1.0 / RATE)
    centre, width = rng.uniform(2500.0, 6500.0), rng.uniform(800.0, 2500.0)
    spec *= np.exp(-0.5 * ((freq - centre) / width) ** 2)
    return np.fft.irfft(spec, n)


def synthesize(seconds: float, seed: int) -> np.ndarray:
    """One clip of ``seconds`` of speech-like float32 audio at 16 kHz, peak below 1."""
    rng = np.random.Generator(np.random.PCG64(seed))
    total = int(round(seconds * RATE))
    out = np.zeros(total)
    f0 = rng.uniform(*F0_HZ)
    pos, phase = int(rng.uniform(0.05, 0.3) * RATE), 0.0
    while pos < total:
        if rng.random() < PAUSE_P:
            pos += int(rng.uniform(*PAUSE_S) * RATE)
            continue
        n = min(int(rng.uniform(*SYLLABLE_S) * RATE), total - pos)
        if n < 16:
            break
        if rng.random() < UNVOICED_P:
            seg = _unvoiced(rng, n) * 0.3
        else:
            seg, phase = _voiced(rng, n, f0 * rng.uniform(0.85, 1.15), phase)
        seg = seg / max(float(np.sqrt(np.mean(seg * seg))), 1e-12) * rng.uniform(0.4, 1.0)
        out[pos : pos + n] += seg * np.sin(np.pi * np.arange(n) / n) ** 0.5  # syllable envelope
        pos += n
    return level_and_noise(rng, out)


def level_and_noise(rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
    """``out`` at a clip level drawn from :data:`LEVEL_DB` over background noise drawn from
    :data:`NOISE_DB`, as float32 with peak below 1."""
    rms = float(np.sqrt(np.mean(out * out)))
    level = 10 ** (rng.uniform(*LEVEL_DB) / 20) / max(rms, 1e-12)
    audio = out * level + rng.standard_normal(out.size) * 10 ** (rng.uniform(*NOISE_DB) / 20)
    peak = float(np.max(np.abs(audio)))
    return (audio / peak * 0.95 if peak > 0.95 else audio).astype(np.float32)


def clip_lengths(count: int, seed: int, low: float = 2.0, high: float = 16.0) -> list[float]:
    """Durations of ``count`` clips, uniform in [low, high] seconds (LibriSpeech test
    utterances are mostly 2-16 s; Whisper pads every clip to 30 s)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return [float(x) for x in rng.uniform(low, high, size=count)]
