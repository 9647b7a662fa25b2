//! Sums of matrix rows per label.

use crate::error::{invalid, Result};

/// `k x cols` sums of the rows of the row-major `labels.len() x cols` matrix `x` per label
/// (every label in 0..k). Each sum adds its rows in row order, one element at a time: the same
/// numbers as NumPy's `np.add.at(out, labels, x)`.
pub fn segment_sum(labels: &[i64], x: &[f64], cols: usize, k: usize) -> Result<Vec<f64>> {
    if x.len() != labels.len() * cols {
        return invalid(format!(
            "{} values for {} rows of {cols}",
            x.len(),
            labels.len()
        ));
    }
    if let Some(i) = labels.iter().position(|&l| l < 0 || l as u64 >= k as u64) {
        return invalid(format!("label {i} is {}, outside 0..{k}", labels[i]));
    }
    let mut out = vec![0.0f64; k * cols];
    for (&l, row) in labels.iter().zip(x.chunks_exact(cols.max(1))) {
        let dst = &mut out[l as usize * cols..(l as usize + 1) * cols];
        for (d, &v) in dst.iter_mut().zip(row) {
            *d += v;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn sums_add_rows_in_row_order_and_bad_labels_are_refused() {
        let mut rng = SplitMix64::new(3);
        let (n, cols, k) = (50, 3, 4);
        let x: Vec<f64> = (0..n * cols)
            .map(|_| (rng.next_f64() - 0.5) * 1e3)
            .collect();
        let labels: Vec<i64> = (0..n).map(|i| ((i * 7) % k) as i64).collect();
        let got = segment_sum(&labels, &x, cols, k).unwrap();
        for c in 0..k {
            for j in 0..cols {
                let mut s = 0.0;
                for i in 0..n {
                    if labels[i] as usize == c {
                        s += x[i * cols + j];
                    }
                }
                assert_eq!(got[c * cols + j].to_bits(), s.to_bits());
            }
        }
        assert_eq!(segment_sum(&[], &[], 3, 2).unwrap(), vec![0.0; 6]);
        assert!(segment_sum(&[0, 2], &[1.0, 2.0], 1, 2).is_err());
        assert!(segment_sum(&[0, -1], &[1.0, 2.0], 1, 2).is_err());
        assert!(segment_sum(&[0], &[1.0, 2.0], 1, 2).is_err());
    }
}
