"""The one config object of a compression run, :class:`Recipe`, and the named recipes.

Every choice is one dataclass field whose metadata holds its help text and its allowed values;
the command line builds its override flags from these fields (``clusterprune compress --help``),
:meth:`Recipe.validate` checks them, and :meth:`Recipe.to_dict` / :meth:`Recipe.from_dict` are
what the output's metadata stores and what is read back. A new option = one field + one test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .engine.rust import INITS
from .errors import InvalidArgumentError
from .options import opt, typed_values
from .recipes.registries import FEATURES, FUSIONS, SCORES, WEIGHTINGS

METHODS = ("kmeans", "magnitude", "obs")
KINDS = ("all", "ffn", "attention")
ALLOCATIONS = ("uniform", "variance")
ACTIVATION_MODELS = ("gaussian", "selfgen")
VARIANCE_GROUPS = ("kind", "module_type")
BUDGETS = ("units", "params")


@dataclass(frozen=True)
class Recipe:
    """Every choice of one compression run; ``Recipe()`` is the default recipe, ``datafree``."""

    name: str = field(default="datafree", metadata={"help": "the named recipe these choices started from"})
    method: str = opt(
        "magnitude",
        "kmeans (cluster and merge units), magnitude (remove the lowest-scoring) or obs (FFN neurons removed one "
        "at a time by the optimal-brain-surgeon rule under the activation model, kept fc2 columns re-solved)",
        METHODS,
    )
    allocation: str = opt(
        "variance",
        "uniform: K = round(N (1 - sparsity)) in every module; variance: the paper's mixed sparsity (modules ranked "
        "by parameter variance, the high third keeps 1.2x K, the low third gives up the difference)",
        ALLOCATIONS,
    )
    feature: str = opt("weights", "what k-means sees of a unit", FEATURES)
    weighting: str = opt("none", "scaling of the feature blocks before clustering", WEIGHTINGS)
    fusion: str = opt(
        "centroid",
        "how a cluster becomes one unit: centroid (folded consumer summed), mean, or cosine "
        "(mean direction x mean norm of the producers)",
        FUSIONS,
    )
    score: str = opt("gauss_ln", "removal score of a unit (method magnitude)", SCORES)
    variance_groups: str = opt("kind", "module types ranked together by the variance allocator", VARIANCE_GROUPS)
    high_factor: float = opt(1.2, "K multiplier of the high-variance third (paper 1.2)")
    init: str = opt("auto", "k-means initialisation", INITS)
    max_iter: int = opt(100, "maximum Lloyd iterations")
    kinds: str = opt("ffn", "module kinds compressed", KINDS)
    budget: str = opt(
        "units",
        "units: --sparsity is the fraction of units of every compressed module; params: of all compressible "
        "parameters of the model",
        BUDGETS,
    )
    remove_heads: int = opt(
        0, "remove exactly this many heads from every encoder self-attention module", experimental=True
    )
    compensate: bool = opt(False, "fold removed units' modelled mean output into the consumer bias (magnitude only)")
    refit: bool = opt(
        False, "re-solve kept FFN neurons' fc2 columns under the Gaussian LayerNorm input model (magnitude only)"
    )

    repair: bool = opt(
        False,
        "method kmeans, FFN: rescale each merged neuron's pre-activation to its members' mean variance under the "
        "Gaussian LayerNorm model, keeping its mean (model folding's data-free repair)",
        experimental=True,
    )
    activations: str = opt(
        "gaussian",
        "activation model of method obs: gaussian (from the weights) or selfgen (a statistics file made by "
        "`clusterprune selfgen`: the model's own response to synthetic speech-like audio; --stats FILE)",
        ACTIVATION_MODELS,
        experimental=True,
    )

    def validate(self) -> Recipe:
        """The recipe with every value checked and of its field's Python type (numpy scalars are
        accepted and converted, so the recipe stays JSON-serialisable)."""
        typed = typed_values(self, "recipe")
        checked = replace(self, **typed)
        if not (checked.high_factor >= 1.0) or math.isinf(checked.high_factor):
            raise InvalidArgumentError(f"high_factor {checked.high_factor} must be >= 1 and finite")
        if checked.max_iter < 0:
            raise InvalidArgumentError(f"max_iter {checked.max_iter} must be >= 0")
        if checked.remove_heads < 0:
            raise InvalidArgumentError(f"remove_heads {checked.remove_heads} must be >= 0")
        if checked.repair and checked.method != "kmeans":
            raise InvalidArgumentError("repair applies to merged units (method kmeans) only")
        if checked.method == "obs" and checked.kinds != "ffn":
            raise InvalidArgumentError("method obs removes FFN neurons only (kinds ffn)")
        if checked.activations == "selfgen" and checked.method != "obs":
            raise InvalidArgumentError("activations selfgen is the activation model of method obs")
        if (checked.compensate or checked.refit) and checked.method != "magnitude":
            raise InvalidArgumentError("compensate and refit apply to removal (method magnitude) only")
        return checked

    @property
    def resolves_consumer(self) -> bool:
        """Whether the kept FFN neurons' fc2 columns (and bias) are re-solved: refit, or method obs."""
        return self.refit or self.method == "obs"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """The recipe a checkpoint's metadata stored (unknown fields or values are refused;
        fields a newer recipe added and an older checkpoint lacks take their defaults)."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(data) - known)
        if bad:
            raise InvalidArgumentError(f"unknown recipe option(s): {', '.join(bad)}")
        return cls(**dict(data)).validate()

    @classmethod
    def options(cls) -> list[Any]:
        """The fields a user may override (all but ``name``)."""
        return [f for f in fields(cls) if f.name != "name"]


# The recipes we recommend. Hyperparameters come from first principles, the choice between
# recipes from the measured grid (docs: results/recipes.md).
RECOMMENDED: dict[str, Recipe] = {
    # The default: remove the FFN neurons of least output variance under a Gaussian LayerNorm input
    # model, with the paper's variance-mixed allocation of the budget across FFN modules.
    "datafree": Recipe(),
    # FFN neurons removed by the optimal-brain-surgeon rule, kept fc2 columns re-solved, under the
    # activation statistics of self-generated inputs (`clusterprune selfgen`, --stats; needs torch
    # once); the paper's variance-mixed allocation. Better than datafree at every point measured on
    # whisper tiny.en and base (docs: results/selfgen.md), not the default: it needs the statistics file.
    "datafree-selfgen": Recipe(name="datafree-selfgen", method="obs", activations="selfgen"),
    # datafree + the removed neurons' modelled mean output folded into fc2's bias
    "datafree-comp": Recipe(name="datafree-comp", compensate=True),
    # datafree + the kept neurons' fc2 columns re-solved under the Gaussian input model
    "datafree-refit": Recipe(name="datafree-refit", refit=True),
    # Xu et al.: k-means on concatenated producer+consumer weights, centroid fusion, mixed sparsity.
    "paper": Recipe(name="paper", method="kmeans", score="l2", kinds="all"),
    # The paper's comparator: structured L2 magnitude pruning with a uniform plan.
    "magnitude": Recipe(name="magnitude", allocation="uniform", score="l2", kinds="all"),
}

# The experimental catalog: measured and kept for comparison, not recommended (they lose to `datafree`
# on tiny.en; docs: recipes.md#experimental). Not listed in `compress --help`.
EXPERIMENTAL: dict[str, Recipe] = {
    # cluster FFN neurons by the direction of their fc1 rows; merge direction and scale separately
    "cosine": Recipe(
        name="cosine", method="kmeans", allocation="uniform", feature="direction", fusion="cosine", score="l2"
    ),
    # datafree-comp on FFNs + the one encoder head of least modelled output variance (gauss_attn)
    # removed per encoder self-attention module, its mean output kept in out_proj's bias; the
    # sparsity counts all compressible parameters (heads first, FFN neurons for the rest)
    "datafree-heads": Recipe(
        name="datafree-heads",
        allocation="uniform",
        score="gauss_attn",
        budget="params",
        remove_heads=1,
        compensate=True,
    ),
    # FFN neurons removed by the optimal-brain-surgeon rule under the Gaussian LayerNorm model's
    # activation covariance, kept fc2 columns re-solved; the paper's variance-mixed allocation
    "datafree-obs": Recipe(name="datafree-obs", method="obs"),
}

RECIPES: dict[str, Recipe] = {**RECOMMENDED, **EXPERIMENTAL}
DEFAULT_RECIPE = "datafree"


def make_recipe(recipe: str | Recipe = DEFAULT_RECIPE, **overrides: Any) -> Recipe:
    """A named recipe (or a given one) with some choices overridden (None means 'keep')."""
    if isinstance(recipe, Recipe):
        base = recipe
    elif recipe in RECIPES:
        base = RECIPES[recipe]
    else:
        raise InvalidArgumentError(f"unknown recipe {recipe!r} (expected one of: {', '.join(RECIPES)})")
    known = {f.name for f in Recipe.options()}
    bad = set(overrides) - known
    if bad:
        raise InvalidArgumentError(f"unknown recipe option(s): {', '.join(sorted(bad))}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(base, **changes).validate()
