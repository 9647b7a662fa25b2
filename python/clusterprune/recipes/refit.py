"""Refitting the consumer of a pruned FFN under the Gaussian LayerNorm input model (data-free).

After removing neurons, the kept neurons' fc2 columns and fc2's bias are re-solved so that the
block's output stays as close as possible, in mean square, to the original one when the input is
the feeding LayerNorm's affine map of a standard Gaussian (x = gamma * z + beta). The activation
covariance is estimated from seeded synthetic Gaussian inputs: no data, deterministic.
"""

from __future__ import annotations

import numpy as np

from ..models.units import UnitParts, blocks
from .gaussian import ACTIVATIONS, ModuleContext

SAMPLES_PER_UNIT = 32  # synthetic inputs per neuron
BATCH = 2048
RIDGE = 1e-6  # relative to the kept neurons' mean activation variance: numerical safety only


def activation_covariance(parts: UnitParts, ctx: ModuleContext, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (N,), covariance (N, N)) of the FFN activations under the Gaussian input model."""
    gamma, beta = ctx.require_norm("consumer refit")
    (w,) = blocks(parts, ("producer",))
    biases = blocks(parts, ("bias",))
    b = biases[0][:, 0] if biases else np.zeros(w.shape[0])
    n, hidden = w.shape
    total = SAMPLES_PER_UNIT * n
    rng = np.random.Generator(np.random.PCG64(seed))
    act = ACTIVATIONS[ctx.activation]
    first = np.zeros(n)
    second = np.zeros((n, n))
    for start in range(0, total, BATCH):
        rows = min(BATCH, total - start)
        x = rng.standard_normal((rows, hidden)) * gamma + beta
        f = act(x @ w.T + b)
        first += f.sum(axis=0)
        second += f.T @ f
    mean = first / total
    return mean, second / total - np.outer(mean, mean)


def refit_consumer(
    parts: UnitParts, labels: np.ndarray, ctx: ModuleContext, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(new consumer rows of the kept neurons in label order (K, hidden), fc2 bias shift (hidden,)).

    Least squares: the kept neurons' activations f_K predict the full module's output f C; with
    the covariance Sigma (``ctx.moments`` when given, else the Gaussian model's),
    X = (Sigma_KK)^-1 Sigma_K,all C and the bias absorbs the mean residual."""
    mean, cov = ctx.moments if ctx.moments is not None else activation_covariance(parts, ctx, seed)
    (consumer,) = blocks(parts, ("consumer",))
    kept = np.flatnonzero(labels >= 0)
    kept = kept[np.argsort(labels[kept], kind="stable")]  # label order = folded unit order
    skk = cov[np.ix_(kept, kept)]
    ridge = RIDGE * max(float(np.trace(skk)) / max(len(kept), 1), 1e-30)
    skk += 0.0  # skk + ridge * I in place: the same numbers (-0.0 becomes 0.0), no N x N identity
    diagonal = np.arange(len(kept))
    skk[diagonal, diagonal] += ridge
    x = np.linalg.solve(skk, cov[kept] @ consumer)
    shift = mean @ consumer - mean[kept] @ x
    return x, shift
