"""The one wheel (PyO3 abi3: cp310-abi3) installs into a fresh virtualenv with no Rust toolchain
and runs the torch-free command line, byte for byte as the development install does. The test
command builds the wheel (``maturin build --release``) and names it in CLUSTERPRUNE_WHEEL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import clusterprune

WHEEL = os.environ.get("CLUSTERPRUNE_WHEEL")


@pytest.mark.skipif(not WHEEL, reason="CLUSTERPRUNE_WHEEL is unset (scripts/test.sh builds the wheel and sets it)")
def test_the_abi3_wheel_installs_without_rust_and_runs_the_cli(checkpoints, tmp_path):
    wheel = Path(WHEEL or "")
    assert wheel.is_file() and "-cp310-abi3-" in wheel.name, wheel
    no_rust = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "cargo").exists() and "rustup" not in p
    )
    env = {"PATH": no_rust, "HOME": str(tmp_path), "CARGO_HOME": str(tmp_path / "no-cargo"), "LANG": "C.UTF-8"}
    assert shutil.which("cargo", path=no_rust) is None and shutil.which("rustc", path=no_rust) is None
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    pip_cache = {"PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))}
    install = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel],
        capture_output=True,
        text=True,
        env={**env, **pip_cache},
    )
    assert install.returncode == 0, install.stderr[-2000:]
    version = subprocess.run([venv / "bin" / "clusterprune", "--version"], capture_output=True, text=True, env=env)
    assert version.stdout.strip() == f"clusterprune {clusterprune.__version__}"
    src = checkpoints["whisper"]
    ours, theirs = tmp_path / "wheel-out", tmp_path / "dev-out"
    for exe, dst in ((venv / "bin" / "clusterprune", ours), (Path(sys.executable).parent / "clusterprune", theirs)):
        r = subprocess.run(
            [exe, "compress", src, dst, "--sparsity", "0.2", "--recipe", "paper", "--quiet"],
            capture_output=True,
            text=True,
            env={**env, "PATH": f"{exe.parent}{os.pathsep}{no_rust}"},
        )
        assert r.returncode == 0 and r.stdout == "", r.stderr
    for f in sorted(p.name for p in theirs.iterdir()):
        assert (ours / f).read_bytes() == (theirs / f).read_bytes(), f
    no_torch = subprocess.run(
        [venv / "bin" / "python", "-c", "import sys, clusterprune.cli; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert no_torch.stdout.strip() == "False", no_torch.stderr
