"""Executes a plan: one module at a time from the memory-mapped source, written straight into the
destination files; the destination appears (atomic rename) only when complete."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .config import DEFAULT_RECIPE, Recipe, make_recipe
from .engine.rust import (
    check_threads,
    cluster_column_means,
    cluster_means,
    float64_sums,
    kmeans,
    resolved_init,
    top_k,
)
from .engine.xp import kmeans_xp, namespace, to_host
from .errors import InvalidArgumentError
from .fusion import Fusion, expand, fold, relabel_by_first_member
from .io.checkpoint import INDEX, Checkpoint
from .io.jsontext import dumps
from .io.metadata import EXPORTS, FOLDED_KEY, METADATA_KEY, PLAN_FILE, compression_record
from .io.output import atomic_directory, check_destination
from .io.resolve import resolve_model
from .io.safetensors import EXACT_IN_F32, ITEMSIZE, SafetensorsWriter, from_f32, positive_zeros
from .io.stats import load_stats
from .memory import reused_heap
from .models.units import ModuleSpec, Part, from_units, to_units
from .models.units import blocks as blocks_of
from .plan import ModulePlan, Plan, make_plan
from .progress import Progress
from .recipes.context import module_context, module_seed, with_moments
from .recipes.gaussian import ModuleContext, expected_contribution
from .recipes.obs import greedy_removal, output_variance, removal_labels
from .recipes.refit import refit_consumer
from .recipes.registries import FEATURES, FUSIONS, SCORES, SELECTIONS, WEIGHTINGS
from .recipes.repair import repair_scales, repaired


@dataclass
class ModuleResult:
    name: str
    n_units: int
    k: int
    rel_wcss: float  # within-cluster (or removed) sum of squares / module's sum of squares
    n_iter: int
    init: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Report:
    plan: Plan
    export: str
    destination: str
    modules: list[ModuleResult] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    device: str = "cpu"

    def to_dict(self, run_details: bool = True) -> dict[str, Any]:
        """The report as JSON. ``run_details=False`` leaves out what differs between two runs
        of the same input and options (timings, destination): that is the plan file written
        into the output, which is then byte-identical from run to run."""
        d = self.plan.to_dict()
        results = {m.name: m for m in self.modules}
        for row in d["modules"]:
            if row["name"] in results:
                r = results[row["name"]]
                row.update(rel_wcss=r.rel_wcss, n_iter=r.n_iter, init=r.init)
                if run_details:
                    row["seconds"] = r.seconds
        d.update(
            clusterprune_version=__version__,
            export=self.export,
            bytes_before=self.bytes_before,
            bytes_after=self.bytes_after,
            device=self.device,
        )
        if run_details:
            d.update(destination=self.destination, seconds=self.seconds)
        return d


@dataclass(frozen=True)
class Compute:
    """Where the per-module work runs: ``cpu`` (the Rust engine, ``num_threads`` workers), ``cuda``
    (CuPy) or ``numpy`` (the CuPy code path run by NumPy, for testing)."""

    device: str = "cpu"
    num_threads: int | None = None

    def namespace(self) -> Any:
        return np if self.device == "cpu" else namespace(self.device)


class UnitMatrices:
    """A module's unit matrices in float32, as read, and in float64, made on first use (most
    recipes' arithmetic; the paper recipe needs none)."""

    def __init__(self, f32: list[tuple[Part, np.ndarray]]) -> None:
        self.f32 = f32
        self._f64: list[tuple[Part, np.ndarray]] | None = None

    @property
    def f64(self) -> list[tuple[Part, np.ndarray]]:
        if self._f64 is None:
            self._f64 = [(p, u.astype(np.float64)) for p, u in self.f32]
        return self._f64


