"""`clusterprune finetune`: short supervised fine-tuning that keeps the compression.

Whisper: cross-entropy on the transcript tokens with teacher forcing. HuBERT / wav2vec2: CTC loss,
feature encoder frozen by default. One process or many through PyTorch DDP: launch the same
command with ``torchrun --nproc_per_node N`` (or ``accelerate launch``); every process reads the
same data, takes its share of each global batch and the gradients are all-reduced. The loss of a
step is the sum of the per-token losses of the global batch divided by its number of target tokens
whatever the number of processes and of accumulation steps, so one and many processes compute the
same update.

While training, ``OUT.partial/`` holds ``state.pt`` (model, optimizer, schedule, step, RNG) written
atomically every ``save_every`` steps and ``log.jsonl``; ``--resume`` continues from it. At the end
the checkpoint is written to a temporary directory and renamed to ``OUT`` (same kind as the input:
folded, fused or dense, same tensor names and dtypes), with ``finetune_log.jsonl`` and
``finetune_report.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .checkpoint import Checkpoint
from .data import SAMPLE_RATE, Utterance, load_utterances
from .errors import InvalidArgumentError, OutputExistsError
from .pipeline import _check_destination, _publish, copy_aux_files
from .progress import Progress
from .safetensors_io import SafetensorsWriter, from_f32
from .structure import Projector, Structure, read_structure, require_structure

PARTIAL_SUFFIX = ".partial"
STATE_FILE = "state.pt"
LOG_FILE = "log.jsonl"
FINETUNE_KEY = "clusterprune_finetune"
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 16  # global: across processes and accumulation steps
    grad_accum: int = 1
    max_steps: int | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    save_every: int = 100
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on the CPU
    freeze_feature_encoder: bool = True
    preserve: bool = True
    max_grad_norm: float = 1.0

    def validate(self) -> FinetuneConfig:
        if not (isinstance(self.epochs, int) and 1 <= self.epochs <= 1000):
            raise InvalidArgumentError(f"--epochs {self.epochs} must be an integer in [1, 1000]")
        if not (0.0 < self.lr <= 1.0) or math.isnan(self.lr):
            raise InvalidArgumentError(f"--lr {self.lr} must be in (0, 1]")
        if self.batch_size < 1:
            raise InvalidArgumentError(f"--batch-size {self.batch_size} must be >= 1")
        if self.grad_accum < 1:
            raise InvalidArgumentError(f"--grad-accum {self.grad_accum} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise InvalidArgumentError(f"--max-steps {self.max_steps} must be >= 1")
        if not (0.0 <= self.weight_decay < 1.0):
            raise InvalidArgumentError(f"--weight-decay {self.weight_decay} must be in [0, 1)")
        if not (0.0 <= self.warmup_ratio < 1.0):
            raise InvalidArgumentError(f"--warmup-ratio {self.warmup_ratio} must be in [0, 1)")
        if self.save_every < 1:
            raise InvalidArgumentError(f"--save-every {self.save_every} must be >= 1")
        if self.seed < 0:
            raise InvalidArgumentError(f"--seed {self.seed} must be >= 0")
        if self.precision not in PRECISIONS:
            raise InvalidArgumentError(f"--precision {self.precision!r} must be one of {', '.join(PRECISIONS)}")
        if not (self.max_grad_norm > 0):
            raise InvalidArgumentError(f"--max-grad-norm {self.max_grad_norm} must be > 0")
        return self


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly one-process) DDP run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> tuple[Dist, Any]:
    """Joins the process group when launched by torchrun / accelerate (WORLD_SIZE > 1)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), torch.device(device)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device(device)
    if target.type == "cuda":
        target = torch.device("cuda", local)
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return Dist(rank, world, local), target


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _whisper_text(text: str) -> str:
    """LibriSpeech transcripts are upper case without punctuation; Whisper writes sentence case."""
    text = " ".join(text.split())
    return text.lower().capitalize() if text.isupper() else text


