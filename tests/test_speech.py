"""Band-limited resampling (espeak-ng's output and evaluation audio at other rates)."""

from __future__ import annotations

import numpy as np

from clusterprune.speech import SAMPLE_RATE as RATE
from clusterprune.speech import resample


def test_resampling_is_band_limited_and_exact_on_periodic_signals():
    rng = np.random.default_rng(7)
    freqs, phases = rng.uniform(50, 7000, size=5).round(), rng.uniform(0, 2 * np.pi, size=5)

    def tone(rate: int) -> np.ndarray:  # whole periods in one second: periodic in the window
        t = np.arange(rate) / rate
        return sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phases, strict=True))

    np.testing.assert_allclose(resample(tone(22050), 22050), tone(RATE), atol=1e-9)
    assert resample(np.zeros(0), 22050).size == 0
    up = resample(tone(RATE), RATE, 22050)  # upsampling keeps the tones too
    np.testing.assert_allclose(up, tone(22050), atol=1e-9)
