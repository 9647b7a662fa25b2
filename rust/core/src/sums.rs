//! Float64 sums of f32, f16 and bf16 values in NumPy's order.

use half::{bf16, f16};

/// Below this many values the pairwise sums add on one thread.
const PAIRWISE_SPLIT: usize = 1 << 16;

/// The sum of the values of `x` (as f64) and the sum of their squares, each added in the order
/// NumPy's `np.sum` adds a contiguous float64 array (its pairwise summation: runs of at most 128
/// values over eight interleaved accumulators, longer runs split in two at a multiple of 8,
/// and the total added to 0.0): bit for bit `x.astype(np.float64).sum()` and
/// `(x.astype(np.float64) ** 2).sum()`, without the float64 copy. Halves of long runs are
/// added on two threads; the order, and so the result, is the same on any number of threads.
pub fn pairwise_sums(x: &[f32]) -> (f64, f64) {
    total(pairwise(x, &|v: f32| v as f64))
}

/// [`pairwise_sums`] of float16 values given as bit patterns (each exact in f64).
pub fn pairwise_sums_f16(bits: &[u16]) -> (f64, f64) {
    total(pairwise(bits, &|b: u16| f16::from_bits(b).to_f32() as f64))
}

/// [`pairwise_sums`] of bfloat16 values given as bit patterns (each exact in f64).
pub fn pairwise_sums_bf16(bits: &[u16]) -> (f64, f64) {
    total(pairwise(bits, &|b: u16| bf16::from_bits(b).to_f32() as f64))
}

fn total((sum, squares): (f64, f64)) -> (f64, f64) {
    (0.0 + sum, 0.0 + squares)
}

fn pairwise<T: Copy + Sync>(x: &[T], value: &(impl Fn(T) -> f64 + Sync)) -> (f64, f64) {
    let n = x.len();
    if n < 8 {
        let (mut s, mut q) = (0.0f64, 0.0f64);
        for &v in x {
            let v = value(v);
            s += v;
            q += v * v;
        }
        (s, q)
    } else if n <= 128 {
        let (mut s, mut q) = ([0f64; 8], [0f64; 8]);
        for l in 0..8 {
            let v = value(x[l]);
            s[l] = v;
            q[l] = v * v;
        }
        let whole = n - n % 8;
        for chunk in x[8..whole].chunks_exact(8) {
            for l in 0..8 {
                let v = value(chunk[l]);
                s[l] += v;
                q[l] += v * v;
            }
        }
        let fold = |r: [f64; 8]| ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        let (mut s, mut q) = (fold(s), fold(q));
        for &v in &x[whole..] {
            let v = value(v);
            s += v;
            q += v * v;
        }
        (s, q)
    } else {
        let half = n / 2 - (n / 2) % 8;
        let ((s1, q1), (s2, q2)) = if n >= PAIRWISE_SPLIT {
            rayon::join(
                || pairwise(&x[..half], value),
                || pairwise(&x[half..], value),
            )
        } else {
            (pairwise(&x[..half], value), pairwise(&x[half..], value))
        };
        (s1 + s2, q1 + q2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// NumPy's pairwise summation written out plainly, in f64, one sum at a time.
    fn numpy_sum(x: &[f64]) -> f64 {
        fn rec(x: &[f64]) -> f64 {
            let n = x.len();
            if n < 8 {
                let mut res = 0.0;
                for &v in x {
                    res += v;
                }
                return res;
            }
            if n <= 128 {
                let mut r = [0f64; 8];
                r.copy_from_slice(&x[..8]);
                let mut i = 8;
                while i < n - n % 8 {
                    for l in 0..8 {
                        r[l] += x[i + l];
                    }
                    i += 8;
                }
                let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
                while i < n {
                    res += x[i];
                    i += 1;
                }
                return res;
            }
            let mut n2 = n / 2;
            n2 -= n2 % 8;
            rec(&x[..n2]) + rec(&x[n2..])
        }
        0.0 + rec(x)
    }

    #[test]
    fn pairwise_sums_add_in_numpys_order() {
        let mut rng = SplitMix64::new(11);
        let lengths = [
            0usize, 1, 7, 8, 9, 127, 128, 129, 136, 1000, 65_535, 65_536, 200_003,
        ];
        for &n in &lengths {
            // wide magnitudes and cancellation: another order would change the last bits
            let x: Vec<f32> = (0..n)
                .map(|_| {
                    ((rng.next_f64() - 0.5) * 10f64.powi((rng.next_f64() * 8.0) as i32 - 4)) as f32
                })
                .collect();
            let wide: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let squares: Vec<f64> = wide.iter().map(|v| v * v).collect();
            let (s, q) = pairwise_sums(&x);
            assert_eq!(s.to_bits(), numpy_sum(&wide).to_bits(), "sum of {n}");
            assert_eq!(q.to_bits(), numpy_sum(&squares).to_bits(), "squares of {n}");
        }
        // a sequential sum differs from the pairwise one on such data: the test can fail
        let x: Vec<f32> = (0..100_000)
            .map(|i| {
                if i % 2 == 0 {
                    1e8
                } else {
                    1.0 + i as f32 * 1e-3
                }
            })
            .collect();
        let plain: f64 = x.iter().map(|&v| v as f64).fold(0.0, |a, v| a + v);
        assert_ne!(pairwise_sums(&x).0.to_bits(), plain.to_bits());
        assert_eq!(pairwise_sums(&[-0.0]).0.to_bits(), 0f64.to_bits());
    }

    #[test]
    fn half_precision_sums_are_the_sums_of_their_f32_values() {
        let mut rng = SplitMix64::new(12);
        for &n in &[0usize, 5, 129, 70_001] {
            let bits: Vec<u16> = (0..n)
                .map(|_| (rng.next_f64() * 65_536.0) as u16)
                .map(|b| if b & 0x7C00 == 0x7C00 { b & 0x3FFF } else { b })
                .collect();
            let halves: Vec<f32> = bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
            let brains: Vec<f32> = bits
                .iter()
                .map(|&b| bf16::from_bits(b & 0xBFFF).to_f32())
                .collect();
            let bf: Vec<u16> = bits.iter().map(|&b| b & 0xBFFF).collect();
            let (a, b) = (pairwise_sums_f16(&bits), pairwise_sums(&halves));
            assert_eq!(
                (a.0.to_bits(), a.1.to_bits()),
                (b.0.to_bits(), b.1.to_bits()),
                "f16 n={n}"
            );
            let (a, b) = (pairwise_sums_bf16(&bf), pairwise_sums(&brains));
            assert_eq!(
                (a.0.to_bits(), a.1.to_bits()),
                (b.0.to_bits(), b.1.to_bits()),
                "bf16 n={n}"
            );
        }
    }
}
