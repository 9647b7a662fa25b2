//! Allocators: how many units (clusters) K each module keeps for a target sparsity.
//!
//! * `uniform`: K = round(N (1 - s)) in every module, at least 1.
//! * `variance` (the paper's mixed sparsity): within each group of modules of one type, rank
//!   modules by the variance of their parameters and split them into thirds (rank r of M goes to
//!   third floor(3 r / M), lowest variance first). The high third keeps
//!   K = min(N, floor(factor * K_base)), the mid third K_base, and the low third gives up the
//!   difference, one unit per module in turn, lowest variance first (then the mid, then the high
//!   third if the low one reaches K = 1), so that every group removes exactly as many units as the
//!   uniform plan.

use crate::error::{invalid, Result};

fn check_sparsity(sparsity: f64) -> Result<()> {
    if !(0.0..1.0).contains(&sparsity) {
        return invalid(format!("sparsity {sparsity} is outside [0, 1)"));
    }
    Ok(())
}

/// K = round(N (1 - s)) clamped to [1, N] for every module.
pub fn uniform(units: &[usize], sparsity: f64) -> Result<Vec<usize>> {
    check_sparsity(sparsity)?;
    if let Some(i) = units.iter().position(|&n| n == 0) {
        return invalid(format!("module {i} has no units"));
    }
    Ok(units
        .iter()
        .map(|&n| ((n as f64 * (1.0 - sparsity)).round() as usize).clamp(1, n))
        .collect())
}

/// The paper's variance-mixed plan; see the module documentation.
pub fn variance(
    units: &[usize],
    variances: &[f64],
    groups: &[usize],
    sparsity: f64,
    factor: f64,
) -> Result<Vec<usize>> {
    let base = uniform(units, sparsity)?;
    let m = units.len();
    if variances.len() != m || groups.len() != m {
        return invalid(format!(
            "{m} modules but {} variances and {} group labels",
            variances.len(),
            groups.len()
        ));
    }
    if let Some(i) = variances.iter().position(|v| !v.is_finite()) {
        return invalid(format!("variance of module {i} is not finite"));
    }
    if !(factor >= 1.0 && factor.is_finite()) {
        return invalid(format!("high-third factor {factor} must be >= 1"));
    }
    let mut plan = base.clone();
    let mut labels: Vec<usize> = groups.to_vec();
    labels.sort_unstable();
    labels.dedup();
    for g in labels {
        let mut members: Vec<usize> = (0..m).filter(|&i| groups[i] == g).collect();
        members.sort_by(|&a, &b| variances[a].total_cmp(&variances[b]).then(a.cmp(&b)));
        let size = members.len();
        let third = |rank: usize| 3 * rank / size;
        let mut extra = 0usize;
        for (rank, &i) in members.iter().enumerate() {
            if third(rank) == 2 {
                let high = ((factor * base[i] as f64).floor() as usize).min(units[i]);
                extra += high - base[i];
                plan[i] = high;
            }
        }
        // Donors: the low third, then the mid, then the high one, each in ascending variance.
        let mut tiers: [Vec<usize>; 3] = Default::default();
        for (rank, &i) in members.iter().enumerate() {
            tiers[third(rank)].push(i);
        }
        for (t, tier) in tiers.iter().enumerate() {
            while extra > 0 {
                let before = extra;
                for &i in tier {
                    // the high third gives back at most its own gain
                    let floor = if t == 2 { base[i] } else { 1 };
                    if extra > 0 && plan[i] > floor {
                        plan[i] -= 1;
                        extra -= 1;
                    }
                }
                if extra == before {
                    break;
                }
            }
        }
        debug_assert_eq!(
            extra, 0,
            "a group always keeps at least one unit per module"
        );
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_rounds_and_clamps() {
        assert_eq!(
            uniform(&[6, 1536, 10, 1], 0.1).unwrap(),
            vec![5, 1382, 9, 1]
        );
        assert_eq!(uniform(&[6, 4], 0.0).unwrap(), vec![6, 4]);
        assert_eq!(uniform(&[6, 4], 0.99).unwrap(), vec![1, 1]);
        assert!(uniform(&[6], 1.0).is_err());
        assert!(uniform(&[6], -0.1).is_err());
        assert!(uniform(&[6], f64::NAN).is_err());
    }

    #[test]
    fn variance_plan_keeps_the_total_of_every_group() {
        let units = vec![1536; 8]
            .into_iter()
            .chain(vec![6; 12])
            .collect::<Vec<_>>();
        let variances: Vec<f64> = (0..20).map(|i| ((i * 7919) % 23) as f64).collect();
        let groups: Vec<usize> = (0..20).map(|i| usize::from(i >= 8)).collect();
        for s in [0.02, 0.05, 0.1, 0.2, 0.5, 0.9] {
            let base = uniform(&units, s).unwrap();
            let plan = variance(&units, &variances, &groups, s, 1.2).unwrap();
            for g in 0..2 {
                let total = |p: &[usize]| {
                    (0..20)
                        .filter(|&i| groups[i] == g)
                        .map(|i| p[i])
                        .sum::<usize>()
                };
                assert_eq!(total(&plan), total(&base), "s={s} group {g}");
            }
            assert!(plan.iter().zip(&units).all(|(&k, &n)| k >= 1 && k <= n));
        }
    }

    #[test]
    fn variance_plan_follows_the_paper_rule() {
        // Six modules of 100 units, variances ascending with index: thirds {0,1} {2,3} {4,5}.
        let units = vec![100; 6];
        let variances = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let plan = variance(&units, &variances, &[0; 6], 0.5, 1.2).unwrap();
        // K_base 50; high third floor(60) = 60 each (+20), low third absorbs -10 each.
        assert_eq!(plan, vec![40, 40, 50, 50, 60, 60]);
        // High third capped at N (+10 each), low third absorbs -10 each.
        let plan = variance(&units, &variances, &[0; 6], 0.1, 1.2).unwrap();
        assert_eq!(plan, vec![80, 80, 90, 90, 100, 100]);
    }

    #[test]
    fn variance_plan_spills_to_mid_when_low_is_exhausted() {
        let units = vec![2, 2, 2, 10, 10, 10];
        let variances = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let plan = variance(&units, &variances, &[0; 6], 0.5, 1.2).unwrap();
        assert_eq!(
            plan.iter().sum::<usize>(),
            uniform(&units, 0.5).unwrap().iter().sum::<usize>()
        );
        assert!(plan.iter().all(|&k| k >= 1));
    }

    #[test]
    fn variance_plan_rejects_mismatched_inputs() {
        assert!(variance(&[4, 4], &[1.0], &[0, 0], 0.1, 1.2).is_err());
        assert!(variance(&[4, 4], &[1.0, f64::NAN], &[0, 0], 0.1, 1.2).is_err());
        assert!(variance(&[4, 4], &[1.0, 2.0], &[0, 0], 0.1, 0.5).is_err());
    }
}
