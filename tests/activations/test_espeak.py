"""Speech synthesised by rule (espeak-ng) and the statistics measured on it (`selfgen --audio espeak`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clusterprune.activations import espeak
from clusterprune.activations.synth import RATE
from clusterprune.errors import InvalidArgumentError
from clusterprune.io.stats import load_stats

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)


def test_a_missing_program_is_one_line(monkeypatch):
    monkeypatch.setattr(espeak.shutil, "which", lambda _name: None)
    with pytest.raises(InvalidArgumentError, match=r"^espeak-ng is not installed: apt-get install espeak-ng"):
        espeak.spoken_clip(["hello"], 1.0, 0)


@needs_espeak
def test_spoken_clips_are_seeded_speech_of_the_asked_length():
    texts = ["The old man walked down the road.", "...", "She said the water was cold.", "Yes."]
    a, b, c = (espeak.spoken_clip(texts, 2.0, s) for s in (3, 3, 4))
    assert a.dtype == np.float32 and a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert np.all(np.isfinite(a)) and 0 < float(np.max(np.abs(a))) < 1.0
    assert a.size >= 2.0 * RATE  # texts are read until the clip is long enough ...
    one = espeak.spoken_clip(texts[:1], 0.1, 3)
    assert one.size < a.size  # ... and no further
    long = espeak.spoken_clip(texts * 20, 100.0, 3)
    assert long.size == espeak.MAX_S * RATE  # never beyond Whisper's window
    assert espeak.spoken_clip(["...", "!?", ""], 5.0, 0).size == 0  # no letter: nothing to read
    spec = np.abs(np.fft.rfft(a.astype(np.float64))) ** 2
    freq = np.fft.rfftfreq(a.size, 1.0 / RATE)
    assert spec[(freq > 80) & (freq < 4000)].sum() > 0.6 * spec.sum()  # speech band
    # speak() is the program's own output, resampled: the same text twice is the same audio
    assert espeak.speak("one two three").tobytes() == espeak.speak("one two three").tobytes()


@needs_espeak
def test_statistics_of_spoken_transcripts(trainable, selfgen_stats, tmp_path):
    cmd = [sys.executable, "-m", "clusterprune.cli", "selfgen", str(trainable["whisper"])]
    opts = ["--clips", "2", "--decoder-samples", "2", "--audio", "espeak"]
    outs = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for out in outs:
        run = subprocess.run([*cmd, str(out), *opts], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    assert outs[0].read_bytes() == outs[1].read_bytes()  # deterministic
    st, synth = load_stats(outs[0]), load_stats(selfgen_stats)
    assert st.settings["audio"] == "espeak" and st.settings["espeak"].startswith("eSpeak NG")
    enc = st.modules["model.encoder.layers.0.ffn"]
    assert enc.count == 2 * 1500  # the spoken clips only: the synthetic clips they replace are not recorded
    assert not np.allclose(enc.mean, synth.modules["model.encoder.layers.0.ffn"].mean)


@needs_espeak
def test_spoken_statistics_need_a_model_that_writes_text(trainable, tmp_path):
    out = tmp_path / "h.safetensors"
    cmd = [sys.executable, "-m", "clusterprune.cli", "selfgen", str(trainable["hubert"]), str(out), "--audio", "espeak"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "--audio espeak reads the model's own transcripts; the model writes none" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not out.exists()


def test_spoken_statistics_without_the_program_are_refused_before_the_work(trainable, tmp_path):
    out = tmp_path / "w.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "clusterprune.cli",
        "selfgen",
        str(trainable["whisper"]),
        str(out),
        "--audio",
        "espeak",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PATH": str(tmp_path)})
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "espeak-ng is not installed" in run.stderr and not out.exists()
