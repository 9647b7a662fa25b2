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
processes. Memory: the Gram sums (N^2 / 2 float32 per FFN module, the upper block triangle) live
in an unlinked scratch file; the process holds the model, one clip's activations of one module
and one block, whatever the number of clips and modules.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..io.checkpoint import Checkpoint
from ..io.metadata import FOLDED_KEY
from ..io.palette import PALETTE_KEY
from ..io.stats import ActivationStats, LazyModules, ModuleInfo, ModuleStats, model_digest
from ..memory import bounded_heap, release_freed_memory
from ..models.hf import load_model, torch_device
from ..models.registry import unit_map
from ..models.whisper import quiet_transformers
from ..progress import Progress
from ..recipes.context import module_context, module_parts
from ..recipes.gaussian import ffn_activation_mean
from ..speech import SAMPLE_RATE
from .scratch import ScratchFile
from .sensitivity import Sensitivity, sampling_mask
from .sites import input_sites
from .synth import RATE, clip_lengths, synthesize

DECODER_SAMPLES = 8  # sampled transcripts per clip (decoder positions are few per clip)
TEXT_OFFSET = 1 << 23  # seeds of the transcripts espeak-ng reads: disjoint from those sampled of a clip
AUDIO_SOURCES = ("synth", "espeak")
SENSITIVITY = "sensitivity"  # the sensitivity sums' name among the sums sent between processes


@dataclass(frozen=True)
class SelfGenConfig:
    clips: int = field(default=64, metadata={"help": "synthetic clips (2-16 s each)"})
    seed: int = field(default=0, metadata={"help": "seed of the synthesis and of the sampled transcripts"})
    decoder_samples: int = field(default=DECODER_SAMPLES, metadata={"help": "sampled transcripts per clip"})
    audio: str = field(default="synth", metadata={"help": "synth (source-filter synthesiser) or espeak (espeak-ng)"})
    layer_inputs: bool = field(
        default=False, metadata={"help": "also the second moments of every linear layer's input (palettize --stats)"}
    )
    sensitivity: bool = field(
        default=False,
        metadata={
            "help": "also each layer output's Fisher diagonal (palettize --avg-bits --stats; a backward pass per clip)",
            "experimental": True,  # the docs' catalog: it lost to uniform bits
        },
    )


class _Recorder:
    """Whether the hooks record (off while the model samples its own transcripts)."""

    active = True

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The hooks record nothing inside the block."""
        self.active = False
        try:
            yield
        finally:
            self.active = True


BLOCK = 512  # rows per block of the Gram's block upper triangle


class _Sums:
    """Sums of one module over some positions: of the shifted activations (float64), their Gram
    matrix's upper block triangle (float32 blocks of BLOCK rows: rows r0..r1, columns r0..N:
    about half of N x N, kept in the scratch file, not in memory), the position count, and of the
    residual stream entering the module's LayerNorm (its sum, sum of squares and count, float64)."""

    def __init__(self, torch: Any, n: int, hidden: int, scratch: ScratchFile) -> None:
        self.torch, self.n, self.hidden, self.scratch = torch, n, hidden, scratch
        self.sum = torch.zeros(n, dtype=torch.float64)
        self.count = torch.zeros(1, dtype=torch.float64)  # exact: counts stay far below 2^53
        self.stream = torch.zeros(hidden + 2, dtype=torch.float64)
        self.blocks = []  # (first row, rows, byte offset in the scratch file)
        for r0 in range(0, n, BLOCK):
            rows = min(BLOCK, n - r0)
            self.blocks.append((r0, rows, scratch.reserve(rows * (n - r0) * 4)))

    def small(self) -> list[Any]:
        """The in-memory tensors, in the one order they are sent and added in."""
        return [self.sum, self.count, self.stream]

    def zero_small(self) -> None:
        for t in self.small():
            t.zero_()

    def block(self, b: int) -> Any:
        """Block ``b`` of the Gram (a fresh float32 tensor read from the scratch file)."""
        r0, rows, offset = self.blocks[b]
        return self.torch.from_numpy(self.scratch.read(offset, np.empty((rows, self.n - r0), dtype=np.float32)))

    def add(self, b: int, values: Any) -> None:
        """Block ``b`` of the Gram += ``values`` (read, added, written back)."""
        block = self.block(b)
        block += values
        self.scratch.write(self.blocks[b][2], block.numpy())

    def info(self) -> ModuleInfo:
        stream = self.stream.numpy()
        if not self.hidden:  # a layer input: no residual stream of its own
            return ModuleInfo(self.n, int(self.count.item()), 0.0)
        smean = stream[: self.hidden] / stream[-1]
        variance = float(stream[self.hidden] / stream[-1] - smean @ smean)
        return ModuleInfo(self.n, int(self.count.item()), variance)

    def result(self, shift: np.ndarray) -> ModuleStats:
        """Mean and covariance (float64) of the activations, and the stream's total variance."""
        n, count = self.n, float(self.count.item())
        d = self.sum.numpy() / count  # mean of the shifted activations
        cov = np.empty((n, n))
        for b, (r0, rows, _) in enumerate(self.blocks):
            r1 = r0 + rows
            block = self.block(b).double().numpy()
            block /= count
            block -= np.outer(d[r0:r1], d[r0:])
            square = block[:, :rows]
            cov[r0:r1, r0:r1] = np.triu(square) + np.triu(square, 1).T
            cov[r0:r1, r1:] = block[:, rows:]
            cov[r1:, r0:r1] = block[:, rows:].T
        info = self.info()
        return ModuleStats(mean=shift + d, cov=cov, count=info.count, stream_variance=info.stream_variance)


