"""The safetensors header parser against the format's rules: every well-formed header is read back
exactly, every defect is one CorruptCheckpointError line (property tests with hypothesis, plus
one example of each defect class)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterprune._core import bf16_to_f32
from clusterprune.errors import CorruptCheckpointError
from clusterprune.io.safetensors import (
    ITEMSIZE,
    SafetensorsFile,
    SafetensorsWriter,
    first_non_finite,
    parse_header,
    positive_zeros,
)

DTYPES = sorted(ITEMSIZE)


def blob(header: dict | str | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def parse(b: bytes):
    return parse_header("f.safetensors", b, len(b))


tensor = st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 5), max_size=3))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda s: s != "__metadata__"), tensor, max_size=6),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
def test_well_formed_headers_read_back_exactly(tensors, metadata):
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    got, meta, start = parse(blob(header, b"\0" * offset))
    assert meta == metadata
    assert {n: (t.dtype, list(t.shape)) for n, t in got.items()} == {n: (d, s) for n, (d, s) in tensors.items()}
    assert start == 8 + len(json.dumps(header).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_another_error(data):
    try:
        parse(data)
    except CorruptCheckpointError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-3, 2**70) | st.text(max_size=4),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        max_leaves=12,
    ),
    st.binary(max_size=64),
)
def test_arbitrary_json_headers_are_checked_not_crashed(header, data):
    try:
        parse(blob(json.dumps({"t": header}), data))
        parse(blob(json.dumps(header), data))
    except CorruptCheckpointError as exc:
        assert "\n" not in str(exc)


def one(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(
    "header, data, message",
    [
        ({"a": one(), "b": one()}, 16, "overlaps the previous tensor"),
        ({"a": one(), "b": one(offsets=(12, 20))}, 20, "leaves a gap of 4 bytes"),
        ({"a": one()}, 12, "4 unexpected bytes after the last tensor"),
        (
            '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], '
            '"data_offsets": [0, 8]}}',
            8,
            "duplicate key 'a'",
        ),
        ({"__metadata__": {"k": 1}, "a": one()}, 8, "__metadata__ must be an object of strings"),
        ({"__metadata__": "x", "a": one()}, 8, "__metadata__ must be an object of strings"),
        ({"a": one(dtype="F33")}, 8, "unknown dtype 'F33'"),
        ({"a": one(shape=(-2,))}, 8, "bad shape"),
        ({"a": one(shape=(2**40, 2**40, 2**40), offsets=(0, 8))}, 8, "bytes for shape"),
        ({"a": one(shape=(2**31, 2**31), offsets=(0, 8))}, 8, "bytes for shape"),
        ({"a": one(shape=(3,), offsets=(0, 12))}, 8, "truncated file"),
        ({"a": one(shape=(True,))}, 8, "bad shape"),
        ({"a": []}, 8, "bad entry for tensor a"),
    ],
)
def test_each_defect_is_one_line(header, data, message):
    with pytest.raises(CorruptCheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(blob(header, b"\0" * data))


def test_written_files_pass_the_checks_and_close_with_views_alive(tmp_path):
    path = tmp_path / "m.safetensors"
    w = SafetensorsWriter(path, [("a", "F32", (2, 3)), ("b", "BF16", (4,)), ("c", "U16", (0,))], {"k": "v"})
    w.write("a", np.arange(6, dtype=np.float32).reshape(2, 3))
    w.write("b", np.arange(4, dtype=np.uint16))
    w.write("c", b"")
    w.close()
    f = SafetensorsFile(path)
    view = f.raw("a")
    f.close()  # an array still views the map: closing must not raise (and must not mask an error)
    assert view.tolist() == [[0, 1, 2], [3, 4, 5]] and f.metadata == {"k": "v"}


def test_the_first_non_finite_half_is_the_one_isfinite_finds():
    """fp16 by its exponent bits: every one of the 65,536 codes judged as np.isfinite judges it,
    and the first NaN or Inf found wherever it is (first, last, among others, none)."""
    codes = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = np.isfinite(codes)
    for code in range(1 << 16):
        one = codes[code : code + 1]
        assert (first_non_finite(one, "F16") is None) == bool(finite[code]), hex(code)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.standard_normal(int(rng.integers(1, 300))).astype(np.float16)
        for _ in range(int(rng.integers(0, 3))):
            a[rng.integers(0, a.size)] = rng.choice(codes[~finite])
        expected = np.flatnonzero(~np.isfinite(a))
        got = first_non_finite(a.reshape(1, -1), "F16")
        assert got == (int(expected[0]) if expected.size else None)


def test_positive_zeros_changes_the_sign_of_zeros_and_nothing_else():
    rng = np.random.default_rng(2)
    for dtype in (np.float16, np.float32, np.float64, np.uint16):  # uint16: bfloat16 storage
        width = np.dtype(dtype).itemsize * 8
        bits = rng.integers(0, 1 << min(width, 62), 1000, dtype=np.uint64).astype(f"<u{width // 8}")
        bits[::5] = 1 << (width - 1)  # -0.0
        bits[1::5] = 0  # +0.0
        raw = bits.view(dtype).reshape(10, 100)
        before = raw.copy()
        out = positive_zeros(raw)
        assert out.dtype == raw.dtype and out.shape == raw.shape
        assert np.array_equal(raw.view(bits.dtype), before.view(bits.dtype)), "the input is not modified"
        want = np.where(bits == 1 << (width - 1), 0, bits).astype(bits.dtype)
        assert np.array_equal(out.reshape(-1).view(bits.dtype), want)


def test_the_first_non_finite_bfloat16_is_the_one_isfinite_finds():
    codes = np.arange(1 << 16, dtype=np.uint16)
    finite = np.isfinite(bf16_to_f32(codes))
    for code in range(1 << 16):
        assert (first_non_finite(codes[code : code + 1], "BF16") is None) == bool(finite[code]), hex(code)
    rng = np.random.default_rng(1)
    for _ in range(100):
        a = rng.choice(codes[finite], int(rng.integers(1, 200_000)))
        for _ in range(int(rng.integers(0, 3))):  # none, one or two, anywhere
            a[rng.integers(0, a.size)] = rng.choice(codes[~finite])
        expected = np.flatnonzero(~np.isfinite(bf16_to_f32(a)))
        assert first_non_finite(a, "BF16") == (int(expected[0]) if expected.size else None)
