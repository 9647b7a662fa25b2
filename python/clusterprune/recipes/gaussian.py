"""Data-free scores under a Gaussian LayerNorm input model: the input of a module is the feeding
LayerNorm's affine map of a standard Gaussian, x = gamma * z + beta. From the weights alone this
gives every FFN neuron's pre-activation distribution, its output variance and mean, and for heads
the variance of their output and the sharpness of their attention."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError
from ..models.units import UnitParts, blocks


@dataclass(frozen=True)
class ModuleContext:
    """What a score may know beyond the unit parts: the LayerNorm feeding the module (the values,
    for attention), the module kind, the FFN activation and the size of one unit's rows."""

    norm_weight: np.ndarray | None = None
    norm_bias: np.ndarray | None = None
    activation: str = "gelu"
    kind: str = "ffn"
    unit_rows: int = 1
    tokens: int | None = None  # typical number of attended tokens (attention modules)
    moments: tuple[np.ndarray, np.ndarray] | None = None  # (mean, covariance) of the FFN activations
    stream_variance: float | None = None  # of the residual stream entering the module's LayerNorm

    def require_norm(self, what: str) -> tuple[np.ndarray, np.ndarray]:
        if self.norm_weight is None or self.norm_bias is None:
            raise InvalidArgumentError(
                f"{what} needs the LayerNorm that feeds the module (not found in the checkpoint)"
            )
        return self.norm_weight, self.norm_bias


def _erf(x: np.ndarray) -> np.ndarray:
    return np.frompyfunc(math.erf, 1, 1)(x).astype(np.float64)


def fast_erf(x: np.ndarray) -> np.ndarray:
    """Vectorised erf (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7) for large sample arrays."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": lambda a: 0.5 * a * (1.0 + (_erf if a.size < 65536 else fast_erf)(a / math.sqrt(2.0))),
    "gelu_new": lambda a: 0.5 * a * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a**3))),
    "gelu_pytorch_tanh": lambda a: 0.5 * a * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a**3))),
    "relu": lambda a: np.maximum(a, 0.0),
    "silu": lambda a: a / (1.0 + np.exp(-a)),
    "swish": lambda a: a / (1.0 + np.exp(-a)),
}


def activation_moments(
    mu: np.ndarray, sigma: np.ndarray, activation: str, nodes: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(E[f(a)], Var[f(a)]) for a ~ N(mu, sigma^2), by Gauss-Hermite quadrature."""
    if activation not in ACTIVATIONS:
        raise InvalidArgumentError(f"activation {activation!r} has no variance model (known: {', '.join(ACTIVATIONS)})")
    x, w = np.polynomial.hermite.hermgauss(nodes)
    a = mu[:, None] + math.sqrt(2.0) * sigma[:, None] * x[None, :]
    f = ACTIVATIONS[activation](a)
    mean = (f * w).sum(axis=1) / math.sqrt(math.pi)
    second = (f * f * w).sum(axis=1) / math.sqrt(math.pi)
    return mean, np.maximum(second - mean * mean, 0.0)


def activation_variance(mu: np.ndarray, sigma: np.ndarray, activation: str, nodes: int = 64) -> np.ndarray:
    """Var[f(a)] for a ~ N(mu, sigma^2), by Gauss-Hermite quadrature."""
    return activation_moments(mu, sigma, activation, nodes)[1]


def _ffn_preactivation(parts: UnitParts, ctx: ModuleContext) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every neuron's pre-activation a_i = w_i.x + b_i when the
    input is the feeding LayerNorm's affine map of a standard Gaussian, x = gamma * z + beta."""
    gamma, beta = ctx.require_norm("the Gaussian LayerNorm model")
    (w,) = blocks(parts, ("producer",))
    biases = blocks(parts, ("bias",))
    b = biases[0][:, 0] if biases else np.zeros(w.shape[0])
    return w @ beta + b, np.sqrt(((w * gamma[None, :]) ** 2).sum(axis=1))


