"""Human-readable summaries of a compression report and of an inspection."""

from __future__ import annotations

from typing import Any


def megabytes(n: int) -> str:
    """A size in MB (10^6 bytes): the one unit of every size the package prints."""
    return f"{n / 1e6:,.1f} MB"


def _what_the_recipe_does(r: dict[str, Any]) -> str:
    kinds = {"ffn": "FFN neurons", "attention": "attention heads", "all": "attention heads and FFN neurons"}[r["kinds"]]
    if r["method"] == "kmeans":
        return f"{kinds} clustered by k-means, each cluster merged into one unit ({r['fusion']} fusion)"
    if r["method"] == "obs":
        return f"{kinds} removed one at a time by the optimal-brain-surgeon rule, kept fc2 columns re-solved"
    return f"{kinds} of lowest {r['score']} score removed"


def format_compression(report: dict[str, Any]) -> str:
    lines = [f"{'module':<44} {'type':<18} {'N':>6} {'K':>6} {'sparsity':>8} {'rel WCSS':>9}"]
    for m in report["modules"]:
        lines.append(
            f"{m['name']:<44} {m['module_type']:<18} {m['n_units']:>6} {m['k']:>6} "
            f"{m['sparsity']:>8.3f} {m.get('rel_wcss', float('nan')):>9.4f}"
        )
    r = report["recipe"]
    lines.append(f"recipe {r['name']}: {_what_the_recipe_does(r)}; allocation {r['allocation']}, seed {report['seed']}")
    lines.append(
        f"removed {report['params_removed']:,} of {report['compressible_params']:,} compressible parameters "
        f"(achieved sparsity {report['achieved_sparsity']:.1%}; {report['params_removed'] / report['total_params']:.1%} "
        "of the model) "
        f"in {report['seconds']:.1f} s"
    )
    before, after, dst = (
        megabytes(report["bytes_before"]),
        megabytes(report["bytes_after"]),
        report.get("destination", "DST"),
    )
    if report["export"] == "fused":
        lines.append(
            f"wrote {dst}: a fused checkpoint, same shapes and size as the source ({before}), loads with "
            f"from_pretrained; the smaller model ({after}) is --export folded, then export-ct2 for CTranslate2 / "
            "faster-whisper"
        )
    else:
        lines.append(
            f"wrote {dst}: a folded checkpoint, {after} (source {before}); load it with clusterprune.load_folded "
            "or run it in CTranslate2 / faster-whisper after export-ct2"
        )
    return "\n".join(lines)


def format_palettization(report: dict[str, Any]) -> str:
    lines = [f"{'tensor':<52} {'shape':>14} {'bits':>4} {'rows/LUT':>8} {'rel err':>9}"]
    for t in report["tensors"]:
        shape = "x".join(str(d) for d in t["shape"])
        lines.append(f"{t['name']:<52} {shape:>14} {t['bits']:>4} {t['group_rows']:>8} {t['rel_error']:>9.2e}")
    c = report["config"]
    lines.append(
        f"{len(report['tensors'])} tensors ({report['palettized_params']:,} weights) at {report['avg_bits']:.2f} bits on "
        f"average ({c['allocation']}, {c['granularity']}, weighting {c['weighting']}, method {c['method']}); "
        f"format {report['format']}"
    )
    lines.append(
        f"size: source {megabytes(report['bytes_source'])}, fp16 {megabytes(report['bytes_fp16'])}, compact "
        f"{megabytes(report['bytes_compact'])} ({report['bytes_compact'] / max(report['bytes_fp16'], 1):.3f}x fp16); "
        f"written {megabytes(report['bytes_written'])}; {report['seconds']:.1f} s"
    )
    return "\n".join(lines)


def _plan_line(comp: dict[str, Any]) -> str:
    """One line describing a stored compression record."""
    r = comp["recipe"]
    return (
        f"compressed by clusterprune {comp['version']}: recipe {r['name']} (method {r['method']}, "
        f"allocation {r['allocation']}), sparsity {comp['sparsity']}, seed {comp.get('seed')}, export {comp['export']}"
    )


def _format_ct2(info: dict[str, Any]) -> str:
    widths = sorted(set(info["ffn_widths"].values()))
    lines = [
        f"{info['path']}: CTranslate2 {info['spec']}, {info['variables']} variables, {info['total_params']:,} values "
        f"({megabytes(info['bytes'])} model.bin, {'/'.join(info['dtypes'])}; weights {info['quantization'] or 'as stored'})",
        f"FFN widths {widths[0]}..{widths[-1]}" if widths else "FFN widths: not recorded",
    ]
    if info["padded_heads"]:
        lines.append(
            f"{len(info['padded_heads'])} attention modules padded back to the stack's head count (zero heads)"
        )
    if info.get("compression"):
        lines.append(f"exported from {info['source']}, {_plan_line(info['compression'])}")
    return "\n".join(lines)


def format_inspection(info: dict[str, Any]) -> str:
    if info.get("format") == "ctranslate2":
        return _format_ct2(info)
    lines = [
        f"{info['path']}: {info['family']}, {info['tensors']} tensors, {info['total_params']:,} parameters "
        f"({megabytes(info['bytes'])}, {'/'.join(info['dtypes'])}), {info['compressible_params']:,} in {len(info['modules'])} compressible modules"
        + (", folded" if info["folded"] else "")
    ]
    lines.append(f"{'module':<44} {'type':<18} {'N':>6} {'unit size':>10} {'K':>6}")
    for m in info["modules"]:
        lines.append(
            f"{m['name']:<44} {m['module_type']:<18} {m['n_units']:>6} {m['unit_params']:>10} {m.get('k', ''):>6}"
        )
    if info.get("compression"):
        lines.append(_plan_line(info["compression"]))
    pal = info.get("palettized")
    if pal:
        bits = f"{pal['avg_bits']:.2f}" if pal.get("avg_bits") is not None else "?"
        lines.append(
            f"palettized by clusterprune {pal.get('version')}: {pal['tensors']} tensors at {bits} bits on average, "
            f"format {pal['format']}"
        )
    return "\n".join(lines)
