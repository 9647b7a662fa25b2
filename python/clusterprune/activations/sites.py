"""Where the inputs of a model's linear layers and convolutions are recorded (``selfgen
--layer-inputs``): one site per distinct input, and the weight tensors that read it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Site:
    """One recorded input: the module hooked, the weight tensors that read it, its width, and how a
    hooked tensor becomes rows of that width (``rows``). ``output``: the input is the module's
    output (a LayerNorm's), else the module's own input."""

    module: Any
    width: int
    output: bool = False
    tensors: list[str] = field(default_factory=list)
    rows: Callable[[Any], Any] = lambda x: x


def conv_patches(torch: Any, conv: Any) -> Callable[[Any], Any]:
    """What a 1-D convolution (groups 1, dilation 1) multiplies its weight by: its input
    (batch, channels, length), zero-padded as the convolution pads it, cut into the windows it
    reads, one row (channels x kernel, channel-major as the weight's rows are) per output
    position."""
    (kernel,), (stride,), (pad,) = conv.kernel_size, conv.stride, conv.padding

    def patches(x: Any) -> Any:
        x = torch.nn.functional.pad(x, (pad, pad)) if pad else x
        windows = x.unfold(2, kernel, stride)  # (batch, channels, positions, kernel)
        return windows.permute(0, 2, 1, 3).reshape(-1, x.shape[1] * kernel)

    return patches


def _plain_conv(torch: Any, module: Any) -> bool:
    return (
        isinstance(module, torch.nn.Conv1d)
        and module.groups == 1
        and tuple(module.dilation) == (1,)
        and isinstance(module.padding, tuple)
        and module.padding_mode == "zeros"
        and hasattr(module, "weight")
        and not hasattr(module, "parametrizations")  # weight-normed (wav2vec2's positional conv)
    )


def input_sites(model: Any, seq2seq: bool) -> dict[str, Site]:
    """{site: Site} for every linear layer but an FFN's consumer (its input is the FFN module's
    activations) and every plain 1-D convolution (its input windows, :func:`conv_patches`): q, k
    and v of one self-attention share q's site; every decoder layer's cross-attention k and v
    read the encoder output, recorded once (layer 0); the output projection reads the decoder's
    final LayerNorm, and so does the token embedding when the two are tied (one tensor)."""
    import torch

    named = dict(model.named_modules())
    sites: dict[str, Site] = {}
    for name, module in named.items():
        if _plain_conv(torch, module):
            width = int(module.in_channels) * int(module.kernel_size[0])
            sites[name] = Site(module, width, tensors=[f"{name}.weight"], rows=conv_patches(torch, module))
            continue
        if not isinstance(module, torch.nn.Linear) or re.search(r"(fc2|output_dense)$", name):
            continue
        tensor = f"{name}.weight"
        if re.search(r"encoder_attn\.[kv]_proj$", name):
            site = re.sub(r"layers\.\d+\.encoder_attn\.[kv]_proj$", "layers.0.encoder_attn.k_proj", name)
        elif re.search(r"\.[kv]_proj$", name):
            site = name[:-6] + "q_proj"
        elif name in ("proj_out", "lm_head") and seq2seq:
            site = "model.decoder.layer_norm"
            norm = named[site]
            entry = sites.setdefault(site, Site(norm, int(norm.normalized_shape[0]), output=True))
            entry.tensors.append(tensor)
            if module.weight is model.get_input_embeddings().weight:  # tied: the embedding is read here too
                entry.tensors.append("model.decoder.embed_tokens.weight")
            continue
        else:
            site = name
        linear = named[site]
        sites.setdefault(site, Site(linear, int(linear.in_features))).tensors.append(tensor)
    return sites