def group_units(
    units: UnitMatrices,
    k: int,
    recipe: Recipe,
    seed: int,
    compute: Compute = Compute(),
    ctx: ModuleContext | None = None,
) -> tuple[np.ndarray, float, int, str]:
    """labels (cluster per unit, -1 removed), relative WCSS (method obs: the relative output
    error), Lloyd iterations, init used. k-means reads the float32 unit matrices when its
    features are some of them as they are (the same values, half the bytes)."""
    ctx = ctx or ModuleContext()
    n = units.f32[0][1].shape[0]
    if recipe.method == "obs":
        if ctx.moments is None:
            raise InvalidArgumentError("method obs needs the module's activation moments")
        (consumer,) = blocks_of(units.f64, ("consumer",))
        planned = greedy_removal(ctx.moments[1], consumer, n - k)
        errors = planned.errors[: n - k]
        labels = removal_labels(planned.order[: n - k], n)
        full = output_variance(ctx.moments[1], consumer)
        rel = float(errors[-1]) / full if len(errors) and full > 0 else 0.0
        return labels, rel, 0, "-"
    if recipe.method == "magnitude":
        keep = top_k(SCORES[recipe.score](units.f64, ctx), k)
        labels = np.full(n, -1, dtype=np.int64)
        labels[keep] = np.arange(k)
        blocks = FEATURES[recipe.feature](units.f64)
        energy = sum(np.sum(b * b, axis=1) for b in blocks)
        total = float(np.sum(energy))
        removed = float(np.sum(energy[labels < 0]))
        return labels, (removed / total if total > 0 else 0.0), 0, "-"
    if recipe.feature in SELECTIONS and recipe.weighting == "none":
        features = np.concatenate(FEATURES[recipe.feature](units.f32), axis=1)
    else:
        features = np.concatenate(WEIGHTINGS[recipe.weighting](FEATURES[recipe.feature](units.f64)), axis=1)
    total = float64_sums(features)[1]
    if compute.device == "cpu":
        result = kmeans(features, k, seed, init=recipe.init, max_iter=recipe.max_iter, num_threads=compute.num_threads)
    else:
        result = kmeans_xp(features, k, seed, xp=compute.namespace(), init=recipe.init, max_iter=recipe.max_iter)
    labels = relabel_by_first_member(result.assignments)
    return labels, (result.inertia / total if total > 0 else 0.0), result.n_iter, result.init


def _output_shapes(ckpt: Checkpoint, plan: Plan, export: str) -> dict[str, tuple[int, ...]]:
    shapes = {name: ckpt.info(name).shape for name in ckpt.names()}
    if export == "folded":
        for m in plan.modules:
            spec = plan.specs[m.name]
            for part in spec.parts:
                width = m.k * spec.unit_rows
                shapes[part.tensor] = {
                    "producer": (width, spec.hidden),
                    "bias": (width,),
                    "consumer": (spec.hidden, width),
                }[part.role]
    return shapes


def execute(
    plan: Plan,
    ckpt: Checkpoint,
    dst: str | os.PathLike[str],
    *,
    export: str = "fused",
    overwrite: bool = False,
    progress: bool | None = None,
    compute: Compute = Compute(),
) -> Report:
    """Writes the compressed checkpoint of ``plan`` to ``dst`` (atomically)."""
    if export not in EXPORTS:
        raise InvalidArgumentError(f"unknown export {export!r} (expected one of: {', '.join(EXPORTS)})")
    dst = Path(dst)
    started = time.monotonic()
    report = Report(plan=plan, export=export, destination=str(dst), device=compute.device)
    shapes = _output_shapes(ckpt, plan, export)
    meta_plan = compression_record(
        version=__version__,
        export=export,
        recipe=plan.recipe.to_dict(),
        sparsity=plan.sparsity,
        seed=plan.seed,
        modules={m.name: [m.n_units, m.k] for m in plan.modules},
    )
    writers: dict[str, SafetensorsWriter] = {}
    with atomic_directory(dst, overwrite=overwrite, sources=[ckpt.path]) as tmp:
        try:
            _copy_aux_files(ckpt, tmp, plan, export)
            for fname, f in ckpt.files.items():
                names = [n for n in ckpt.names() if ckpt.where[n] == fname]
                entries = [(n, ckpt.info(n).dtype, shapes[n]) for n in names]
                metadata = {
                    **f.metadata,
                    "format": f.metadata.get("format", "pt"),
                    METADATA_KEY: dumps(meta_plan, METADATA_KEY),
                }
                writers[fname] = SafetensorsWriter(tmp / fname, entries, metadata)
            done: set[str] = set()
            bar = Progress(len(plan.modules), "compress", progress)
            with reused_heap():  # a module's large temporaries reuse the pages an earlier one freed
                for m, result in _compressed_modules(ckpt, plan, export, writers, compute):
                    report.modules.append(result)
                    spec = plan.specs[m.name]
                    done.update(
                        written_tensors(spec, plan.recipe) if m.k < m.n_units else (p.tensor for p in spec.parts)
                    )
                    bar.update(m.name)
            for name in ckpt.names():
                if name not in done:
                    writers[ckpt.where[name]].write(name, ckpt.raw_bytes(name))
            for w in writers.values():
                w.close()
            writers = {}
        finally:
            for w in writers.values():
                w.abort()
        if ckpt.index is not None:
            _write_index(ckpt, tmp, shapes)
        report.bytes_before = ckpt.total_bytes()
        report.bytes_after = ckpt.total_bytes(shapes)
        if export == "fused":  # same shapes on disk; report what the folded model would take
            report.bytes_after = report.bytes_before - sum(
                (m.n_units - m.k) * m.params_per_unit * ITEMSIZE[ckpt.info(plan.specs[m.name].parts[0].tensor).dtype]
                for m in plan.modules
            )
        report.seconds = time.monotonic() - started
        (tmp / PLAN_FILE).write_text(dumps(report.to_dict(run_details=False), PLAN_FILE, indent=2))
    return report


