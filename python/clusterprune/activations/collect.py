"""Self-generated activation statistics (needs the ``hf`` extra): the dense model run on audio it
never heard, speech-like clips from :mod:`.synth`, and on text it writes itself (Whisper: decoder
tokens sampled from the model on those clips, then teacher-forced). No recorded speech, no text
corpus: what is measured is the model's own response to synthetic input.

With ``audio="espeak"`` (Whisper only) each clip is speech synthesised by rule instead
(:mod:`.espeak`): the text the model samples of the synthetic clip, read aloud by espeak-ng; the
statistics are then measured on that spoken clip, as above.

Per FFN module: the mean and covariance of its activations act(fc1 x + b) over every position
(encoder frames, padding included as in real use; decoder tokens), and the variance of the
residual stream entering its LayerNorm. Deterministic: seeded synthesis and sampling, one torch
thread, every clip's sums added in clip order (float64 sums, a float32 Gram), whatever the number of
processes. Memory: about N^2 / 2 float32 per FFN module (the Gram's upper block triangle) and one
clip's activations, whatever the number of clips.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..io.checkpoint import Checkpoint
from ..io.stats import ActivationStats, LazyModules, ModuleInfo, ModuleStats, model_digest
from ..models.hf import load_model, torch_device
from ..models.registry import unit_map
from ..models.whisper import quiet_transformers
from ..progress import Progress
from ..recipes.context import module_context, module_parts
from ..recipes.gaussian import ffn_activation_mean
from ..speech import SAMPLE_RATE
from .synth import RATE, clip_lengths, synthesize

DECODER_SAMPLES = 8  # sampled transcripts per clip (decoder positions are few per clip)
TEXT_OFFSET = 1 << 23  # seeds of the transcripts espeak-ng reads: disjoint from those sampled of a clip
AUDIO_SOURCES = ("synth", "espeak")


@dataclass(frozen=True)
class SelfGenConfig:
    clips: int = field(default=64, metadata={"help": "synthetic clips (2-16 s each)"})
    seed: int = field(default=0, metadata={"help": "seed of the synthesis and of the sampled transcripts"})
    decoder_samples: int = field(default=DECODER_SAMPLES, metadata={"help": "sampled transcripts per clip"})
    audio: str = field(default="synth", metadata={"help": "synth (source-filter synthesiser) or espeak (espeak-ng)"})


class _Recorder:
    """Whether the hooks record (off while the model samples its own transcripts)."""

    active = True


BLOCK = 512  # rows per block of the Gram's block upper triangle


class _Sums:
    """Sums of one module over some positions, as torch tensors on the CPU: of the shifted
    activations (float64), their Gram matrix's upper block triangle (float32 blocks of BLOCK rows:
    rows r0..r1, columns r0..N: about half of N x N), the position count, and of the residual
    stream entering the module's LayerNorm (its sum, sum of squares and count, float64)."""

    def __init__(self, torch: Any, n: int, hidden: int) -> None:
        self.n, self.hidden = n, hidden
        self.sum = torch.zeros(n, dtype=torch.float64)
        self.gram = [torch.zeros((min(BLOCK, n - r0), n - r0), dtype=torch.float32) for r0 in range(0, n, BLOCK)]
        self.count = torch.zeros(1, dtype=torch.float64)  # exact: counts stay far below 2^53
        self.stream = torch.zeros(hidden + 2, dtype=torch.float64)

    def tensors(self) -> list[Any]:
        """Every tensor, in the one order they are sent and added in."""
        return [self.sum, *self.gram, self.count, self.stream]

    def zero_(self) -> None:
        for t in self.tensors():
            t.zero_()

    def info(self) -> ModuleInfo:
        stream = self.stream.numpy()
        smean = stream[: self.hidden] / stream[-1]
        variance = float(stream[self.hidden] / stream[-1] - smean @ smean)
        return ModuleInfo(self.n, int(self.count.item()), variance)

    def result(self, shift: np.ndarray) -> ModuleStats:
        """Mean and covariance (float64) of the activations, and the stream's total variance."""
        n, count = self.n, float(self.count.item())
        d = self.sum.numpy() / count  # mean of the shifted activations
        cov = np.empty((n, n))
        for b, block in enumerate(self.gram):
            r0, r1 = b * BLOCK, b * BLOCK + block.shape[0]
            rows = block.double().numpy() / count - np.outer(d[r0:r1], d[r0:])
            square = rows[:, : r1 - r0]
            cov[r0:r1, r0:r1] = np.triu(square) + np.triu(square, 1).T
            cov[r0:r1, r1:] = rows[:, r1 - r0 :]
            cov[r1:, r0:r1] = rows[:, r1 - r0 :].T
        info = self.info()
        return ModuleStats(mean=shift + d, cov=cov, count=info.count, stream_variance=info.stream_variance)


