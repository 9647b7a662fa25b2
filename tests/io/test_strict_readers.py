"""The readers of the package's own formats trust nothing: a compact palettized checkpoint and a
statistics file are checked entry by entry against their metadata (dtype, shape, byte count, bits,
group rows, finiteness, what a covariance can be), and a content digest covers every byte, so that
a damaged file gives either the identical result or one ClusterpruneError line, never a silently
different model (property tests: random corruptions of valid files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clusterprune
from clusterprune.errors import ClusterpruneError, CorruptCheckpointError
from clusterprune.io.checkpoint import Checkpoint
from clusterprune.io.palette import HEADER_KEY, logical_tensors, read_state
from clusterprune.io.stats import ActivationStats, ModuleStats, load_stats
from hostile import rewrite

COMPACT_OPTIONS = {"format": "compact", "bits": 3, "min_size": 0, "outliers": 0.01, "row_scale": True}


@pytest.fixture(scope="module")
def compact(checkpoints, tmp_path_factory) -> Path:
    """A compact palettized tiny Whisper with every kind of part: tables, indices, per-row scales
    and outliers."""
    out = tmp_path_factory.mktemp("compact") / "model"
    clusterprune.palettize(checkpoints["whisper"], out, progress=False, **COMPACT_OPTIONS)
    names = logical_tensors_of(out)
    assert any(n.endswith(".palette_outlier_positions") for n in names) and any(
        n.endswith(".palette_scales") for n in names
    )
    return out


def logical_tensors_of(path: Path) -> list[str]:
    with Checkpoint(path) as ckpt:
        return list(ckpt.names())


def state_of(path: Path) -> dict[str, bytes]:
    with Checkpoint(path) as ckpt:
        return {n: (d, np.ascontiguousarray(a).tobytes()) for n, (d, a) in read_state(ckpt).items()}


def damaged_copy(compact: Path, tmp: Path) -> Path:
    dst = tmp / "damaged"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(compact, dst)
    return dst


def expect_refused(path: Path, pattern: str, structural: bool = True) -> None:
    """load_palettized's reader refuses ``path``; so does inspect's where the defect is in the
    structure (inspect does not decode values)."""
    with pytest.raises(CorruptCheckpointError, match=pattern) as info:
        with Checkpoint(path) as ckpt:
            read_state(ckpt)
    assert "\n" not in str(info.value)
    if structural:
        with pytest.raises(CorruptCheckpointError, match=pattern):
            with Checkpoint(path) as ckpt:
                logical_tensors(ckpt)


# ---------------------------------------------------------------- the compact reader, class by class


def first_part(path: Path, suffix: str) -> str:
    return next(n for n in logical_tensors_of(path) if n.endswith(suffix))


@pytest.mark.parametrize(
    ("suffix", "change", "pattern"),
    [
        (".palette_indices", lambda a: a.astype(np.float32), "palette_indices is F32, expected U8"),
        (".palette_outlier_positions", lambda a: a.astype(np.float32), "is F32, expected I64"),
        (".palette_outlier_values", lambda a: a.astype(np.int8), "is I8, expected F32"),
        (".palette_indices", lambda a: a[:-1], "has shape"),
        (".palette_lut", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a).astype(a.dtype), "NaN"),
        (".palette_scales", lambda a: np.full_like(a, np.inf), "NaN or infinite"),
        (".palette_outlier_values", lambda a: np.full_like(a, np.nan), "NaN or infinite"),
        (".palette_outlier_positions", lambda a: a[::-1].copy(), "ascend strictly"),
        (".palette_outlier_positions", lambda a: a + 10**9, "ascend strictly inside"),
    ],
)
def test_every_palette_part_is_checked_against_its_entry(compact, tmp_path, suffix, change, pattern):
    path = damaged_copy(compact, tmp_path)
    name = first_part(path, suffix)
    rewrite(path / "model.safetensors", lambda n, a: change(a) if n == name else a)
    expect_refused(path, pattern, structural="NaN" not in pattern and "ascend" not in pattern)


def test_a_lost_part_a_stray_part_and_a_plain_twin_are_refused(compact, tmp_path):
    path = damaged_copy(compact, tmp_path)
    positions = first_part(path, ".palette_outlier_positions")
    rewrite(path / "model.safetensors", drop=(positions,))  # the outliers would silently vanish
    expect_refused(path, "has outliers without")

    path = damaged_copy(compact, tmp_path)
    lut = first_part(path, ".palette_lut")
    owner = lut.removesuffix(".palette_lut")
    rewrite(path / "model.safetensors", add={owner: np.zeros((2, 2), dtype=np.float32)})  # would win over the palette
    expect_refused(path, "stored both plain and palettized")

    path = damaged_copy(compact, tmp_path)

    def forget(meta: dict[str, str]) -> dict[str, str]:
        entries = json.loads(meta[HEADER_KEY])
        del entries[owner]
        return {**meta, HEADER_KEY: json.dumps(entries)}

    rewrite(path / "model.safetensors", metadata=forget)
    expect_refused(path, "belongs to no palette entry")


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("shape", [10**9, 10**9, 10**9], "impossible shape"),
        ("shape", [0], "impossible shape"),
        ("dtype", "Q7", "unknown dtype 'Q7'"),
        ("bits", 9, "9 bits"),
        ("bits", 3.5, "malformed"),
        ("group_rows", 0, "group size 0"),
    ],
)
def test_an_absurd_entry_is_refused_before_anything_is_computed(compact, tmp_path, field, value, pattern):
    path = damaged_copy(compact, tmp_path)
    owner = first_part(path, ".palette_lut").removesuffix(".palette_lut")

    def damage(meta: dict[str, str]) -> dict[str, str]:
        entries = json.loads(meta[HEADER_KEY])
        entries[owner][field] = value
        return {**meta, HEADER_KEY: json.dumps(entries)}

    rewrite(path / "model.safetensors", metadata=damage)
    expect_refused(path, pattern)


def test_a_compact_checkpoint_that_lost_its_marker_is_not_loaded_as_dense(compact, tmp_path):
    pytest.importorskip("transformers")
    from clusterprune.models.hf import load_weights

    path = damaged_copy(compact, tmp_path)
    config = json.loads((path / "config.json").read_text())
    del config["clusterprune_palettized"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptCheckpointError, match=r"fc1.weight not found|not part of the Whisper"):
        load_weights(path)


# ---------------------------------------------------------------- random damage: identical or one line


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_to_a_compact_file_is_never_a_silent_difference(compact, tmp_path, data):
    original = state_of(compact)
    path = damaged_copy(compact, tmp_path)
    f = path / "model.safetensors"
    blob = bytearray(f.read_bytes())
    header = 8 + int.from_bytes(blob[:8], "little")
    in_header = data.draw(st.booleans())
    lo, hi = (8, header - 1) if in_header else (header, len(blob) - 1)
    blob = damage(data, blob, lo, hi)
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(8, len(blob)))]  # and perhaps cut short
    f.write_bytes(bytes(blob))
    identical_or_one_line(lambda: state_of(path), original)


def damage(data, blob: bytearray, lo: int, hi: int) -> bytearray:
    """One to three bytes in [lo, hi] overwritten with values hypothesis draws."""
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(lo, hi))] = data.draw(st.integers(0, 255))
    return blob


def identical_or_one_line(read, original) -> None:
    """``read()`` gives ``original`` or raises one ClusterpruneError line; nothing else."""
    try:
        got = read()
    except ClusterpruneError as exc:
        assert "\n" not in str(exc)
        return
    assert got == original


# ---------------------------------------------------------------- statistics files


def small_stats(path: Path, n: int = 6) -> ActivationStats:
    rng = np.random.default_rng(0)
    modules = {}
    for name in ("model.encoder.layers.0.ffn", "model.decoder.layers.0.ffn"):
        x = rng.standard_normal((50, n))
        modules[name] = ModuleStats(x.mean(axis=0), np.cov(x.T, bias=True), 50, 1.5)
    stats = ActivationStats(modules, source="src", digest="d" * 8, settings={"clips": 1})
    stats.save(path)
    return stats


def stats_content(path: Path) -> dict[str, tuple[bytes, bytes, int, float]]:
    s = load_stats(path)
    return {n: (m.mean.tobytes(), m.cov.tobytes(), m.count, m.stream_variance) for n, m in s.modules.items()}


def rewrite_stats_meta(path: Path, change) -> None:
    """The file rewritten as version 2 (no content digest: what is checked is the content itself),
    its record passed through ``change``."""

    def damage(meta: dict[str, str]) -> dict[str, str]:
        record = {**json.loads(meta["clusterprune_activation_stats"]), "version": 2}
        change(record)
        return {**meta, "clusterprune_activation_stats": json.dumps(record)}

    rewrite(path, metadata=damage)


ENCODER = "model.encoder.layers.0.ffn"


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda r: r["modules"][ENCODER].update(stream_variance=-1.0), "stream_variance -1.0"),
        (lambda r: r["modules"][ENCODER].update(stream_variance=float("nan")), "stream_variance nan"),
        (lambda r: r["modules"][ENCODER].update(count=0), "count 0"),
        (lambda r: r.update(version=7), "version 7 is not one"),
        (lambda r: r.update(version=3), "no content digest"),
    ],
)
def test_a_statistics_record_is_checked_on_reading(tmp_path, change, pattern):
    path = tmp_path / "s.safetensors"
    small_stats(path)
    assert stats_content(path)
    rewrite_stats_meta(path, change)
    with pytest.raises(CorruptCheckpointError, match=pattern):
        stats_content(path)


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [(0, "a variance is negative"), (1, "not a covariance"), (2, "NaN or infinite")],
)
def test_a_covariance_that_cannot_be_one_is_refused(tmp_path, entry, pattern):
    path = tmp_path / "s.safetensors"
    small_stats(path)
    values = {0: -5.0, 1: 1e3, 2: np.nan}

    def damage(name: str, a: np.ndarray) -> np.ndarray:
        if name == "model.decoder.layers.0.ffn.cov_upper":
            a = a.copy()
            a[entry] = values[entry]  # packed upper triangle: 0 is a variance, 1 a covariance
        return a

    rewrite(path, damage)
    rewrite_stats_meta(path, lambda r: None)
    with pytest.raises(CorruptCheckpointError, match=pattern):
        stats_content(path)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_random_damage_to_a_statistics_file_is_never_a_silent_difference(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("stats")
    path = root / "s.safetensors"
    small_stats(path)
    original = stats_content(path)
    blob = bytearray(path.read_bytes())
    path.write_bytes(bytes(damage(data, blob, 0, len(blob) - 1)))
    identical_or_one_line(lambda: stats_content(path), original)
