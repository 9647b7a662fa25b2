"""One utterance of speech: 16 kHz mono float32 audio and its transcript."""

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
