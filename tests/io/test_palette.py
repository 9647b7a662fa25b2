"""The compact palette format: bit packing and the one dequantization."""

from __future__ import annotations

import numpy as np
import pytest

from clusterprune.io.palette import Palettized, pack_indices, unpack_indices


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_round_trip_and_size(bits):
    rng = np.random.default_rng(bits)
    for count in (1, 7, 8, 9, 1000):
        idx = rng.integers(0, 2**bits, size=count, dtype=np.uint8)
        packed = pack_indices(idx, bits)
        assert packed.size == -(-count * bits // 8)
        np.testing.assert_array_equal(unpack_indices(packed, bits, count), idx)


def _numpy_pack(indices: np.ndarray, bits: int) -> np.ndarray:
    """The stream by NumPy's bit arrays: each index's low ``bits`` bits, least significant first."""
    stream = np.unpackbits(indices.reshape(-1, 1), axis=1, bitorder="little")[:, :bits]
    return np.packbits(stream.reshape(-1), bitorder="little")


@pytest.mark.parametrize("bits", range(1, 9))
def test_packing_matches_numpy_bit_arrays_on_fresh_inputs(bits):
    rng = np.random.default_rng()
    for count in (0, 1, 3, 65536 - 1, 65536 + 3, int(rng.integers(1, 300_000))):  # across the engine's chunks
        idx = rng.integers(0, 2**bits, size=count, dtype=np.uint8)
        np.testing.assert_array_equal(pack_indices(idx, bits), _numpy_pack(idx, bits))
        np.testing.assert_array_equal(unpack_indices(_numpy_pack(idx, bits), bits, count), idx)
    if bits < 8:
        with pytest.raises(ValueError, match="does not fit"):
            pack_indices(np.array([0, 2**bits], dtype=np.uint8), bits)


def test_pack_layout_is_lsb_first():
    # indices 1, 2, 3 at 2 bits: bits 01 | 10 | 11 -> byte 0b00_11_10_01
    assert pack_indices(np.array([1, 2, 3], dtype=np.uint8), 2).tolist() == [0b00111001]
    with pytest.raises(ValueError, match="packed bytes"):
        unpack_indices(np.zeros(3, dtype=np.uint8), 4, 8)


def test_dequantize_reference():
    lut = np.array([[-1.0, 0.5], [2.0, 4.0]], dtype=np.float32)
    idx = np.array([[0, 1, 1], [1, 0, 0]], dtype=np.uint8)
    p = Palettized((2, 3), "F32", 1, 1, lut, "F16", idx, None, np.array([4]), np.array([9.0], dtype=np.float32))
    np.testing.assert_array_equal(p.dequantize(), [[-1.0, 0.5, 0.5], [4.0, 9.0, 2.0]])
    scaled = Palettized(
        (2, 3), "F16", 1, 2, lut[:1], "F16", idx, np.array([2.0, 3.0], dtype=np.float32), np.zeros(0, int), np.zeros(0)
    )
    out = scaled.dequantize()
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, [[-2.0, 1.0, 1.0], [1.5, -3.0, -3.0]])
