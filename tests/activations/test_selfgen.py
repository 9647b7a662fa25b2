"""Self-generated activation statistics: the synthesiser, the statistics file, collection on a
real-format model, and compress reading them (without torch)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import clusterprune
from clusterprune.activations.synth import RATE, clip_lengths, synthesize
from clusterprune.errors import ClusterpruneError, CorruptCheckpointError, InvalidArgumentError
from clusterprune.io.stats import ActivationStats, ModuleStats, load_stats


def test_synthesis_is_seeded_bounded_and_speech_band():
    a, b, c = synthesize(3.0, 5), synthesize(3.0, 5), synthesize(3.0, 6)
    assert a.dtype == np.float32 and a.shape == (3 * RATE,)
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert np.all(np.isfinite(a)) and float(np.max(np.abs(a))) < 1.0
    spec = np.abs(np.fft.rfft(a.astype(np.float64))) ** 2
    freq = np.fft.rfftfreq(a.size, 1.0 / RATE)
    assert spec[(freq > 80) & (freq < 4000)].sum() > 0.6 * spec.sum()  # voiced speech energy band
    frames = a[: a.size // 400 * 400].reshape(-1, 400)
    level = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    assert level.max() > 10 * np.median(level[level > 0]) or (level < 0.1 * level.max()).any()  # syllables
    lengths = clip_lengths(50, 0)
    assert lengths == clip_lengths(50, 0) and 2.0 <= min(lengths) and max(lengths) <= 16.0


def _stats(n: int = 4) -> ActivationStats:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, n))
    return ActivationStats(
        {"m.ffn": ModuleStats(x.mean(axis=0), np.cov(x.T, bias=True), 30, 2.5)}, "src", "abc", {"clips": 1}
    )


def test_statistics_file_round_trip_and_refusals(tmp_path):
    st = _stats()
    st.save(tmp_path / "s.safetensors")
    back = load_stats(tmp_path / "s.safetensors")
    assert back.digest == "abc" and back.settings == {"clips": 1}
    m, m0 = back.modules["m.ffn"], st.modules["m.ffn"]
    assert m.mean.tobytes() == m0.mean.tobytes()  # float64
    np.testing.assert_array_equal(m.cov, m.cov.T)  # stored as its upper triangle, float32
    np.testing.assert_allclose(m.cov, m0.cov, rtol=1e-6, atol=1e-7 * np.abs(m0.cov).max())
    assert m.cov.dtype == np.float64 and m.count == 30 and m.stream_variance == 2.5
    with pytest.raises(InvalidArgumentError, match="no such statistics file"):
        load_stats(tmp_path / "missing.safetensors")
    model = tmp_path / "w.safetensors"
    from clusterprune.io.safetensors import SafetensorsWriter

    w = SafetensorsWriter(model, [("x", "F32", (2,))])
    w.write("x", np.zeros(2, dtype=np.float32))
    w.close()
    with pytest.raises(CorruptCheckpointError, match="not a clusterprune statistics file"):
        load_stats(model)
    bad = _stats()
    bad.modules["m.ffn"].cov[0, 0] = np.nan
    bad.save(tmp_path / "nan.safetensors")
    nan = load_stats(tmp_path / "nan.safetensors")  # the header reads; the module's arrays when asked for
    with pytest.raises(CorruptCheckpointError, match=r"m\.ffn\.cov_upper holds NaN"):
        nan.modules["m.ffn"]


def test_a_version_1_file_with_damage_curves_still_reads_and_an_unknown_version_is_refused(tmp_path):
    from clusterprune.io.safetensors import SafetensorsWriter
    from clusterprune.io.stats import STATS_KEY

    m0 = _stats().modules["m.ffn"]
    info = {"count": 30, "stream_variance": 2.5, "fractions": [0.1, 0.2], "damage": [0.01, 0.03]}
    meta = {"modules": {"m.ffn": info}, "source": "src", "digest": "abc", "settings": {}, "version": 1}
    path = tmp_path / "old.safetensors"
    w = SafetensorsWriter(
        path, [("m.ffn.mean", "F64", (4,)), ("m.ffn.cov", "F64", (4, 4))], {STATS_KEY: json.dumps(meta)}
    )
    w.write("m.ffn.mean", m0.mean)
    w.write("m.ffn.cov", m0.cov)
    w.close()
    m = load_stats(path).modules["m.ffn"]
    assert m.mean.tobytes() == m0.mean.tobytes() and m.cov.tobytes() == m0.cov.tobytes() and m.count == 30
    newer = tmp_path / "newer.safetensors"
    w = SafetensorsWriter(newer, [("m.ffn.mean", "F64", (4,))], {STATS_KEY: json.dumps({**meta, "version": 4})})
    w.write("m.ffn.mean", m0.mean)
    w.close()
    with pytest.raises(CorruptCheckpointError, match=r"newer\.safetensors: statistics format version 4 is not one"):
        load_stats(newer)


def test_the_packed_triangle_round_trips_exactly_for_float32_values():
    from clusterprune.io.stats import from_upper_triangle, upper_triangle

    rng = np.random.default_rng(3)
    for n in (1, 2, 7):
        a = rng.standard_normal((n, n)).astype(np.float32).astype(np.float64)
        sym = np.triu(a) + np.triu(a, 1).T
        packed = upper_triangle(sym)
        assert packed.dtype == np.float32 and packed.shape == (n * (n + 1) // 2,)
        assert from_upper_triangle(packed, n).tobytes() == sym.tobytes()


def test_a_failed_save_leaves_nothing(tmp_path, monkeypatch):
    from clusterprune.io import safetensors as st_mod

    def boom(self, name, data):
        raise OSError("disk full")

    monkeypatch.setattr(st_mod.SafetensorsWriter, "write", boom)
    with pytest.raises(OSError):
        _stats().save(tmp_path / "out" / "s.safetensors")
    assert not (tmp_path / "out").exists()


def test_collected_statistics_are_consistent_and_deterministic(trainable, selfgen_stats, tmp_path):
    st = load_stats(selfgen_stats)
    assert set(st.modules) == {"model.encoder.layers.0.ffn", "model.decoder.layers.0.ffn"}
    enc, dec = st.modules["model.encoder.layers.0.ffn"], st.modules["model.decoder.layers.0.ffn"]
    assert enc.count == 2 * 1500  # every encoder frame of both 30 s windows
    assert dec.count >= 2 * 2 * 2  # each sampled transcript: the prompt at least
    for m in (enc, dec):
        assert np.linalg.eigvalsh(m.cov).min() > -1e-6 * max(np.trace(m.cov), 1e-12)
        assert m.stream_variance > 0
    assert st.settings == {"clips": 2, "seed": 0, "decoder_samples": 2, "audio": "synth"}
    # the same command again: byte-identical file
    again = tmp_path / "again.safetensors"
    cmd = [sys.executable, "-m", "clusterprune.cli", "selfgen", str(trainable["whisper"]), str(again)]
    assert subprocess.run([*cmd, "--clips", "2", "--decoder-samples", "2"], capture_output=True).returncode == 0
    assert again.read_bytes() == selfgen_stats.read_bytes()
    # the encoder covariance equals a direct computation on the same synthetic clip
    torch = pytest.importorskip("torch")
    from clusterprune.models.hf import load_model

    model, processor, _ = load_model(trainable["whisper"])
    feats = [
        processor.feature_extractor([synthesize(s, i)], sampling_rate=RATE, return_tensors="pt").input_features
        for i, s in enumerate(clip_lengths(2, 0))
    ]
    layer = model.model.encoder.layers[0]
    acts = []
    hook = layer.fc1.register_forward_hook(lambda _m, _i, out: acts.append(torch.nn.functional.gelu(out)[0]))
    with torch.no_grad():
        for f in feats:
            model.get_encoder()(f)
    hook.remove()
    a = torch.cat(acts).double().numpy()
    np.testing.assert_allclose(enc.mean, a.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(enc.cov, np.cov(a.T, bias=True), rtol=1e-4, atol=1e-6)


def test_selfgen_shares_clips_over_processes_and_writes_the_same_file(trainable, selfgen_stats, tmp_path):
    """torchrun with 2 processes (gloo, one thread each), 3 clips (the last round has one): the
    file is byte-identical to one process's, also with the layer inputs and the output Fisher
    (whose sums are exchanged like a module's); with 2 clips too (the shared fixture's file)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = ["--layer-inputs", "--sensitivity"]
    for clips, options, reference in (("2", [], selfgen_stats), ("3", [], None), ("3", extra, None)):
        out = tmp_path / f"two-{clips}-{len(options)}.safetensors"
        cmd = ["-m", "clusterprune.cli", "selfgen", str(trainable["whisper"]), str(out), *options]
        run = subprocess.run(
            [*launcher, *cmd, "--clips", clips, "--decoder-samples", "2"], env=env, capture_output=True
        )
        assert run.returncode == 0, run.stderr.decode()[-2000:]
        if reference is None:
            reference = tmp_path / f"one-{clips}-{len(options)}.safetensors"
            one = [sys.executable, "-m", "clusterprune.cli", "selfgen", str(trainable["whisper"]), str(reference)]
            assert subprocess.run([*one, *options, "--clips", clips, "--decoder-samples", "2"], env=env).returncode == 0
        assert out.read_bytes() == reference.read_bytes(), (clips, options)
    assert load_stats(out).sensitivity_count == 6  # 3 clips, 2 transcripts each


