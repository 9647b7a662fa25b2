"""Where an evaluated model runs: transformers (dense, fused or folded checkpoints) or
CTranslate2 (a directory written by ``clusterprune export-ct2``), with the same decoding: greedy,
no timestamps, every hypothesis cut at its own utterance's length bound."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, InvalidArgumentError, UnsupportedModelError
from ..exporters.ct2 import EXPORT_FILE, is_ct2_dir
from ..io.checkpoint import read_json
from ..io.resolve import resolve_model
from ..models.hf import load_model, torch_device
from ..models.whisper import max_new_tokens
from ..speech import SAMPLE_RATE, Utterance

CT2_COMPUTE_TYPES = (
    "default",
    "auto",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)


class HfRuntime:
    """A dense, fused or folded checkpoint in transformers, on a torch device."""

    name = "transformers"

    def __init__(self, model_dir: Path, device: str, threads: int | None, progress: bool | None = None) -> None:
        import torch

        target = torch_device(device)
        if target.type == "cuda":  # full fp32 on the GPU too, so that GPU and CPU WERs agree
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        if threads:
            torch.set_num_threads(threads)
        model, self.processor, self.family = load_model(model_dir, progress=progress)
        self.model = model.to(target)
        self.device = str(target)
        self.family_name = str(model.config.model_type)
        self.compute_type = "float32"
        torch.manual_seed(0)

    def transcribe(self, batch: list[Utterance], language: str | None, task: str) -> tuple[list[str], list[bool]]:
        return self.family.transcribe(self.model, self.processor, batch, language, task)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_ct2_files(model_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The files a CTranslate2 Whisper directory needs, each present and readable (one line naming
    the first that is not); returns (export record, generation config), empty when absent."""
    for name in ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"):
        if not (model_dir / name).is_file():
            raise CheckpointNotFoundError(f"{model_dir / name}: file not found (a CTranslate2 directory needs it)")
    vocabularies = [model_dir / n for n in ("vocabulary.json", "vocabulary.txt") if (model_dir / n).is_file()]
    if not vocabularies:
        raise CheckpointNotFoundError(
            f"{model_dir / 'vocabulary.json'}: file not found (a CTranslate2 directory needs it)"
        )
    if vocabularies[0].suffix == ".json" and not isinstance(read_json(vocabularies[0]), list):
        raise CorruptCheckpointError(f"{vocabularies[0]}: not a JSON list of tokens")
    out = []
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json", EXPORT_FILE, "generation_config.json"):
        data = read_json(model_dir / name) if (model_dir / name).is_file() else {}
        if not isinstance(data, dict):
            raise CorruptCheckpointError(f"{model_dir / name}: not a JSON object")
        out.append(data)
    record, gen = out[3], out[4]
    bound = record.get("max_target_positions", gen.get("max_length", 448))
    if isinstance(bound, bool) or not isinstance(bound, int) or bound < 8:
        raise CorruptCheckpointError(f"{model_dir / EXPORT_FILE}: max_target_positions {bound!r} is not a length")
    for key in ("lang_to_id", "task_to_id"):
        table = gen.get(key) or {}
        if not isinstance(table, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in table.values()
        ):
            raise CorruptCheckpointError(f"{model_dir / 'generation_config.json'}: {key} is not a table of token ids")
    return record, gen


