//! Table indices as a little-endian bit stream: index i fills bits [i b, (i + 1) b) of the
//! stream, bit 0 being the lowest bit of byte 0; the last byte is padded with zero bits.

use crate::error::{invalid, Result};
use rayon::prelude::*;

/// Indices per parallel chunk: a multiple of 8, so that every chunk starts on a byte.
const CHUNK: usize = 1 << 16;

fn check_bits(bits: u32) -> Result<()> {
    if !(1..=8).contains(&bits) {
        return invalid(format!("bits {bits} is not one of 1..8"));
    }
    Ok(())
}

/// Bytes of `count` packed indices of `bits` bits.
pub fn packed_len(count: usize, bits: u32) -> usize {
    (count * bits as usize).div_ceil(8)
}

/// Packs `indices` (each < 2^bits) into the bit stream.
pub fn pack(indices: &[u8], bits: u32) -> Result<Vec<u8>> {
    check_bits(bits)?;
    if let Some(i) = indices.iter().position(|&v| bits < 8 && v >> bits != 0) {
        return invalid(format!(
            "index {i} is {}, which does not fit in {bits} bits",
            indices[i]
        ));
    }
    let mut out = vec![0u8; packed_len(indices.len(), bits)];
    let chunk_bytes = CHUNK / 8 * bits as usize;
    out.par_chunks_mut(chunk_bytes)
        .zip(indices.par_chunks(CHUNK))
        .for_each(|(o, idx)| {
            let (mut acc, mut filled, mut at) = (0u32, 0u32, 0usize);
            for &v in idx {
                acc |= (v as u32) << filled;
                filled += bits;
                while filled >= 8 {
                    o[at] = acc as u8;
                    at += 1;
                    acc >>= 8;
                    filled -= 8;
                }
            }
            if filled > 0 {
                o[at] = acc as u8;
            }
        });
    Ok(out)
}

/// The first `count` indices of the bit stream `packed`, which must hold exactly
/// `packed_len(count, bits)` bytes.
pub fn unpack(packed: &[u8], bits: u32, count: usize) -> Result<Vec<u8>> {
    check_bits(bits)?;
    let need = packed_len(count, bits);
    if packed.len() != need {
        return invalid(format!(
            "{} packed bytes, expected {need} for {count} indices of {bits} bits",
            packed.len()
        ));
    }
    let mut out = vec![0u8; count];
    let chunk_bytes = CHUNK / 8 * bits as usize;
    let mask = ((1u32 << bits) - 1) as u8;
    out.par_chunks_mut(CHUNK)
        .zip(packed.par_chunks(chunk_bytes))
        .for_each(|(o, bytes)| {
            let (mut acc, mut filled, mut at) = (0u32, 0u32, 0usize);
            for v in o.iter_mut() {
                while filled < bits {
                    acc |= (bytes[at] as u32) << filled;
                    at += 1;
                    filled += 8;
                }
                *v = acc as u8 & mask;
                acc >>= bits;
                filled -= bits;
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// The stream bit by bit: the definition in the module docstring.
    fn reference(indices: &[u8], bits: u32) -> Vec<u8> {
        let mut out = vec![0u8; packed_len(indices.len(), bits)];
        for (i, &v) in indices.iter().enumerate() {
            for b in 0..bits as usize {
                if (v >> b) & 1 == 1 {
                    let pos = i * bits as usize + b;
                    out[pos / 8] |= 1 << (pos % 8);
                }
            }
        }
        out
    }

    #[test]
    fn packing_matches_the_bit_by_bit_definition_and_unpacks_back() {
        let mut rng = SplitMix64::new(0x5eed);
        for bits in 1..=8u32 {
            // empty, shorter than a byte, across the parallel chunks' edges
            for count in [
                0usize,
                1,
                3,
                7,
                8,
                9,
                1000,
                CHUNK - 1,
                CHUNK,
                CHUNK + 5,
                3 * CHUNK + 17,
            ] {
                let idx: Vec<u8> = (0..count)
                    .map(|_| (rng.next_u64() % (1u64 << bits)) as u8)
                    .collect();
                let packed = pack(&idx, bits).unwrap();
                assert_eq!(packed, reference(&idx, bits), "bits {bits} count {count}");
                assert_eq!(unpack(&packed, bits, count).unwrap(), idx);
            }
            let all_top = vec![((1u32 << bits) - 1) as u8; 37];
            assert_eq!(
                unpack(&pack(&all_top, bits).unwrap(), bits, 37).unwrap(),
                all_top
            );
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(pack(&[16], 4).is_err());
        assert!(pack(&[1], 0).is_err());
        assert!(pack(&[1], 9).is_err());
        assert!(unpack(&[0, 0], 4, 5).is_err());
        assert!(unpack(&[0, 0, 0, 0], 4, 5).is_err());
        assert!(unpack(&[0; 3], 4, 5).is_ok());
    }
}
