"""Palettizes a checkpoint: every chosen tensor's scalar weights clustered into 2^b values per
table (Rust engine), written as the dequantized model (same names, shapes and dtypes) or the
compact one (packed indices + tables, see :mod:`clusterprune.io.palette`), atomically.

A fused or folded clusterprune checkpoint is a valid source (fold first, then palettize), and
``sparsity=`` runs both steps in one call."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..engine.rust import check_threads, palettize_rows
from ..errors import InvalidArgumentError, NonFiniteError
from ..io.checkpoint import INDEX, SINGLE, Checkpoint
from ..io.jsontext import dumps
from ..io.output import atomic_directory, check_destination
from ..io.palette import FORMATS, HEADER_KEY, PALETTE_KEY, PALETTE_PLAN, Palettized, encode, header_entry
from ..io.resolve import resolve_model
from ..io.safetensors import SafetensorsWriter, nbytes, to_f32
from ..io.stats import ActivationStats
from ..progress import Progress
from .allocate import error_plan, fixed_bits, variance_plan
from .config import BITS, PaletteConfig, make_config
from .output_error import Factor, choose_indices, factor, output_error
from .stream import stream_shares
from .targets import Target, column_weights, targets

FOLD_DIR = ".folded-source"
MEASURED_UP_TO = 6  # the error allocator palettizes each tensor at every level up to this one


@dataclass
class TensorResult:
    name: str
    shape: tuple[int, ...]
    bits: int
    group_rows: int
    rel_error: float  # input-weighted squared error / input-weighted energy
    outliers: int
    compact_bytes: int  # of its compact tensors

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["shape"] = list(self.shape)
        return d


@dataclass
class PaletteReport:
    config: PaletteConfig
    format: str
    destination: str
    tensors: list[TensorResult] = field(default_factory=list)
    bytes_source: int = 0  # every tensor of the source, as stored
    bytes_fp16: int = 0  # the same tensors at 2 bytes per floating value (the fp16 file)
    bytes_compact: int = 0  # every tensor of the compact file (palettized ones as tables + indices)
    bytes_written: int = 0  # the weight files of the output, on disk
    seconds: float = 0.0
    source_compression: dict[str, Any] | None = None
    statistics: dict[str, Any] | None = None  # the layer-input moments palettized by (provenance, tensors)

    @property
    def avg_bits(self) -> float:
        n = sum(int(np.prod(t.shape)) for t in self.tensors)
        return sum(t.bits * int(np.prod(t.shape)) for t in self.tensors) / n if n else 0.0

    def to_dict(self, run_details: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "clusterprune_version": __version__,
            "config": self.config.to_dict(),
            "format": self.format,
            "avg_bits": self.avg_bits,
            "palettized_params": sum(int(np.prod(t.shape)) for t in self.tensors),
            "bytes_source": self.bytes_source,
            "bytes_fp16": self.bytes_fp16,
            "bytes_compact": self.bytes_compact,
            "bytes_written": self.bytes_written,
            "source_compression": self.source_compression,
            "tensors": [t.to_dict() for t in self.tensors],
        }
        if self.statistics is not None:
            d["statistics"] = self.statistics
        if run_details:
            d.update(destination=self.destination, seconds=self.seconds)
        return d


def lut_dtype_of(source_dtype: str, config: PaletteConfig) -> str:
    """The safetensors dtype of a tensor's tables."""
    if config.lut_dtype == "float32":
        return "F32"
    if config.lut_dtype == "float16":
        return "F16"
    return "BF16" if source_dtype == "BF16" else "F16"


def group_rows(t: Target, config: PaletteConfig, where: Path) -> int:
    if config.granularity == "per-tensor":
        return t.rows
    if config.granularity == "per-channel":
        return 1
    if t.rows % config.group_size:
        raise InvalidArgumentError(
            f"{where}: tensor {t.name}: --group-size {config.group_size} does not divide its {t.rows} rows "
            f"(choose a divisor, or --exclude it)"
        )
    return config.group_size


