"""End to end on tiny random transformers checkpoints: fused loads with from_pretrained, folded with
load_folded, and both compute the same function."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import clusterprune
from clusterprune import pipeline as pipeline_module
from clusterprune.config import RECIPES, make_recipe
from clusterprune.io.checkpoint import Checkpoint
from clusterprune.io.safetensors import SafetensorsFile, SafetensorsWriter
from clusterprune.models.registry import unit_map
from clusterprune.models.units import to_units
from clusterprune.pipeline import unchanged as unchanged_module
from clusterprune.plan import make_plan, module_variance, stored_sums
from clusterprune.recipes.registries import FEATURES

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def whisper_outputs(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 32, generator=g)
    dec = torch.tensor([[1, 5, 7, 9, 11], [1, 3, 4, 2, 8]])
    with torch.no_grad():
        return model(input_features=x, decoder_input_ids=dec).logits.float()


def ctc_outputs(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(2, 1600, generator=g)).logits.float()


FAMILIES = {
    "whisper": (transformers.WhisperForConditionalGeneration, whisper_outputs),
    "whisper_sharded": (transformers.WhisperForConditionalGeneration, whisper_outputs),
    "hubert": (transformers.HubertForCTC, ctc_outputs),
    "hubert_stable": (transformers.HubertForCTC, ctc_outputs),
    "wav2vec2": (transformers.Wav2Vec2ForCTC, ctc_outputs),
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("recipe", ["paper", "magnitude"])
def test_fused_and_folded_compute_the_same_function(checkpoints, tmp_path, family, recipe):
    cls, run = FAMILIES[family]
    src = checkpoints[family]
    before = digest(src)
    fused = clusterprune.compress(src, tmp_path / "fused", sparsity=0.25, recipe=recipe, export="fused")
    folded = clusterprune.compress(src, tmp_path / "folded", sparsity=0.25, recipe=recipe, export="folded")
    assert digest(src) == before, "the source must never be modified"
    assert [m.k for m in fused.plan.modules] == [m.k for m in folded.plan.modules]
    a = run(cls.from_pretrained(tmp_path / "fused"))
    b = run(clusterprune.load_folded(tmp_path / "folded"))
    dense = run(cls.from_pretrained(src))
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()
    assert not torch.allclose(a, dense, atol=1e-3), "compression at 25 % should change the outputs"
    small = clusterprune.load_folded(tmp_path / "folded")
    n_small = sum(p.numel() for p in small.parameters())
    n_dense = sum(p.numel() for p in cls.from_pretrained(src).parameters())
    assert n_dense - n_small == folded.plan.params_removed


@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_sparsity_zero_reproduces_the_original(checkpoints, tmp_path, family):
    src = checkpoints[family]
    clusterprune.compress(src, tmp_path / "out", sparsity=0.0, export="folded", recipe="paper")
    with Checkpoint(src) as a, Checkpoint(tmp_path / "out") as b:
        assert a.names() == b.names()
        for name in a.names():
            assert np.array_equal(a.raw(name), b.raw(name)), name


def test_magnitude_and_kmeans_share_the_plan_and_magnitude_zeroes_removed_units(checkpoints, tmp_path):
    src = checkpoints["whisper"]
    km = clusterprune.plan(src, sparsity=0.3, recipe="paper")
    mag = clusterprune.plan(src, sparsity=0.3, recipe="paper", method="magnitude")
    assert [m.k for m in km.modules] == [m.k for m in mag.modules]
    uni = clusterprune.plan(src, sparsity=0.3, recipe="paper", allocation="uniform")
    for kind in ("attention", "ffn"):
        assert sum(m.k for m in km.modules if m.kind == kind) == sum(m.k for m in uni.modules if m.kind == kind)
    assert [m.k for m in km.modules] != [m.k for m in uni.modules], "variance plan should differ here"
    clusterprune.compress(src, tmp_path / "mag", sparsity=0.3, recipe="magnitude")
    with Checkpoint(src) as a, Checkpoint(tmp_path / "mag") as b:
        w0, w1 = a.f32("model.encoder.layers.0.fc1.weight"), b.f32("model.encoder.layers.0.fc1.weight")
        zero_rows = np.flatnonzero(~w1.any(axis=1))
        assert len(zero_rows) == 48 - round(48 * 0.7)
        kept = np.setdiff1d(np.arange(48), zero_rows)
        assert np.array_equal(w0[kept], w1[kept])
        c1 = b.f32("model.encoder.layers.0.fc2.weight")
        assert not c1[:, zero_rows].any()


def test_fused_units_are_centroids(checkpoints, tmp_path):
    src = checkpoints["whisper"]
    clusterprune.compress(
        src, tmp_path / "o", sparsity=0.5, include=r"encoder\.layers\.0\.ffn", allocation="uniform", recipe="paper"
    )
    with Checkpoint(src) as a, Checkpoint(tmp_path / "o") as b:
        w1 = b.f32("model.encoder.layers.0.fc1.weight")
        c1 = b.f32("model.encoder.layers.0.fc2.weight")
        feats = np.concatenate([w1, c1.T], axis=1)
        uniq, labels = np.unique(feats, axis=0, return_inverse=True)
        assert len(uniq) == 24
        orig = np.concatenate(
            [a.f32("model.encoder.layers.0.fc1.weight"), a.f32("model.encoder.layers.0.fc2.weight").T], 1
        )
        for c in range(24):
            np.testing.assert_allclose(uniq[c], orig[labels.ravel() == c].astype(np.float64).mean(0), atol=1e-6)
        # modules outside --include are copied byte for byte
        assert np.array_equal(a.raw("model.decoder.layers.1.fc1.weight"), b.raw("model.decoder.layers.1.fc1.weight"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints_keep_their_dtype(checkpoints, tmp_path, dtype):
    src = checkpoints[f"whisper_{dtype}"]
    clusterprune.compress(src, tmp_path / "fused", sparsity=0.25, recipe="paper")
    clusterprune.compress(src, tmp_path / "folded", sparsity=0.25, export="folded", recipe="paper")
    m = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path / "fused", dtype=getattr(torch, dtype))
    assert m.model.encoder.layers[0].fc1.weight.dtype == getattr(torch, dtype)
    a = whisper_outputs(m.float())
    b = whisper_outputs(clusterprune.load_folded(tmp_path / "folded").float())
    assert torch.allclose(a, b, atol=2e-2), (a - b).abs().max()
    with Checkpoint(tmp_path / "fused") as c:
        assert c.info("model.encoder.layers.0.fc1.weight").dtype == {"float16": "F16", "bfloat16": "BF16"}[dtype]


def test_sharded_checkpoint_keeps_its_shards(checkpoints, tmp_path):
    src = checkpoints["whisper_sharded"]
    assert (src / "model.safetensors.index.json").exists()
    clusterprune.compress(src, tmp_path / "o", sparsity=0.2, export="folded", recipe="paper")
    index = json.loads((tmp_path / "o" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in src.glob("model-*.safetensors")}
    size = sum((tmp_path / "o" / f).stat().st_size for f in set(index["weight_map"].values()))
    assert 0 < index["metadata"]["total_size"] < size


def test_output_is_byte_identical_whatever_the_thread_count(checkpoints, tmp_path):
    src = checkpoints["hubert"]
    clusterprune.compress(src, tmp_path / "t1", sparsity=0.3, num_threads=1, init="kmeans++", seed=3, recipe="paper")
    clusterprune.compress(src, tmp_path / "t3", sparsity=0.3, num_threads=3, init="kmeans++", seed=3, recipe="paper")
    assert (tmp_path / "t1" / "model.safetensors").read_bytes() == (tmp_path / "t3" / "model.safetensors").read_bytes()


def test_metadata_report_and_aux_files(checkpoints, tmp_path):
    src = checkpoints["whisper"]
    report = clusterprune.compress(src, tmp_path / "o", sparsity=0.1, seed=5, weighting="balanced", recipe="paper")
    out = tmp_path / "o"
    assert (out / "generation_config.json").read_bytes() == (src / "generation_config.json").read_bytes()
    with Checkpoint(out) as c:
        meta = json.loads(c.files["model.safetensors"].metadata["clusterprune"])
    assert meta["recipe"]["weighting"] == "balanced" and meta["seed"] == 5 and meta["export"] == "fused"
    assert meta["modules"]["model.encoder.layers.0.ffn"] == [48, report.plan.modules[1].k]
    info = clusterprune.inspect(out)
    assert info["compression"]["recipe"]["name"] == "paper"
    saved = json.loads((out / "clusterprune_plan.json").read_text())
    assert saved["params_removed"] == report.plan.params_removed > 0
    assert all(0.0 <= m["rel_wcss"] <= 1.0 for m in saved["modules"])


def _with_negative_zeros(src: Path, dst: Path, tensor: str) -> None:
    """A copy of the checkpoint ``src`` in which every 7th value of ``tensor`` is -0.0."""
    shutil.copytree(src, dst)
    with SafetensorsFile(src / "model.safetensors") as f:
        entries = [(n, i.dtype, i.shape) for n, i in f.tensors.items()]
        writer = SafetensorsWriter(dst / "model.safetensors", entries, f.metadata)
        for n in f.tensors:
            raw = np.array(f.raw(n))
            if n == tensor:
                bits = raw.reshape(-1).view(f"<u{raw.dtype.itemsize}")
                bits[::7] = 1 << (8 * raw.dtype.itemsize - 1)
            writer.write(n, raw)
        writer.close()


@pytest.mark.parametrize("family", ["whisper", "whisper_float16", "whisper_bfloat16"])
@pytest.mark.parametrize("recipe", sorted(r for r, v in RECIPES.items() if v.activations != "selfgen"))
def test_modules_kept_whole_are_written_as_clustering_them_would_write_them(
    checkpoints, tmp_path, monkeypatch, family, recipe
):
    """A module kept at K = N is copied from the source (its negative zeros made positive, as the
    fold's sums make them) instead of going through its recipe: the same files byte for byte,
    and the same report, as the full computation."""
    plan = make_plan(checkpoints[family], 0.25, make_recipe(recipe))
    whole = plan.modules[0]
    src = tmp_path / "src"
    _with_negative_zeros(checkpoints[family], src, plan.specs[whole.name].parts[0].tensor)
    overrides = {whole.name: whole.n_units}
    fast = clusterprune.compress(src, tmp_path / "fast", sparsity=0.25, recipe=recipe, k_overrides=overrides)
    with Checkpoint(src) as ckpt:
        spec, m = fast.plan.specs[whole.name], fast.plan.modules[0]
        assert unchanged_module(ckpt, spec, m, fast.plan.recipe, "fused") == (fast.plan.recipe.fusion != "cosine")
    monkeypatch.setattr(pipeline_module, "unchanged", lambda *args: False)
    full = clusterprune.compress(src, tmp_path / "full", sparsity=0.25, recipe=recipe, k_overrides=overrides)
    assert digest(tmp_path / "fast") == digest(tmp_path / "full")
    strip = [{k: v for k, v in m.to_dict().items() if k != "seconds"} for m in fast.modules]
    assert strip == [{k: v for k, v in m.to_dict().items() if k != "seconds"} for m in full.modules]


@pytest.mark.parametrize("family", ["whisper", "whisper_float16", "whisper_bfloat16", "hubert"])
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_module_variances_are_the_float64_variances_of_their_features_bit_for_bit(checkpoints, family, feature):
    """The plan's variances, summed from the stored values where the unit matrix keeps the
    tensor's order, are the float64 variances of the feature blocks as NumPy adds them."""
    recipe = make_recipe("paper", feature=feature)
    with Checkpoint(checkpoints[family]) as ckpt:
        for spec in unit_map(ckpt.config, set(ckpt.where)).modules:
            parts = [(p, to_units(ckpt.f32(p.tensor), spec, p)) for p in spec.parts]
            total = total_sq = 0.0
            count = 0
            for block in FEATURES[feature](parts):
                b = block.astype(np.float64)
                total += float(b.sum())
                total_sq += float((b * b).sum())
                count += b.size
            mean = total / count
            want = max(total_sq / count - mean * mean, 0.0)
            assert module_variance(ckpt, spec, recipe).hex() == want.hex(), spec.name
            for part, units in parts:  # each part's sums, which the variance may hide in its rounding
                b = units.astype(np.float64)
                want_sums = (float(b.sum()).hex(), float((b * b).sum()).hex(), b.size)
                got = stored_sums(ckpt, spec, part)
                assert (got[0].hex(), got[1].hex(), got[2]) == want_sums, part.tensor
