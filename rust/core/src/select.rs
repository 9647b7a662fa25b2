//! Structured magnitude selection: keep the K units with the largest score.

use crate::error::{invalid, Result};

/// Indices (ascending) of the `k` units with the largest score; ties keep the lower index.
/// NaN scores are rejected.
pub fn top_k(scores: &[f64], k: usize) -> Result<Vec<usize>> {
    let n = scores.len();
    if k < 1 || k > n {
        return invalid(format!("K = {k} is outside [1, N = {n}]"));
    }
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return invalid(format!("score of unit {i} is NaN"));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep = order[..k].to_vec();
    keep.sort_unstable();
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_largest_scores_and_breaks_ties_by_index() {
        assert_eq!(top_k(&[0.5, 3.0, 1.0, 3.0, 0.0], 2).unwrap(), vec![1, 3]);
        assert_eq!(top_k(&[1.0, 1.0, 1.0], 2).unwrap(), vec![0, 1]);
        assert_eq!(top_k(&[2.0, 1.0], 2).unwrap(), vec![0, 1]);
    }

    #[test]
    fn rejects_bad_k_and_nan() {
        assert!(top_k(&[1.0], 0).is_err());
        assert!(top_k(&[1.0], 2).is_err());
        assert_eq!(
            top_k(&[1.0, f64::NAN], 1).unwrap_err().to_string(),
            "score of unit 1 is NaN"
        );
    }
}