class _Accumulator:
    """One FFN module's hooks: the activations, shifted by a fixed per-neuron value (the Gaussian
    LayerNorm model's mean activation: the sums stay small and the covariance well conditioned),
    and the residual stream, summed per clip and added into the target sums once the clip is done,
    so that every clip contributes the same numbers whichever process ran it, and the totals are
    added in clip order. A clip that takes several forward calls (the decoder's transcripts) parks
    its activations in the scratch file ``rows`` until the clip is done."""

    def __init__(
        self, torch: Any, hidden: int, shift: np.ndarray, recorder: _Recorder, eager: bool, rows: ScratchFile
    ) -> None:
        self.torch, self.hidden, self.recorder = torch, hidden, recorder
        self.shift = torch.from_numpy(shift.astype(np.float32))
        self.eager = eager  # one forward call per clip (encoder, CTC models): finish at once
        self.parked: list[tuple[int, int]] = []  # (byte offset in ``rows``, positions) of the other calls
        self.rows_file = rows
        self.clip_stream = torch.zeros(hidden + 2, dtype=torch.float64)
        self.target: _Sums | None = None

    def add_activations(self, f: Any) -> None:
        if not self.recorder.active:
            return
        x = f.reshape(-1, f.shape[-1]).float().cpu().sub_(self.shift)  # f is the hook's own tensor: shifted in place
        if self.eager:
            self.finish_clip(x)
        else:
            offset = self.rows_file.reserve(x.numel() * 4)
            self.rows_file.write(offset, x.numpy())
            self.parked.append((offset, x.shape[0]))

    def add_stream(self, x: Any) -> None:
        if not self.recorder.active:
            return
        x64 = x.reshape(-1, x.shape[-1]).double().cpu()
        self.clip_stream[: self.hidden] += x64.sum(dim=0)
        self.clip_stream[self.hidden] += (x64 * x64).sum()
        self.clip_stream[self.hidden + 1] += x64.shape[0]

    def _parked_rows(self) -> Any:
        """This clip's parked activations, in call order (None when there were none)."""
        if not self.parked:
            return None
        n = self.shift.shape[0]
        out = np.empty((sum(k for _, k in self.parked), n), dtype=np.float32)
        at = 0
        for offset, k in self.parked:
            self.rows_file.read(offset, out[at : at + k])
            at += k
        self.parked = []
        return self.torch.from_numpy(out)

    def finish_clip(self, x: Any = None) -> None:
        """Adds this clip's sums into the target: one Gram per clip, whatever the number of forward
        calls it took (``x``: the one eager call's activations, else the parked ones)."""
        assert self.target is not None
        t = self.target
        x = self._parked_rows() if x is None else x
        if x is not None:
            for b, (r0, rows, _) in enumerate(t.blocks):  # a column block at a time: no float64 copy of x
                t.sum[r0 : r0 + rows] += self.torch.sum(x[:, r0 : r0 + rows], dim=0, dtype=self.torch.float64)
                t.add(b, x[:, r0 : r0 + rows].T @ x[:, r0:])
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
    model_dir: str | os.PathLike[str],
    config: SelfGenConfig,
    progress: bool | None = None,
    device: str = "cpu",
    scratch: Path | None = None,
) -> ActivationStats | None:
    """The self-generated statistics of every FFN module of the dense model at ``model_dir``.

    Under torchrun (WORLD_SIZE > 1) the clips are shared out round-robin (clip i to process
    i mod W, one torch thread each); every clip's sums are added into process 0's totals in clip
    order, so the result is the same, bit for bit, for any number of processes. Process 0 gets the
    statistics, the others None. ``device``: where the model runs (cpu, cuda). ``scratch``: the
    folder of the temporary file that holds the Gram sums (default: the system's temporary folder)."""
    import torch

    from ..distributed import init_distributed, shutdown

    bounded_heap()
    for key in ("clips", "seed", "decoder_samples"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentError(f"{key} must be an integer, got {value!r}")
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
    if config.layer_inputs:
        settings["layer_inputs"] = True
    if config.sensitivity:
        settings["sensitivity"] = True
    path = Path(model_dir)
    torch_device(device)  # an unknown or unavailable device fails before any work
    with Checkpoint(path) as ckpt:
        for key, kind in ((FOLDED_KEY, "folded"), (PALETTE_KEY, "palettized")):
            if key in ckpt.config:
                raise InvalidArgumentError(
                    f"{path}: a {kind} checkpoint; self-generated statistics are of the dense model: give its source"
                )
        specs = [s for s in unit_map(ckpt.config, set(ckpt.where)).modules if s.kind == "ffn"]
        shifts = {s.name: _shift(ckpt, s) for s in specs}
        digest = model_digest(path)
        tensors = set(ckpt.where)
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
        grams, rows = ScratchFile(scratch), ScratchFile(scratch)
        # process 0's totals; on the others, one clip's sums, sent to process 0 after each round
        sums: dict[str, _Sums] = {}
        hooks = []
        for spec in specs:
            producer = next(p for p in spec.parts if p.role == "producer")
            linear = _module(named, spec.linear_of(producer))
            norm = _module(named, spec.input_norm or "")
            eager = not (seq2seq and spec.module_type.startswith("decoder"))
            acc = accs[spec.name] = _Accumulator(torch, spec.hidden, shifts[spec.name], recorder, eager, rows)
            acc.target = sums[spec.name] = _Sums(torch, spec.n_units, spec.hidden, grams)
            act = _activation(torch, spec.activation)
            hooks.append(
                linear.register_forward_hook(lambda _m, _i, out, acc=acc, act=act: acc.add_activations(act(out)))
            )
            hooks.append(norm.register_forward_pre_hook(lambda _m, inp, acc=acc: acc.add_stream(inp[0])))
        feeds: dict[str, list[str]] = {}
        if config.layer_inputs:
            for spec in specs:  # an FFN's consumer reads its activations, whose moments are recorded above
                consumer = [p.tensor for p in spec.parts if p.role == "consumer"]
                feeds[spec.name] = consumer
            for name, site in input_sites(model, seq2seq).items():
                eager = not (seq2seq and name.startswith("model.decoder"))
                acc = accs[name] = _Accumulator(torch, 0, np.zeros(site.width), recorder, eager, rows)
                acc.target = sums[name] = _Sums(torch, site.width, 0, grams)
                feeds[name] = site.tensors
                if site.output:
                    hooks.append(
                        site.module.register_forward_hook(lambda _m, _i, out, acc=acc: acc.add_activations(out))
                    )
                else:
                    hooks.append(
                        site.module.register_forward_pre_hook(
                            lambda _m, inp, acc=acc, rows=site.rows: acc.add_activations(rows(inp[0]))
                        )
                    )
        sens = Sensitivity(torch, model, tensors) if config.sensitivity else None
        sent: dict[str, Any] = {**sums, SENSITIVITY: sens} if sens is not None else dict(sums)
        lengths = clip_lengths(config.clips, config.seed)
        exchange = _Exchange(dist, list(sent)) if dist.world > 1 else None
        try:
            bar = Progress(len(lengths), "self-generated clips", progress if dist.main else False)
            with torch.no_grad():
                for first in range(0, len(lengths), dist.world):
                    i = first + dist.rank
                    if i < len(lengths):
                        seconds = _record_clip(torch, model, processor, config, recorder, seq2seq, i, lengths[i], sens)
                        for acc in accs.values():
                            acc.finish_clip()
                        if sens is not None:
                            sens.finish_clip()
                        rows.clear()
                        release_freed_memory()
                    done = min(dist.world, len(lengths) - first)
                    if exchange is not None:
                        exchange.gather(sent, done)
                    for _ in range(done):
                        bar.update(f"clip {first + done}/{len(lengths)}" if exchange else f"{seconds:.1f} s")
        finally:
            for h in hooks:
                h.remove()
            if sens is not None:
                sens.remove()
            rows.close()
    finally:
        shutdown(dist)
    if not dist.main:
        return None
    infos = {name: t.info() for name, t in sums.items() if name in shifts}
    modules = LazyModules(infos, lambda name: sums[name].result(shifts[name]))  # one module's N x N at a time
    inputs = {name: t.info() for name, t in sums.items() if name not in shifts}
    read_input = LazyModules(inputs, lambda name: sums[name].result(np.zeros(sums[name].n)))
    fisher, sequences = sens.result() if sens is not None else ({}, 0)
    return ActivationStats(
        modules=modules,
        source=str(path),
        digest=digest,
        settings=settings,
        inputs=read_input,
        feeds=feeds,
        sensitivity=fisher,
        sensitivity_count=sequences,
    )


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
        import torch
        import torch.distributed as tdist

        self.dist, self.names, self.tdist, self.torch = dist, names, tdist, torch
        self.group = tdist.new_group(backend="gloo")

    def gather(self, sums: dict[str, Any], done: int) -> None:
        """``done`` clips ran in this round, clip first + k on process k (whose sums hold that
        clip only: they are zeroed once sent)."""
        for k in range(1, done):
            if self.dist.main:
                for name in self.names:
                    s = sums[name]
                    for t in s.small():
                        buf = t.new_empty(t.shape)
                        self.tdist.recv(buf, src=k, group=self.group)
                        t += buf
                    for b, (r0, rows, _) in enumerate(s.blocks):
                        buf = self.torch.empty((rows, s.n - r0), dtype=self.torch.float32)
                        self.tdist.recv(buf, src=k, group=self.group)
                        s.add(b, buf)
            elif self.dist.rank == k:
                for name in self.names:
                    s = sums[name]
                    for t in s.small():
                        self.tdist.send(t, dst=0, group=self.group)
                    for b in range(len(s.blocks)):
                        self.tdist.send(s.block(b), dst=0, group=self.group)
                    s.zero_small()
                next(iter(sums.values())).scratch.clear()  # every module's Gram back to zero


def _record_clip(
    torch: Any,
    model: Any,
    processor: Any,
    config: SelfGenConfig,
    recorder: _Recorder,
    seq2seq: bool,
    index: int,
    target: float,
    sens: Sensitivity | None = None,
) -> float:
    """Runs clip ``index`` through the model with the hooks recording (and ``sens``'s backward
    pass, unrecorded); its length in seconds."""
    device = next(model.parameters()).device
    with recorder.paused():  # the text espeak-ng reads is sampled unrecorded
        inputs, seconds = clip_inputs(torch, model, processor, config, index, target)
    if seq2seq:
        _forward_seq2seq(torch, model, recorder, inputs.input_features.to(device), seconds, config, index, sens)
    else:
        values = inputs.input_values.to(device)
        model(values)
        if sens is not None:
            with recorder.paused():
                sens.ctc(model, values, (config.seed << 24) + index)
    return seconds


def clip_inputs(
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
    :func:`clip_inputs`)."""
    seed = (config.seed << 24) + index
    return sample_transcripts(torch, model, encoder_out, config.decoder_samples, _bound(model, seconds), seed)


def decoder_prompt(model: Any) -> list[int]:
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
    logits_mask = sampling_mask(torch, model, device)
    generator = torch.Generator().manual_seed(seed)
    prompt = decoder_prompt(model)
    rows = [list(prompt) for _ in range(count)]
    hidden = encoder_out.last_hidden_state.expand(count, -1, -1)
    tokens = torch.tensor(rows, device=device)
    past = _shared_cross_cache(torch, model, encoder_out.last_hidden_state, count)
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


def _shared_cross_cache(torch: Any, model: Any, hidden: Any, count: int) -> Any:
    """A decoder cache whose cross-attention keys and values are computed once, of the one encoder
    output, and shared by the ``count`` transcripts (an expanded view: no copy per transcript;
    whisper-large's 32 layers would otherwise hold 8 x 1500 frames of them, 3.6 GiB). None where
    this transformers keeps its cache otherwise (the model then computes them per transcript)."""
    try:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        for i, layer in enumerate(model.get_decoder().layers):
            attn = layer.encoder_attn
            shape = (1, -1, attn.num_heads, attn.head_dim)
            keys = attn.k_proj(hidden[:1]).view(shape).transpose(1, 2).contiguous()
            values = attn.v_proj(hidden[:1]).view(shape).transpose(1, 2).contiguous()
            cache.cross_attention_cache.update(keys, values, i)
            entry = cache.cross_attention_cache.layers[i]
            entry.keys, entry.values = keys.expand(count, -1, -1, -1), values.expand(count, -1, -1, -1)
            cache.is_updated[i] = True
        return cache
    except (ImportError, AttributeError, TypeError, ValueError, IndexError):
        return None


def _forward_seq2seq(
    torch: Any,
    model: Any,
    recorder: _Recorder,
    feats: Any,
    seconds: float,
    config: SelfGenConfig,
    clip: int,
    sens: Sensitivity | None = None,
) -> None:
    """The encoder's frames recorded once; the model samples ``decoder_samples`` transcripts of the
    clip (not recorded), then each is teacher-forced through the decoder (recorded); with ``sens``,
    the transcripts' log-likelihood differentiated (not recorded)."""
    encoder_out = model.get_encoder()(feats)
    with recorder.paused():
        rows = _clip_transcripts(torch, model, encoder_out, seconds, config, clip)
    decoder = model.get_decoder()  # the decoder alone: its FFNs are what is recorded, the logits are not needed
    for row in rows:
        ids = torch.tensor([row], device=feats.device)
        decoder(input_ids=ids, encoder_hidden_states=encoder_out.last_hidden_state, use_cache=False)
    if sens is not None:
        with recorder.paused():
            sens.seq2seq(model, feats, rows, len(decoder_prompt(model)))


def _bound(model: Any, seconds: float) -> int:
    from ..models.whisper import max_new_tokens

    return max_new_tokens(seconds, model.config.max_target_positions - 4)


def _module(named: dict[str, Any], path: str) -> Any:
    found = named.get(path.removeprefix("model.")) or named.get(path)
    if found is None:
        raise InvalidArgumentError(f"{path} is not a module of the loaded model")
    return found