class Ct2Runtime:
    """A CTranslate2 Whisper directory (``clusterprune export-ct2``) in ctranslate2."""

    name = "ctranslate2"

    def __init__(self, model_dir: Path, device: str, threads: int | None, compute_type: str) -> None:
        try:
            import ctranslate2
            import transformers
        except ImportError as exc:
            raise UnsupportedModelError(
                f"evaluating a CTranslate2 model needs ctranslate2 and transformers (pip install "
                f"'clusterprune[ct2,eval]'): {exc}"
            ) from None
        if compute_type not in CT2_COMPUTE_TYPES:
            raise InvalidArgumentError(f"--compute-type {compute_type!r} is not one of: {', '.join(CT2_COMPUTE_TYPES)}")
        if device not in ("cpu", "cuda", "auto"):
            raise InvalidArgumentError(f"--device {device!r}: CTranslate2 runs on cpu, cuda or auto")
        self.ctranslate2 = ctranslate2
        record, gen = _check_ct2_files(model_dir)
        try:
            self.model = ctranslate2.models.Whisper(
                str(model_dir), device=device, compute_type=compute_type, intra_threads=threads or 0
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise CorruptCheckpointError(
                f"{model_dir / 'model.bin'}: CTranslate2 cannot load it: {_first(exc)}"
            ) from None
        try:
            self.processor = transformers.WhisperProcessor.from_pretrained(model_dir)
        except Exception as exc:  # transformers raises many kinds for damaged tokenizer / feature files
            raise CorruptCheckpointError(
                f"{model_dir}: cannot load the Whisper processor (tokenizer.json, tokenizer_config.json, "
                f"preprocessor_config.json): {_first(exc)}"
            ) from None
        tok = self.processor.tokenizer
        ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|startoftranscript|>", "<|notimestamps|>", "<|endoftext|>")}
        for token, i in ids.items():
            if not isinstance(i, int) or i == tok.unk_token_id and token != tok.unk_token:
                raise CorruptCheckpointError(
                    f"{model_dir / 'tokenizer.json'}: no {token} token: not a Whisper tokenizer"
                )
        self.sot, self.notimestamps, self.eot = ids.values()
        self.lang_to_id: dict[str, int] = gen.get("lang_to_id") or {}
        self.task_to_id: dict[str, int] = gen.get("task_to_id") or {}
        self.max_target = record.get("max_target_positions", gen.get("max_length", 448))
        self.device = device
        self.family_name = "whisper"
        self.compute_type = compute_type

    def _prompt(self, language: str | None, task: str) -> list[int]:
        if not (self.model.is_multilingual and self.lang_to_id):
            return [self.sot, self.notimestamps]
        lang = f"<|{language or 'en'}|>"
        if lang not in self.lang_to_id:
            raise InvalidArgumentError(f"--language {language!r} is not a language of this model")
        if task not in self.task_to_id:
            raise InvalidArgumentError(f"--task {task!r}: the model's generation_config.json has no task_to_id entry")
        return [self.sot, self.lang_to_id[lang], self.task_to_id[task], self.notimestamps]

    def transcribe(self, batch: list[Utterance], language: str | None, task: str) -> tuple[list[str], list[bool]]:
        feats = self.processor.feature_extractor(
            [u.audio for u in batch], sampling_rate=SAMPLE_RATE, return_tensors="np"
        ).input_features
        prompt = self._prompt(language, task)
        limit = self.max_target - 4
        bounds = [max_new_tokens(u.duration, limit) for u in batch]
        results = self.model.generate(
            self.ctranslate2.StorageView.from_array(feats),
            [prompt] * len(batch),
            beam_size=1,
            # CTranslate2's Whisper generates at most max_length // 2 tokens (Whisper's own sample_len):
            # ask for twice the bound, at most the decoder's context (so at most 224 tokens, which
            # only an utterance of over 26 s that loops can reach)
            max_length=min(self.max_target, 2 * max(bounds)),
        )
        rows, hit = [], []
        for r, bound in zip(results, bounds, strict=True):
            text = [t for t in r.sequences_ids[0] if t < self.eot][:bound]
            rows.append(text)
            hit.append(len(text) >= bound)
        return self.processor.tokenizer.batch_decode(rows, skip_special_tokens=True), hit


def open_runtime(
    model_dir: str | os.PathLike[str],
    *,
    device: str = "cpu",
    threads: int | None = None,
    compute_type: str | None = None,
    progress: bool | None = None,
) -> HfRuntime | Ct2Runtime:
    """The runtime a model directory needs: CTranslate2 for an exported directory, else transformers."""
    path = resolve_model(model_dir)
    if is_ct2_dir(path):
        return Ct2Runtime(path, device, threads, compute_type or "default")
    if compute_type not in (None, "float32"):
        raise InvalidArgumentError(
            f"--compute-type {compute_type} applies to CTranslate2 models (export one with clusterprune export-ct2)"
        )
    return HfRuntime(path, device, threads, progress)
