"""The layout's promises: lean imports, one config object end to end."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

import clusterprune
from clusterprune.cli import build_parser
from clusterprune.config import DEFAULT_RECIPE, EXPERIMENTAL, RECIPES, RECOMMENDED, Recipe, make_recipe
from clusterprune.errors import InvalidArgumentError

HEAVY = ("torch", "transformers", "datasets", "jiwer")


@pytest.mark.parametrize(
    "code",
    [
        "import clusterprune",
        "import clusterprune.cli as c\ntry:\n    c.main(['compress', '--help'])\nexcept SystemExit:\n    pass",
        "import clusterprune.cli as c\ntry:\n    c.main(['inspect', '--help'])\nexcept SystemExit:\n    pass",
    ],
)
def test_lean_imports(code):
    probe = code + f"\nimport sys\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def _compress_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["compress"]


def test_every_recipe_field_is_a_flag_with_its_help_and_choices():
    actions = {a.dest: a for a in _compress_parser()._actions}
    for f in Recipe.options():
        a = actions[f.name]
        if f.metadata.get("experimental"):  # in the docs' experimental catalog, not in --help
            assert a.help == argparse.SUPPRESS and a.default is None
            continue
        assert a.help.startswith(f.metadata["help"]) and a.default is None
        assert a.help.endswith(f"(datafree: {getattr(Recipe(), f.name)})".replace("False)", "off)"))
        if "choices" in f.metadata:
            assert tuple(a.choices) == f.metadata["choices"]
    assert "cosine" in actions["fusion"].choices  # the registry, not a hand-written list


def test_a_flag_reaches_the_recipe(checkpoints, tmp_path):
    from clusterprune import cli

    dst = tmp_path / "o"
    assert (
        cli.main(
            [
                "compress",
                str(checkpoints["whisper"]),
                str(dst),
                "--recipe",
                "paper",
                "--fusion",
                "mean",
                "--high-factor",
                "1.1",
                "--no-compensate",
                "--quiet",
            ]
        )
        == 0
    )
    stored = clusterprune.inspect(dst)["compression"]["recipe"]
    assert Recipe.from_dict(stored) == make_recipe("paper", fusion="mean", high_factor=1.1)


def test_recipe_defaults_round_trip_and_catalog():
    assert Recipe() == RECIPES[DEFAULT_RECIPE] and DEFAULT_RECIPE in RECOMMENDED
    assert set(EXPERIMENTAL) == {
        "cosine",
        "datafree-heads",
        "datafree-obs",
    } and not set(EXPERIMENTAL) & set(RECOMMENDED)
    for r in RECIPES.values():
        assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    with pytest.raises(InvalidArgumentError, match="unknown recipe option"):
        Recipe.from_dict({**Recipe().to_dict(), "colour": "blue"})
    with pytest.raises(InvalidArgumentError, match="unknown score"):
        Recipe.from_dict({**Recipe().to_dict(), "score": "nope"})
    older = {k: v for k, v in RECIPES["paper"].to_dict().items() if k != "refit"}  # a field added later
    assert Recipe.from_dict(older) == RECIPES["paper"]


def test_numpy_scalars_are_accepted_and_stored_as_python_values():
    r = make_recipe("paper", high_factor=np.float32(1.25), max_iter=np.int64(7), compensate=None)
    assert type(r.high_factor) is float and type(r.max_iter) is int
    json.dumps(r.to_dict())
    with pytest.raises(InvalidArgumentError, match="must be an integer"):
        make_recipe("paper", max_iter=2.5)


def test_api_accepts_a_recipe_object_and_numpy_scalars(checkpoints, tmp_path):
    recipe = dataclasses.replace(RECIPES["paper"], allocation="uniform")
    report = clusterprune.compress(
        checkpoints["whisper"],
        tmp_path / "o",
        recipe,
        sparsity=np.float32(0.25),
        seed=np.int64(3),
        k_overrides={"model.encoder.layers.0.ffn": np.int64(40)},
    )
    assert report.plan.recipe == recipe and report.plan.seed == 3
    assert {m.name: m.k for m in report.plan.modules}["model.encoder.layers.0.ffn"] == 40


def test_the_metadata_record_is_versioned(checkpoints, tmp_path):
    from pathlib import Path

    from clusterprune.io.metadata import FORMAT, parse_compression

    clusterprune.compress(checkpoints["whisper"], tmp_path / "o", "paper", sparsity=0.25)
    stored = clusterprune.inspect(tmp_path / "o")["compression"]
    assert stored["format"] == FORMAT
    older = {k: v for k, v in stored.items() if k != "format"}  # what 0.1.0 wrote: read as format 1
    assert (
        parse_compression(json.dumps(older), Path("x")).modules
        == parse_compression(json.dumps(stored), Path("x")).modules
    )