class Batcher:
    """Turns utterances into model inputs and per-token targets for one family."""

    def __init__(self, family: str, processor: Any, max_tokens: int | None = None) -> None:
        self.family, self.processor, self.max_tokens = family, processor, max_tokens

    def targets(self, utt: Utterance) -> list[int]:
        if self.family == "whisper":  # the decoder's positions bound the transcript
            return list(self.processor.tokenizer(_whisper_text(utt.text)).input_ids)[: self.max_tokens]
        return list(self.processor.tokenizer(utt.text).input_ids)

    def count(self, utts: list[Utterance]) -> int:
        """Target tokens of a batch (the loss normaliser)."""
        if self.family == "whisper":
            return sum(len(self.targets(u)) - 1 for u in utts)
        return sum(len(self.targets(u)) for u in utts)

    def loss_sum(self, model: Any, utts: list[Utterance], device: Any, autocast: Any) -> Any:
        """Sum of the per-token losses of ``utts``."""
        import torch
        import torch.nn.functional as F

        ids = [self.targets(u) for u in utts]
        if self.family == "whisper":
            feats = self.processor.feature_extractor(
                [u.audio for u in utts], sampling_rate=SAMPLE_RATE, return_tensors="pt"
            ).input_features.to(device)
            width = max(len(t) for t in ids) - 1
            dec = torch.full((len(ids), width), self.processor.tokenizer.eos_token_id or 0, dtype=torch.long)
            lab = torch.full((len(ids), width), -100, dtype=torch.long)
            for i, t in enumerate(ids):
                dec[i, : len(t) - 1] = torch.tensor(t[:-1])
                lab[i, : len(t) - 1] = torch.tensor(t[1:])
            with autocast:
                logits = model(input_features=feats, decoder_input_ids=dec.to(device)).logits
            return F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                lab.to(device).reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
        inputs = self.processor([u.audio for u in utts], sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        mask = inputs.get("attention_mask")
        with autocast:
            logits = model(
                inputs.input_values.to(device), attention_mask=None if mask is None else mask.to(device)
            ).logits
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        base = model.module if hasattr(model, "module") else model
        if mask is None:
            in_len = torch.full((len(utts),), logits.shape[1], dtype=torch.long)
        else:
            in_len = base._get_feat_extract_output_lengths(mask.sum(-1)).long()
        targets = torch.tensor([t for seq in ids for t in seq], dtype=torch.long)
        tgt_len = torch.tensor([len(t) for t in ids], dtype=torch.long)
        return F.ctc_loss(
            log_probs,
            targets.to(device),
            in_len.to(device),
            tgt_len.to(device),
            blank=base.config.pad_token_id,
            reduction="sum",
            zero_infinity=True,
        )


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


def _global_batch(n: int, cfg: FinetuneConfig, step: int) -> list[int]:
    per_epoch = math.ceil(n / cfg.batch_size)
    epoch, b = divmod(step, per_epoch)
    order = _epoch_order(n, cfg.seed, epoch)
    return [int(i) for i in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]


def _save_state(path: Path, payload: dict[str, Any]) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


WEIGHT_NORM_ALIASES = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}


def _state_key(name: str, state: dict[str, Any]) -> str | None:
    """The model's state-dict key of a checkpoint tensor (weight-norm tensors are stored as
    weight_g / weight_v by older writers and named parametrizations.weight.* by torch)."""
    if name in state:
        return name
    for old, new in WEIGHT_NORM_ALIASES.items():
        if name.endswith(old) and name[: -len(old)] + new in state:
            return name[: -len(old)] + new
        if name.endswith(new) and name[: -len(new)] + old in state:
            return name[: -len(new)] + old
    return None


def _write_checkpoint(src: Checkpoint, model: Any, tmp: Path, record: dict[str, Any]) -> None:
    """The trained weights under the input's tensor names, dtypes and file layout; the input's
    file metadata (the clusterprune plan of a fused checkpoint) is kept."""
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    copy_aux_files(src, tmp)
    for fname, f in src.files.items():
        names = [n for n in src.names() if src.where[n] == fname]
        shapes = {n: src.info(n).shape for n in names}
        entries = [(n, src.info(n).dtype, shapes[n]) for n in names]
        metadata = {**f.metadata, "format": f.metadata.get("format", "pt"), FINETUNE_KEY: json.dumps(record)}
        writer = SafetensorsWriter(tmp / fname, entries, metadata)
        try:
            for n in names:
                key = _state_key(n, state)
                if key is not None:
                    value = np.ascontiguousarray(state[key], dtype=np.float32).reshape(shapes[n])
                    writer.write(n, from_f32(value, src.info(n).dtype))
                else:  # buffers or tied weights the model does not list: unchanged
                    writer.write(n, src.raw_bytes(n))
            writer.close()
        except BaseException:
            writer.abort()
            raise


