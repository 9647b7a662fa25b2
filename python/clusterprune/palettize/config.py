"""The one config object of a palettization run, :class:`PaletteConfig`: every choice is a field
whose metadata holds its help text and allowed values (the CLI flags follow from them)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..engine.rust import BITS, PALETTE_SOLVERS
from ..errors import InvalidArgumentError
from ..options import opt, typed_values

METHODS = PALETTE_SOLVERS
GRANULARITIES = ("per-channel", "per-grouped-channel", "per-tensor")
ALLOCATIONS = ("uniform", "variance", "error")
WEIGHTINGS = ("input", "none")
LUT_DTYPES = ("auto", "float16", "float32")


@dataclass(frozen=True)
class PaletteConfig:
    """Every choice of one palettization; ``PaletteConfig()`` is the default (4 bits per channel,
    exact 1-D k-means of the weights, the token embedding included)."""

    bits: int = opt(4, "bits per weight (2^bits table entries); with --avg-bits, the mixed plan's centre", BITS)
    avg_bits: float = opt(0.0, "mixed bits: the average bits per palettized weight (0: every tensor gets --bits)")
    allocation: str = opt(
        "uniform",
        "uniform: --bits everywhere; variance: the paper's variance terciles (+1 / 0 / -1 bit); error: "
        "the bits that minimise the summed modelled relative output error at --avg-bits (with --stats: each "
        "weighted by what its block writes into the residual stream)",
        ALLOCATIONS,
    )
    min_bits: int = opt(2, "fewest bits the mixed plans give a tensor", BITS)
    max_bits: int = opt(8, "most bits the mixed plans give a tensor", BITS)
    granularity: str = opt(
        "per-channel", "one table per output channel (row), per group of rows, or per tensor", GRANULARITIES
    )
    group_size: int = opt(16, "rows sharing one table with per-grouped-channel (must divide every tensor's rows)")
    method: str = opt(
        "exact",
        "1-D k-means solver: exact (dynamic programming, optimal), binned (exact on 32k bins, then Lloyd; faster on long rows), lloyd",
        METHODS,
    )
    max_iter: int = opt(100, "Lloyd iterations at most (binned, lloyd)")
    weighting: str = opt(
        "none",
        "input: weight each column by its modelled input second moment (LayerNorm gamma^2 + beta^2, GELU "
        "output moments for fc2, value moments for out_proj); none: plain weight MSE (the default: it measured "
        "better on tiny.en)",
        WEIGHTINGS,
        experimental=True,
    )
    outliers: float = opt(
        0.0,
        "fraction of each table's weights kept exactly (largest weighted magnitude), in [0, 0.5]",
        experimental=True,
    )
    row_scale: bool = opt(False, "divide each row by its max |w| before clustering (coremltools' per-channel scale)")
    min_size: int = opt(2048, "tensors with fewer elements are left as they are (coremltools' weight_threshold)")
    include: str = opt(
        "", "palettize only tensors whose name matches (default: every floating tensor of >= 2 dims and --min-size)"
    )
    exclude: str = opt("embed_positions", "never palettize tensors whose name matches (default: positional embeddings)")
    embedding_bits: int = opt(0, "bits of the token embedding (0: as the plan says)")
    lut_dtype: str = opt(
        "auto", "table entries: auto (float16; bfloat16 for a bf16 source), float16 or float32", LUT_DTYPES
    )

    def validate(self) -> PaletteConfig:
        typed = typed_values(self, "palette")
        c = replace(self, **typed)
        if not (math.isfinite(c.avg_bits) and math.isfinite(c.outliers)):
            raise InvalidArgumentError("avg-bits and outliers must be finite numbers")
        if c.embedding_bits and c.embedding_bits not in BITS:
            raise InvalidArgumentError(f"embedding-bits {c.embedding_bits} is not one of: {', '.join(map(str, BITS))}")
        if c.group_size < 1:
            raise InvalidArgumentError(f"group-size {c.group_size} must be >= 1")
        if not 0.0 <= c.outliers <= 0.5:
            raise InvalidArgumentError(f"outliers {c.outliers} is outside [0, 0.5]")
        if c.min_size < 0 or c.max_iter < 0:
            raise InvalidArgumentError("min-size and max-iter must be >= 0")
        if c.min_bits > c.max_bits:
            raise InvalidArgumentError(f"min-bits {c.min_bits} is above max-bits {c.max_bits}")
        if c.avg_bits and c.allocation == "uniform":
            c = replace(c, allocation="error")  # an average asks for a mixed plan
        if c.allocation == "error":
            target = c.avg_bits or float(c.bits)
            if not c.min_bits <= target <= c.max_bits:
                raise InvalidArgumentError(
                    f"avg-bits {target} is outside [min-bits {c.min_bits}, max-bits {c.max_bits}]"
                )
        if c.allocation == "variance" and c.avg_bits and c.avg_bits != c.bits:
            raise InvalidArgumentError("the variance plan averages --bits exactly; give --bits, not --avg-bits")
        for flag in ("include", "exclude"):
            try:
                re.compile(getattr(c, flag))
            except re.error as exc:
                raise InvalidArgumentError(
                    f"--{flag} {getattr(c, flag)!r} is not a regular expression: {exc}"
                ) from None
        return c

    @property
    def mixed(self) -> bool:
        return self.allocation != "uniform"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def options(cls) -> list[Any]:
        return list(fields(cls))


def make_config(config: PaletteConfig | None = None, **overrides: Any) -> PaletteConfig:
    """A config (default: ``PaletteConfig()``) with some fields overridden (None means 'keep')."""
    if config is not None and not isinstance(config, PaletteConfig):
        raise InvalidArgumentError(f"config must be a PaletteConfig (or None), not {type(config).__name__}")
    base = config or PaletteConfig()
    known = {f.name for f in fields(PaletteConfig)}
    bad = set(overrides) - known
    if bad:
        raise InvalidArgumentError(f"unknown palette option(s): {', '.join(sorted(bad))}")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None}).validate()
