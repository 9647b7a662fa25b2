"""Palettization that minimises a layer's output error instead of its weight error.

A linear layer y = W x palettized to Q errs on its output by E||(W - Q) x||^2 = sum over rows of
(w - q)^T H (w - q), with H = E[x x^T] the second moment of the layer's input (measured on
self-generated inputs by ``clusterprune selfgen --layer-inputs``). The weight error is the case
H = I.

Two steps per tensor:

1. each row's table (or group's) is the exact 1-D k-means of its weights weighted by diag(H)
   (the Rust engine's weighted solver);
2. the indices are chosen column by column, in order, each rounding error compensated on the
   columns not yet chosen through H (GPTQ's update, Frantar et al. 2023, with the row's table as
   the grid): with U the upper Cholesky factor of H^-1, column j's error e = (w_j - q_j) / U_jj
   moves the remaining columns by -e U_j,(j+1):. Done a block of columns at a time (the update of
   the columns after a block is one matrix product).

H is damped by DAMP times its mean diagonal (numerical safety; a column whose input is always
zero gets weight 1 on the diagonal so that the factorisation exists). Everything is float64.
"""

from __future__ import annotations

import numpy as np

DAMP = 0.01
BLOCK = 128


def damped(moment: np.ndarray) -> np.ndarray:
    """H + DAMP * mean(diag H) * I, with a dead column's diagonal set to 1 first."""
    h = np.array(moment, dtype=np.float64)
    diagonal = np.arange(h.shape[0])
    dead = np.diag(h) <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[diagonal[dead], diagonal[dead]] = 1.0
    h[diagonal, diagonal] += DAMP * max(float(np.mean(np.diag(h))), 1e-30)
    return h


def nearest(tables: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row, the index of the table entry nearest to the row's value (ties: the lower index).
    ``tables``: (rows, 2^b) ascending; ``values``: (rows,)."""
    return np.argmin(np.abs(tables - values[:, None]), axis=1)


def choose_indices(weights: np.ndarray, tables: np.ndarray, moment: np.ndarray) -> np.ndarray:
    """The indices (rows, cols, uint8) of ``weights`` (rows, cols) into each row's table
    (``tables``: (rows, 2^b), ascending, the values as stored) chosen column by column with the
    rounding error compensated through ``moment`` = H (cols, cols)."""
    rows, cols = weights.shape
    u = np.linalg.cholesky(np.linalg.inv(damped(moment))).T  # H^-1 = U^T U, U upper
    w = np.array(weights, dtype=np.float64)
    t = np.asarray(tables, dtype=np.float64)
    out = np.empty((rows, cols), dtype=np.uint8)
    for c0 in range(0, cols, BLOCK):
        c1 = min(c0 + BLOCK, cols)
        block = w[:, c0:c1].copy()
        errors = np.empty_like(block)
        for j in range(c1 - c0):
            idx = nearest(t, block[:, j])
            out[:, c0 + j] = idx
            err = (block[:, j] - t[np.arange(rows), idx]) / u[c0 + j, c0 + j]
            block[:, j:] -= np.outer(err, u[c0 + j, c0 + j : c1])
            errors[:, j] = err
        w[:, c1:] -= errors @ u[c0:c1, c1:]
    return out


def output_error(weights: np.ndarray, dequantized: np.ndarray, moment: np.ndarray) -> float:
    """sum over rows of (w - q)^T H (w - q): the modelled output error."""
    diff = np.asarray(weights, dtype=np.float64) - np.asarray(dequantized, dtype=np.float64)
    return float(np.sum((diff @ moment) * diff))
