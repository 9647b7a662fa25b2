"""`clusterprune sweep`: compress and evaluate every (method, allocation, sparsity) cell and every
palettized (allocation, bits) cell plus the dense model once; write results.json, results.md and PNG plots. Finished cells are skipped when
the sweep is run again with the same data options."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..config import METHODS, RECIPES, make_recipe
from ..errors import InvalidArgumentError
from ..exporters.ct2 import export_ct2
from ..io.output import refuse_inside_sources, write_json_atomic
from ..io.resolve import resolve_model
from ..pipeline import compress
from ..plan import check_sparsity
from .bits import bits_table, cell_key, check_bits, palettize_cell, plot_bits
from .data import load_utterances
from .evaluate import evaluate

RUNTIMES = ("transformers", "ct2")
LOSSLESS_RELATIVE = 1.10  # "lossless": WER within 10 % relative of dense


def _method_options(method: str) -> tuple[str, dict[str, Any]]:
    if method in RECIPES:
        return method, {}
    if method in METHODS:
        return "paper", {"method": method}
    raise InvalidArgumentError(
        f"unknown method or recipe {method!r} (methods: {', '.join(METHODS)}; recipes: {', '.join(RECIPES)})"
    )


def _cell_key(method: str, allocation: str, sparsity: float) -> str:
    return f"{method}-{allocation}-{sparsity:g}"


def lossless_sparsity(rows: list[dict[str, Any]], dense_wer: float) -> dict[str, float | None]:
    """Per (method, allocation): the largest swept sparsity whose WER <= 1.1 x dense."""
    out: dict[str, float | None] = {}
    for row in rows:
        if row["method"] in ("dense", "palettize"):
            continue
        key = f"{row['method']}/{row['allocation']}"
        ok = row["wer"] <= LOSSLESS_RELATIVE * dense_wer
        out.setdefault(key, None)
        if ok and (out[key] is None or row["sparsity"] > out[key]):
            out[key] = row["sparsity"]
    return out


KEPT_FIELDS = (
    "wer",
    "substitutions",
    "deletions",
    "insertions",
    "num_utterances",
    "hit_length_bound",
    "real_time_factor",
)


def sweep_grid(methods: list[str], allocations: list[str]) -> list[tuple[str, str]]:
    """The (method, allocation) cells; allocation "recipe" = each recipe's own allocation."""
    if not methods or not allocations:
        raise InvalidArgumentError("a sweep needs at least one sparsity, method and allocation")
    grid: list[tuple[str, str]] = []
    for m in methods:
        recipe, opts = _method_options(m)
        for a in allocations:
            overrides = dict(opts) if a == "recipe" else {**opts, "allocation": a}
            resolved = make_recipe(recipe, **overrides).allocation
            if (m, resolved) not in grid:
                grid.append((m, resolved))
    return grid