class _Accumulator:
    """One FFN module's hooks: the activations, shifted by a fixed per-neuron value (the Gaussian
    LayerNorm model's mean activation: the sums stay small and the covariance well conditioned),
    and the residual stream, summed per clip and added into the target sums once the clip is done,
    so that every clip contributes the same numbers whichever process ran it, and the totals are
    added in clip order."""

    def __init__(self, torch: Any, hidden: int, shift: np.ndarray, recorder: _Recorder, eager: bool) -> None:
        self.torch, self.hidden, self.recorder = torch, hidden, recorder
        self.shift = torch.from_numpy(shift.astype(np.float32))
        self.eager = eager  # one forward call per clip (encoder, CTC models): finish at once
        self.rows: list[Any] = []
        self.clip_stream = torch.zeros(hidden + 2, dtype=torch.float64)
        self.target: _Sums | None = None

    def add_activations(self, f: Any) -> None:
        if not self.recorder.active:
            return
        self.rows.append(f.reshape(-1, f.shape[-1]).float().cpu() - self.shift)
        if self.eager:
            self.finish_clip()

    def add_stream(self, x: Any) -> None:
        if not self.recorder.active:
            return
        x64 = x.reshape(-1, x.shape[-1]).double().cpu()
        self.clip_stream[: self.hidden] += x64.sum(dim=0)
        self.clip_stream[self.hidden] += (x64 * x64).sum()
        self.clip_stream[self.hidden + 1] += x64.shape[0]

    def finish_clip(self) -> None:
        """Adds this clip's sums into the target: one Gram per clip, whatever the number of forward
        calls it took."""
        assert self.target is not None
        t = self.target
        if self.rows:
            x = self.torch.cat(self.rows) if len(self.rows) > 1 else self.rows[0]
            self.rows = []
            t.sum += x.double().sum(dim=0)
            for b, block in enumerate(t.gram):
                r0 = b * BLOCK
                block += x[:, r0 : r0 + block.shape[0]].T @ x[:, r0:]
            t.count += x.shape[0]
        t.stream += self.clip_stream
        self.clip_stream.zero_()


def _activation(torch: Any, name: str) -> Callable[[Any], Any]:
    fns = {
        "gelu": lambda a: torch.nn.functional.gelu(a),
        "gelu_new": lambda a: torch.nn.functional.gelu(a, approximate="tanh"),
        "gelu_pytorch_tanh": lambda a: torch.nn.functional.gelu(a, approximate="tanh"),
        "relu": torch.relu,
        "silu": torch.nn.functional.silu,
        "swish": torch.nn.functional.silu,
    }
    if name not in fns:
        raise InvalidArgumentError(f"activation {name!r} is not supported by the self-generated statistics")
    return fns[name]