def modules_in_flight(compute: Compute) -> int:
    """Modules compressed at the same time: two on the CPU, so that one module's serial steps
    (Ward's merges, reading and writing its tensors) overlap the other's parallel ones; one
    when a single thread was asked for, or on a GPU."""
    return 2 if compute.device == "cpu" and compute.num_threads != 1 else 1


def _compressed_modules(
    ckpt: Checkpoint, plan: Plan, export: str, writers: dict[str, SafetensorsWriter], compute: Compute
) -> Iterator[tuple[ModulePlan, ModuleResult]]:
    """Each module of the plan with its result, in plan order. With two in flight, the next
    module starts as soon as either running one ends (a long module does not hold back the
    start of the one after a short one), and results are kept until their turn; the first error
    in plan order stops the run (no module starts after an error, the ones running finish
    first). Every module's output depends on its own tensors only, and each is written at its
    own place in the file, so the files are the same either way."""
    in_flight = modules_in_flight(compute)
    if in_flight == 1:
        for m in plan.modules:
            yield m, _compress_module(ckpt, plan.specs[m.name], m, plan, export, writers, compute)
        return
    futures: list[Future[ModuleResult]] = []
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="compress") as pool:
        for turn, m in enumerate(plan.modules):
            while True:
                # one look at the futures: a module that ends after it is among those waited on
                running = [f for f in futures if not f.done()]
                failed = any(f.exception() is not None for f in futures if f not in running)
                while not failed and len(running) < in_flight and len(futures) < len(plan.modules):
                    nxt = plan.modules[len(futures)]
                    spec = plan.specs[nxt.name]
                    futures.append(pool.submit(_compress_module, ckpt, spec, nxt, plan, export, writers, compute))
                    running.append(futures[-1])
                if futures[turn].done():
                    break
                wait(running, return_when=FIRST_COMPLETED)
            yield m, futures[turn].result()