def sweep(
    model_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    sparsities: list[float],
    methods: list[str],
    allocations: list[str],
    subset: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    export: str = "fused",
    include: str | None = None,
    exclude: str | None = None,
    keep_models: bool = False,
    progress: bool | None = None,
    log: Any = print,
    budget: str | None = None,
    device: str = "cpu",
    runtime: str = "transformers",
    compute_type: str | None = None,
    threads: int | None = None,
    bits: list[int] | None = None,
    bit_allocations: list[str] | None = None,
    palette_options: dict[str, Any] | None = None,
    stats: str | os.PathLike[str] | None = None,
    bit_sparsities: list[float] | None = None,
    bit_recipe: str | None = None,
) -> dict[str, Any]:
    """Compresses and evaluates every cell (see the module docstring); returns the summary.
    ``runtime="ct2"``: every model (the dense one too) is exported with export-ct2 and evaluated
    in CTranslate2 with ``compute_type``. ``bits``: also palettize the dense model at each of
    these bits (per ``bit_allocations``, default uniform; ``palette_options``: PaletteConfig fields).
    ``stats``: the statistics file that cells of recipes with activations selfgen read.
    ``bit_sparsities``: every bits cell also palettizes the model folded after ``bit_recipe``
    (default datafree-selfgen with ``stats``, else datafree) at each of these sparsities."""
    out = Path(out)
    model_dir = resolve_model(model_dir)
    bits = list(bits or [])
    bit_allocations = list(bit_allocations or ["uniform"])
    check_bits(bits, bit_allocations)
    bit_sparsities = list(bit_sparsities or [])
    for s in bit_sparsities:
        check_sparsity(s)
    if bit_sparsities and not bits:
        raise InvalidArgumentError("--bit-sparsities stacks the --bits cells on structured removal: give --bits too")
    stack_recipe = bit_recipe or ("datafree-selfgen" if stats is not None else "datafree")
    if bit_sparsities and make_recipe(stack_recipe).activations == "selfgen" and stats is None:
        raise InvalidArgumentError(f"--bit-recipe {stack_recipe} reads statistics: give --stats")
    if bits and runtime != "transformers":
        raise InvalidArgumentError("--bits: palettized models are evaluated in transformers (not --runtime ct2)")
    grid = sweep_grid(methods, allocations) if sparsities or not bits else []
    if not sparsities and not bits:
        raise InvalidArgumentError("a sweep needs at least one sparsity, method and allocation")
    for s in sparsities:
        check_sparsity(s)
    refuse_inside_sources(out, [model_dir, data], "the sweep output")
    if runtime not in RUNTIMES:
        raise InvalidArgumentError(f"unknown runtime {runtime!r} (expected one of: {', '.join(RUNTIMES)})")
    data_key = {
        "data": str(data),
        "subset": subset,
        "limit": limit,
        "include": include,
        "exclude": exclude,
        "export": export,
        "budget": budget,
    }
    if runtime != "transformers":  # older results (without these keys) stay valid for transformers
        data_key.update(runtime=runtime, compute_type=compute_type)
    if stats is not None:  # older results (without the key) stay valid without statistics
        data_key["stats"] = str(stats)
    if palette_options:
        data_key["palette"] = dict(sorted(palette_options.items()))
    utts = load_utterances(data, subset, limit)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    rows: list[dict[str, Any]] = json.loads(results_path.read_text()) if results_path.exists() else []
    rows = [r for r in rows if r.get("data_key") == data_key]
    done = {r["cell"] for r in rows}

    def record(cell: str, result: dict[str, Any], **fields: Any) -> None:
        rows.append({"cell": cell, "data_key": data_key, **fields, **{k: result[k] for k in KEPT_FIELDS}})
        write_json_atomic(results_path, rows)

    def evaluated(model: Path | str | os.PathLike[str]) -> dict[str, Any]:
        if runtime == "ct2":
            exported = out / "models" / f"{Path(model).name}-ct2"
            export_ct2(model, exported, overwrite=True)
            model = exported
        result = evaluate(
            model,
            data,
            utterances=utts,
            batch_size=batch_size,
            progress=progress,
            device=device,
            compute_type=compute_type,
            threads=threads,
        )
        if runtime == "ct2" and not keep_models:
            shutil.rmtree(exported, ignore_errors=True)
        return result

    if "dense" not in done:
        log("dense ...")
        result = evaluated(model_dir)
        record("dense", result, method="dense", allocation="-", sparsity=0.0, achieved_sparsity=0.0)
        log(f"  dense: WER {100 * result['wer']:.2f} %")
    for method, allocation in grid:
        recipe, opts = _method_options(method)
        for s in sparsities:
            cell = _cell_key(method, allocation, s)
            if cell in done:
                continue
            log(f"{cell} ...")
            dst = out / "models" / cell
            report = compress(
                model_dir,
                dst,
                recipe,
                sparsity=s,
                export=export,
                include=include,
                exclude=exclude,
                overwrite=True,
                progress=False,
                allocation=allocation,
                budget=budget,
                stats=stats if make_recipe(recipe, **opts).activations == "selfgen" else None,
                **opts,
            )
            result = evaluated(dst)
            plan = report.plan
            k_plan = [[m.name, m.n_units, m.k] for m in plan.modules]
            record(
                cell,
                result,
                method=method,
                allocation=allocation,
                sparsity=s,
                achieved_sparsity=plan.achieved_sparsity,
                k_plan=k_plan,
                **({"stats_settings": plan.stats.settings} if plan.stats is not None else {}),
            )
            log(f"  {cell}: WER {100 * result['wer']:.2f} %, achieved sparsity {plan.achieved_sparsity:.4f}")
            if not keep_models:
                shutil.rmtree(dst, ignore_errors=True)
    by_stats = [False]
    if bits and stats is not None:
        from ..io.stats import load_stats

        if load_stats(stats).inputs:  # layer-input moments: every bits cell also by the output error
            by_stats.append(True)
    stacks: list[tuple[str, float] | None] = [None, *((stack_recipe, s) for s in bit_sparsities)]
    step_stats = stats if make_recipe(stack_recipe).activations == "selfgen" else None
    cells = ((a, b, s, k) for k in stacks for a in bit_allocations for b in bits for s in by_stats)
    for allocation, b, with_stats, stack in cells:
        cell = cell_key(allocation, b, with_stats, stack)
        if cell in done:
            continue
        log(f"{cell} ...")
        dst = out / "models" / cell
        fields = palettize_cell(
            model_dir, dst, allocation, b, palette_options or {}, stats if with_stats else None, stack, step_stats
        )
        result = evaluated(dst)
        record(cell, result, **fields)
        log(f"  {cell}: WER {100 * result['wer']:.2f} %, {fields['size_ratio']:.3f} x the fp16 size")
        if not keep_models:
            shutil.rmtree(dst, ignore_errors=True)
    dense_wer = next(r["wer"] for r in rows if r["method"] == "dense")
    summary = {"dense_wer": dense_wer, "lossless_sparsity": lossless_sparsity(rows, dense_wer), "rows": rows}
    (out / "results.md").write_text(markdown_table(rows, summary["lossless_sparsity"], data_key))
    plot(rows, out)
    return summary