def collect(
    model_dir: str | os.PathLike[str], config: SelfGenConfig, progress: bool | None = None, device: str = "cpu"
) -> ActivationStats | None:
    """The self-generated statistics of every FFN module of the dense model at ``model_dir``.

    Under torchrun (WORLD_SIZE > 1) the clips are shared out round-robin (clip i to process
    i mod W, one torch thread each); every clip's sums are added into process 0's totals in clip
    order, so the result is the same, bit for bit, for any number of processes. Process 0 gets the
    statistics, the others None. ``device``: where the model runs (cpu, cuda)."""
    import torch

    from ..distributed import init_distributed, shutdown

    if config.clips < 1 or config.decoder_samples < 1:
        raise InvalidArgumentError("--clips and --decoder-samples must be at least 1")
    if config.audio not in AUDIO_SOURCES:
        raise InvalidArgumentError(f"--audio must be one of {', '.join(AUDIO_SOURCES)}, not {config.audio!r}")
    settings: dict[str, Any] = {
        "clips": config.clips,
        "seed": config.seed,
        "decoder_samples": config.decoder_samples,
        "audio": config.audio,
    }
    if config.audio == "espeak":
        from .espeak import version

        settings["espeak"] = version()
    path = Path(model_dir)
    torch_device(device)  # an unknown or unavailable device fails before any work
    with Checkpoint(path) as ckpt:
        specs = [s for s in unit_map(ckpt.config, set(ckpt.where)).modules if s.kind == "ffn"]
        shifts = {s.name: _shift(ckpt, s) for s in specs}
        digest = model_digest(path)
    model, processor, _ = load_model(path)
    torch.set_num_threads(1)
    dist, target = init_distributed(device)
    try:
        model = model.to(target)
        seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        if config.audio == "espeak" and not seq2seq:
            raise InvalidArgumentError(
                f"{path}: --audio espeak reads the model's own transcripts; the model writes none"
            )
        named = dict(model.named_modules())
        recorder = _Recorder()
        accs: dict[str, _Accumulator] = {}
        # process 0's totals; on the others, one clip's sums, sent to process 0 after each round
        sums: dict[str, _Sums] = {}
        hooks = []
        for spec in specs:
            producer = next(p for p in spec.parts if p.role == "producer")
            linear = _module(named, spec.linear_of(producer))
            norm = _module(named, spec.input_norm or "")
            eager = not (seq2seq and spec.module_type.startswith("decoder"))
            acc = accs[spec.name] = _Accumulator(torch, spec.hidden, shifts[spec.name], recorder, eager)
            acc.target = sums[spec.name] = _Sums(torch, spec.n_units, spec.hidden)
            act = _activation(torch, spec.activation)
            hooks.append(
                linear.register_forward_hook(lambda _m, _i, out, acc=acc, act=act: acc.add_activations(act(out)))
            )
            hooks.append(norm.register_forward_pre_hook(lambda _m, inp, acc=acc: acc.add_stream(inp[0])))
        lengths = clip_lengths(config.clips, config.seed)
        exchange = _Exchange(dist, list(sums)) if dist.world > 1 else None
        try:
            bar = Progress(len(lengths), "self-generated clips", progress if dist.main else False)
            with torch.no_grad():
                for first in range(0, len(lengths), dist.world):
                    i = first + dist.rank
                    if i < len(lengths):
                        seconds = _record_clip(torch, model, processor, config, recorder, seq2seq, i, lengths[i])
                        for acc in accs.values():
                            acc.finish_clip()
                    done = min(dist.world, len(lengths) - first)
                    if exchange is not None:
                        exchange.gather(sums, done)
                    for _ in range(done):
                        bar.update(f"clip {first + done}/{len(lengths)}" if exchange else f"{seconds:.1f} s")
        finally:
            for h in hooks:
                h.remove()
    finally:
        shutdown(dist)
    if not dist.main:
        return None
    infos = {name: t.info() for name, t in sums.items()}
    modules = LazyModules(infos, lambda name: sums[name].result(shifts[name]))  # one module's N x N at a time
    return ActivationStats(modules=modules, source=str(path), digest=digest, settings=settings)


def _shift(ckpt: Checkpoint, spec: Any) -> np.ndarray:
    """The value each neuron's activations are shifted by before they are summed: their mean under
    the Gaussian LayerNorm input model (zero where the module has no LayerNorm to model)."""
    try:
        return ffn_activation_mean(module_parts(ckpt, spec), module_context(ckpt, spec))
    except InvalidArgumentError:
        return np.zeros(spec.n_units)


class _Exchange:
    """Process 0 receives the clips the other processes ran, in clip order, and adds them into its
    totals (gloo: CPU tensors, whatever device the model runs on)."""

    def __init__(self, dist: Any, names: list[str]) -> None:
        import torch.distributed as tdist

        self.dist, self.names, self.tdist = dist, names, tdist
        self.group = tdist.new_group(backend="gloo")

    def gather(self, sums: dict[str, _Sums], done: int) -> None:
        """``done`` clips ran in this round, clip first + k on process k."""
        for k in range(1, done):
            if self.dist.main:
                for name in self.names:
                    for t in sums[name].tensors():
                        buf = t.new_empty(t.shape)
                        self.tdist.recv(buf, src=k, group=self.group)
                        t += buf
            elif self.dist.rank == k:
                for name in self.names:
                    for t in sums[name].tensors():
                        self.tdist.send(t, dst=0, group=self.group)
                    sums[name].zero_()


def _record_clip(
    torch: Any,
    model: Any,
    processor: Any,
    config: SelfGenConfig,
    recorder: _Recorder,
    seq2seq: bool,
    index: int,
    target: float,
) -> float:
    """Runs clip ``index`` through the model with the hooks recording; its length in seconds."""
    device = next(model.parameters()).device
    recorder.active = False  # the text espeak-ng reads is sampled unrecorded
    try:
        inputs, seconds = _clip_inputs(torch, model, processor, config, index, target)
    finally:
        recorder.active = True
    if seq2seq:
        _forward_seq2seq(torch, model, recorder, inputs.input_features.to(device), seconds, config, index)
    else:
        model(inputs.input_values.to(device))
    return seconds