def _compress_module(
    ckpt: Checkpoint,
    spec: ModuleSpec,
    m: ModulePlan,
    plan: Plan,
    export: str,
    writers: dict[str, SafetensorsWriter],
    compute: Compute,
) -> ModuleResult:
    t0 = time.monotonic()
    recipe = plan.recipe
    if unchanged(ckpt, spec, m, recipe, export):
        for part in spec.parts:
            writers[ckpt.where[part.tensor]].write(part.tensor, positive_zeros(ckpt.raw(part.tensor)))
            ckpt.drop_pages(part.tensor)
        init = resolved_init(recipe.init, m.n_units, m.k) if recipe.method == "kmeans" else "-"
        return ModuleResult(m.name, m.n_units, m.k, 0.0, 0, init, time.monotonic() - t0)
    tensors32 = {p.tensor: ckpt.f32(p.tensor) for p in spec.parts}
    units32 = [(p, to_units(tensors32[p.tensor], spec, p)) for p in spec.parts]
    for part in spec.parts:
        ckpt.drop_pages(part.tensor)
    units = UnitMatrices(units32)
    ctx = module_context(ckpt, spec)
    if recipe.method == "obs":
        ctx = with_moments(ctx, spec, units.f64, plan.stats, plan.seed)
    labels, rel, n_iter, init = group_units(units, m.k, recipe, plan.seed, compute, ctx)
    if not np.isfinite(rel):
        count = f" ({plan.stats.infos()[spec.name].count} positions for {m.n_units} neurons)" if plan.stats else ""
        raise InvalidArgumentError(
            f"{spec.name}: its activation covariance is too close to singular to rank its neurons{count}: "
            "make the statistics with more --clips"
        )
    xp = compute.namespace()
    rule = FUSIONS[recipe.fusion]
    ffn_cut = spec.kind == "ffn" and m.k < m.n_units
    shift = None  # change of the consumer's bias that keeps the modelled mean output
    if (
        xp is np
        and export == "fused"
        and not rule.producer_direction
        and not (ffn_cut and (recipe.repair or recipe.resolves_consumer))
    ):  # fold then expand in one pass over the float32 tensors: the same numbers
        outputs = [(p, _same_shape_means(tensors32[p.tensor], u, p, spec, labels, m.k, rule)) for p, u in units32]
    else:
        if xp is np:
            on_device = units.f64
        else:
            on_device = [(p, xp.asarray(u).astype(xp.float64)) for p, u in units32]  # f32 upload, f64 on the device
        folded = fold(on_device, xp.asarray(labels), m.k, rule, xp)
        if recipe.repair and ffn_cut:
            host = [(p, to_host(xp, u)) for p, u in folded]
            fixed = repaired(host, repair_scales(units.f64, labels, m.k, ctx), ctx)
            folded = [(p, xp.asarray(u)) for p, u in fixed]
        if recipe.resolves_consumer and ffn_cut:
            new_consumer, shift = refit_consumer(units.f64, labels, ctx, module_seed(plan.seed, spec.name))
            folded = [(p, xp.asarray(new_consumer) if p.role == "consumer" else u) for p, u in folded]
        new_parts = folded if export == "folded" else expand(folded, xp.asarray(labels), m.k, xp)
        outputs = [(p, from_units(to_host(xp, u).astype(np.float32), spec, p)) for p, u in new_parts]
    if shift is None and (recipe.compensate or recipe.refit) and m.k < m.n_units:
        shift = expected_contribution(units.f64, ctx)[labels < 0].sum(axis=0)
    for part, tensor in outputs:
        writers[ckpt.where[part.tensor]].write(part.tensor, from_f32(tensor, ckpt.info(part.tensor).dtype))
    if shift is not None:
        if spec.consumer_bias is None:
            raise InvalidArgumentError(f"{spec.name}: compensation needs a consumer bias and the module has none")
        bias = ckpt.f32(spec.consumer_bias).astype(np.float64) + shift
        dtype = ckpt.info(spec.consumer_bias).dtype
        writers[ckpt.where[spec.consumer_bias]].write(spec.consumer_bias, from_f32(bias.astype(np.float32), dtype))
    return ModuleResult(m.name, m.n_units, m.k, rel, n_iter, init, time.monotonic() - t0)


def _same_shape_means(
    tensor: np.ndarray, units: np.ndarray, part: Part, spec: ModuleSpec, labels: np.ndarray, k: int, rule: Fusion
) -> np.ndarray:
    """The part's float32 tensor after folding the clustering ``labels`` and expanding it back
    (every unit its cluster's mean; a consumer folded to its mean is divided by the size again
    on expansion, as :func:`expand` does), computed from ``tensor`` / its unit matrix ``units``."""
    divisions = 2 if part.role == "consumer" and not rule.consumer_sum else 1
    if part.role == "consumer":  # units are column groups of the tensor: no transposed copies
        return cluster_column_means(labels, tensor, spec.unit_rows, k, divisions=divisions)
    return from_units(cluster_means(labels, units, k, divisions=divisions), spec, part)


