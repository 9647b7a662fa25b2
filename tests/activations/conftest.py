"""The statistics file that the self-generated-statistics tests share."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def selfgen_stats(trainable, tmp_path_factory):
    """Statistics of the small random Whisper (tiny.en's processor and generation config)."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("selfgen") / "w.stats.safetensors"
    cmd = [sys.executable, "-m", "clusterprune.cli", "selfgen", str(trainable["whisper"]), str(out)]
    run = subprocess.run(
        [*cmd, "--clips", "2", "--decoder-samples", "2", "--probe-clips", "2"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "FFN modules" in run.stdout
    return out