def finetune(
    model_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: FinetuneConfig = FinetuneConfig(),
    *,
    subset: str | None = None,
    limit: int | None = None,
    eval_data: str | os.PathLike[str] | None = None,
    eval_subset: str | None = None,
    eval_limit: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool | None = None,
    on_step: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tunes ``model_dir`` on ``data``; returns the report (see the module docstring)."""
    import torch

    from .evaluate import evaluate, load_model, torch_device

    cfg = config.validate()
    src_path, out = Path(model_dir), Path(out)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    torch_device(device)
    dist, target = _init_distributed(device)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    if partial.exists() and not (resume or overwrite):
        raise OutputExistsError(
            f"{partial}: a previous run left its state here; pass --resume to continue it or --overwrite to start over"
        )
    if resume and not (partial / STATE_FILE).is_file():
        raise InvalidArgumentError(f"--resume: {partial / STATE_FILE} not found (nothing to resume)")
    _barrier(dist)  # every process has checked the output paths before the first one writes
    src = Checkpoint(src_path)
    try:
        _check_destination(src.path, out, True)
        structure = read_structure(src)
        require_structure(structure, cfg.preserve, str(src.path))
        if not cfg.preserve:
            structure = Structure("dense")
        train = load_utterances(data, subset, limit)
        model, processor, family = load_model(src_path)
        model = model.to(target).train()
        if family != "whisper" and cfg.freeze_feature_encoder and hasattr(model, "freeze_feature_encoder"):
            model.freeze_feature_encoder()
        projector = Projector(structure, model)
        projector.project_weights()  # a no-op on an intact checkpoint; it defines the tied copy
        batcher = Batcher(family, processor, getattr(model.config, "max_target_positions", None))
        params = [p for p in model.parameters() if p.requires_grad]
        optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        per_epoch = math.ceil(len(train) / cfg.batch_size)
        total = cfg.max_steps or cfg.epochs * per_epoch
        warmup = max(1, int(cfg.warmup_ratio * total)) if cfg.warmup_ratio > 0 else 0
        sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: _schedule(s, total, warmup))
        wrapped = model
        if dist.world > 1:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[target.index] if target.type == "cuda" else None
            )
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and target.type == "cuda")
        step = 0
        torch.manual_seed(cfg.seed + dist.rank)
        if resume:
            state = torch.load(partial / STATE_FILE, map_location=target, weights_only=False)
            if state.get("config") != asdict(cfg) or state.get("world") != dist.world:
                raise InvalidArgumentError(
                    f"--resume: {partial / STATE_FILE} was written by a run with other options or process count"
                )
            model.load_state_dict(state["model"])
            optim.load_state_dict(state["optim"])
            sched.load_state_dict(state["sched"])
            step = int(state["step"])
            _set_rng(state["rng"][dist.rank])
            if dist.main:  # steps after the saved one were lost with the killed run: they will rerun
                kept = [
                    line
                    for line in (partial / LOG_FILE).read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= step
                ]
                (partial / LOG_FILE).write_text("".join(f"{line}\n" for line in kept))
        elif dist.main:
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
            (partial / LOG_FILE).write_text("")
        _barrier(dist)
        report: dict[str, Any] = {
            "model": str(src_path),
            "structure": structure.describe(),
            "family": family,
            "train_utterances": len(train),
            "config": asdict(cfg),
            "processes": dist.world,
            "device": str(target),
            "total_steps": total,
            "precision": "bf16" if use_bf16 else "fp32",
        }
        before = partial / "wer_before.json"
        if eval_data is not None and dist.main:
            if not before.is_file():
                wer = evaluate(
                    src_path, eval_data, subset=eval_subset, limit=eval_limit, device=str(target), progress=False
                )
                before.write_text(json.dumps(wer["wer"]))
            report["wer_before"] = json.loads(before.read_text())
            log(f"WER before fine-tuning: {100 * report['wer_before']:.2f} %")
        bar = Progress(total, "finetune", progress if dist.main else False)
        bar.done = step
        started = time.monotonic()
        autocast = torch.autocast(target.type, dtype=torch.bfloat16, enabled=use_bf16)
        while step < total:
            t0 = time.monotonic()
            batch = _global_batch(len(train), cfg, step)
            utts = [train[i] for i in batch]
            norm = batcher.count(utts)
            mine = utts[dist.rank :: dist.world]
            chunks = [mine[i :: cfg.grad_accum] for i in range(cfg.grad_accum)]
            chunks = [c for c in chunks if c]
            optim.zero_grad(set_to_none=True)
            loss_total = 0.0
            for j, chunk in enumerate(chunks):
                sync = j == len(chunks) - 1
                ctx = wrapped.no_sync() if (dist.world > 1 and not sync) else _null()
                with ctx:
                    loss = batcher.loss_sum(wrapped, chunk, target, autocast) * (dist.world / max(norm, 1))
                    loss.backward()
                loss_total += float(loss.detach()) / dist.world
            if not chunks and dist.world > 1:  # this rank got no utterance of a short last batch
                loss = sum(p.sum() * 0.0 for p in params)
                loss.backward()
            if dist.world > 1:
                loss_total = _all_sum(loss_total, target)
            projector.project_grads()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            lr_used = sched.get_last_lr()[0]
            optim.step()
            sched.step()
            projector.project_weights()
            step += 1
            seconds = time.monotonic() - t0
            entry = {
                "step": step,
                "epoch": (step - 1) // per_epoch,
                "loss": loss_total,
                "lr": lr_used,
                "grad_norm": grad_norm,
                "utterances_per_s": len(utts) / seconds if seconds > 0 else 0.0,
                "audio_s_per_s": sum(u.duration for u in utts) / seconds if seconds > 0 else 0.0,
            }
            if dist.main:
                with open(partial / LOG_FILE, "a") as fh:
                    fh.write(json.dumps(entry) + "\n")
                bar.update(f"loss {loss_total:.3f} {entry['utterances_per_s']:.1f} utt/s")
            if step % cfg.save_every == 0 or step == total:
                if dist.main:
                    rng = [_rng_state()]
                    if dist.world > 1:
                        rng = _gather_rng(dist)
                    _save_state(
                        partial / STATE_FILE,
                        {
                            "model": model.state_dict(),
                            "optim": optim.state_dict(),
                            "sched": sched.state_dict(),
                            "step": step,
                            "rng": rng,
                            "config": asdict(cfg),
                            "world": dist.world,
                        },
                    )
                elif dist.world > 1:
                    _gather_rng(dist)
            if on_step is not None:
                on_step(step, loss_total)
        report["train_seconds"] = time.monotonic() - started
        if dist.main:
            losses = [json.loads(line) for line in (partial / LOG_FILE).read_text().splitlines() if line.strip()]
            report["first_loss"] = losses[0]["loss"] if losses else None
            report["last_loss"] = losses[-1]["loss"] if losses else None
            record = {"version": __version__, "config": asdict(cfg), "steps": total, "data": str(data)}
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
            try:
                _write_checkpoint(src, model, tmp, record)
                shutil.copy2(partial / LOG_FILE, tmp / "finetune_log.jsonl")
                (tmp / "finetune_report.json").write_text(json.dumps(report, indent=2))
                _publish(tmp, out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if eval_data is not None:
                report["wer_after"] = evaluate(
                    out, eval_data, subset=eval_subset, limit=eval_limit, device=str(target), progress=False
                )["wer"]
                log(f"WER after fine-tuning: {100 * report['wer_after']:.2f} %")
                (out / "finetune_report.json").write_text(json.dumps(report, indent=2))
            shutil.rmtree(partial, ignore_errors=True)
        _barrier(dist)
        return report
    finally:
        src.close()
        if dist.world > 1:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _all_sum(value: float, device: Any) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def _rng_state() -> dict[str, Any]:
    """This process's CPU and (when used) CUDA random states: dropout draws from them."""
    import torch

    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _gather_rng(d: Dist) -> list[Any]:
    """Every rank's random states (rank 0 receives them all)."""
    import torch.distributed as dist

    states: list[Any] = [None] * d.world
    dist.all_gather_object(states, _rng_state())
    return states
