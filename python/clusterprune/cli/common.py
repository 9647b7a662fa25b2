"""Pieces several commands share: the one-line argument parser, data options, recipe flags."""

from __future__ import annotations

import argparse
import sys
from dataclasses import Field
from typing import Any, NoReturn

from ..config import RECIPES, RECOMMENDED, Recipe
from ..errors import InvalidArgumentError


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the usage is what --help is for)."""

    def error(self, message: str) -> NoReturn:
        print(f"clusterprune: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(2)


def data_args(p: argparse.ArgumentParser) -> None:
    """The evaluation data and decoding options of eval and sweep."""
    p.add_argument(
        "--data", required=True, help="LibriSpeech-layout directory, save_to_disk dataset, or parquet/json/csv"
    )
    p.add_argument("--subset", help="LibriSpeech subset directory (e.g. test-clean) or dataset split")
    p.add_argument("--limit", type=int, help="use at most N utterances")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass (default 8)")
    p.add_argument("--language", help="Whisper language for multilingual checkpoints (default en)")
    p.add_argument(
        "--task",
        choices=("transcribe", "translate"),
        default="transcribe",
        help="Whisper task (default transcribe; translate: multilingual checkpoints translate into English)",
    )
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)"
    )
    p.add_argument(
        "--device", default="cpu", help="torch device the model runs on for evaluation (default cpu; e.g. cuda)"
    )
    p.add_argument(
        "--compute-type",
        help="CTranslate2 models (export-ct2 directories): int8, int8_float16, float16, float32, ... "
        "(default: as stored)",
    )
    p.add_argument("--threads", type=int, help="inference threads (default: the runtime's)")


def recipe_name(name: str) -> str:
    """argparse type of --recipe: any named recipe; the message lists the recommended ones."""
    if name not in RECIPES:
        raise argparse.ArgumentTypeError(f"unknown recipe {name!r} (recommended: {', '.join(RECOMMENDED)})")
    return name


def _flag(f: Field[Any]) -> str:
    return "--" + f.name.replace("_", "-")


def recipe_flags(p: argparse.ArgumentParser) -> None:
    """One override flag per :class:`~clusterprune.config.Recipe` field, with the field's help
    text and allowed values (default: keep the recipe's value)."""
    config_flags(
        p,
        "recipe options (each overrides one choice of --recipe; shown: the default recipe's value)",
        Recipe.options(),
        "datafree",
    )


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value) if value == "" else str(value)


def config_flags(p: argparse.ArgumentParser, title: str, options: list[Field[Any]], label: str = "default") -> None:
    """One flag per config field (its help, allowed values, type and default; default None = keep).
    Experimental fields get a flag that ``--help`` does not show."""
    g = p.add_argument_group(title)
    for f in options:
        kind = type(f.default)
        help_text = f"{f.metadata['help']} ({label}: {_shown(f.default)})"
        if f.metadata.get("experimental"):
            help_text = argparse.SUPPRESS
        if kind is bool:
            g.add_argument(_flag(f), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif "choices" in f.metadata:
            g.add_argument(_flag(f), dest=f.name, choices=f.metadata["choices"], type=kind, help=help_text)
        else:
            g.add_argument(_flag(f), dest=f.name, type=kind, metavar=kind.__name__.upper(), help=help_text)


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe fields the command line set (None = not given)."""
    return {f.name: getattr(args, f.name) for f in Recipe.options()}


def floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidArgumentError(f"{flag} {text!r} is not a comma-separated list of numbers") from None


def names(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]
