"""One utterance of speech: 16 kHz mono float32 audio and its transcript; band-limited resampling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: np.ndarray  # float32, 16 kHz, mono
    text: str

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def resample(audio: np.ndarray, rate: int, to: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling of a whole signal by its DFT (truncated or zero-padded spectrum),
    float64."""
    n_out = int(round(len(audio) * to / rate))
    if len(audio) == 0 or n_out == 0:
        return np.zeros(0)
    spec = np.fft.rfft(np.asarray(audio, dtype=np.float64))
    out = np.zeros(n_out // 2 + 1, dtype=complex)
    k = min(len(spec), len(out))
    out[:k] = spec[:k]
    return np.fft.irfft(out, n_out) * (n_out / len(audio))
