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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..distributed import Dist, all_sum, barrier, gather_rng, init_distributed, no_sync, rng_state, set_rng, shutdown
from ..errors import InvalidArgumentError, OutputExistsError
from ..io.checkpoint import Checkpoint
from ..io.jsontext import dumps
from ..io.output import atomic_directory, check_destination, refuse_inside_sources, write_json_atomic
from ..io.palette import refuse_palettized
from ..io.resolve import resolve_model
from ..io.safetensors import SafetensorsWriter, from_f32
from ..models.family import Family
from ..progress import Progress
from ..speech import Utterance
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
    src.copy_aux_files(tmp)
    for fname, f in src.files.items():
        names = [n for n in src.names() if src.where[n] == fname]
        shapes = {n: src.info(n).shape for n in names}
        entries = [(n, src.info(n).dtype, shapes[n]) for n in names]
        metadata = {
            **f.metadata,
            "format": f.metadata.get("format", "pt"),
            FINETUNE_KEY: dumps(record, "the fine-tuning record"),
        }
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


def _check_paths(src: Path, out: Path, partial: Path, resume: bool, overwrite: bool) -> bool:
    """Checks the output paths before anything is written; returns whether a saved state will be
    resumed. A ``.partial`` folder without a saved state (a run killed before its first save)
    holds nothing worth keeping and is started over."""
    check_destination(out, sources=[src], overwrite=overwrite)
    refuse_inside_sources(partial, [src], "the training state")
    saved = (partial / STATE_FILE).is_file()
    if saved and not (resume or overwrite):
        raise OutputExistsError(
            f"{partial}: a previous run left its state here; pass --resume to continue it or --overwrite to start over"
        )
    if resume and not saved and not partial.exists():
        raise InvalidArgumentError(f"--resume: {partial / STATE_FILE} not found (nothing to resume)")
    return resume and saved


