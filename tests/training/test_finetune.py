"""`clusterprune finetune`: the loss falls, the compression survives training (tied members,
zero removed units, folded shapes), a killed run resumes to the same weights, and two gloo
processes agree with one on the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import clusterprune
from clusterprune import cli
from clusterprune.io.checkpoint import Checkpoint
from clusterprune.models.units import to_units
from clusterprune.training.finetune import FinetuneConfig, finetune
from clusterprune.training.structure import read_structure
from conftest import librispeech_copy, needs_data

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("soundfile")

pytestmark = needs_data


def _weights(path) -> dict[str, np.ndarray]:
    with Checkpoint(path) as c:
        return {n: c.f32(n).copy() for n in c.names()}


def _quiet(*_: object) -> None:
    return None


def _tune(src, data, out, **kw):
    cfg = FinetuneConfig(**{"lr": 3e-3, "batch_size": 2, "max_steps": 6, "save_every": 3, "warmup_ratio": 0.0, **kw})
    return finetune(src, data, out, cfg, progress=False, log=_quiet)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return librispeech_copy(tmp_path_factory.mktemp("speech"), n=2)


def test_fused_kmeans_whisper_loss_falls_and_members_stay_tied(trainable, speech, tmp_path):
    fused = tmp_path / "fused"
    clusterprune.compress(trainable["whisper"], fused, sparsity=0.5, recipe="paper", allocation="uniform")
    before = read_structure(Checkpoint(fused))
    report = _tune(fused, speech, tmp_path / "out")
    assert report["last_loss"] < report["first_loss"]
    assert report["structure"].startswith("fused (kmeans)")
    after_ckpt = Checkpoint(tmp_path / "out")
    after = read_structure(after_ckpt)  # raises if the members are no longer identical
    assert after.kind == "fused" and len(after.modules) == len(before.modules)
    for a, b in zip(after.modules, before.modules, strict=True):
        np.testing.assert_array_equal(a.first, b.first)  # same clusters, members still identical
    w0, w1 = _weights(fused), _weights(tmp_path / "out")
    assert any(not np.array_equal(w0[n], w1[n]) for n in w0), "training changed nothing"
    assert set(w0) == set(w1) and all(w0[n].shape == w1[n].shape for n in w0)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert model.config.d_model == 32
    log = (tmp_path / "out" / "finetune_log.jsonl").read_text().splitlines()
    assert len(log) == 6 and not (tmp_path / "out.partial").exists()


def test_magnitude_keeps_removed_units_zero_and_ctc_trains(trainable, speech, tmp_path):
    pruned = tmp_path / "pruned"
    report = clusterprune.compress(trainable["hubert"], pruned, sparsity=0.25, recipe="magnitude")
    result = _tune(pruned, speech, tmp_path / "out", max_steps=4)
    assert result["last_loss"] < result["first_loss"]
    removed = 0
    with Checkpoint(tmp_path / "out") as c:
        for m in report.plan.modules:
            spec = report.plan.specs[m.name]
            blocks = [to_units(c.f32(p.tensor), spec, p) for p in spec.parts]
            zero = np.all([np.all(b == 0, axis=1) for b in blocks], axis=0)
            assert int(zero.sum()) == m.n_units - m.k
            removed += int(zero.sum())
    assert removed > 0
    frozen = "hubert.feature_extractor.conv_layers.0.conv.weight"
    np.testing.assert_array_equal(_weights(pruned)[frozen], _weights(tmp_path / "out")[frozen])


def test_folded_trains_as_the_smaller_model(trainable, speech, tmp_path):
    folded = tmp_path / "folded"
    clusterprune.compress(
        trainable["whisper"], folded, sparsity=0.5, recipe="paper", allocation="uniform", export="folded"
    )
    _tune(folded, speech, tmp_path / "out", max_steps=2)
    w0, w1 = _weights(folded), _weights(tmp_path / "out")
    assert all(w0[n].shape == w1[n].shape for n in w0)
    assert read_structure(Checkpoint(tmp_path / "out")).kind == "folded"
    clusterprune.load_folded(tmp_path / "out")


def test_killed_run_resumes_to_the_same_weights(trainable, speech, tmp_path):
    src = tmp_path / "fused"
    clusterprune.compress(trainable["whisper"], src, sparsity=0.5, recipe="paper", allocation="uniform")
    _tune(src, speech, tmp_path / "full", max_steps=4, save_every=2)

    def kill(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    cfg = FinetuneConfig(lr=3e-3, batch_size=2, max_steps=4, save_every=2, warmup_ratio=0.0)
    with pytest.raises(KeyboardInterrupt):
        finetune(src, speech, tmp_path / "resumed", cfg, progress=False, on_step=kill, log=_quiet)
    assert not (tmp_path / "resumed").exists() and (tmp_path / "resumed.partial" / "state.pt").is_file()
    finetune(src, speech, tmp_path / "resumed", cfg, progress=False, resume=True, log=_quiet)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    for n in a:
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "full")  # one log entry per step


def _fused_without_dropout(trainable, tmp_path):
    """Dropout draws differ between processes and micro-batch splits; the update must not."""
    no_dropout = tmp_path / "dense"
    shutil.copytree(trainable["whisper"], no_dropout)
    config = json.loads((no_dropout / "config.json").read_text())
    (no_dropout / "config.json").write_text(json.dumps({**config, "dropout": 0.0}))
    src = tmp_path / "fused"
    clusterprune.compress(no_dropout, src, sparsity=0.5, recipe="paper", allocation="uniform")
    return src


def test_gradient_accumulation_matches_one_batch(trainable, speech, tmp_path):
    src = _fused_without_dropout(trainable, tmp_path)
    _tune(src, speech, tmp_path / "one", max_steps=2)
    _tune(src, speech, tmp_path / "accum", max_steps=2, grad_accum=2)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "accum")
    for n in a:
        np.testing.assert_allclose(a[n], b[n], atol=2e-6, rtol=1e-5, err_msg=n)
    np.testing.assert_allclose(_losses(tmp_path / "one"), _losses(tmp_path / "accum"), rtol=1e-5)


def _losses(out) -> list[float]:
    """The per-step losses of a finished run (sum over the global batch / its token count)."""
    return [json.loads(line)["loss"] for line in (out / "finetune_log.jsonl").read_text().splitlines()]


def test_two_gloo_processes_match_one(trainable, speech, tmp_path):
    src = _fused_without_dropout(trainable, tmp_path)
    common = ["finetune", str(src), "--data", str(speech), "--max-steps", "2", "--batch-size", "2", "--lr", "3e-3"]
    common += ["--warmup-ratio", "0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "clusterprune.cli", *common, "--out", str(tmp_path / "one")], env=env)
    assert one.returncode == 0
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    two = subprocess.run(
        [*launcher, "-m", "clusterprune.cli", *common, "--out", str(tmp_path / "two")], env=env, capture_output=True
    )
    assert two.returncode == 0, two.stderr.decode()[-2000:]
    report = (tmp_path / "two" / "finetune_report.json").read_text()
    assert '"processes": 2' in report
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for n in a:
        np.testing.assert_allclose(a[n], b[n], atol=2e-6, rtol=1e-5, err_msg=n)
    assert any(not np.array_equal(a[n], _weights(src)[n]) for n in a)
    np.testing.assert_allclose(_losses(tmp_path / "one"), _losses(tmp_path / "two"), rtol=1e-5)


def test_bad_finetune_inputs(trainable, speech, tmp_path, capsys):
    base = ["finetune", "--data", str(speech), "--no-progress"]

    def fails(args, message):
        assert cli.main(args) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err

    dense = str(trainable["whisper"])
    fails([*base[:1], dense, *base[1:], "--out", str(tmp_path / "o")], "not compressed by clusterprune")
    fused = tmp_path / "fused"
    clusterprune.compress(trainable["whisper"], fused, sparsity=0.5, recipe="paper", allocation="uniform")
    fails(["finetune", str(fused), *base[1:], "--out", str(tmp_path / "o"), "--lr", "0"], "--lr 0.0 must be in (0, 1]")
    fails(["finetune", str(fused), *base[1:], "--out", str(tmp_path / "o"), "--epochs", "0"], "--epochs 0")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(["finetune", str(fused), "--data", str(empty), "--out", str(tmp_path / "o")], "empty")
    fails(["finetune", str(fused), *base[1:], "--out", str(tmp_path / "o"), "--resume"], "nothing to resume")
    fails(["finetune", str(fused), *base[1:], "--out", str(tmp_path / "o"), "--device", "gpu0"], "not a torch device")
    fails(["eval", str(fused), "--data", str(speech), "--device", "tpu9"], "not a torch device")
    if not torch.cuda.is_available():
        fails(["eval", str(fused), "--data", str(speech), "--device", "cuda"], "no CUDA GPU")
    (tmp_path / "o.partial").mkdir()
    (tmp_path / "o.partial" / "state.pt").write_bytes(b"saved progress")
    fails(["finetune", str(fused), *base[1:], "--out", str(tmp_path / "o")], "pass --resume")
    assert (tmp_path / "o.partial" / "state.pt").read_bytes() == b"saved progress"
    # the tied members were changed by hand: the structure is broken, and the run says so
    damaged = tmp_path / "damaged"
    shutil.copytree(fused, damaged)
    with Checkpoint(damaged) as c:
        w = {n: c.f32(n).copy() for n in c.names()}
        meta = next(iter(c.files.values())).metadata
        ffn = next(m for m in read_structure(c).modules if m.spec.kind == "ffn")
    member = int(np.flatnonzero(ffn.first != np.arange(len(ffn.first)))[0])  # a unit tied to another
    w[ffn.spec.parts[0].tensor][member] += 1.0
    from safetensors.numpy import save_file

    save_file(w, str(damaged / "model.safetensors"), metadata=meta)
    fails(["finetune", str(damaged), *base[1:], "--out", str(tmp_path / "d")], "changed after compression")
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()
