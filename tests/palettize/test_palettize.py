"""palettize end to end on tiny random checkpoints: formats, loaders, stacking, plans, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

import clusterprune
from clusterprune import cli
from clusterprune.errors import InvalidArgumentError, NonFiniteError
from clusterprune.io.checkpoint import Checkpoint
from clusterprune.io.palette import PALETTE_KEY, PALETTE_PLAN
from clusterprune.io.safetensors import SafetensorsFile

SMALL = {"min_size": 64}  # the tiny test models' tensors are small


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("source", ["whisper", "whisper_float16", "whisper_bfloat16", "whisper_sharded", "hubert"])
def test_dequantized_and_compact_give_the_same_model_bit_for_bit(checkpoints, tmp_path, source):
    src = checkpoints[source]
    deq = clusterprune.palettize(src, tmp_path / "d", bits=3, **SMALL)
    comp = clusterprune.palettize(src, tmp_path / "c", bits=3, format="compact", **SMALL)
    assert [t.to_dict() for t in deq.tensors] == [t.to_dict() for t in comp.tensors]
    a, b = _state(clusterprune.load_palettized(tmp_path / "d")), _state(clusterprune.load_palettized(tmp_path / "c"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the dequantized output has the source's names, shapes and dtypes, and stock from_pretrained loads it
    with Checkpoint(src) as s, Checkpoint(tmp_path / "d") as d:
        assert {n: (s.info(n).dtype, s.info(n).shape) for n in s.names()} == {
            n: (d.info(n).dtype, d.info(n).shape) for n in d.names()
        }
        changed = [n for n in s.names() if not np.array_equal(s.raw(n), d.raw(n))]
        assert set(changed) <= {t.name for t in deq.tensors} and changed
        for t in deq.tensors:  # at most 2^bits distinct values per row
            rows = d.f32(t.name).reshape(t.shape[0], -1)
            assert max(len(np.unique(r)) for r in rows) <= 8
    stock = type(clusterprune.load_palettized(tmp_path / "d")).from_pretrained(tmp_path / "d")
    assert all(torch.equal(v, a[k]) for k, v in _state(stock).items() if k in a)


def test_compact_size_and_schema(checkpoints, tmp_path):
    report = clusterprune.palettize(checkpoints["whisper"], tmp_path / "c", bits=4, format="compact", **SMALL)
    with SafetensorsFile(tmp_path / "c" / "model.safetensors") as f:
        entries = json.loads(f.metadata["clusterprune_palette"])
        stored = sum(t.nbytes for t in f.tensors.values())
    assert set(entries) == {t.name for t in report.tensors}
    assert report.bytes_compact == stored
    for t in report.tensors:
        n = int(np.prod(t.shape))
        assert t.compact_bytes == -(-n * 4 // 8) + (t.shape[0] // t.group_rows) * 16 * 2  # indices + fp16 tables
    assert json.loads((tmp_path / "c" / "config.json").read_text())[PALETTE_KEY]["format"] == "compact"
    plan = json.loads((tmp_path / "c" / PALETTE_PLAN).read_text())
    assert plan["avg_bits"] == 4.0 and "seconds" not in plan


def test_stacked_on_a_folded_checkpoint_and_in_one_step(checkpoints, tmp_path):
    clusterprune.compress(checkpoints["whisper"], tmp_path / "f", "datafree", sparsity=0.25, export="folded")
    clusterprune.palettize(tmp_path / "f", tmp_path / "fp", bits=4, format="compact", **SMALL)
    one = clusterprune.palettize(
        checkpoints["whisper"], tmp_path / "one", bits=4, format="compact", sparsity=0.25, recipe="datafree", **SMALL
    )
    assert one.source_compression["sparsity"] == 0.25
    assert not (tmp_path / "one" / ".folded-source").exists()
    folded, two_step = clusterprune.load_palettized(tmp_path / "one"), clusterprune.load_palettized(tmp_path / "fp")
    dense_ffn = transformers.WhisperConfig.from_pretrained(checkpoints["whisper"]).encoder_ffn_dim
    assert folded.model.encoder.layers[0].fc1.out_features < dense_ffn  # the folded architecture
    a, b = _state(folded), _state(two_step)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert clusterprune.inspect(tmp_path / "one")["compression"]["sparsity"] == 0.25


def test_mixed_plans_keep_the_average(checkpoints, tmp_path):
    v = clusterprune.palettize(checkpoints["whisper"], tmp_path / "v", bits=4, allocation="variance", **SMALL)
    assert v.avg_bits == pytest.approx(4.0) and {t.bits for t in v.tensors} == {3, 4, 5}
    e = clusterprune.palettize(checkpoints["whisper"], tmp_path / "e", avg_bits=3.5, min_bits=2, max_bits=6, **SMALL)
    u3 = clusterprune.palettize(checkpoints["whisper"], tmp_path / "u3", bits=3, **SMALL)
    u4 = clusterprune.palettize(checkpoints["whisper"], tmp_path / "u4", bits=4, **SMALL)
    assert e.config.allocation == "error" and len({t.bits for t in e.tensors}) > 1

    def layers(r):  # the token embedding keeps --bits in a mixed plan; the layers share the budget
        return [t for t in r.tensors if "embed_tokens" not in t.name]

    emb = [t for t in e.tensors if "embed_tokens" in t.name]
    assert emb and all(t.bits == 4 for t in emb)
    size = {k: sum(t.compact_bytes for t in layers(r)) for k, r in (("e", e), ("u3", u3), ("u4", u4))}
    assert size["e"] <= (size["u3"] + size["u4"]) / 2
    # the allocator minimises the summed modelled relative error: below uniform 3 bits at a larger size
    assert sum(t.rel_error for t in layers(e)) < sum(t.rel_error for t in layers(u3))


def test_refusals_leave_nothing_behind(checkpoints, whisper_copy, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(InvalidArgumentError, match="does not divide"):
        clusterprune.palettize(checkpoints["whisper"], out, granularity="per-grouped-channel", group_size=7, **SMALL)
    with pytest.raises(InvalidArgumentError, match="bits"):
        clusterprune.palettize(checkpoints["whisper"], out, bits=9)
    clusterprune.palettize(checkpoints["whisper"], tmp_path / "p", bits=4, **SMALL)
    with pytest.raises(InvalidArgumentError, match="already palettized"):
        clusterprune.palettize(tmp_path / "p", out, bits=4, **SMALL)
    from safetensors.numpy import load_file, save_file

    weights = load_file(whisper_copy / "model.safetensors")
    name = "model.encoder.layers.0.fc1.weight"
    weights[name][1, 2] = np.nan
    save_file(weights, whisper_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        NonFiniteError, match=f"model.safetensors: tensor {name} has a non-finite value .* at row 1, column 2"
    ):
        clusterprune.palettize(whisper_copy, out, bits=4, **SMALL)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["p", "src"]


def test_cli_palettize_and_one_line_errors(checkpoints, tmp_path, capsys):
    rc = cli.main(
        [
            "palettize",
            str(checkpoints["whisper"]),
            str(tmp_path / "o"),
            "--bits",
            "2",
            "--min-size",
            "64",
            "--format",
            "compact",
            "--report",
            str(tmp_path / "r.json"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "at 2.00 bits on average" in out and "compact" in out
    assert json.loads((tmp_path / "r.json").read_text())["format"] == "compact"
    info = clusterprune.inspect(tmp_path / "o")
    assert info["palettized"]["format"] == "compact"
    for argv, msg in (
        (["--bits", "9"], "invalid choice"),
        (["--group-size", "5", "--granularity", "per-grouped-channel"], "does not divide"),
        (["--recipe", "paper"], "give --sparsity too"),
    ):
        argv = ["palettize", str(checkpoints["whisper"]), str(tmp_path / "x"), "--min-size", "64", *argv]
        if msg == "invalid choice":  # argparse: exit status 2
            with pytest.raises(SystemExit):
                cli.main(argv)
        else:
            assert cli.main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "x").exists()


def test_steps_that_would_lose_the_palette_refuse_it(checkpoints, tmp_path):
    clusterprune.palettize(checkpoints["whisper"], tmp_path / "d", bits=4, **SMALL)
    clusterprune.palettize(checkpoints["whisper"], tmp_path / "c", bits=4, format="compact", **SMALL)
    for src in ("d", "c"):
        with pytest.raises(InvalidArgumentError, match="cannot be compressed"):
            clusterprune.compress(tmp_path / src, tmp_path / "x", sparsity=0.25)
    with pytest.raises(InvalidArgumentError, match="cannot be exported"):
        clusterprune.export_ct2(tmp_path / "c", tmp_path / "x")
    info = clusterprune.inspect(tmp_path / "c")
    with Checkpoint(checkpoints["whisper"]) as s:
        assert info["total_params"] == sum(s.info(n).numel for n in s.names())  # the model, not its parts
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (384, 1536)])
def test_the_energy_is_the_float64_sum_of_the_squares_bit_for_bit(shape):
    from clusterprune.palettize.pipeline import _energy

    rng = np.random.default_rng(sum(shape))
    values = (rng.standard_normal(shape) * 0.02).astype(np.float16).astype(np.float32)
    values[0] = 0.0  # an all-zero row
    weights = rng.random(shape[1]) + 0.5
    x = rng.standard_normal((shape[1], shape[1] + 3))
    moment = x @ x.T / x.shape[1]
    w = values.astype(np.float64)
    assert _energy(values, None) == float(np.sum(w * w))
    assert _energy(values, weights) == float(np.sum(w * w * weights[None, :]))
    assert _energy(values, None, moment) == float(np.sum((w @ moment) * w))
