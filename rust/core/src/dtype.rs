//! Storage dtypes of checkpoints: f32 compute from f16 / bf16 / f32 storage and back.
//! Conversions round to nearest, ties to even (the `half` crate), NaN stays NaN.

use half::{bf16, f16};
use rayon::prelude::*;

const CHUNK: usize = 1 << 16;

/// Element-wise conversion, parallel over fixed-size chunks.
fn convert<A: Copy + Sync, B: Copy + Default + Send>(
    input: &[A],
    f: impl Fn(A) -> B + Sync,
) -> Vec<B> {
    let mut out = vec![B::default(); input.len()];
    out.par_chunks_mut(CHUNK)
        .zip(input.par_chunks(CHUNK))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &v)| *o = f(v)));
    out
}

/// Half-precision bit patterns to f32.
pub fn f16_to_f32(bits: &[u16]) -> Vec<f32> {
    convert(bits, |b| f16::from_bits(b).to_f32())
}

/// bfloat16 bit patterns to f32 (exact).
pub fn bf16_to_f32(bits: &[u16]) -> Vec<f32> {
    convert(bits, |b| bf16::from_bits(b).to_f32())
}

/// Exponent bits of f16 and bf16: all set means infinite or NaN.
pub const F16_EXPONENT: u16 = 0x7C00;
pub const BF16_EXPONENT: u16 = 0x7F80;

/// Index of the first 16-bit float (bit patterns) whose `exponent` bits are all set: the first
/// infinite or NaN value. Chunks are searched in parallel; the answer is the first in order.
pub fn first_non_finite_16(bits: &[u16], exponent: u16) -> Option<usize> {
    let bad = |b: &u16| b & exponent == exponent;
    let chunk = bits
        .par_chunks(CHUNK)
        .position_first(|c| c.iter().any(bad))?;
    let start = chunk * CHUNK;
    bits[start..].iter().position(bad).map(|p| start + p)
}

/// f32 to half-precision bit patterns (round to nearest even; overflow gives +-Inf).
pub fn f32_to_f16(values: &[f32]) -> Vec<u16> {
    convert(values, |v| f16::from_f32(v).to_bits())
}

/// f32 to bfloat16 bit patterns (round to nearest even).
pub fn f32_to_bf16(values: &[f32]) -> Vec<u16> {
    convert(values, |v| bf16::from_f32(v).to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_non_finite_16_bit_float_is_found_in_any_chunk() {
        for (exponent, inf, nan, finite) in [
            (F16_EXPONENT, 0x7C00u16, 0xFE00u16, 0x7BFFu16),
            (BF16_EXPONENT, 0x7F80, 0xFFC1, 0x7F7F),
        ] {
            let mut bits = vec![finite; 3 * CHUNK + 17];
            assert_eq!(first_non_finite_16(&bits, exponent), None);
            assert_eq!(first_non_finite_16(&[], exponent), None);
            bits[3 * CHUNK + 5] = nan;
            assert_eq!(first_non_finite_16(&bits, exponent), Some(3 * CHUNK + 5));
            bits[2 * CHUNK - 1] = inf | 0x8000; // -inf, at the end of a chunk
            assert_eq!(first_non_finite_16(&bits, exponent), Some(2 * CHUNK - 1));
            bits[7] = inf;
            assert_eq!(first_non_finite_16(&bits, exponent), Some(7));
        }
    }

    #[test]
    fn bf16_round_trip_is_exact_for_representable_values() {
        let vals = [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            3.140625,
            7.888609e-31,
            f32::INFINITY,
        ];
        let back = bf16_to_f32(&f32_to_bf16(&vals));
        assert_eq!(back, vals);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to even (1).
        let x = 1.0f32 + 2f32.powi(-8);
        assert_eq!(bf16_to_f32(&f32_to_bf16(&[x]))[0], 1.0);
        let y = 1.0f32 + 3.0 * 2f32.powi(-8);
        assert_eq!(bf16_to_f32(&f32_to_bf16(&[y]))[0], 1.0 + 2f32.powi(-6));
    }

    #[test]
    fn f16_matches_reference_values() {
        assert_eq!(
            f16_to_f32(&[0x3C00, 0xC000, 0x7BFF]),
            vec![1.0, -2.0, 65504.0]
        );
        assert_eq!(f32_to_f16(&[1.0, -2.0, 1e6]), vec![0x3C00, 0xC000, 0x7C00]);
        assert!(f16_to_f32(&f32_to_f16(&[f32::NAN]))[0].is_nan());
    }
}