_RUST_LUT = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}


def compact_bytes(t: Target, bits: int, config: PaletteConfig, lut_dtype: str) -> int:
    """Bytes of one tensor's compact parts at ``bits`` (packed indices, tables, scales; the
    outliers' positions and values are left out: the same at every bits)."""
    groups = t.rows // group_rows(t, config, Path(t.name))
    itemsize = 4 if lut_dtype == "F32" else 2
    scales = t.rows * itemsize if config.row_scale else 0
    return -(-t.rows * t.cols * bits // 8) + groups * (2**bits) * itemsize + scales


def tensor_values(ckpt: Checkpoint, t: Target) -> np.ndarray:
    """The tensor's weights in float32 as a C-contiguous rows x cols matrix."""
    return np.ascontiguousarray(ckpt.f32(t.name).reshape(t.rows, t.cols))


def palettize_tensor(
    ckpt: Checkpoint,
    t: Target,
    bits: int,
    config: PaletteConfig,
    weights: np.ndarray | None,
    num_threads: int | None,
    moment: np.ndarray | None = None,
    factored: Factor | None = None,
    row_weights: np.ndarray | None = None,
    values: np.ndarray | None = None,
) -> tuple[Palettized, float]:
    """One tensor palettized: (the result, weighted squared error). With ``moment`` = H, the
    second moment of the layer's input (:mod:`.output_error`): tables by k-means weighted by what
    each column's error costs the output, indices chosen against the output error, and that
    error returned (each row's weighted by ``row_weights`` when given); ``factored``:
    ``factor(moment)`` when the caller already has it; ``values``: :func:`tensor_values` of the
    tensor when the caller already has them."""
    info = ckpt.info(t.name)
    if values is None:
        values = tensor_values(ckpt, t)
    lut_dtype = lut_dtype_of(info.dtype, config)
    g = group_rows(t, config, ckpt.file_of(t.name))
    if factored is None and moment is not None:
        factored = factor(moment)
    if factored is not None:
        costs = factored.column_weights()
        weights = np.maximum(costs / max(float(costs.mean()), 1e-30), 1e-6)
    try:
        r = palettize_rows(
            values,
            bits,
            group_rows=g,
            method=config.method,
            max_iter=config.max_iter,
            lut_dtype=_RUST_LUT[lut_dtype],
            row_scale=config.row_scale,
            outlier_fraction=config.outliers,
            col_weights=weights,
            num_threads=num_threads,
        )
    except NonFiniteError:
        r, c = (int(v) for v in np.argwhere(~np.isfinite(values))[0])
        raise NonFiniteError(
            f"{ckpt.file_of(t.name)}: tensor {t.name} has a non-finite value (NaN or Inf) at row {r}, column {c}"
        ) from None
    positions = np.asarray(r.outliers, dtype=np.int64)
    raw = np.asarray(ckpt.raw(t.name)).reshape(-1)
    indices = r.indices
    if factored is not None:
        indices = choose_indices(values, r.luts[np.arange(t.rows) // g], factored)
    p = Palettized(t.shape, info.dtype, bits, g, r.luts, lut_dtype, indices, r.scales, positions, raw[positions].copy())
    if moment is not None:
        dequantized = to_f32(p.dequantize(), info.dtype).reshape(t.rows, t.cols)
        return p, output_error(values, dequantized, moment, row_weights)
    return p, float(np.sum(r.wsse))


class Moments:
    """The second moments of the chosen tensors' inputs, read one tensor at a time when asked
    for (a large model's, fc2's N x N among them, would not fit in memory together). Only tensors
    whose input has the tensor's width (a folded module's narrower input has none: it is
    palettized plainly).

    The token embedding tied to the output projection has two roles: the decoder's input table,
    where a row's error costs its weight error, and the output projection, which reads the final
    decoder state (H). It is palettized against the sum of both roles' relative errors,
    |E - Q|^2 / |E|^2 + tr((E - Q) H (E - Q)^T) / tr(E H E^T): the moment H + (B / A) I with
    A = |E|^2 and B = tr(E H E^T) (:func:`tied_moment`). An embedding whose statistics file has
    no final decoder state keeps the plain exact k-means."""

    def __init__(self, chosen: list[Target], stats: ActivationStats | None, ckpt: Checkpoint) -> None:
        self.stats = stats
        self.ckpt = ckpt
        self.names: set[str] = set()
        self.embeddings: set[str] = set()
        if stats is None:
            return
        widths = {n: i.n for n, i in (stats.infos() | stats.input_infos()).items()}
        for t in chosen:
            site = stats.input_site(t.name)
            if site is not None and widths.get(site) == t.cols:
                self.names.add(t.name)
                if t.embedding:
                    self.embeddings.add(t.name)

    def fisher(self, t: Target) -> np.ndarray | None:
        """The output Fisher's diagonal of tensor ``t`` (one value per row), where the file has
        it for a tensor of these rows whose input moment it also has; else None."""
        g = self.stats.sensitivity.get(t.name) if self.stats is not None and t.name in self.names else None
        return g if g is not None and g.shape == (t.rows,) else None

    def get(self, name: str) -> np.ndarray | None:
        if self.stats is None or name not in self.names:
            return None
        h = self.stats.second_moment(name)
        if h is None or name not in self.embeddings:
            return h
        return tied_moment(h, self.ckpt.f32(name).astype(np.float64).reshape(-1, h.shape[0]))


def tied_moment(h: np.ndarray, table: np.ndarray) -> np.ndarray:
    """H + (B / A) I for a tied embedding ``table`` (tokens, width) whose output projection reads
    inputs of second moment ``h``: (w - q)^T (H + (B / A) I) (w - q) summed over the rows is
    B times the sum of the two roles' relative errors (:class:`Moments`)."""
    a = float(np.sum(table * table))
    b = float(np.sum((table @ h) * table))
    out = np.array(h, dtype=np.float64)
    if a > 0 and b > 0:
        diagonal = np.arange(out.shape[0])
        out[diagonal, diagonal] += b / a
    return out


def _energy(values: np.ndarray, weights: np.ndarray | None, moment: np.ndarray | None = None) -> float:
    """The weighted energy of a tensor's rows x cols ``values`` (float32), summed in float64."""
    if moment is not None:  # the output's energy E||W x||^2
        w = values.astype(np.float64)
        return float(np.sum((w @ moment) * w))
    sq = np.square(values, dtype=np.float64)  # converted and squared a block at a time
    return float(np.sum(sq * weights[None, :]) if weights is not None else np.sum(sq))


def plan_bits(
    ckpt: Checkpoint,
    chosen: list[Target],
    config: PaletteConfig,
    weights: dict[str, np.ndarray],
    num_threads: int | None,
    moments: Moments | None = None,
) -> dict[str, int]:
    """Bits per tensor. The error allocator's measure: each tensor's relative error (its error over
    its weighted energy); by the output error (``moments``), weighted by what its block writes
    into the residual stream relative to the stream (:mod:`.stream`); where the statistics hold
    the output Fisher (``selfgen --sensitivity``), the modelled loss instead,
    1/2 sum_r G_r (w_r - q_r)^T H (w_r - q_r), one unit for every tensor (a tensor the
    statistics do not cover keeps --bits)."""
    fixed = {t.name: b for t in chosen if (b := fixed_bits(t, config)) is not None}
    by_loss = moments is not None and moments.stats is not None and bool(moments.stats.sensitivity)
    if by_loss and config.allocation == "error":
        assert moments is not None
        fixed |= {t.name: config.bits for t in chosen if t.name not in fixed and moments.fisher(t) is None}
    free = [t for t in chosen if t.name not in fixed]
    levels = [b for b in BITS if config.min_bits <= b <= config.max_bits]
    measured: dict[tuple[str, int], float] = {}
    if config.allocation == "uniform":
        return {t.name: config.bits for t in free} | fixed
    if config.allocation == "variance":
        variances = {t.name: float(np.var(ckpt.f32(t.name).astype(np.float64))) for t in free}
        return variance_plan(free, variances, config.bits, levels[0], levels[-1]) | fixed
    measured_levels = [b for b in levels if b <= MEASURED_UP_TO] or levels[:1]
    shares = (
        stream_shares(ckpt, moments.stats, moments) if moments is not None and moments.stats and not by_loss else {}
    )
    bar = Progress(len(free) * len(measured_levels), "plan bits", None)
    for t in free:
        moment = moments.get(t.name) if moments is not None else None  # read and factorised once per tensor
        factored = factor(moment) if moment is not None else None
        g = moments.fisher(t) if by_loss and moments is not None else None
        values = tensor_values(ckpt, t)  # converted once for every level
        energy = 2.0 if g is not None else _energy(values, weights.get(t.name), moment)  # the loss: 1/2 sum
        share = shares.get(t.name, 1.0) if moment is not None else 1.0
        for b in measured_levels:
            _, err = palettize_tensor(
                ckpt, t, b, config, weights.get(t.name), num_threads, moment, factored, g, values=values
            )
            measured[(t.name, b)] = share * err / energy if energy > 0 else 0.0
            bar.update(f"{t.name} {b} bits")
        top = measured_levels[-1]
        for b in levels:
            if b > top:  # high-rate quantization: every further bit quarters the error
                measured[(t.name, b)] = measured[(t.name, top)] * 4.0 ** (top - b)
    target = config.avg_bits or float(config.bits)
    lo, hi = int(np.floor(target)), int(np.ceil(target))
    frac = target - lo

    def size(name: str, b: int) -> float:
        return float(compact_bytes(by_name[name], b, config, lut_dtype_of(ckpt.info(name).dtype, config)))

    by_name = {t.name: t for t in free}
    budget = sum(size(t.name, lo) + frac * (size(t.name, hi) - size(t.name, lo)) for t in free)
    plan = error_plan(free, lambda name, b: measured[(name, b)], size, budget, levels)
    return plan | fixed


def palettize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: PaletteConfig | None = None,
    *,
    format: str = "dequantized",
    sparsity: float | None = None,
    recipe: Any = None,
    stats: Any = None,
    overwrite: bool = False,
    progress: bool | None = None,
    num_threads: int | None = None,
    **overrides: Any,
) -> PaletteReport:
    """Palettizes the checkpoint ``src`` into ``dst`` (written atomically).

    ``config``: a :class:`PaletteConfig` (``overrides``: any of its fields, e.g. ``bits=6``).
    ``format``: dequantized (same tensors; loads with ``from_pretrained``) or compact (packed
    indices + tables; :func:`clusterprune.load_palettized`). ``sparsity`` (+ ``recipe``, and
    ``stats`` for a recipe that reads statistics): first compress ``src`` (folded export) with
    that recipe, then palettize the folded model.
    """
    chosen_config = make_config(config, **overrides)
    if format not in FORMATS:
        raise InvalidArgumentError(f"unknown format {format!r} (expected one of: {', '.join(FORMATS)})")
    threads = check_threads(num_threads)
    stats_file = stats
    first_step_stats = None
    if stats is not None:
        from ..config import make_recipe
        from ..io.stats import load_stats

        stats = load_stats(stats)
        reads_stats = sparsity is not None and make_recipe(recipe or "datafree").activations == "selfgen"
        first_step_stats = stats_file if reads_stats else None
        if not stats.inputs and not reads_stats:
            raise InvalidArgumentError(
                f"{stats.file}: no layer-input moments to palettize by (make the file with "
                "`clusterprune selfgen --layer-inputs`), and no --sparsity step whose recipe reads statistics"
            )
        if stats.inputs and (chosen_config.row_scale or chosen_config.outliers or chosen_config.weighting != "none"):
            raise InvalidArgumentError(
                "palettizing by layer-input moments (--stats) takes no --row-scale, --outliers or --weighting"
            )
    started = time.monotonic()
    src_path = resolve_model(src)
    if stats is not None and stats.inputs:
        stats.check_source(src_path)  # before any work
    check_destination(dst, sources=[src_path], overwrite=overwrite)
    with atomic_directory(dst, overwrite=overwrite, sources=[src_path]) as tmp:
        source = src_path
        if sparsity is not None:
            from ..pipeline import compress

            source = tmp / FOLD_DIR
            compress(
                src_path,
                source,
                recipe or "datafree",
                sparsity=sparsity,
                export="folded",
                progress=progress,
                num_threads=threads,
                stats=first_step_stats,
            )
        with Checkpoint(source) as ckpt:
            report = _write(
                ckpt, tmp, chosen_config, format, progress, threads, stats if stats and stats.inputs else None
            )
        if sparsity is not None:
            shutil.rmtree(tmp / FOLD_DIR)
        report.destination = str(dst)
        report.seconds = time.monotonic() - started
        (tmp / PALETTE_PLAN).write_text(dumps(report.to_dict(run_details=False), PALETTE_PLAN, indent=2) + "\n")
    return report


def fp16_bytes(ckpt: Checkpoint) -> int:
    """Bytes of every tensor of ``ckpt`` at 2 bytes per floating value (its fp16 file)."""
    return sum(
        nbytes("F16" if ckpt.info(n).dtype in ("F32", "F64", "BF16") else ckpt.info(n).dtype, ckpt.info(n).shape)
        for n in ckpt.names()
    )


def _check_source(ckpt: Checkpoint) -> None:
    if PALETTE_KEY in ckpt.config:
        raise InvalidArgumentError(
            f"{ckpt.path / 'config.json'}: this checkpoint is already palettized ('{PALETTE_KEY}'): "
            "palettize its source instead (palettizing twice would compound the error)"
        )


def _write(
    ckpt: Checkpoint,
    tmp: Path,
    config: PaletteConfig,
    fmt: str,
    progress: bool | None,
    threads: int | None,
    stats: ActivationStats | None = None,
) -> PaletteReport:
    from ..io.metadata import read_compression

    _check_source(ckpt)
    chosen = targets(ckpt, config)
    if not chosen:
        raise InvalidArgumentError(
            f"{ckpt.path}: no tensor matches the palettize options (check --include / --exclude / --min-size)"
        )
    for t in chosen:
        group_rows(t, config, ckpt.file_of(t.name))  # a bad group size fails before any work
    weights = column_weights(ckpt, chosen, config)
    moments = Moments(chosen, stats, ckpt)
    bits = plan_bits(ckpt, chosen, config, weights, threads, moments)
    record = read_compression(ckpt)
    report = PaletteReport(config, fmt, "", source_compression=record.raw if record else None)
    if stats is not None:
        report.statistics = {**stats.provenance(), "tensors": sorted(moments.names)}
        if stats.sensitivity and config.allocation == "error":  # the bits spent by the modelled loss
            report.statistics["loss_allocated"] = sorted(
                t.name for t in chosen if moments.fisher(t) is not None and fixed_bits(t, config) is None
            )
    report.bytes_source = ckpt.total_bytes()
    report.bytes_fp16 = fp16_bytes(ckpt)
    ckpt.copy_aux_files(tmp, skip=frozenset({PALETTE_PLAN, FOLD_DIR}))
    config_json = dict(ckpt.config)
    config_json[PALETTE_KEY] = {"format": fmt, "version": __version__}
    (tmp / "config.json").write_text(dumps(config_json, "config.json", indent=2) + "\n")
    by_name = {t.name: t for t in chosen}
    bar = Progress(len(chosen), "palettize", progress)
    results: dict[str, tuple[dict[str, Any], dict[str, tuple[str, np.ndarray]]]] = {}
    writers: dict[str, SafetensorsWriter] = {}
    try:
        if fmt == "dequantized":
            for fname, f in ckpt.files.items():
                names = [n for n in ckpt.names() if ckpt.where[n] == fname]
                entries = [(n, ckpt.info(n).dtype, ckpt.info(n).shape) for n in names]
                writers[fname] = SafetensorsWriter(
                    tmp / fname, entries, {**f.metadata, "format": f.metadata.get("format", "pt")}
                )
        for t in chosen:
            moment = moments.get(t.name)  # read once for the tensor's error and its output energy
            values = tensor_values(ckpt, t)  # converted once for the palettization and the energy
            p, err = palettize_tensor(
                ckpt, t, bits[t.name], config, weights.get(t.name), threads, moment, values=values
            )
            energy = _energy(values, weights.get(t.name), moment)
            del values
            compact = encode(t.name, p)
            rho = err / energy if energy > 0 else 0.0
            report.tensors.append(
                TensorResult(
                    t.name,
                    t.shape,
                    p.bits,
                    p.group_rows,
                    rho,
                    int(p.positions.size),
                    sum(a.nbytes for _, a in compact.values()),
                )
            )
            if fmt == "dequantized":
                writers[ckpt.where[t.name]].write(t.name, p.dequantize())
            else:  # only the packed parts stay in memory (b / 8 bytes per weight)
                results[t.name] = (header_entry(p), compact)
            bar.update(t.name)
        if fmt == "dequantized":
            for name in ckpt.names():
                if name not in by_name:
                    writers[ckpt.where[name]].write(name, ckpt.raw_bytes(name))
            for w in writers.values():
                w.close()
            writers = {}
            if ckpt.index is not None:
                (tmp / INDEX).write_text(dumps(ckpt.index, INDEX, indent=2))
        else:
            _write_compact(ckpt, tmp, results)
    finally:
        for w in writers.values():
            w.abort()
    report.bytes_compact = sum(t.compact_bytes for t in report.tensors) + sum(
        ckpt.info(n).nbytes for n in ckpt.names() if n not in by_name
    )
    report.bytes_written = sum(p.stat().st_size for p in tmp.iterdir() if p.suffix == ".safetensors")
    return report


def _write_compact(
    ckpt: Checkpoint, tmp: Path, results: dict[str, tuple[dict[str, Any], dict[str, tuple[str, np.ndarray]]]]
) -> None:
    """One model.safetensors: the palettized tensors' parts, every other tensor as stored."""
    from ..io.metadata import METADATA_KEY

    parts: dict[str, tuple[str, np.ndarray]] = {}
    for name in ckpt.names():
        if name in results:
            parts.update(results[name][1])
        else:
            parts[name] = (ckpt.info(name).dtype, np.asarray(ckpt.raw(name)))
    metadata = {"format": "pt", HEADER_KEY: dumps({n: entry for n, (entry, _) in results.items()}, HEADER_KEY)}
    source_meta = next(iter(ckpt.files.values())).metadata
    if METADATA_KEY in source_meta:
        metadata[METADATA_KEY] = source_meta[METADATA_KEY]  # the structured compression it stacks on
    entries = [(n, dtype, tuple(arr.shape)) for n, (dtype, arr) in parts.items()]
    writer = SafetensorsWriter(tmp / SINGLE, entries, metadata, digest=True)
    try:
        for n, (_, arr) in parts.items():
            writer.write(n, arr)
        writer.close()
    except BaseException:
        writer.abort()
        raise
