"""Where an evaluated model runs: transformers (dense, fused or folded checkpoints) or
CTranslate2 (a directory written by ``clusterprune export-ct2``), with the same decoding: greedy,
no timestamps, every hypothesis cut at its own utterance's length bound."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CorruptCheckpointError, InvalidArgumentError, UnsupportedModelError
from ..exporters.ct2 import EXPORT_FILE, is_ct2_dir
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
        try:
            self.model = ctranslate2.models.Whisper(
                str(model_dir), device=device, compute_type=compute_type, intra_threads=threads or 0
            )
            self.processor = transformers.WhisperProcessor.from_pretrained(model_dir)
        except (RuntimeError, ValueError, OSError) as exc:
            raise CorruptCheckpointError(f"{model_dir}: cannot load the CTranslate2 model: {exc}") from None
        record = json.loads((model_dir / EXPORT_FILE).read_text()) if (model_dir / EXPORT_FILE).is_file() else {}
        gen_path = model_dir / "generation_config.json"
        gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
        tok = self.processor.tokenizer
        self.sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
        self.notimestamps = tok.convert_tokens_to_ids("<|notimestamps|>")
        self.eot = tok.convert_tokens_to_ids("<|endoftext|>")
        self.lang_to_id: dict[str, int] = gen.get("lang_to_id") or {}
        self.task_to_id: dict[str, int] = gen.get("task_to_id") or {}
        self.max_target = int(record.get("max_target_positions", gen.get("max_length", 448)))
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
