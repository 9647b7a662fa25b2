"""Speech synthesised by rule: the espeak-ng program (a Debian package, ``apt-get install
espeak-ng``) speaking given text with its formant synthesiser. Its English voices are
hand-written pronunciation rules and formant tables: no recorded speech and no model trained on
speech (the mbrola voices, which are made of recorded diphones, are never used).

A clip is one seeded speaker (voice, variant, pitch, rate chosen once) reading texts in order,
with pauses between them, until the clip reaches the asked length; then the level and background
noise of :mod:`.synth`. espeak-ng is deterministic: the same texts, seed and espeak-ng version
give the same samples, bit for bit.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np

from ..errors import InvalidArgumentError
from ..speech import resample
from .synth import RATE, level_and_noise

PROGRAM = "espeak-ng"
VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029")  # formant voices, not mbrola
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
SPEED_WPM = (140, 190)  # words per minute: read and conversational English
PITCH = (25, 75)  # espeak-ng's 0-99 pitch scale, 50 its default
PAUSE_S = (0.1, 0.5)
MAX_S = 30.0  # Whisper's window


def version() -> str:
    """espeak-ng's version line; a one-line error when the program is missing."""
    exe = shutil.which(PROGRAM)
    if exe is None:
        raise InvalidArgumentError(f"{PROGRAM} is not installed: apt-get install espeak-ng (or use --audio synth)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("Data at")[0].strip()


def speak(text: str, voice: str = "en-us", pitch: int = 50, speed: int = 150) -> np.ndarray:
    """``text`` read by espeak-ng, as float64 audio at 16 kHz (the text goes on stdin, UTF-8)."""
    version()
    run = subprocess.run(
        [PROGRAM, "-b", "1", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout"],
        input=text.encode("utf-8"),
        capture_output=True,
        check=False,
    )
    if run.returncode != 0:
        msg = run.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InvalidArgumentError(f"{PROGRAM} failed on voice {voice}: {msg[-1] if msg else run.returncode}")
    with wave.open(io.BytesIO(run.stdout)) as w:
        rate, width, frames = w.getframerate(), w.getsampwidth(), w.readframes(w.getnframes())
    if width != 2:
        raise InvalidArgumentError(f"{PROGRAM} wrote {8 * width}-bit samples; 16-bit expected")
    return resample(np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0, rate)


def spoken_clip(texts: list[str], seconds: float, seed: int) -> np.ndarray:
    """One seeded speaker reading ``texts`` in order (those without a letter skipped) until the
    clip is at least ``seconds`` long (at most :data:`MAX_S`), as float32 audio at 16 kHz, peak
    below 1; empty when no text has a letter."""
    rng = np.random.Generator(np.random.PCG64(seed))
    voice = f"{VOICES[rng.integers(len(VOICES))]}+{VARIANTS[rng.integers(len(VARIANTS))]}"
    pitch, speed = int(rng.integers(PITCH[0], PITCH[1] + 1)), int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1))
    parts: list[np.ndarray] = [np.zeros(int(rng.uniform(0.05, 0.3) * RATE))]
    total = len(parts[0])
    for text in texts:
        if total >= seconds * RATE:
            break
        if not any(c.isalpha() for c in text):
            continue
        spoken = speak(text, voice, pitch, speed)
        parts += [spoken, np.zeros(int(rng.uniform(*PAUSE_S) * RATE))]
        total += len(spoken) + len(parts[-1])
    if len(parts) == 1:
        return np.zeros(0, dtype=np.float32)
    return level_and_noise(rng, np.concatenate(parts)[: int(MAX_S * RATE)])
