//! Sums of matrix rows per label, and the same-shape means of a clustering.

use crate::error::{invalid, Result};
use rayon::prelude::*;

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

/// The same-shape rows of a clustering: row `i` of the row-major `labels.len() x cols` matrix
/// `x` becomes its cluster's f64 sum (rows added in row order, from 0.0, as [`segment_sum`]
/// adds them) divided by the cluster's size `divisions` times, rounded to f32; a row labelled
/// -1 (removed) becomes zeros. Clusters are summed in parallel, then rows are filled in parallel.
pub fn cluster_means(
    labels: &[i64],
    x: &[f32],
    cols: usize,
    k: usize,
    divisions: u32,
) -> Result<Vec<f32>> {
    let n = labels.len();
    if x.len() != n * cols {
        return invalid(format!("{} values for {n} rows of {cols}", x.len()));
    }
    if let Some(i) = labels.iter().position(|&l| l < -1 || l >= k as i64) {
        return invalid(format!("label {i} is {}, outside -1..{k}", labels[i]));
    }
    // members of each cluster in row order (a counting sort)
    let mut start = vec![0usize; k + 1];
    for &l in labels.iter().filter(|&&l| l >= 0) {
        start[l as usize + 1] += 1;
    }
    for c in 0..k {
        start[c + 1] += start[c];
    }
    let mut fill = start.clone();
    let mut members = vec![0usize; start[k]];
    for (i, &l) in labels.iter().enumerate().filter(|(_, &l)| l >= 0) {
        members[fill[l as usize]] = i;
        fill[l as usize] += 1;
    }
    let mut means = vec![0f32; k * cols];
    means
        .par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(c, mean)| {
            let rows = &members[start[c]..start[c + 1]];
            let size = rows.len() as f64;
            let mut acc = vec![0f64; cols];
            for &i in rows {
                for (a, &v) in acc.iter_mut().zip(&x[i * cols..(i + 1) * cols]) {
                    *a += v as f64;
                }
            }
            for (m, mut a) in mean.iter_mut().zip(acc) {
                for _ in 0..divisions {
                    a /= size;
                }
                *m = a as f32;
            }
        });
    let mut out = vec![0f32; n * cols];
    out.par_chunks_mut(cols.max(1))
        .zip(labels.par_iter())
        .filter(|(_, &l)| l >= 0)
        .for_each(|(row, &l)| {
            row.copy_from_slice(&means[l as usize * cols..(l as usize + 1) * cols])
        });
    Ok(out)
}

