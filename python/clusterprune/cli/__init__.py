"""The `clusterprune` command line (torch-free for compress and inspect: numpy and the Rust
engine only). One module per command, each with ``register(subparsers)`` and ``run(args)``;
:func:`main` is the one boundary where errors become a one-line message."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .._version import __version__
from ..errors import ClusterpruneError
from ..extras import missing_dependency_message
from . import compress, evaluate, export_ct2, finetune, import_ct2, inspect, palettize, selfgen, sweep
from .common import OneLineParser

COMMANDS = (compress, palettize, selfgen, inspect, import_ct2, export_ct2, evaluate, sweep, finetune)
DEBUG_ENV = "CLUSTERPRUNE_DEBUG"


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="clusterprune",
        description="Data-free, training-free structured compression of speech models (Whisper, HuBERT, "
        "wav2vec2) by channel-wise k-means parameter clustering (Xu et al., Interspeech 2026).",
    )
    parser.add_argument("--version", action="version", version=f"clusterprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so that every clean-up runs as for Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _silence_stdout() -> None:
    """Points standard output at /dev/null, so that flushing it at exit raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _fail(message: str) -> int:
    print(f"clusterprune: error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return args.run(args)
    except ClusterpruneError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("clusterprune: interrupted; no output was written", file=sys.stderr)
        return 130
    except Terminated:
        print("clusterprune: terminated; no output was written", file=sys.stderr)
        return 143
    except BrokenPipeError:  # the reader of our output went away (`... | head -1`): quiet, as coreutils
        _silence_stdout()
        return 141
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")
    except MemoryError:
        return _fail("out of memory")
    except Exception as exc:  # the last boundary: one line, the traceback on request
        if isinstance(exc, ModuleNotFoundError):  # an optional dependency: name the extra that brings it
            message = missing_dependency_message(exc.name or "", args.command)
            if message is not None and not os.environ.get(DEBUG_ENV):
                return _fail(message)
        if os.environ.get(DEBUG_ENV):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _fail(f"unexpected {type(exc).__name__}: {first} (set {DEBUG_ENV}=1 for the traceback)")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
