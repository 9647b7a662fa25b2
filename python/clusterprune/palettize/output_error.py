"""Palettization that minimises a layer's output error instead of its weight error.

A linear layer y = W x palettized to Q errs on its output by E||(W - Q) x||^2 = sum over rows of
(w - q)^T H (w - q), with H = E[x x^T] the second moment of the layer's input (measured on
self-generated inputs by ``clusterprune selfgen --layer-inputs``). The weight error is the case
H = I.

Two steps per tensor:

1. each row's table (or group's) is the exact 1-D k-means of its weights (the Rust engine's
   weighted solver), column j weighted by what its rounding error costs once the columns chosen
   after it have absorbed what they can: 1 / U_jj^2 (below), the Schur complement of H's later
   columns;
2. the indices are chosen column by column, each rounding error compensated on the columns not
   yet chosen through H (GPTQ's update, Frantar et al. 2023, with the row's table as the grid):
   with U the upper Cholesky factor of H^-1, column j's error e = (w_j - q_j) / U_jj moves the
   remaining columns by -e U_j,(j+1):. Done a block of columns at a time (the update of the
   columns after a block is one matrix product). The columns are taken by descending diag(H)
   (GPTQ's activation order).

Both choices were made by the modelled output error under held-out statistics
(``scripts/output_error_heldout.py``; whisper tiny.en, 3 bits, relative to each layer's output
energy, summed over the layers): tables by diag(H) with the columns in their order 0.604, the
activation order 0.535, tables by 1 / U_jj^2 as well 0.509. Refitting each row's table to the
chosen indices under H and choosing again lowered it by 3-5 % more (in sample) at about ten
times the cost: left out.

H is damped by DAMP times its mean diagonal (numerical safety; a column whose input is always
zero gets weight 1 on the diagonal so that the factorisation exists). Everything is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Factor:
    """A tensor's damped input moment, factorised once: the columns in the order they are chosen
    and U, the upper Cholesky factor of H^-1 with its rows and columns in that order."""

    order: np.ndarray
    u: np.ndarray

    def column_weights(self) -> np.ndarray:
        """1 / U_jj^2 per column, in the columns' own order: what rounding column j costs once
        the columns chosen after it have absorbed what they can."""
        out = np.empty(self.order.size)
        out[self.order] = 1.0 / np.diag(self.u) ** 2
        return out


def factor(moment: np.ndarray, act_order: bool = True) -> Factor:
    """The factorisation of ``moment`` = H (cols, cols) that the index choice works in;
    ``act_order``: the columns taken by descending diag(H) (the most heard first, while the most
    columns remain to absorb their error), else in their order."""
    h = damped(moment)
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(h.shape[0])
    u = np.linalg.cholesky(np.linalg.inv(h[np.ix_(order, order)])).T  # H^-1 = U^T U, U upper
    return Factor(order, u)


def choose_indices(weights: np.ndarray, tables: np.ndarray, f: Factor) -> np.ndarray:
    """The indices (rows, cols, uint8) of ``weights`` (rows, cols) into each row's table
    (``tables``: (rows, 2^b), ascending, the values as stored) chosen column by column in the
    order of ``f`` with the rounding error compensated through H."""
    chosen = _choose_in_order(np.asarray(weights, dtype=np.float64)[:, f.order], tables, f.u)
    out = np.empty_like(chosen)
    out[:, f.order] = chosen
    return out


def _choose_in_order(w: np.ndarray, tables: np.ndarray, u: np.ndarray) -> np.ndarray:
    rows, cols = w.shape
    w = w.copy()
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


def output_error(
    weights: np.ndarray, dequantized: np.ndarray, moment: np.ndarray, row_weights: np.ndarray | None = None
) -> float:
    """sum over rows of (w - q)^T H (w - q): the modelled output error; with ``row_weights``, each
    row's term weighted (the output Fisher's diagonal: the modelled loss, twice)."""
    diff = np.asarray(weights, dtype=np.float64) - np.asarray(dequantized, dtype=np.float64)
    if row_weights is None:
        return float(np.sum((diff @ moment) * diff))
    return float(np.asarray(row_weights, dtype=np.float64) @ np.sum((diff @ moment) * diff, axis=1))
