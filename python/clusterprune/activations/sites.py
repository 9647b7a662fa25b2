"""Where the inputs of a model's linear layers are recorded (``selfgen --layer-inputs``): one site
per distinct input, and the weight tensors that read it."""

from __future__ import annotations

import re
from typing import Any


def input_sites(model: Any, seq2seq: bool) -> dict[str, tuple[Any, list[str], bool]]:
    """{site: (module to hook, the weight tensors that read its input, whether the input is the
    module's output)} for every linear layer but an FFN's consumer (its input is the FFN module's
    activations): q, k and v of one self-attention share q's site; every decoder layer's
    cross-attention k and v read the encoder output, recorded once (layer 0); the output
    projection (tied to the token embedding) reads the decoder's final LayerNorm."""
    import torch

    named = dict(model.named_modules())
    sites: dict[str, tuple[Any, list[str], bool]] = {}
    for name, module in named.items():
        if not isinstance(module, torch.nn.Linear) or re.search(r"(fc2|output_dense)$", name):
            continue
        tensor = f"{name}.weight"
        if re.search(r"encoder_attn\.[kv]_proj$", name):
            site = re.sub(r"layers\.\d+\.encoder_attn\.[kv]_proj$", "layers.0.encoder_attn.k_proj", name)
        elif re.search(r"\.[kv]_proj$", name):
            site = name[:-6] + "q_proj"
        elif name in ("proj_out", "lm_head") and seq2seq:
            site = "model.decoder.layer_norm"
            tied = "model.decoder.embed_tokens.weight"
            sites.setdefault(site, (named[site], [], True))[1].extend([tensor, tied])
            continue
        else:
            site = name
        sites.setdefault(site, (named[site], [], False))[1].append(tensor)
    return sites
