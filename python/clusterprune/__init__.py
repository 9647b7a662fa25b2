"""clusterprune: data-free, training-free compression of speech foundation models by
channel-wise k-means parameter clustering (Xu et al., Interspeech 2026), with a Rust engine."""

from __future__ import annotations

__version__ = "0.1.0"

from .engine import KMeansResult, kmeans, top_k  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointNotFoundError,
    ClusterpruneError,
    CorruptCheckpointError,
    InvalidArgumentError,
    NonFiniteError,
    OutputExistsError,
    ShapeMismatchError,
    UnsupportedModelError,
)
from .inspect_checkpoint import inspect  # noqa: E402
from .pipeline import Report, compress, execute  # noqa: E402
from .plan import ModulePlan, Plan  # noqa: E402
from .strategies import DEFAULT_RECIPE, RECIPES, Recipe, make_recipe  # noqa: E402


def plan(
    src: str,
    sparsity: float = 0.1,
    *,
    recipe: str = DEFAULT_RECIPE,
    include: str | None = None,
    exclude: str | None = None,
    k_overrides: dict[str, int] | None = None,
    seed: int = 0,
    **options: object,
) -> Plan:
    """The compression plan for ``src`` (validated, nothing written)."""
    from .plan import make_plan

    return make_plan(
        src,
        sparsity,
        make_recipe(recipe, **options),
        include=include,
        exclude=exclude,
        k_overrides=k_overrides,
        seed=seed,
    )


def load_folded(path: str, **kwargs: object) -> object:
    """A transformers model from a folded checkpoint (needs torch + transformers)."""
    from .folded import load_folded as _load

    return _load(path, **kwargs)


__all__ = [
    "CheckpointNotFoundError",
    "ClusterpruneError",
    "CorruptCheckpointError",
    "InvalidArgumentError",
    "KMeansResult",
    "ModulePlan",
    "NonFiniteError",
    "OutputExistsError",
    "Plan",
    "RECIPES",
    "Recipe",
    "Report",
    "ShapeMismatchError",
    "UnsupportedModelError",
    "compress",
    "execute",
    "inspect",
    "kmeans",
    "load_folded",
    "make_recipe",
    "plan",
    "top_k",
]