@dataclass
class _Run:
    """The state of one training run (model, optimizer, schedule) and its steps."""

    cfg: FinetuneConfig
    dist: Dist
    target: Any
    family: Family
    processor: Any
    model: Any
    projector: Projector
    train: list[Utterance]
    partial: Path
    max_tokens: int | None = None
    wrapped: Any = None
    optim: Any = None
    sched: Any = None
    params: list[Any] = field(default_factory=list)
    step: int = 0
    total: int = 0
    per_epoch: int = 0
    use_bf16: bool = False

    def setup(self) -> None:
        import torch

        cfg = self.cfg
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optim = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.per_epoch = math.ceil(len(self.train) / cfg.batch_size)
        total = self.total = cfg.max_steps or cfg.epochs * self.per_epoch
        warmup = max(1, int(cfg.warmup_ratio * total)) if cfg.warmup_ratio > 0 else 0
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, lambda s: _schedule(s, total, warmup))
        self.wrapped = self.model
        if self.dist.world > 1:
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.target.index] if self.target.type == "cuda" else None
            )
        self.use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.target.type == "cuda")
        torch.manual_seed(cfg.seed + self.dist.rank)

    def restore(self) -> None:
        """Continues from the saved state (steps after it were lost with the killed run)."""
        import torch

        state = torch.load(self.partial / STATE_FILE, map_location=self.target, weights_only=False)
        if state.get("config") != asdict(self.cfg) or state.get("world") != self.dist.world:
            raise InvalidArgumentError(
                f"--resume: {self.partial / STATE_FILE} was written by a run with other options or process count"
            )
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        self.step = int(state["step"])
        set_rng(state["rng"][self.dist.rank])
        if self.dist.main:
            log = self.partial / LOG_FILE
            lines = log.read_text().splitlines() if log.is_file() else []
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= self.step]
            log.write_text("".join(f"{line}\n" for line in kept))

    def start_fresh(self) -> None:
        if self.dist.main:
            if self.partial.exists():
                shutil.rmtree(self.partial)
            self.partial.mkdir(parents=True)
            (self.partial / LOG_FILE).write_text("")

    def train_step(self, autocast: Any) -> dict[str, Any]:
        """One optimizer step over the next global batch; returns its log entry."""
        import torch

        cfg, dist = self.cfg, self.dist
        t0 = time.monotonic()
        utts = [self.train[i] for i in _global_batch(len(self.train), cfg, self.step)]
        norm = self.family.count_targets(self.processor, utts, self.max_tokens)
        mine = utts[dist.rank :: dist.world]
        chunks = [c for c in (mine[i :: cfg.grad_accum] for i in range(cfg.grad_accum)) if c]
        self.optim.zero_grad(set_to_none=True)
        loss_total = 0.0
        for j, chunk in enumerate(chunks):
            with no_sync(self.wrapped, dist, sync=j == len(chunks) - 1):
                loss_sum = self.family.loss_sum(
                    self.wrapped, self.processor, chunk, self.target, autocast, self.max_tokens
                )
                loss = loss_sum * (dist.world / max(norm, 1))
                loss.backward()
            loss_total += float(loss.detach()) / dist.world
        if not chunks and dist.world > 1:  # this rank got no utterance of a short last batch
            loss = sum(p.sum() * 0.0 for p in self.params)
            loss.backward()
        if dist.world > 1:
            loss_total = all_sum(loss_total, self.target)
        self.projector.project_grads()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        lr_used = self.sched.get_last_lr()[0]
        self.optim.step()
        self.sched.step()
        self.projector.project_weights()
        self.step += 1
        seconds = time.monotonic() - t0
        return {
            "step": self.step,
            "epoch": (self.step - 1) // self.per_epoch,
            "loss": loss_total,
            "lr": lr_used,
            "grad_norm": grad_norm,
            "utterances_per_s": len(utts) / seconds if seconds > 0 else 0.0,
            "audio_s_per_s": sum(u.duration for u in utts) / seconds if seconds > 0 else 0.0,
        }

    def save(self) -> None:
        """The training state, written atomically by rank 0 (every rank sends its RNG states)."""
        if self.dist.main:
            rng = [rng_state()] if self.dist.world == 1 else gather_rng(self.dist)
            _save_state(
                self.partial / STATE_FILE,
                {
                    "model": self.model.state_dict(),
                    "optim": self.optim.state_dict(),
                    "sched": self.sched.state_dict(),
                    "step": self.step,
                    "rng": rng,
                    "config": asdict(self.cfg),
                    "world": self.dist.world,
                },
            )
        elif self.dist.world > 1:
            gather_rng(self.dist)


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

    from ..evaluation.data import load_utterances
    from ..evaluation.evaluate import evaluate
    from ..models.hf import load_model, torch_device

    cfg = config.validate()
    src_path, out = resolve_model(model_dir), Path(out)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    torch_device(device)
    dist, target = init_distributed(device)
    resuming = _check_paths(src_path, out, partial, resume, overwrite)
    barrier(dist)  # every process has checked the output paths before the first one writes
    src = Checkpoint(src_path)
    try:
        refuse_palettized(src.config, src.path, "fine-tuned (training moves the weights off the tables)")
        structure = read_structure(src)
        require_structure(structure, cfg.preserve, str(src.path))
        if not cfg.preserve:
            structure = Structure("dense")
        train = load_utterances(data, subset, limit)
        model, processor, family = load_model(src_path)
        model = model.to(target).train()
        family.prepare_training(model, cfg.freeze_feature_encoder)
        projector = Projector(structure, model)
        projector.project_weights()  # a no-op on an intact checkpoint; it defines the tied copy
        run = _Run(cfg, dist, target, family, processor, model, projector, train, partial)
        run.max_tokens = getattr(model.config, "max_target_positions", None)
        run.setup()
        if resuming:
            run.restore()
        else:
            run.start_fresh()
        barrier(dist)
        report: dict[str, Any] = {
            "model": str(src_path),
            "structure": structure.describe(),
            "family": model.config.model_type,
            "train_utterances": len(train),
            "config": asdict(cfg),
            "processes": dist.world,
            "device": str(target),
            "total_steps": run.total,
            "precision": "bf16" if run.use_bf16 else "fp32",
        }

        def wer_of(model_path: Path) -> float:
            return evaluate(
                model_path, eval_data, subset=eval_subset, limit=eval_limit, device=str(target), progress=False
            )["wer"]

        before = partial / "wer_before.json"
        if eval_data is not None and dist.main:
            if not before.is_file():
                before.write_text(dumps(wer_of(src_path), str(before)))
            report["wer_before"] = json.loads(before.read_text())
            log(f"WER before fine-tuning: {100 * report['wer_before']:.2f} %")
        bar = Progress(run.total, "finetune", progress if dist.main else False)
        bar.done = run.step
        started = time.monotonic()
        autocast = torch.autocast(target.type, dtype=torch.bfloat16, enabled=run.use_bf16)
        while run.step < run.total:
            entry = run.train_step(autocast)
            if dist.main:
                with open(partial / LOG_FILE, "a") as fh:
                    fh.write(dumps(entry, "the fine-tuning log") + "\n")
                bar.update(f"loss {entry['loss']:.3f} {entry['utterances_per_s']:.1f} utt/s")
            if run.step % cfg.save_every == 0 or run.step == run.total:
                run.save()
            if on_step is not None:
                on_step(run.step, entry["loss"])
        report["train_seconds"] = time.monotonic() - started
        if dist.main:
            losses = [json.loads(line) for line in (partial / LOG_FILE).read_text().splitlines() if line.strip()]
            report["first_loss"] = losses[0]["loss"] if losses else None
            report["last_loss"] = losses[-1]["loss"] if losses else None
            record = {"version": __version__, "config": asdict(cfg), "steps": run.total, "data": str(data)}
            with atomic_directory(out, overwrite=overwrite, sources=[src.path]) as tmp:
                _write_checkpoint(src, model, tmp, record)
                shutil.copy2(partial / LOG_FILE, tmp / "finetune_log.jsonl")
                (tmp / "finetune_report.json").write_text(dumps(report, "finetune_report.json", indent=2))
            if eval_data is not None:
                report["wer_after"] = wer_of(out)
                log(f"WER after fine-tuning: {100 * report['wer_after']:.2f} %")
                write_json_atomic(out / "finetune_report.json", report)
            shutil.rmtree(partial, ignore_errors=True)
        barrier(dist)
        return report
    finally:
        src.close()
        shutdown(dist)
