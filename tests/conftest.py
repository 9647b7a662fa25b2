"""Shared fixtures: tiny randomly initialised Whisper and HuBERT checkpoints saved by transformers."""

from __future__ import annotations

import shutil
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
