//! Small dense helpers: exact f64 reductions and the f32 GEMM (matrixmultiply) used for
//! distance steps. Every helper is sequential; callers parallelise over fixed-size blocks so
//! that results never depend on the thread count.

/// Squared L2 norm of `x`, accumulated in f64.
pub(crate) fn sq_norm(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

/// Squared Euclidean distance between `a` and `b`, accumulated in f64.
pub(crate) fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let t = x as f64 - y as f64;
            t * t
        })
        .sum()
}

/// `out[i * nb + j] = a_i . b_j` for the `ma` rows of `a` and the `nb` rows of `b`
/// (both row-major with `d` columns), computed by one single-threaded f32 GEMM.
pub(crate) fn cross_dots(a: &[f32], ma: usize, b: &[f32], nb: usize, d: usize, out: &mut [f32]) {
    assert_eq!(a.len(), ma * d);
    assert_eq!(b.len(), nb * d);
    assert_eq!(out.len(), ma * nb);
    if ma == 0 || nb == 0 {
        return;
    }
    if d == 0 {
        out.fill(0.0);
        return;
    }
    // SAFETY: the asserts above guarantee that every index the GEMM touches is in bounds:
    // a is ma x d (row stride d), b^T is read as d x nb (row stride 1, column stride d),
    // out is ma x nb (row stride nb).
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
            nb as isize,
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
    fn distances_are_exact_on_small_integers() {
        assert_eq!(sq_dist(&[1.0, 2.0], &[4.0, 6.0]), 25.0);
        assert_eq!(sq_norm(&[3.0, 4.0]), 25.0);
    }
}