def _clip_inputs(
    torch: Any, model: Any, processor: Any, config: SelfGenConfig, index: int, seconds: float
) -> tuple[Any, float]:
    """The model's input features of clip ``index`` and the clip's length in seconds: one seed scheme for the audio and,
    :func:`_clip_transcripts`, the transcripts. With ``audio="espeak"``: the model's transcripts
    of the synthetic clip (sampled with seeds TEXT_OFFSET + index), read by espeak-ng, the
    synthetic clip kept when none of them has a letter."""
    audio = synthesize(seconds, seed=(config.seed << 20) + index)
    if config.audio == "espeak":
        from .espeak import spoken_clip

        feats = processor.feature_extractor([audio], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        encoded = model.get_encoder()(feats.to(next(model.parameters()).device))
        rows = _clip_transcripts(torch, model, encoded, seconds, config, TEXT_OFFSET + index)
        texts = [processor.tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]
        spoken = spoken_clip(texts, seconds, seed=(config.seed << 20) + index)
        if spoken.size:
            audio, seconds = spoken, spoken.size / RATE
    return processor.feature_extractor([audio], sampling_rate=SAMPLE_RATE, return_tensors="pt"), seconds


def _clip_transcripts(
    torch: Any, model: Any, encoder_out: Any, seconds: float, config: SelfGenConfig, index: int
) -> list[list[int]]:
    """The ``decoder_samples`` transcripts the model samples of clip ``index`` (the seed scheme of
    :func:`_clip_inputs`)."""
    seed = (config.seed << 24) + index
    return sample_transcripts(torch, model, encoder_out, config.decoder_samples, _bound(model, seconds), seed)


def _prompt(model: Any) -> list[int]:
    """The decoder's start: <|startoftranscript|> and the forced tokens (language, task,
    <|notimestamps|>) of the model's generation config."""
    gen = model.generation_config
    prompt = [int(gen.decoder_start_token_id)]
    for position, token in sorted(getattr(gen, "forced_decoder_ids", None) or []):
        if position == len(prompt) and token is not None:
            prompt.append(int(token))
    if len(prompt) == 1 and getattr(gen, "no_timestamps_token_id", None) is not None:
        prompt.append(int(gen.no_timestamps_token_id))
    return prompt


def sample_transcripts(torch: Any, model: Any, encoder_out: Any, count: int, bound: int, seed: int) -> list[list[int]]:
    """``count`` transcripts sampled from the model at temperature 1 (text tokens and
    <|endoftext|> only; the config's suppressed tokens never), each cut at its first
    <|endoftext|> or at ``bound`` new tokens. A seeded torch generator on the CPU: reproducible
    wherever the model runs."""
    gen = model.generation_config
    eot = int(gen.eos_token_id)
    device = encoder_out.last_hidden_state.device
    logits_mask = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
    logits_mask[eot + 1 :] = True  # special tokens other than <|endoftext|>
    logits_mask[list(gen.suppress_tokens or [])] = True
    generator = torch.Generator().manual_seed(seed)
    prompt = _prompt(model)
    rows = [list(prompt) for _ in range(count)]
    hidden = encoder_out.last_hidden_state.expand(count, -1, -1)
    tokens = torch.tensor(rows, device=device)
    past = None
    done = torch.zeros(count, dtype=torch.bool)
    for step in range(bound):
        with warnings.catch_warnings(), quiet_transformers():
            warnings.simplefilter("ignore", FutureWarning)  # the past_key_values keyword's new name varies
            out = model(encoder_outputs=(hidden,), decoder_input_ids=tokens, past_key_values=past, use_cache=True)
            past = out.past_key_values  # its new name varies too: read where transformers is quiet
        logits = out.logits[:, -1].float().masked_fill(logits_mask, float("-inf"))
        if step == 0:
            logits[:, list(gen.begin_suppress_tokens or [])] = float("-inf")
        nxt = torch.multinomial(torch.softmax(logits, dim=-1).cpu(), 1, generator=generator)[:, 0]
        for i in range(count):
            if not done[i]:
                rows[i].append(int(nxt[i]))
        done |= nxt == eot
        if bool(done.all()):
            break
        tokens = nxt[:, None].to(device)
    return rows


def _forward_seq2seq(
    torch: Any, model: Any, recorder: _Recorder, feats: Any, seconds: float, config: SelfGenConfig, clip: int
) -> None:
    """The encoder's frames recorded once; the model samples ``decoder_samples`` transcripts of the
    clip (not recorded), then each is teacher-forced through the decoder (recorded)."""
    encoder_out = model.get_encoder()(feats)
    recorder.active = False
    try:
        rows = _clip_transcripts(torch, model, encoder_out, seconds, config, clip)
    finally:
        recorder.active = True
    for row in rows:
        model(encoder_outputs=encoder_out, decoder_input_ids=torch.tensor([row], device=feats.device))


def _bound(model: Any, seconds: float) -> int:
    from ..models.whisper import max_new_tokens

    return max_new_tokens(seconds, model.config.max_target_positions - 4)


def _module(named: dict[str, Any], path: str) -> Any:
    found = named.get(path.removeprefix("model.")) or named.get(path)
    if found is None:
        raise InvalidArgumentError(f"{path} is not a module of the loaded model")
    return found
