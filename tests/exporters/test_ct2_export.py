"""export-ct2: the CTranslate2 model computes what the Hugging Face model computes (identical
greedy transcripts on real speech for dense, fused and folded tiny.en, heads removed included),
loads in faster-whisper offline, is smaller when the checkpoint is, and every bad input is one
line with nothing left behind."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from clusterprune import cli
from clusterprune.errors import OutputExistsError, UnsupportedModelError
from conftest import LIBRISPEECH, needs_data, needs_package

torch = pytest.importorskip("torch")
ctranslate2 = pytest.importorskip("ctranslate2")
pytest.importorskip("jiwer")

from clusterprune.evaluation.data import load_utterances  # noqa: E402
from clusterprune.evaluation.evaluate import evaluate  # noqa: E402
from clusterprune.exporters.ct2 import export_ct2  # noqa: E402


@pytest.fixture(scope="module")
def speech():
    return load_utterances(LIBRISPEECH, "test-other", 6) if LIBRISPEECH.is_dir() else None


def hypotheses(model, speech, **kw):
    return [u["hypothesis"] for u in evaluate(model, None, utterances=speech, progress=False, **kw)["utterances"]]


@needs_package
@needs_data
@pytest.mark.parametrize(
    "args",
    [
        None,  # dense
        ["--recipe", "paper", "--sparsity", "0.05"],  # fused k-means
        ["--sparsity", "0.1", "--export", "folded"],  # folded FFN widths (the default recipe)
        ["--recipe", "paper", "--sparsity", "0.2", "--export", "folded"],  # heads removed: padded back
    ],
)
def test_fp32_export_transcribes_exactly_as_the_hf_model(tiny_en, tmp_path, speech, args):
    model = tiny_en
    if args is not None:
        model = tmp_path / "c"
        assert cli.main(["compress", str(tiny_en), str(model), "--quiet", *args]) == 0
    assert cli.main(["export-ct2", str(model), str(tmp_path / "ct2"), "--quantization", "float32"]) == 0
    assert hypotheses(tmp_path / "ct2", speech, compute_type="float32") == hypotheses(model, speech)


def test_zero_heads_put_back_for_ctranslate2_keep_the_function(trainable, tmp_path):
    folded = tmp_path / "folded"
    assert (
        cli.main(
            [
                "compress",
                str(trainable["whisper"]),
                str(folded),
                "--recipe",
                "paper",
                "--sparsity",
                "0.5",
                "--export",
                "folded",
                "--quiet",
            ]
        )
        == 0
    )
    record = export_ct2(folded, tmp_path / "ct2", quantization="float32")
    assert record["padded_heads"], "the plan should have removed heads"
    from clusterprune import load_folded

    hf = load_folded(folded)
    feats = np.random.default_rng(0).standard_normal((1, hf.config.num_mel_bins, 2 * hf.config.max_source_positions))
    feats = feats.astype(np.float32)
    with torch.no_grad():
        want = hf.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    ct = ctranslate2.models.Whisper(str(tmp_path / "ct2"), device="cpu", compute_type="float32")
    got = np.array(ct.encode(ctranslate2.StorageView.from_array(feats)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@needs_package
@needs_data
def test_faster_whisper_loads_the_int8_export_offline(tiny_en, tmp_path, monkeypatch):
    faster_whisper = pytest.importorskip("faster_whisper")
    model = tmp_path / "c"
    assert cli.main(["compress", str(tiny_en), str(model), "--sparsity", "0.1", "--export", "folded", "--quiet"]) == 0
    dense8 = export_ct2(tiny_en, tmp_path / "dense8", quantization="int8")
    small8 = export_ct2(model, tmp_path / "small8", quantization="int8")
    assert small8["model_bin_bytes"] < dense8["model_bin_bytes"]  # fewer FFN neurons, same dtypes elsewhere
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fw = faster_whisper.WhisperModel(str(tmp_path / "small8"), device="cpu", compute_type="int8")
    flac = next((LIBRISPEECH / "test-clean").rglob("*.flac"))
    segments, _ = fw.transcribe(str(flac), beam_size=1)
    assert len(" ".join(s.text for s in segments).split()) >= 5
    info = json.loads(os.popen(f"{os.sys.executable} -m clusterprune.cli inspect {tmp_path / 'small8'} --json").read())
    assert info["format"] == "ctranslate2" and info["compression"]["recipe"]["name"] == "datafree"


def test_bad_exports_are_one_line_and_leave_nothing(checkpoints, trainable, tmp_path, capsys):
    def fails(args, message, code=1):
        got = cli.main([str(a) for a in args])
        err = capsys.readouterr().err
        assert got == code and err.count("\n") == 1 and message in err, err

    fails(["export-ct2", checkpoints["hubert"], tmp_path / "o"], "CTranslate2 has no HuBERT loader")
    fails(["export-ct2", checkpoints["whisper"], tmp_path / "o"], "tokenizer.json: file not found")
    with pytest.raises(SystemExit):
        cli.main(["export-ct2", str(trainable["whisper"]), str(tmp_path / "o"), "--quantization", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    with pytest.raises(UnsupportedModelError, match="unknown quantization 'int4'"):
        export_ct2(trainable["whisper"], tmp_path / "o", quantization="int4")
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExistsError, match="already exists"):
        export_ct2(trainable["whisper"], tmp_path / "taken")
    broken = tmp_path / "broken"
    shutil.copytree(trainable["whisper"], broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:-64])
    fails(["export-ct2", broken, tmp_path / "o"], "truncated file")
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@needs_package
@needs_data
def test_sweep_evaluates_every_cell_in_ctranslate2(tiny_en, tmp_path, capsys):
    from conftest import librispeech_copy

    data = librispeech_copy(tmp_path, n=2)
    args = [
        "sweep",
        str(tiny_en),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "s"),
        "--sparsities",
        "0.1",
        "--methods",
        "datafree",
        "--allocations",
        "recipe",
        "--runtime",
        "ct2",
        "--compute-type",
        "int8",
    ]
    assert cli.main(args) == 0
    rows = json.loads((tmp_path / "s" / "results.json").read_text())
    assert {r["method"] for r in rows} == {"dense", "datafree"}
    assert all(r["data_key"]["runtime"] == "ct2" and r["data_key"]["compute_type"] == "int8" for r in rows)


def test_export_needs_no_torch(trainable, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\nsys.modules['torch'] = None\nsys.modules['transformers'] = None\n"
        "from clusterprune.exporters.ct2 import export_ct2\n"
        f"r = export_ct2({str(trainable['whisper'])!r}, {str(tmp_path / 'o')!r}, quantization='int8')\n"
        "print(r['model_bin_bytes'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == (tmp_path / "o" / "model.bin").stat().st_size
