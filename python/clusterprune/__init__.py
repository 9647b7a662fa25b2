"""clusterprune: data-free, training-free compression of speech foundation models by
channel-wise k-means parameter clustering (Xu et al., Interspeech 2026), with a Rust engine.

The public API: :func:`compress` (and :func:`plan` / :func:`execute`), :class:`Recipe` and the
named :data:`RECIPES`, :func:`inspect`, :func:`load_folded`, :func:`palettize` (:class:`PaletteConfig`),
:func:`load_palettized`, :func:`export_ct2`, :func:`kmeans`,
and the exceptions.
Importing it imports neither torch nor transformers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._version import __version__
from .config import DEFAULT_RECIPE, RECIPES, Recipe, make_recipe
from .engine import KMeansResult, kmeans, top_k
from .errors import (
    CheckpointNotFoundError,
    ClusterpruneError,
    CorruptCheckpointError,
    InvalidArgumentError,
    NonFiniteError,
    OutputExistsError,
    ShapeMismatchError,
    UnsupportedModelError,
)
from .exporters.ct2 import export_ct2
from .inspection import inspect
from .io.stats import ActivationStats, load_stats
from .palettize.config import PaletteConfig
from .palettize.pipeline import PaletteReport, palettize
from .pipeline import Report, compress, execute
from .plan import ModulePlan, Plan, make_plan


def plan(
    src: str | os.PathLike[str],
    recipe: Recipe | str = DEFAULT_RECIPE,
    *,
    sparsity: float = 0.1,
    include: str | None = None,
    exclude: str | None = None,
    k_overrides: dict[str, int] | None = None,
    seed: int = 0,
    stats: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> Plan:
    """The compression plan for ``src`` (validated, nothing written); ``stats``: a statistics
    file of :func:`selfgen` (recipes with activations selfgen)."""
    return make_plan(
        src,
        sparsity,
        make_recipe(recipe, **overrides),
        include=include,
        exclude=exclude,
        k_overrides=k_overrides,
        seed=seed,
        stats=load_stats(stats) if stats is not None else None,
    )


def selfgen(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    clips: int = 64,
    decoder_samples: int = 8,
    seed: int = 0,
    audio: str = "synth",
    progress: bool | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    layer_inputs: bool = False,
    sensitivity: bool = False,
) -> ActivationStats | None:
    """Activation statistics of the dense model on self-generated inputs, written to ``out``
    (needs torch + transformers; see ``clusterprune selfgen --help``); an existing ``out`` is
    replaced only with ``overwrite`` (checked before the work). ``audio``: ``"synth"`` (the
    source-filter synthesiser) or ``"espeak"`` (the model's own transcripts read by espeak-ng).
    ``device``: where the model runs. ``layer_inputs``: also the second moments of every linear
    layer's input (what ``palettize --stats`` reads). ``sensitivity`` (experimental: it lost to
    uniform bits): also the diagonal of the output Fisher of every linear layer and convolution
    (what ``palettize --avg-bits --stats`` then spends bits by; a backward pass per clip). Under
    torchrun the clips are shared out over the processes and process 0 writes ``out`` (the same
    file for any number of processes) and gets the statistics; the other processes get None."""
    from .io.output import check_file_destination

    check_file_destination(out, sources=[model_dir], what="the statistics file", overwrite=overwrite)
    from .activations.collect import SelfGenConfig, collect

    scratch = Path(out).resolve().parent
    while not scratch.is_dir():  # the Gram sums' scratch file goes beside the output: the nearest existing folder
        scratch = scratch.parent
    config = SelfGenConfig(clips, seed, decoder_samples, audio, layer_inputs, sensitivity)
    stats = collect(model_dir, config, progress=progress, device=device, scratch=scratch)
    if stats is not None:
        stats.save(out)
    return stats


def load_palettized(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """A transformers model from a palettized checkpoint, compact or dequantized (needs torch +
    transformers); a folded source gives the folded architecture."""
    from .models.hf import load_palettized as _load

    return _load(path, **kwargs)


def load_folded(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """A transformers model from a folded checkpoint (needs torch + transformers)."""
    from .models.hf import load_folded as _load

    return _load(path, **kwargs)


__all__ = [
    "ActivationStats",
    "CheckpointNotFoundError",
    "ClusterpruneError",
    "CorruptCheckpointError",
    "DEFAULT_RECIPE",
    "InvalidArgumentError",
    "KMeansResult",
    "ModulePlan",
    "NonFiniteError",
    "OutputExistsError",
    "PaletteConfig",
    "PaletteReport",
    "Plan",
    "RECIPES",
    "Recipe",
    "Report",
    "ShapeMismatchError",
    "UnsupportedModelError",
    "__version__",
    "compress",
    "execute",
    "export_ct2",
    "inspect",
    "kmeans",
    "load_folded",
    "load_stats",
    "selfgen",
    "load_palettized",
    "make_recipe",
    "palettize",
    "plan",
    "top_k",
]
