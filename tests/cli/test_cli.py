"""The command line: happy path and every bad input (exit status, one-line message, nothing left)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clusterprune import cli
from hostile import rewrite

pytest.importorskip("torch")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_console_script_compress_and_inspect(checkpoints, tmp_path):
    exe = Path(sys.executable).parent / "clusterprune"
    src, dst = checkpoints["whisper"], tmp_path / "out"
    r = subprocess.run(
        [exe, "compress", src, dst, "--sparsity", "0.2", "--report", tmp_path / "r.json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "achieved sparsity" in r.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert {"n_units", "k", "sparsity", "rel_wcss"} <= set(report["modules"][0])
    assert report["bytes_after"] < report["bytes_before"]
    mb = f"{report['bytes_after'] / 1e6:,.1f} MB"  # one unit: MB, 10^6 bytes
    assert "a fused checkpoint, same shapes and size as the source" in r.stdout and "--export folded" in r.stdout
    assert f"the smaller model ({mb})" in r.stdout and "MiB" not in r.stdout
    r = subprocess.run(
        [exe, "compress", src, tmp_path / "f", "--sparsity", "0.2", "--export", "folded"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and f"a folded checkpoint, {mb}" in r.stdout
    assert "FFN neurons of lowest gauss_ln score removed" in r.stdout  # what the default recipe did, plainly
    r = subprocess.run([exe, "inspect", dst], capture_output=True, text=True)
    assert r.returncode == 0 and "compressed by clusterprune" in r.stdout
    r = subprocess.run([exe, "compress", "--help"], capture_output=True, text=True)
    assert "--sparsity" in r.stdout and "--export" in r.stdout


def expect_error(capsys, tmp_path, args, pattern, src=None):
    dst = tmp_path / "dst"
    code, out, err = run_cli(capsys, "compress", *(args if src is None else [src, dst, *args]))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("clusterprune: error: "), err
    assert pattern in err, err
    assert not dst.exists()
    assert leftovers(tmp_path) == []
    return err


def test_missing_source(capsys, tmp_path):
    expect_error(capsys, tmp_path, [tmp_path / "nope", tmp_path / "dst"], "no such checkpoint directory")


def test_missing_config(capsys, tmp_path, whisper_copy):
    (whisper_copy / "config.json").unlink()
    expect_error(capsys, tmp_path, [], "config.json: file not found", src=whisper_copy)


def test_missing_weights(capsys, tmp_path, whisper_copy):
    (whisper_copy / "model.safetensors").unlink()
    expect_error(capsys, tmp_path, [], "no model.safetensors", src=whisper_copy)


def test_truncated_file(capsys, tmp_path, whisper_copy):
    f = whisper_copy / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    expect_error(capsys, tmp_path, [], "truncated file: tensor", src=whisper_copy)


def test_corrupt_header(capsys, tmp_path, whisper_copy):
    f = whisper_copy / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[10:14] = b"!!!!"
    f.write_bytes(bytes(data))
    err = expect_error(capsys, tmp_path, [], "corrupt safetensors header", src=whisper_copy)
    assert "model.safetensors" in err
    f.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    expect_error(capsys, tmp_path, [], "header length 1000000000 exceeds", src=whisper_copy)


def test_unsupported_dtype(capsys, tmp_path, whisper_copy):
    name = "model.encoder.layers.1.fc1.weight"
    rewrite(whisper_copy / "model.safetensors", lambda n, a: a.astype(np.int8) if n == name else a)
    err = expect_error(capsys, tmp_path, [], f"tensor {name} has unsupported dtype I8", src=whisper_copy)
    assert "model.safetensors" in err


def test_nan_weights(capsys, tmp_path, whisper_copy):
    name = "model.decoder.layers.0.fc2.weight"

    def poison(n, a):
        if n == name:
            a = a.copy()
            a[3, 7] = np.nan
        return a

    rewrite(whisper_copy / "model.safetensors", poison)
    expect_error(
        capsys, tmp_path, [], f"tensor {name} has a non-finite value (NaN or Inf) at index [3, 7]", src=whisper_copy
    )


def test_unsupported_family_and_shape_mismatch(capsys, tmp_path, whisper_copy):
    cfg_path = whisper_copy / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "model_type": "bert"}))
    expect_error(capsys, tmp_path, [], "unsupported model_type 'bert'", src=whisper_copy)
    cfg_path.write_text(json.dumps({**cfg, "encoder_ffn_dim": 64}))
    expect_error(
        capsys,
        tmp_path,
        [],
        "tensor model.encoder.layers.0.fc1.weight has shape [48, 32], config.json implies [64, 32]",
        src=whisper_copy,
    )


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--sparsity", "1.0"], "sparsity 1.0 is outside [0, 1)"),
        (["--sparsity", "-0.1"], "sparsity -0.1 is outside [0, 1)"),
        (
            ["--set-k", "model.encoder.layers.0.ffn=0"],
            "K = 0 for module model.encoder.layers.0.ffn is outside [1, N = 48]",
        ),
        (["--include", "nothing-matches"], "no module matches"),
        (["--include", "("], "not a valid regular expression"),
    ],
)
def test_bad_options(capsys, tmp_path, checkpoints, args, pattern):
    expect_error(capsys, tmp_path, args, pattern, src=checkpoints["whisper"])


def test_destination_rules(capsys, tmp_path, whisper_copy):
    before = sorted(p.name for p in whisper_copy.iterdir())
    code, _, err = run_cli(capsys, "compress", whisper_copy, whisper_copy)
    assert code == 1 and "would be written inside the source" in err
    code, _, err = run_cli(capsys, "compress", whisper_copy, whisper_copy / "inner")
    assert code == 1 and "inside the source" in err and not (whisper_copy / "inner").exists()
    code, _, err = run_cli(capsys, "compress", whisper_copy, whisper_copy.parent)
    assert code == 1 and "would contain the source" in err
    assert sorted(p.name for p in whisper_copy.iterdir()) == before
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    code, _, err = run_cli(capsys, "compress", whisper_copy, dst)
    assert code == 1 and "already exists (pass --overwrite" in err and (dst / "keep.txt").exists()
    code, _, err = run_cli(capsys, "compress", whisper_copy, dst, "--overwrite", "--quiet")
    assert code == 0, err
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").exists()
    assert leftovers(tmp_path) == []


def test_interrupt_leaves_nothing(capsys, tmp_path, checkpoints, monkeypatch):
    from clusterprune import pipeline as compress_mod

    calls = {"n": 0}
    real = compress_mod._compress_module

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(compress_mod, "_compress_module", interrupted)
    code, _, err = run_cli(capsys, "compress", checkpoints["whisper"], tmp_path / "dst")
    assert code == 130 and "interrupted" in err
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


def test_inspect_lists_modules(capsys, checkpoints):
    code, out, _ = run_cli(capsys, "inspect", checkpoints["hubert"], "--json")
    info = json.loads(out)
    assert code == 0 and info["family"] == "hubert"
    assert [m["n_units"] for m in info["modules"]] == [4, 40] * 3


def test_shard_listed_but_missing(capsys, tmp_path, checkpoints):
    src = tmp_path / "src"
    shutil.copytree(checkpoints["whisper_sharded"], src)
    shard = sorted(src.glob("model-*.safetensors"))[0]
    shard.unlink()
    expect_error(capsys, tmp_path, [], f"{shard.name}: shard listed in model.safetensors.index.json not found", src=src)


def test_outputs_get_the_usual_permissions(capsys, tmp_path, checkpoints):
    import os

    old = os.umask(0o022)
    try:
        code, _, _ = run_cli(
            capsys, "compress", checkpoints["whisper"], tmp_path / "o", "--report", tmp_path / "r.json"
        )
    finally:
        os.umask(old)
    assert code == 0
    assert (tmp_path / "o").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