def unchanged(ckpt: Checkpoint, spec: ModuleSpec, m: ModulePlan, recipe: Recipe, export: str) -> bool:
    """Whether compressing the module writes its tensors back as they are, but for the sign of
    their zeros: K = N in the same shapes, each unit its own cluster, stored in a dtype the
    float32 arithmetic holds exactly (a fusion that renormalises directions changes them)."""
    return (
        m.k == m.n_units
        and export == "fused"
        and not FUSIONS[recipe.fusion].producer_direction
        and all(ckpt.info(p.tensor).dtype in EXACT_IN_F32 for p in spec.parts)
    )


def written_tensors(spec: ModuleSpec, recipe: Recipe) -> list[str]:
    """Every tensor compressing ``spec`` rewrites (its parts, and the consumer bias when the
    recipe compensates)."""
    names = [p.tensor for p in spec.parts]
    if (recipe.compensate or recipe.resolves_consumer) and spec.consumer_bias is not None:
        names.append(spec.consumer_bias)
    return names


def _copy_aux_files(ckpt: Checkpoint, tmp: Path, plan: Plan, export: str) -> None:
    """Everything but the weights is carried over (config, tokenizer, preprocessor, generation
    config, ...); a folded export records its per-module unit counts in config.json."""
    ckpt.copy_aux_files(tmp, skip=frozenset({PLAN_FILE}))
    config = dict(ckpt.config)
    config.pop(FOLDED_KEY, None)
    if export == "folded":
        config[FOLDED_KEY] = {"modules": {m.name: m.k for m in plan.modules}, "version": __version__}
    if export == "folded" or FOLDED_KEY in ckpt.config:
        (tmp / "config.json").write_text(dumps(config, "config.json", indent=2) + "\n")


def _write_index(ckpt: Checkpoint, tmp: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    index = dict(ckpt.index or {})
    index["metadata"] = {**dict(index.get("metadata") or {}), "total_size": ckpt.total_bytes(shapes)}
    if ckpt.unlisted:  # tensors the source's index forgot are listed where they are stored
        index["weight_map"] = {**index["weight_map"], **{n: ckpt.where[n] for n in ckpt.unlisted}}
    (tmp / INDEX).write_text(dumps(index, INDEX, indent=2))


def compress(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    recipe: Recipe | str = DEFAULT_RECIPE,
    *,
    sparsity: float = 0.1,
    export: str = "fused",
    seed: int = 0,
    include: str | None = None,
    exclude: str | None = None,
    k_overrides: dict[str, int] | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    num_threads: int | None = None,
    device: str = "cpu",
    stats: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> Report:
    """Compresses the checkpoint directory ``src`` into ``dst`` (written atomically).

    ``recipe``: a :class:`~clusterprune.config.Recipe` or the name of one (``RECIPES``);
    ``overrides``: any of its fields (``method="kmeans"``, ``score="l2"``, ...; None = keep).
    ``sparsity``: the fraction of units removed (``budget="params"``: of compressible parameters).
    ``export``: fused (same shapes) or folded (smaller). ``device``: cpu (Rust engine), cuda
    (CuPy) or numpy (the CuPy code path on the CPU). ``k_overrides``: {module name: K}.
    ``stats``: a statistics file of :func:`clusterprune.selfgen` (recipes with activations selfgen).
    """
    chosen = make_recipe(recipe, **overrides)
    compute = Compute(device, check_threads(num_threads))
    compute.namespace()  # an unavailable device fails before any work
    if export not in EXPORTS:
        raise InvalidArgumentError(f"unknown export {export!r} (expected one of: {', '.join(EXPORTS)})")
    with Checkpoint(resolve_model(src)) as ckpt:
        check_destination(dst, sources=[ckpt.path], overwrite=overwrite)
        measured = load_stats(stats) if stats is not None else None
        plan = make_plan(
            ckpt, sparsity, chosen, include=include, exclude=exclude, k_overrides=k_overrides, seed=seed, stats=measured
        )
        return execute(plan, ckpt, dst, export=export, overwrite=overwrite, progress=progress, compute=compute)
