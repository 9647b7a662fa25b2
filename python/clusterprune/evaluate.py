"""Word error rate of a checkpoint (dense, fused or folded) on local speech data.

Whisper: greedy decoding with transformers' ``generate`` (English transcription by default for
multilingual checkpoints), generation length bounded by the audio's duration so that a damaged
decoder that loops cannot stall an evaluation. HuBERT / wav2vec2 CTC: argmax decoding through the
processor. References and hypotheses go through Whisper's English text normaliser before jiwer.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import read_json
from .data import SAMPLE_RATE, Utterance, load_utterances
from .errors import InvalidArgumentError, UnsupportedModelError
from .progress import Progress

TOKENS_PER_SECOND = 8  # LibriSpeech speech is ~3 words/s, ~4 tokens/s: twice that is a safe bound
TOKEN_MARGIN = 16


def max_new_tokens(duration: float, limit: int) -> int:
    """Generation bound for an utterance of ``duration`` seconds."""
    return max(1, min(limit, int(math.ceil(duration * TOKENS_PER_SECOND)) + TOKEN_MARGIN))


def _normalizer() -> Any:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def load_model(model_dir: str | os.PathLike[str]) -> tuple[Any, Any, str]:
    """(model, processor, family) for a dense, fused or folded checkpoint."""
    import transformers

    from .pipeline import FOLDED_KEY

    path = Path(model_dir)
    config = read_json(path / "config.json")
    family = config.get("model_type")
    if family == "whisper":
        processor = transformers.WhisperProcessor.from_pretrained(path)
        cls = transformers.WhisperForConditionalGeneration
    elif family in ("hubert", "wav2vec2"):
        processor = transformers.AutoProcessor.from_pretrained(path)
        cls = transformers.AutoModelForCTC
    else:
        raise UnsupportedModelError(
            f"{path / 'config.json'}: model_type {family!r} cannot be evaluated (whisper, hubert, wav2vec2)"
        )
    if FOLDED_KEY in config:
        from .folded import load_folded

        model = load_folded(path)
    else:
        model = cls.from_pretrained(path, dtype="float32")
    return model.float().eval(), processor, family


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers warns on every batch that max_new_tokens overrides the config's max_length
    (intended: the duration bound) and that Whisper's 30 s inputs carry no attention mask (none is
    needed); silence its logger during generation only."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def torch_device(device: str) -> Any:
    """A torch device, with a clear error when it is unknown or not available here."""
    import torch

    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"--device {device}: torch sees no CUDA GPU on this machine")
    return target


def _whisper_batch(
    model: Any, processor: Any, batch: list[Utterance], language: str | None, task: str
) -> tuple[list[str], list[bool]]:
    import torch

    feats = processor.feature_extractor(
        [u.audio for u in batch], sampling_rate=SAMPLE_RATE, return_tensors="pt"
    ).input_features.to(model.device)
    limit = model.config.max_target_positions - 4
    bound = max(max_new_tokens(u.duration, limit) for u in batch)
    gen = copy.deepcopy(model.generation_config)
    gen.max_length = None  # the bound below is the only length limit (and no warning about two)
    gen.max_new_tokens, gen.do_sample, gen.num_beams = bound, False, 1
    kwargs: dict[str, Any] = {}
    if getattr(gen, "is_multilingual", False):
        kwargs.update(language=language or "en", task=task)
    with torch.no_grad(), _quiet_transformers():
        out = model.generate(feats, generation_config=gen, **kwargs)
    sequences = (out.sequences if hasattr(out, "sequences") else out).cpu().tolist()
    eot = model.generation_config.eos_token_id
    # Whisper's text tokens are exactly the ids below <|endoftext|>. Every hypothesis is cut at its
    # own utterance's bound, so results do not depend on which utterances share a batch; an
    # utterance hit its bound when it produced as many text tokens as its duration allows.
    rows, hit = [], []
    for row, u in zip(sequences, batch, strict=True):
        bound_u = max_new_tokens(u.duration, limit)
        text_positions = [i for i, t in enumerate(row) if t < eot]
        if len(text_positions) > bound_u:
            row = row[: text_positions[bound_u]]
        rows.append(row)
        hit.append(len(text_positions) >= bound_u)
    texts = processor.tokenizer.batch_decode(rows, skip_special_tokens=True)
    return texts, hit


def _ctc_batch(model: Any, processor: Any, batch: list[Utterance]) -> tuple[list[str], list[bool]]:
    import torch

    inputs = processor([u.audio for u in batch], sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
    mask = inputs.get("attention_mask")
    with torch.no_grad():
        logits = model(
            inputs.input_values.to(model.device), attention_mask=None if mask is None else mask.to(model.device)
        ).logits
    ids = torch.argmax(logits, dim=-1).cpu()
    return processor.batch_decode(ids), [False] * len(batch)


def evaluate(
    model_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    subset: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    language: str | None = None,
    task: str = "transcribe",
    progress: bool | None = None,
    utterances: list[Utterance] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """WER and friends as a JSON-ready dict (see README: wer, substitutions, deletions,
    insertions, num_utterances, utterances, real_time_factor, hit_length_bound).
    ``device``: where the model runs (a torch device string: cpu, cuda, cuda:1, ...)."""
    import jiwer
    import torch

    if batch_size < 1:
        raise InvalidArgumentError(f"--batch-size {batch_size} must be >= 1")
    if task not in ("transcribe", "translate"):
        raise InvalidArgumentError(f"--task {task!r} must be transcribe or translate")
    target = torch_device(device)
    if target.type == "cuda":  # full fp32 on the GPU too, so that GPU and CPU WERs agree
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    utts = utterances if utterances is not None else load_utterances(data, subset, limit)
    model, processor, family = load_model(model_dir)
    model = model.to(target)
    torch.manual_seed(0)
    norm = _normalizer()
    hyps: list[str] = []
    hits: list[bool] = []
    order = sorted(range(len(utts)), key=lambda i: utts[i].duration)  # similar lengths batch together
    bar = Progress(len(order), "eval", progress)
    start = time.monotonic()
    results: dict[int, tuple[str, bool]] = {}
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        batch = [utts[i] for i in idx]
        if family == "whisper":
            texts, hit = _whisper_batch(model, processor, batch, language, task)
        else:
            texts, hit = _ctc_batch(model, processor, batch)
        for i, t, h in zip(idx, texts, hit, strict=True):
            results[i] = (t.strip(), h)
            bar.update(utts[i].id)
    seconds = time.monotonic() - start
    hyps = [results[i][0] for i in range(len(utts))]
    hits = [results[i][1] for i in range(len(utts))]
    refs_n = [norm(u.text) for u in utts]
    hyps_n = [norm(h) for h in hyps]
    scored = [i for i, r in enumerate(refs_n) if r.strip()]
    out = jiwer.process_words([refs_n[i] for i in scored], [hyps_n[i] for i in scored])
    words = out.hits + out.substitutions + out.deletions
    audio = float(np.sum([u.duration for u in utts]))
    return {
        "model": str(model_dir),
        "family": family,
        "data": str(data),
        "subset": subset,
        "wer": out.wer,
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "reference_words": words,
        "num_utterances": len(utts),
        "hit_length_bound": int(sum(hits)),
        "audio_seconds": audio,
        "decode_seconds": seconds,
        "device": str(target),
        "real_time_factor": seconds / audio if audio else 0.0,
        "utterances": [
            {"id": u.id, "reference": u.text, "hypothesis": h, "hit_length_bound": hit}
            for u, h, hit in zip(utts, hyps, hits, strict=True)
        ],
    }
