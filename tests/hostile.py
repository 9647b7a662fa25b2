"""Helpers of the hostile-input tests: run the CLI in-process, expect one error line, rewrite a
safetensors file with a defect."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from clusterprune import cli
from clusterprune.io.safetensors import STORAGE, SafetensorsFile, SafetensorsWriter

CODES = {
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int64): "I64",
    np.dtype(np.float16): "F16",
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
}


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, args, pattern: str, code: int = 1) -> str:
    got, _, err = run(capsys, *args)
    assert got == code, err
    assert err.startswith("clusterprune: error: ") and err.count("\n") == 1, err
    assert pattern in err, err
    return err


def rewrite(
    path: Path,
    change: Callable[[str, np.ndarray], np.ndarray] = lambda _n, a: a,
    *,
    drop: tuple[str, ...] = (),
    add: dict[str, np.ndarray] | None = None,
    metadata: Callable[[dict[str, str]], dict[str, str]] | None = None,
) -> None:
    """Rewrites a safetensors file (without a content digest): ``change(name, array) -> array``
    for every tensor but the ``drop`` ones, the ``add`` ones appended, the metadata passed through
    ``metadata``. A tensor keeps its dtype code while its array keeps the storage dtype."""
    with SafetensorsFile(path) as f:
        arrays = {n: np.array(f.raw(n)) for n in f.tensors if n not in drop}
        codes = {n: f.tensors[n].dtype for n in f.tensors}
        meta = {k: v for k, v in f.metadata.items() if k != "clusterprune_digest"}
    arrays = {n: change(n, a) for n, a in arrays.items()} | dict(add or {})
    kinds = {n: codes[n] if n in codes and a.dtype == STORAGE[codes[n]] else CODES[a.dtype] for n, a in arrays.items()}
    tmp = path.with_suffix(".new")
    w = SafetensorsWriter(
        tmp, [(n, kinds[n], a.shape) for n, a in arrays.items()], metadata(meta) if metadata else meta
    )
    for n, a in arrays.items():
        w.write(n, a)
    w.close()
    tmp.replace(path)


def sigterm_mid_run(module: str, function: str, args: list[str]) -> tuple[int, str]:
    """Runs the CLI with ``args`` in a subprocess whose ``module.function`` waits the first time
    it is called (from whichever thread), sends it SIGTERM there, and returns (exit status,
    standard error). A run stops once the work in flight returns."""
    script = (
        "import importlib, sys, threading, time\nfrom clusterprune import cli\n"
        f"target = importlib.import_module({module!r})\nreal = target.{function}\nfirst = threading.Lock()\n"
        "def slow(*a, **k):\n"
        "    if first.acquire(blocking=False):\n        print('started', flush=True); time.sleep(10)\n"
        "    return real(*a, **k)\n"
        f"target.{function} = slow\nsys.exit(cli.main(sys.argv[1:]))\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "started"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    return p.returncode, err