def test_an_unavailable_device_is_one_line(trainable, tmp_path, capsys):
    from clusterprune import cli

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available here")
    code = cli.main(["selfgen", str(trainable["whisper"]), str(tmp_path / "s.safetensors"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 1 and err == "clusterprune: error: --device cuda: torch sees no CUDA GPU on this machine\n"
    assert not (tmp_path / "s.safetensors").exists()


def test_the_gram_blocks_tile_the_upper_triangle(trainable, selfgen_stats, tmp_path, monkeypatch):
    from clusterprune.activations import collect

    monkeypatch.setattr(collect, "BLOCK", 7)  # several blocks, the last one short
    clusterprune.selfgen(trainable["whisper"], tmp_path / "b.safetensors", clips=2, decoder_samples=2, progress=False)
    ref, got = load_stats(selfgen_stats), load_stats(tmp_path / "b.safetensors")
    for name in ref.modules:
        a, b = ref.modules[name], got.modules[name]
        assert a.count == b.count and a.mean.shape[0] > 7
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(b.cov, a.cov, rtol=1e-4, atol=1e-6 * np.abs(a.cov).max())


def test_compress_reads_statistics_without_torch(trainable, selfgen_stats, tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from clusterprune.cli import main\n"
        f"sys.exit(main(['compress', {str(trainable['whisper'])!r}, {str(tmp_path / 'out')!r}, '--recipe', "
        f"'datafree-selfgen', '--stats', {str(selfgen_stats)!r}, '--sparsity', '0.25', '--quiet']))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    record = clusterprune.inspect(tmp_path / "out")["compression"]
    assert record["recipe"]["activations"] == "selfgen"
    plan = json.loads((tmp_path / "out" / "clusterprune_plan.json").read_text())
    assert plan["activation_stats"]["digest"] == load_stats(selfgen_stats).digest


def test_statistics_must_belong_to_the_weights(trainable, selfgen_stats, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trainable["whisper"], other)
    from clusterprune.io.safetensors import SafetensorsFile

    with SafetensorsFile(other / "model.safetensors") as f:
        names = list(f.tensors)
    assert names
    with open(other / "model.safetensors", "r+b") as fh:  # flip one byte of the weights
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(
        InvalidArgumentError, match=r"w\.stats\.safetensors: the statistics were made from other weights"
    ):
        clusterprune.compress(other, tmp_path / "o", "datafree-selfgen", sparsity=0.2, stats=selfgen_stats)
    with pytest.raises(InvalidArgumentError, match="needs --stats"):
        clusterprune.compress(trainable["whisper"], tmp_path / "o", "datafree-selfgen", sparsity=0.2)
    with pytest.raises(InvalidArgumentError, match="activations selfgen only"):
        clusterprune.compress(trainable["whisper"], tmp_path / "o", "datafree", sparsity=0.2, stats=selfgen_stats)
    assert not (tmp_path / "o").exists()
    assert issubclass(InvalidArgumentError, ClusterpruneError)


def test_selfgen_never_replaces_an_existing_file_without_overwrite(trainable, tmp_path):
    out = tmp_path / "kept.safetensors"
    out.write_bytes(b"not mine to replace")
    from clusterprune.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match=r"kept\.safetensors: already exists \(pass --overwrite"):
        clusterprune.selfgen(trainable["whisper"], out, clips=1, decoder_samples=1)
    assert out.read_bytes() == b"not mine to replace"
    cmd = [sys.executable, "-m", "clusterprune.cli", "selfgen", str(trainable["whisper"]), str(out), "--clips", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 1 and "already exists" in run.stderr and "Traceback" not in run.stderr
    assert out.read_bytes() == b"not mine to replace"
