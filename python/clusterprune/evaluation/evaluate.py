"""Word error rate of a checkpoint (dense, fused or folded) on local speech data.

The model's family decodes (Whisper: greedy, generation bounded by the audio's duration so that
a damaged decoder that loops cannot stall an evaluation; HuBERT / wav2vec2: CTC argmax).
References and hypotheses go through Whisper's English text normaliser before jiwer.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..progress import Progress
from ..speech import Utterance
from .data import load_utterances
from .runtimes import open_runtime


def _normalizer() -> Any:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


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
    compute_type: str | None = None,
    threads: int | None = None,
    shared: bool = False,
) -> dict[str, Any]:
    """WER and friends as a JSON-ready dict (docs/guide/eval.md: wer, substitutions, deletions,
    insertions, num_utterances, utterances, real_time_factor, hit_length_bound).
    ``device``: where the model runs (a torch device string: cpu, cuda, cuda:1, ...; for a
    CTranslate2 directory cpu or cuda). ``compute_type`` (CTranslate2: int8, float32, ...) and
    ``threads`` pick how it runs; a directory written by export-ct2 runs in CTranslate2.
    ``shared``: under torchrun (WORLD_SIZE > 1), every process calls this and the batches are shared
    out (batch j on process j mod W, the batches one process would make); every process gets the
    whole result, the same hypotheses as one process."""
    import jiwer

    if batch_size < 1:
        raise InvalidArgumentError(f"--batch-size {batch_size} must be >= 1")
    if task not in ("transcribe", "translate"):
        raise InvalidArgumentError(f"--task {task!r} must be transcribe or translate")
    if threads is not None and threads < 1:
        raise InvalidArgumentError(f"--threads {threads} must be >= 1")
    from ..distributed import init_distributed

    dist, target = init_distributed(device) if shared and os.environ.get("WORLD_SIZE", "1") != "1" else (None, None)
    shown = progress if dist is None or dist.main else False  # under torchrun, process 0's bars only
    # a broken model fails before the audio is decoded
    runtime = open_runtime(
        model_dir,
        device=str(target) if target is not None else device,
        threads=threads,
        compute_type=compute_type,
        progress=shown,
    )
    utts = utterances if utterances is not None else load_utterances(data, subset, limit)
    norm = _normalizer()
    order = sorted(range(len(utts)), key=lambda i: utts[i].duration)  # similar lengths batch together
    batches = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    # under torchrun: batch j on process j mod W (the batches of one process), hypotheses gathered
    mine = batches if dist is None else batches[dist.rank :: dist.world]
    bar = Progress(sum(map(len, mine)), "eval", shown)
    start = time.monotonic()
    results: dict[int, tuple[str, bool]] = {}
    for idx in mine:
        batch = [utts[i] for i in idx]
        texts, hit = runtime.transcribe(batch, language, task)
        for i, t, h in zip(idx, texts, hit, strict=True):
            results[i] = (t.strip(), h)
            bar.update(utts[i].id)
    if dist is not None and dist.world > 1:
        import torch.distributed as tdist

        gathered: list[Any] = [None] * dist.world
        tdist.all_gather_object(gathered, results)
        results = {i: r for part in gathered for i, r in part.items()}
    seconds = time.monotonic() - start
    hyps = [results[i][0] for i in range(len(utts))]
    hits = [results[i][1] for i in range(len(utts))]
    scored = _scored(norm, [u.text for u in utts], hyps)
    out = jiwer.process_words([r for r, _ in scored.values()], [h for _, h in scored.values()])
    words = out.hits + out.substitutions + out.deletions
    audio = float(np.sum([u.duration for u in utts]))
    return {
        "model": str(model_dir),
        "family": runtime.family_name,
        "runtime": runtime.name,
        "compute_type": runtime.compute_type,
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
        "device": runtime.device,
        "real_time_factor": seconds / audio if audio else 0.0,
        "utterances": [
            {"id": u.id, "reference": u.text, "hypothesis": h, "hit_length_bound": hit}
            for u, h, hit in zip(utts, hyps, hits, strict=True)
        ],
    }


def utterance_errors(result: dict[str, Any]) -> dict[str, int]:
    """Word errors (substitutions + deletions + insertions) of every utterance of an
    :func:`evaluate` result, through the same normaliser; they sum to the result's totals."""
    import jiwer

    utts = result["utterances"]
    scored = _scored(_normalizer(), [u["reference"] for u in utts], [u["hypothesis"] for u in utts])
    errors: dict[str, int] = {}
    for i, (ref, hyp) in scored.items():
        out = jiwer.process_words(ref, hyp)
        errors[utts[i]["id"]] = out.substitutions + out.deletions + out.insertions
    return errors


def _scored(norm: Any, references: list[str], hypotheses: list[str]) -> dict[int, tuple[str, str]]:
    """The normalised (reference, hypothesis) of every scored utterance, by index: those whose
    normalised reference is not empty."""
    pairs = {i: (norm(r), norm(h)) for i, (r, h) in enumerate(zip(references, hypotheses, strict=True))}
    return {i: pair for i, pair in pairs.items() if pair[0].strip()}
