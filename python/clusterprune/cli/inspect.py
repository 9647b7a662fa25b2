"""`clusterprune inspect`."""

from __future__ import annotations

import argparse
from typing import Any

from ..io.jsontext import dumps


def register(sub: Any) -> None:
    i = sub.add_parser(
        "inspect",
        help="list a checkpoint's compressible modules (and its plan, if compressed)",
        description="List the compressible modules of SRC (N units, unit size, K when compressed) and the "
        "compression plan stored in its metadata.",
    )
    i.add_argument("src", help="checkpoint directory")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..inspection import inspect
    from ..report import format_inspection

    info = inspect(args.src)
    print(dumps(info, "inspect --json", indent=2) if args.json else format_inspection(info))
    return 0