def markdown_table(rows: list[dict[str, Any]], lossless: dict[str, float | None], data_key: dict[str, Any]) -> str:
    lines = [
        f"Data: {Path(data_key['data']).name} (subset {data_key['subset'] or 'all'}, limit {data_key['limit']}); "
        f"modules: include {data_key['include']!r}, exclude {data_key['exclude']!r}; export {data_key['export']}",
        "",
        "| method | allocation | sparsity | achieved | WER % | S | D | I | hit bound |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    structured = [r for r in rows if r["method"] != "palettize"]
    for r in sorted(structured, key=lambda r: (r["method"] != "dense", r["method"], r["allocation"], r["sparsity"])):
        lines.append(
            f"| {r['method']} | {r['allocation']} | {r['sparsity']:g} | {r['achieved_sparsity']:.4f} | "
            f"{100 * r['wer']:.2f} | {r['substitutions']} | {r['deletions']} | {r['insertions']} | {r['hit_length_bound']} |"
        )
    lines += ["", "Lossless sparsity (largest swept sparsity with WER within 10 % relative of dense):", ""]
    for key, value in sorted(lossless.items()):
        lines.append(f"* {key}: {'none' if value is None else f'{value:g}'}")
    dense = next((r["wer"] for r in rows if r["method"] == "dense"), None)
    if dense:
        lines += bits_table(rows, dense)
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """wer_vs_sparsity.png and k_plan.png (skipped with a note when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        (out / "PLOTS_SKIPPED.txt").write_text("matplotlib is not installed: pip install 'clusterprune[eval]'\n")
        return
    plot_bits(rows, out, plt)
    if all(r["method"] in ("dense", "palettize") for r in rows):
        return
    dense = next(r["wer"] for r in rows if r["method"] == "dense")
    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["method"] not in ("dense", "palettize"):
            series.setdefault(f"{r['method']} / {r['allocation']}", []).append((r["sparsity"], 100 * r["wer"]))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.axhline(100 * dense, color="k", linestyle="--", label="dense")
    ax.set_xlabel("sparsity (% of units per module)")
    ax.set_ylabel("WER (%)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "wer_vs_sparsity.png", dpi=120)
    plt.close(fig)
    with_plan = [r for r in rows if r.get("k_plan")]
    if with_plan:
        top = max(r["sparsity"] for r in with_plan)
        fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(with_plan[0]["k_plan"])), 4))
        chosen = {r["allocation"]: r for r in with_plan if r["sparsity"] == top}
        width = 0.8 / max(len(chosen), 1)
        for j, (alloc, r) in enumerate(sorted(chosen.items())):
            ks = [k / n for _, n, k in r["k_plan"]]
            ax.bar([i + j * width for i in range(len(ks))], ks, width=width, label=alloc)
        names = [
            name.replace("model.", "").replace(".layers.", ".") for name, _, _ in next(iter(chosen.values()))["k_plan"]
        ]
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_ylabel("K / N (units kept)")
        ax.set_title(f"per-module plan at sparsity {top:g}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "k_plan.png", dpi=120)
        plt.close(fig)
