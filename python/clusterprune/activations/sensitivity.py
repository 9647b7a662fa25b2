"""How much the model's own output distribution hears each layer's output (``selfgen
--sensitivity``): per output channel r of every linear layer and convolution, G_r = E[sum over
positions t of (d log p(y) / d y_tr)^2], the diagonal of the output Fisher information, with y
drawn from the model itself (Whisper: the transcripts it samples of each clip; CTC models: one
label per frame drawn from the frame's distribution). No reference text: the score of a sample of
the model's own distribution.

Why: a layer palettized to Q moves the model's log-likelihood, to second order, by
1/2 sum_r G_r (w_r - q_r)^T H (w_r - q_r) (the Kronecker-factored Fisher, rows independent;
H = E[x x^T] the layer's input moment from ``--layer-inputs``): a loss in one unit for every layer,
what ``palettize --avg-bits --stats`` spends bits on.

Each sequence's gradient is squared alone in the decoder; the encoder's outputs receive the sum of
a clip's transcripts' gradients, whose square has the same expectation (the cross terms are
products of independent scores, of mean zero). A clip's sums are added into the totals once the
clip is done, in clip order (float64), whatever the number of processes. Parameters get no
gradient: only the layers' outputs are asked for theirs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


def sampling_mask(torch: Any, model: Any, device: Any) -> Any:
    """The logits a Whisper model never samples (special tokens but <|endoftext|>, the config's
    suppressed tokens), True where masked."""
    gen = model.generation_config
    mask = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
    mask[int(gen.eos_token_id) + 1 :] = True
    mask[list(gen.suppress_tokens or [])] = True
    return mask


class Sensitivity:
    """The hooks and sums of ``selfgen --sensitivity``: one float64 vector per weight tensor (its
    output channels), the count of sequences, and a clip's sums until the clip is done. Sends and
    receives like a module's sums (``small``, no Gram blocks)."""

    blocks: list[Any] = []

    def __init__(self, torch: Any, model: Any, tensors: set[str]) -> None:
        self.torch = torch
        self.active = False
        self.layers: dict[str, int] = {}  # weight tensor: the axis of its output's channels
        self.hooks = []
        for name, module in model.named_modules():
            tensor = f"{name}.weight"
            if tensor not in tensors or not isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)):
                continue
            self.layers[tensor] = 1 if isinstance(module, torch.nn.Conv1d) else -1
            self.hooks.append(module.register_forward_hook(lambda _m, _i, out, t=tensor: self._watch(t, out)))
        try:  # the decoder's first activations: its input is token ids, which have no gradient
            embeddings = model.get_input_embeddings()
        except (NotImplementedError, AttributeError):  # a CTC model: its input is the waveform
            embeddings = None
        if embeddings is not None:
            self.hooks.append(embeddings.register_forward_hook(lambda _m, _i, out: self._track(out)))
        for p in model.parameters():
            p.requires_grad_(False)
        self.sums = {t: torch.zeros(self._width(model, t), dtype=torch.float64) for t in self.layers}
        self.clip = {t: torch.zeros_like(v) for t, v in self.sums.items()}
        self.count = torch.zeros(1, dtype=torch.float64)
        self.clip_count = 0

    @staticmethod
    def _width(model: Any, tensor: str) -> int:
        return int(model.get_parameter(tensor).shape[0])

    def _track(self, out: Any) -> None:
        if self.active and out.is_floating_point():
            out.requires_grad_(True)

    def _watch(self, tensor: str, out: Any) -> None:
        if self.active and out.requires_grad:
            out.register_hook(lambda grad: self._add(tensor, grad))

    def _add(self, tensor: str, grad: Any) -> None:
        axis = self.layers[tensor]
        g = grad.detach().double().movedim(axis, -1).reshape(-1, grad.shape[axis]).cpu()
        self.clip[tensor] += (g * g).sum(dim=0)

    def small(self) -> list[Any]:
        """The sums, in the one order they are sent and added in."""
        return [self.sums[t] for t in sorted(self.sums)] + [self.count]

    def zero_small(self) -> None:
        for t in self.small():
            t.zero_()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()

    def finish_clip(self) -> None:
        for t, v in self.clip.items():
            self.sums[t] += v
            v.zero_()
        self.count += self.clip_count
        self.clip_count = 0

    def result(self) -> tuple[dict[str, np.ndarray], int]:
        """{weight tensor: G per output channel}, and the sequences it is the mean over."""
        count = int(self.count.item())
        return {t: v.numpy() / max(count, 1) for t, v in self.sums.items()}, count

    @contextmanager
    def _watching(self) -> Iterator[None]:
        """Gradients on, and the hooks watching the layers' outputs, inside the block."""
        self.active = True
        try:
            with self.torch.enable_grad():
                yield
        finally:
            self.active = False

    def seq2seq(self, model: Any, feats: Any, rows: list[list[int]], prompt: int) -> None:
        """One clip of a Whisper model: the encoder run once, each sampled transcript (prompt
        tokens first) teacher-forced; the summed log-likelihood of the sampled tokens, under the
        distribution they were sampled from, differentiated once."""
        torch = self.torch
        mask = sampling_mask(torch, model, feats.device)
        first = list(model.generation_config.begin_suppress_tokens or [])
        with self._watching():
            hidden = model.get_encoder()(feats.detach().clone().requires_grad_(True)).last_hidden_state
            total = hidden.new_zeros((), dtype=torch.float64)
            for row in rows:
                ids = torch.tensor([row], device=feats.device)
                logits = model(encoder_outputs=(hidden,), decoder_input_ids=ids[:, :-1]).logits[0]
                logits = logits[prompt - 1 :].double().masked_fill(mask, float("-inf"))
                logits[0, first] = float("-inf")  # the first sampled token never is one of these
                targets = ids[0, prompt:]
                log_p = torch.log_softmax(logits, dim=-1)
                total = total + log_p[torch.arange(targets.shape[0]), targets].sum()
                self.clip_count += 1
            total.backward()

    def ctc(self, model: Any, values: Any, seed: int) -> None:
        """One clip of a CTC model: a label per frame drawn from the frame's distribution (a
        seeded CPU generator), its log-likelihood differentiated."""
        torch = self.torch
        with self._watching():
            logits = model(values.detach().clone().requires_grad_(True)).logits[0].double()
            log_p = torch.log_softmax(logits, dim=-1)
            generator = torch.Generator().manual_seed(seed)
            labels = torch.multinomial(log_p.detach().exp().cpu(), 1, generator=generator)[:, 0]
            log_p[torch.arange(labels.shape[0]), labels.to(log_p.device)].sum().backward()
            self.clip_count += 1