/// [`cluster_means`] for units stored as columns: `x` is row-major with `labels.len() * r`
/// columns, unit `u` owning columns `u * r .. (u + 1) * r` (a consumer weight whose inputs are
/// the units). Every value is its cluster's mean at the same row and slot, summed over the
/// members in unit order: the numbers [`cluster_means`] gives on the transposed matrix. Rows are
/// computed in parallel.
pub fn cluster_column_means(
    labels: &[i64],
    x: &[f32],
    r: usize,
    k: usize,
    divisions: u32,
) -> Result<Vec<f32>> {
    let width = labels.len() * r;
    if width == 0 || !x.len().is_multiple_of(width) {
        return invalid(format!(
            "{} values are not rows of {} units x {r} columns",
            x.len(),
            labels.len()
        ));
    }
    if let Some(i) = labels.iter().position(|&l| l < -1 || l >= k as i64) {
        return invalid(format!("label {i} is {}, outside -1..{k}", labels[i]));
    }
    let mut size = vec![0f64; k];
    for &l in labels.iter().filter(|&&l| l >= 0) {
        size[l as usize] += 1.0;
    }
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .for_each_init(
            || vec![0f64; k * r],
            |acc, (o, row)| {
                acc.fill(0.0);
                for (u, &l) in labels.iter().enumerate().filter(|(_, &l)| l >= 0) {
                    let a = &mut acc[l as usize * r..(l as usize + 1) * r];
                    for (a, &v) in a.iter_mut().zip(&row[u * r..(u + 1) * r]) {
                        *a += v as f64;
                    }
                }
                for (c, a) in acc.chunks_mut(r).enumerate() {
                    for v in a.iter_mut() {
                        for _ in 0..divisions {
                            *v /= size[c];
                        }
                    }
                }
                for (u, &l) in labels.iter().enumerate().filter(|(_, &l)| l >= 0) {
                    let a = &acc[l as usize * r..(l as usize + 1) * r];
                    for (o, &v) in o[u * r..(u + 1) * r].iter_mut().zip(a) {
                        *o = v as f32;
                    }
                }
            },
        );
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

    #[test]
    fn cluster_means_are_the_sums_divided_per_row_in_f64_then_rounded() {
        let mut rng = SplitMix64::new(9);
        for &(n, cols, k) in &[
            (50usize, 3usize, 4usize),
            (300, 130, 37),
            (7, 1, 7),
            (40, 65, 1),
            (0, 5, 2),
        ] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| {
                    if i % 13 == 0 {
                        -0.0
                    } else {
                        ((rng.next_f64() - 0.5) * 1e3) as f32
                    }
                })
                .collect();
            // every cluster used, some units removed (-1)
            let labels: Vec<i64> = (0..n)
                .map(|i| if i % 9 == 8 { -1 } else { ((i * 7) % k) as i64 })
                .collect();
            let kept: Vec<usize> = (0..n).filter(|&i| labels[i] >= 0).collect();
            let wide: Vec<f64> = kept
                .iter()
                .flat_map(|&i| x[i * cols..(i + 1) * cols].iter().map(|&v| v as f64))
                .collect();
            let kept_labels: Vec<i64> = kept.iter().map(|&i| labels[i]).collect();
            let sums = segment_sum(&kept_labels, &wide, cols, k).unwrap();
            for divisions in [1u32, 2] {
                let got = cluster_means(&labels, &x, cols, k, divisions).unwrap();
                for i in 0..n {
                    for j in 0..cols {
                        let want = if labels[i] < 0 {
                            0.0f32
                        } else {
                            let c = labels[i] as usize;
                            let size =
                                kept_labels.iter().filter(|&&l| l as usize == c).count() as f64;
                            let mut v = sums[c * cols + j];
                            for _ in 0..divisions {
                                v /= size;
                            }
                            v as f32
                        };
                        assert_eq!(
                            got[i * cols + j].to_bits(),
                            want.to_bits(),
                            "n={n} cols={cols} ({i}, {j})"
                        );
                    }
                }
            }
        }
        assert!(cluster_means(&[0, 2], &[1.0, 2.0], 1, 2, 1).is_err());
        assert!(cluster_column_means(&[0, 2], &[1.0, 2.0], 1, 2, 1).is_err());
        assert!(cluster_column_means(&[0, 1], &[1.0, 2.0, 3.0], 1, 2, 1).is_err());
        assert!(cluster_column_means(&[], &[], 1, 2, 1).is_err());
        assert!(cluster_means(&[0, -2], &[1.0, 2.0], 1, 2, 1).is_err());
        assert!(cluster_means(&[0], &[1.0, 2.0], 1, 2, 1).is_err());
    }

    #[test]
    fn column_means_are_the_row_means_of_the_transposed_units() {
        let mut rng = SplitMix64::new(4);
        for &(n, r, rows, k) in &[
            (40usize, 1usize, 9usize, 13usize),
            (20, 4, 7, 16),
            (6, 3, 1, 6),
            (30, 2, 5, 1),
        ] {
            let x: Vec<f32> = (0..rows * n * r)
                .map(|i| {
                    if i % 11 == 0 {
                        -0.0
                    } else {
                        ((rng.next_f64() - 0.5) * 1e4) as f32
                    }
                })
                .collect();
            let labels: Vec<i64> = (0..n)
                .map(|u| {
                    if u % 7 == 3 && k > 1 {
                        -1
                    } else {
                        ((u * 5) % k) as i64
                    }
                })
                .collect();
            // units as rows: unit u's row holds (slot t, row h) at t * rows + h
            let units: Vec<f32> = (0..n)
                .flat_map(|u| (0..r).flat_map(move |t| (0..rows).map(move |h| (u, t, h))))
                .map(|(u, t, h)| x[h * n * r + u * r + t])
                .collect();
            for divisions in [1u32, 2] {
                let by_rows = cluster_means(&labels, &units, r * rows, k, divisions).unwrap();
                let by_columns = cluster_column_means(&labels, &x, r, k, divisions).unwrap();
                for u in 0..n {
                    for t in 0..r {
                        for h in 0..rows {
                            let a = by_rows[u * r * rows + t * rows + h];
                            let b = by_columns[h * n * r + u * r + t];
                            assert_eq!(
                                a.to_bits(),
                                b.to_bits(),
                                "n={n} r={r} unit {u} slot {t} row {h}"
                            );
                        }
                    }
                }
            }
        }
    }
}