def ffn_activation_mean(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    """E[act(a_i)] of every FFN neuron under the Gaussian LayerNorm input model."""
    mu, sigma = _ffn_preactivation(parts, ctx)
    return activation_moments(mu, sigma, ctx.activation)[0]


def _value_path(parts: UnitParts, ctx: ModuleContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per head h: V_h (n, d, hidden) value rows, its value bias (n, d) and O_h (n, d, hidden)
    = the head's columns of the output projection, transposed."""
    n, d = parts[0][1].shape[0], ctx.unit_rows
    v = next((m for p, m in parts if p.role == "producer" and p.tensor.endswith("v_proj.weight")), None)
    o = next((m for p, m in parts if p.role == "consumer"), None)
    if v is None or o is None:
        raise InvalidArgumentError("the head model needs v_proj and out_proj weights")
    vb = next((m for p, m in parts if p.role == "bias" and p.tensor.endswith("v_proj.bias")), None)
    hidden = v.shape[1] // d
    bias = vb.reshape(n, d) if vb is not None else np.zeros((n, d))
    return v.reshape(n, d, hidden), bias, o.reshape(n, d, hidden)


def gauss_ln(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    """Data-free importance under the Gaussian LayerNorm input model x = gamma * z + beta.

    FFN neuron i: a_i = w_i.x + b_i is N(w_i.beta + b_i, |w_i * gamma|^2); the score is
    Var[act(a_i)] * |fc2 column i|^2, the variance the neuron adds to the block's output.
    Attention head h (one token attended; the softmax weights sum to 1, so the head's mean output
    is a constant that removal can fold into the output bias): the variance of the head's output,
    |O_h^T V_h diag(gamma)|_F^2 = sum((O_h O_h^T) * (V_h diag(gamma^2) V_h^T))."""
    gamma, _ = ctx.require_norm("score gauss_ln")
    if ctx.kind == "attention":
        v, _, o = _value_path(parts, ctx)
        vg = v * gamma[None, None, :]
        return np.einsum("hij,hij->h", o @ o.transpose(0, 2, 1), vg @ vg.transpose(0, 2, 1))
    mu, sigma = _ffn_preactivation(parts, ctx)
    (consumer,) = blocks(parts, ("consumer",))
    return activation_variance(mu, sigma, ctx.activation) * np.sum(consumer * consumer, axis=1)


def _head_rows(parts: UnitParts, suffix: str) -> np.ndarray | None:
    """The unit matrix of one attention part (e.g. "q_proj.weight"), or None when absent."""
    return next((m for p, m in parts if p.tensor.endswith(suffix)), None)


def attention_logit_variance(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    """Per head: the variance of the attention logits q.k_j / sqrt(d) over keys j, averaged over
    queries, when queries and keys come from independent Gaussian LayerNorm inputs (same LayerNorm
    for both; for cross-attention this models the keys' LayerNorm for both)."""
    gamma, beta = ctx.require_norm("the attention sharpness model")
    wq, wk, bq = (_head_rows(parts, x) for x in ("q_proj.weight", "k_proj.weight", "q_proj.bias"))
    if wq is None or wk is None:
        raise InvalidArgumentError("the attention sharpness model needs q_proj and k_proj weights")
    d = ctx.unit_rows
    heads = wq.shape[0]
    wq3, wk3 = wq.reshape(heads, d, -1), wk.reshape(heads, d, -1)  # unit rows: (d, hidden) per head
    q_mean = wq3 @ beta + (bq.reshape(heads, d) if bq is not None else 0.0)
    a = wk3 * gamma[None, None, :]  # per head: Gamma W_k^T, transposed (d, hidden)
    # E_q |A^T q|^2 with q ~ N(q_mean, W_q Gamma^2 W_q^T)
    gram = a @ a.transpose(0, 2, 1)  # (heads, d, d)
    wqg = wq3 * gamma[None, None, :]
    cov_q = wqg @ wqg.transpose(0, 2, 1)
    return (np.einsum("hi,hij,hj->h", q_mean, gram, q_mean) + np.einsum("hij,hij->h", gram, cov_q)) / d


def gauss_attn(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    """gauss_ln for heads, times how much of that variance survives the attention average: with
    T attended tokens and logits of variance s^2, sum_j alpha_j^2 ~ exp(s^2) / T (log-normal
    softmax), at most 1. Diffuse heads average their input towards its mean, which removal with
    compensation keeps; sharp heads pass the variance through. FFN neurons: as gauss_ln."""
    score = gauss_ln(parts, ctx)
    if ctx.kind != "attention" or not ctx.tokens:
        return score
    s2 = attention_logit_variance(parts, ctx)
    return score * np.minimum(1.0, np.exp(np.minimum(s2, 50.0)) / ctx.tokens)


def expected_contribution(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    """(N, hidden): every unit's mean contribution to the module's output under the Gaussian
    LayerNorm model: E[act(a_i)] * fc2 column i for neurons, O_h^T (V_h beta + b_h) for heads
    (exact for the value bias whatever the input, since the attention weights sum to 1)."""
    gamma, beta = ctx.require_norm("mean compensation")
    if ctx.kind == "attention":
        v, vb, o = _value_path(parts, ctx)
        return np.einsum("hd,hdo->ho", v @ beta + vb, o)
    mu, sigma = _ffn_preactivation(parts, ctx)
    mean, _ = activation_moments(mu, sigma, ctx.activation)
    (consumer,) = blocks(parts, ("consumer",))
    return mean[:, None] * consumer
