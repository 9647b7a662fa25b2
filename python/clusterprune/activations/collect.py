"""Self-generated activation statistics (needs the ``hf`` extra): the dense model run on audio it
never heard, speech-like clips from :mod:`.synth`, and on text it writes itself (Whisper: decoder
tokens sampled from the model on those clips, then teacher-forced). No recorded speech, no text
corpus: what is measured is the model's own response to synthetic input.

With ``audio="espeak"`` (Whisper only) each clip is speech synthesised by rule instead
(:mod:`.espeak`): the text the model samples of the synthetic clip, read aloud by espeak-ng; the
statistics are then measured on that spoken clip, as above.

Per FFN module: the mean and covariance of its activations act(fc1 x + b) over every position
(encoder frames, padding included as in real use; decoder tokens), and the variance of the
residual stream entering its LayerNorm. Deterministic: seeded synthesis and sampling, float64
accumulation in a fixed order, one thread.
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
from ..io.stats import ActivationStats, ModuleStats, model_digest
from ..models.hf import load_model
from ..models.registry import unit_map
from ..models.whisper import quiet_transformers
from ..progress import Progress
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


class _Accumulator:
    def __init__(self, n: int, hidden: int, recorder: _Recorder) -> None:
        self.sum = np.zeros(n)
        self.outer = np.zeros((n, n))
        self.count = 0
        self.stream_sum = np.zeros(hidden)
        self.stream_sq = 0.0
        self.stream_count = 0
        self.recorder = recorder

    def add_activations(self, f: Any) -> None:
        if not self.recorder.active:
            return
        f32 = f.reshape(-1, f.shape[-1]).float()
        self.sum += f32.double().sum(dim=0).numpy()
        self.outer += (f32.T @ f32).double().numpy()  # one clip's sum in float32, accumulated in float64
        self.count += f32.shape[0]

    def add_stream(self, x: Any) -> None:
        if not self.recorder.active:
            return
        x64 = x.reshape(-1, x.shape[-1]).double()
        self.stream_sum += x64.sum(dim=0).numpy()
        self.stream_sq += float((x64 * x64).sum())
        self.stream_count += x64.shape[0]

    def result(self) -> ModuleStats:
        mean = self.sum / self.count
        cov = self.outer / self.count - np.outer(mean, mean)
        smean = self.stream_sum / self.stream_count
        stream = self.stream_sq / self.stream_count - float(smean @ smean)
        return ModuleStats(mean=mean, cov=(cov + cov.T) / 2, count=self.count, stream_variance=stream)


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


def collect(model_dir: str | os.PathLike[str], config: SelfGenConfig, progress: bool | None = None) -> ActivationStats:
    """The self-generated statistics of every FFN module of the dense model at ``model_dir``."""
    import torch

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
    with Checkpoint(path) as ckpt:
        specs = [s for s in unit_map(ckpt.config, set(ckpt.where)).modules if s.kind == "ffn"]
        digest = model_digest(path)
    model, processor, _ = load_model(path)
    torch.set_num_threads(1)
    named = dict(model.named_modules())
    accs: dict[str, _Accumulator] = {}
    recorder = _Recorder()
    hooks = []
    for spec in specs:
        producer = next(p for p in spec.parts if p.role == "producer")
        linear = _module(named, spec.linear_of(producer))
        norm = _module(named, spec.input_norm or "")
        acc = accs[spec.name] = _Accumulator(spec.n_units, spec.hidden, recorder)
        act = _activation(torch, spec.activation)
        hooks.append(linear.register_forward_hook(lambda _m, _i, out, acc=acc, act=act: acc.add_activations(act(out))))
        hooks.append(norm.register_forward_pre_hook(lambda _m, inp, acc=acc: acc.add_stream(inp[0])))
    lengths = clip_lengths(config.clips, config.seed)
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    if config.audio == "espeak" and not seq2seq:
        raise InvalidArgumentError(f"{path}: --audio espeak reads the model's own transcripts; the model writes none")
    try:
        bar = Progress(len(lengths), "self-generated inputs", progress)
        with torch.no_grad():
            for i, target in enumerate(lengths):
                recorder.active = False  # the text espeak-ng reads is sampled unrecorded
                try:
                    inputs, seconds = _clip_inputs(torch, model, processor, config, i, target)
                finally:
                    recorder.active = True
                if seq2seq:
                    _forward_seq2seq(torch, model, recorder, inputs.input_features, seconds, config, i)
                else:
                    model(inputs.input_values)
                bar.update(f"{seconds:.1f} s")
    finally:
        for h in hooks:
            h.remove()
    modules = {name: acc.result() for name, acc in accs.items()}
    return ActivationStats(
        modules=modules,
        source=str(path),
        digest=digest,
        settings=settings,
    )


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
        rows = _clip_transcripts(torch, model, model.get_encoder()(feats), seconds, config, TEXT_OFFSET + index)
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
    <|endoftext|> or at ``bound`` new tokens. A seeded torch generator: reproducible."""
    gen = model.generation_config
    eot = int(gen.eos_token_id)
    logits_mask = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    logits_mask[eot + 1 :] = True  # special tokens other than <|endoftext|>
    logits_mask[list(gen.suppress_tokens or [])] = True
    generator = torch.Generator().manual_seed(seed)
    prompt = _prompt(model)
    rows = [list(prompt) for _ in range(count)]
    hidden = encoder_out.last_hidden_state.expand(count, -1, -1)
    tokens = torch.tensor(rows)
    past = None
    done = torch.zeros(count, dtype=torch.bool)
    for step in range(bound):
        with warnings.catch_warnings(), quiet_transformers():
            warnings.simplefilter("ignore", FutureWarning)  # the past_key_values keyword's new name varies
            out = model(encoder_outputs=(hidden,), decoder_input_ids=tokens, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[:, -1].float().masked_fill(logits_mask, float("-inf"))
        if step == 0:
            logits[:, list(gen.begin_suppress_tokens or [])] = float("-inf")
        nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
        for i in range(count):
            if not done[i]:
                rows[i].append(int(nxt[i]))
        done |= nxt == eot
        if bool(done.all()):
            break
        tokens = nxt[:, None]
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
        model(encoder_outputs=encoder_out, decoder_input_ids=torch.tensor([row]))


def _bound(model: Any, seconds: float) -> int:
    from ..models.whisper import max_new_tokens

    return max_new_tokens(seconds, model.config.max_target_positions - 4)


def _module(named: dict[str, Any], path: str) -> Any:
    found = named.get(path.removeprefix("model.")) or named.get(path)
    if found is None:
        raise InvalidArgumentError(f"{path} is not a module of the loaded model")
    return found
