//! Small dense helpers: exact f64 reductions and the f32 GEMM (matrixmultiply) used for
//! distance steps. Every helper is sequential; callers parallelise over fixed-size blocks so
//! that results never depend on the thread count.

const LANES: usize = 8;

/// Sum of `f(a_i, b_i)` in f64 over eight interleaved accumulators (a fixed order, so the result
/// is the same on every call; the independent lanes let the compiler vectorise).
#[inline]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f64, f64) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += f(x[l] as f64, y[l] as f64);
        }
    }
    let mut tail = 0.0;
    for (&x, &y) in ra.iter().zip(rb) {
        tail += f(x as f64, y as f64);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// Squared L2 norm of `x`, accumulated in f64.
pub(crate) fn sq_norm(x: &[f32]) -> f64 {
    lane_sum(x, x, |v, _| v * v)
}

/// Squared Euclidean distance between `a` and `b`, accumulated in f64.
pub(crate) fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    lane_sum(a, b, |x, y| (x - y) * (x - y))
}

/// Index of the first NaN or infinite value.
pub(crate) fn first_non_finite(x: &[f32]) -> Option<usize> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let chunk = x
        .par_chunks(CHUNK)
        .position_first(|c| c.iter().any(|v| !v.is_finite()))?;
    let start = chunk * CHUNK;
    x[start..]
        .iter()
        .position(|v| !v.is_finite())
        .map(|p| start + p)
}

/// `out[i * nb + j] = a_i . b_j` for the `ma` rows of `a` and the `nb` rows of `b`
/// (both row-major with `d` columns), computed by one single-threaded f32 GEMM.
pub(crate) fn cross_dots(a: &[f32], ma: usize, b: &[f32], nb: usize, d: usize, out: &mut [f32]) {
    assert_eq!(out.len(), ma * nb);
    cross_dots_strided(a, ma, b, nb, d, out, nb);
}

/// [`cross_dots`] into rows `stride` apart: `out[i * stride + j] = a_i . b_j` (the values
/// between the rows are left as they are). A dot product's value does not depend on where it is
/// written nor on the shapes of the call.
pub(crate) fn cross_dots_strided(
    a: &[f32],
    ma: usize,
    b: &[f32],
    nb: usize,
    d: usize,
    out: &mut [f32],
    stride: usize,
) {
    assert_eq!(a.len(), ma * d);
    assert_eq!(b.len(), nb * d);
    if ma == 0 || nb == 0 {
        return;
    }
    assert!(stride >= nb && out.len() >= (ma - 1) * stride + nb);
    if d == 0 {
        for r in out.chunks_mut(stride).take(ma) {
            r[..nb].fill(0.0);
        }
        return;
    }
    // SAFETY: the asserts above guarantee that every index the GEMM touches is in bounds:
    // a is ma x d (row stride d), b^T is read as d x nb (row stride 1, column stride d),
    // out is ma x nb (row stride `stride` >= nb, last row ending within `out`).
    unsafe {
        matrixmultiply::sgemm(
            ma,
            d,
            nb,
            1.0,
            a.as_ptr(),
            d as isize,
            1,
            b.as_ptr(),
            1,
            d as isize,
            0.0,
            out.as_mut_ptr(),
            stride as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_dots_matches_naive_products() {
        let d = 7;
        let a: Vec<f32> = (0..3 * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..5 * d).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0f32; 15];
        cross_dots(&a, 3, &b, 5, d, &mut out);
        for i in 0..3 {
            for j in 0..5 {
                let naive: f64 = (0..d)
                    .map(|p| a[i * d + p] as f64 * b[j * d + p] as f64)
                    .sum();
                assert!((out[i * 5 + j] as f64 - naive).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn strided_dots_are_the_packed_dots_and_leave_the_gaps() {
        for (ma, nb, d, stride) in [
            (3usize, 5usize, 7usize, 9usize),
            (70, 40, 33, 41),
            (4, 6, 0, 6),
        ] {
            let a: Vec<f32> = (0..ma * d).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..nb * d).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut packed = vec![0f32; ma * nb];
            cross_dots(&a, ma, &b, nb, d, &mut packed);
            let mut out = vec![-1f32; (ma - 1) * stride + nb];
            cross_dots_strided(&a, ma, &b, nb, d, &mut out, stride);
            for i in 0..ma {
                for j in 0..stride {
                    let at = i * stride + j;
                    if j < nb {
                        assert_eq!(
                            out[at].to_bits(),
                            packed[i * nb + j].to_bits(),
                            "({i}, {j})"
                        );
                    } else if at < out.len() {
                        assert_eq!(out[at], -1.0, "gap ({i}, {j}) written");
                    }
                }
            }
        }
    }

    #[test]
    fn lane_sums_match_a_plain_f64_loop() {
        for len in [0usize, 1, 7, 8, 9, 100, 1001] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.7).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.3).cos()).collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
                .sum();
            assert!((sq_dist(&a, &b) - plain).abs() <= 1e-12 * plain.max(1.0));
        }
        let mut v = vec![1.0f32; 200_000];
        assert_eq!(first_non_finite(&v), None);
        v[131_075] = f32::INFINITY;
        v[199_999] = f32::NAN;
        assert_eq!(first_non_finite(&v), Some(131_075));
    }

    #[test]
    fn distances_are_exact_on_small_integers() {
        assert_eq!(sq_dist(&[1.0, 2.0], &[4.0, 6.0]), 25.0);
        assert_eq!(sq_norm(&[3.0, 4.0]), 25.0);
    }
}
