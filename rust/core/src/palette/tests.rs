#![allow(clippy::needless_range_loop)] // index loops read clearer in brute-force references

use super::*;
use crate::rng::SplitMix64;

fn random(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.next_f64() * 2.0 - 1.0).collect()
}

/// The optimum over every assignment of n values to k labels (k^n of them): no contiguity assumed.
fn brute_force(values: &[f64], weights: &[f64], k: usize) -> f64 {
    let n = values.len();
    let mut best = f64::INFINITY;
    let mut labels = vec![0usize; n];
    loop {
        let mut cost = 0.0;
        for c in 0..k {
            let (mut w, mut s) = (0.0, 0.0);
            for i in 0..n {
                if labels[i] == c {
                    w += weights[i];
                    s += weights[i] * values[i];
                }
            }
            if w > 0.0 {
                let mean = s / w;
                for i in 0..n {
                    if labels[i] == c {
                        cost += weights[i] * (values[i] - mean).powi(2);
                    }
                }
            }
        }
        best = best.min(cost);
        let mut pos = 0;
        while pos < n {
            labels[pos] += 1;
            if labels[pos] < k {
                break;
            }
            labels[pos] = 0;
            pos += 1;
        }
        if pos == n {
            return best;
        }
    }
}

#[test]
fn exact_matches_brute_force_and_heuristics_are_never_better() {
    for seed in 0..40u64 {
        let n = 3 + (seed as usize % 6);
        let k = 1 + (seed as usize % 4);
        let mut values = random(n, seed);
        if seed % 5 == 0 {
            values[1] = values[0]; // a duplicate value
        }
        let weights: Vec<f64> = random(n, seed + 100)
            .iter()
            .map(|w| w.abs() + 0.1)
            .collect();
        let (_, exact) = kmeans_1d(&values, &weights, k, Method::Exact, 0).unwrap();
        let optimum = brute_force(&values, &weights, k);
        assert!(
            (exact - optimum).abs() <= 1e-12 * (1.0 + optimum),
            "seed {seed}: {exact} vs {optimum}"
        );
        for method in [Method::Binned, Method::Ward, Method::Lloyd] {
            let (_, h) = kmeans_1d(&values, &weights, k, method, 100).unwrap();
            assert!(
                h >= optimum - 1e-12,
                "seed {seed}: {method:?} {h} below the optimum {optimum}"
            );
        }
    }
}

/// The O(k n^2) dynamic programme over sorted values, no search bounds.
fn plain_dp(values: &[f64], k: usize) -> f64 {
    let mut x = values.to_vec();
    x.sort_by(|a, b| a.total_cmp(b));
    let n = x.len();
    let cost = |i: usize, j: usize| {
        let m = x[i..j].iter().sum::<f64>() / (j - i) as f64;
        x[i..j].iter().map(|v| (v - m).powi(2)).sum::<f64>()
    };
    let mut d: Vec<f64> = (0..=n)
        .map(|j| if j == 0 { 0.0 } else { cost(0, j) })
        .collect();
    for m in 2..=k {
        let mut next = vec![f64::INFINITY; n + 1];
        for j in m..=n {
            for i in m - 1..j {
                next[j] = next[j].min(d[i] + cost(i, j));
            }
        }
        d = next;
    }
    d[n]
}

#[test]
fn exact_matches_the_plain_dynamic_programme() {
    for seed in 0..6u64 {
        let mut values = random(120, seed);
        for i in 0..20 {
            values[i + 40] = values[i]; // duplicates
        }
        for k in [2, 5, 16, 60] {
            let (_, exact) = kmeans_1d(&values, &[], k, Method::Exact, 0).unwrap();
            let reference = plain_dp(&values, k);
            assert!(
                (exact - reference).abs() <= 1e-9 * (1.0 + reference),
                "k {k}: {exact} vs {reference}"
            );
        }
    }
}

#[test]
fn exact_is_optimal_on_larger_rows_against_the_heuristics() {
    for seed in 0..5u64 {
        let values = random(2000, seed);
        for k in [2, 16, 64] {
            let (c, exact) = kmeans_1d(&values, &[], k, Method::Exact, 0).unwrap();
            for method in [Method::Binned, Method::Ward, Method::Lloyd] {
                let (_, h) = kmeans_1d(&values, &[], k, method, 1000).unwrap();
                assert!(
                    exact <= h * (1.0 + 1e-12),
                    "k {k}: exact {exact} > {method:?} {h}"
                );
            }
            assert!(
                c.windows(2).all(|w| w[0] < w[1]),
                "centroids ascending and distinct"
            );
        }
    }
}

#[test]
fn fewer_distinct_values_than_entries_are_reproduced_exactly() {
    let values = [0.5, -1.0, 0.5, 2.0, -1.0, 2.0, 2.0];
    for method in [Method::Exact, Method::Binned, Method::Ward, Method::Lloyd] {
        let (c, cost) = kmeans_1d(&values, &[], 8, method, 10).unwrap();
        assert_eq!(c, vec![-1.0, 0.5, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]);
        assert_eq!(cost, 0.0);
        let (c1, _) = kmeans_1d(&values, &[], 1, method, 10).unwrap();
        assert!(
            (c1[0] - values.iter().sum::<f64>() / 7.0).abs() < 1e-15,
            "K = 1 is the mean"
        );
    }
}

fn spec(bits: u32, group_rows: usize) -> PaletteSpec {
    PaletteSpec {
        bits,
        group_rows,
        method: Method::Exact,
        max_iter: 100,
        lut_dtype: LutDtype::F32,
        row_scale: false,
        outlier_fraction: 0.0,
    }
}

fn dequantize(p: &Palette, rows: usize, cols: usize, bits: u32, group_rows: usize) -> Vec<f32> {
    let k = 1usize << bits;
    (0..rows * cols)
        .map(|i| {
            let g = i / cols / group_rows;
            let s = if p.scales.is_empty() {
                1.0
            } else {
                p.scales[i / cols]
            };
            p.luts[g * k + p.indices[i] as usize] * s
        })
        .collect()
}

#[test]
fn palettize_per_row_equals_kmeans_1d_of_each_row() {
    let (rows, cols) = (6, 50);
    let data: Vec<f32> = random(rows * cols, 7).iter().map(|&v| v as f32).collect();
    let p = palettize(&data, rows, cols, &[], &[], &spec(2, 1)).unwrap();
    for r in 0..rows {
        let row: Vec<f64> = data[r * cols..(r + 1) * cols]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let (c, cost) = kmeans_1d(&row, &[], 4, Method::Exact, 0).unwrap();
        let lut: Vec<f32> = c.iter().map(|&v| v as f32).collect();
        assert_eq!(&p.luts[r * 4..r * 4 + 4], &lut[..]);
        assert!((p.wsse[r] - cost).abs() < 1e-5 * (1.0 + cost));
    }
    let deq = dequantize(&p, rows, cols, 2, 1);
    for i in 0..rows * cols {
        let lut = &p.luts[(i / cols) * 4..(i / cols) * 4 + 4];
        let best = lut
            .iter()
            .map(|&c| (c - data[i]).abs())
            .fold(f32::INFINITY, f32::min);
        assert_eq!(
            (deq[i] - data[i]).abs(),
            best,
            "every value maps to its nearest entry"
        );
    }
}

#[test]
fn constant_rows_zero_rows_and_groups() {
    let (rows, cols) = (4, 8);
    let mut data = vec![0f32; rows * cols];
    data[16..24].fill(3.25);
    data[24..32].copy_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    // with 16 entries even one table for all four rows holds all 9 distinct scaled values
    for (g, bits) in [(1, 3), (2, 3), (4, 4)] {
        let mut s = spec(bits, g);
        s.row_scale = true;
        let p = palettize(&data, rows, cols, &[], &[], &s).unwrap();
        assert_eq!(p.luts.len(), (rows / g) << bits);
        let deq = dequantize(&p, rows, cols, bits, g);
        assert_eq!(
            deq[..24],
            data[..24],
            "group {g}: zero and constant rows are exact"
        );
        if g == 4 {
            assert_eq!(deq, data);
        }
        assert!(p.wsse.iter().all(|e| e.is_finite()));
    }
    assert!(
        palettize(&data, rows, cols, &[], &[], &spec(3, 3)).is_err(),
        "3 does not divide 4 rows"
    );
    assert!(palettize(&data, rows, cols, &[], &[], &spec(9, 1)).is_err());
    data[5] = f32::NAN;
    assert_eq!(
        palettize(&data, rows, cols, &[], &[], &spec(3, 1)),
        Err(CoreError::NonFinite { row: 0, col: 5 })
    );
}

#[test]
fn outliers_are_kept_exactly_and_weights_move_the_entries() {
    let (rows, cols) = (3, 40);
    let mut data: Vec<f32> = random(rows * cols, 9)
        .iter()
        .map(|&v| v as f32 * 0.1)
        .collect();
    data[7] = 50.0;
    let mut s = spec(2, 1);
    s.outlier_fraction = 0.025; // one value per row
    let p = palettize(&data, rows, cols, &[], &[], &s).unwrap();
    assert_eq!(p.outliers.len(), 3);
    assert!(p.outliers.contains(&7));
    assert!(
        p.luts[..4].iter().all(|&c| c.abs() < 1.0),
        "the outlier does not pull an entry"
    );
    // a heavy column pulls an entry onto its value
    let mut w = vec![1.0; cols];
    w[3] = 1e6;
    let p = palettize(&data, rows, cols, &w, &[], &spec(2, 1)).unwrap();
    let deq = dequantize(&p, rows, cols, 2, 1);
    assert!((deq[3] - data[3]).abs() < 1e-4);
}

#[test]
fn table_dtype_rounding_and_thread_count_do_not_change_the_result() {
    let (rows, cols) = (64, 300);
    let data: Vec<f32> = random(rows * cols, 11).iter().map(|&v| v as f32).collect();
    let weights: Vec<f64> = random(cols, 12).iter().map(|w| w.abs() + 0.01).collect();
    let mut s = spec(4, 2);
    s.lut_dtype = LutDtype::F16;
    s.method = Method::Lloyd;
    s.outlier_fraction = 0.01;
    let reference = palettize(&data, rows, cols, &weights, &[], &s).unwrap();
    assert!(reference
        .luts
        .iter()
        .all(|&v| half::f16::from_f32(v).to_f32() == v));
    for threads in [1, 2, 5] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let r = pool.install(|| palettize(&data, rows, cols, &weights, &[], &s).unwrap());
        assert_eq!(r, reference);
    }
}

/// The candidate scan of one D&C node as first written: `Prefix::cost` per candidate, a branch
/// on each comparison.
fn scan_reference(pre: &Prefix, prev: &[f64], j: usize, lo: usize, hi: usize) -> (f64, usize) {
    let (mut best, mut arg) = (f64::INFINITY, lo.min(hi));
    for i in lo..=hi {
        let v = prev[i] + pre.cost(i, j);
        if v < best {
            best = v;
            arg = i;
        }
    }
    (best, arg)
}

#[test]
fn the_branch_free_candidate_scan_picks_what_the_plain_scan_picks() {
    let mut rng = SplitMix64::new(0x7e57);
    for case in 0..400 {
        let n = 1 + (rng.next_u64() % 60) as usize;
        let (pre, prev) = scan_case(case, n, &mut rng);
        let m = pre.w.len() - 1;
        let below = vec![0u32; m + 1];
        let layer = Layer {
            pre: &pre,
            prev: &prev,
            below: &below,
            from_prev: 0,
            outside: false,
            cur: vec![0.0; m + 1],
            opt: vec![0; m + 1],
        };
        for j in 1..=m {
            for lo in 0..j {
                for hi in lo.saturating_sub(1)..j {
                    let b = scan_reference(&pre, &prev, j, lo, hi);
                    for a in [
                        layer.best_start(j, lo, hi),
                        layer.scalar_best_start(j, lo, hi),
                    ] {
                        assert_eq!(
                            (a.0.to_bits(), a.1),
                            (b.0.to_bits(), b.1),
                            "j {j} lo {lo} hi {hi}"
                        );
                    }
                }
            }
        }
    }
}

/// Points and a previous layer for scan tests: few distinct values and repeated `prev` entries
/// (exact ties between candidates), infinite `prev` entries (states no clustering reaches), and
/// for some cases prefix sums that stop growing, so that candidates have w = 0.
fn scan_case(case: u64, n: usize, rng: &mut SplitMix64) -> (Prefix, Vec<f64>) {
    let levels = 1 + (rng.next_u64() % 5);
    let mut x: Vec<f64> = (0..n)
        .map(|_| (rng.next_u64() % (levels * 4)) as f64 * 0.25)
        .collect();
    x.sort_by(|a, b| a.total_cmp(b));
    x.dedup();
    let m = x.len();
    let w: Vec<f64> = (0..m)
        .map(|_| {
            if case.is_multiple_of(3) {
                1.0
            } else {
                rng.next_f64() + 0.01
            }
        })
        .collect();
    let mut pre = Prefix::new(&Points { x, w });
    if case % 4 == 1 {
        // prefix sums that stop growing (a weight too small to change them): w = 0 between
        // equal sums, with s = 0 (a quotient 0 / 0) or not (s^2 / 0)
        for i in 1..=m {
            if rng.next_u64().is_multiple_of(2) {
                pre.w[i] = pre.w[i - 1];
                if rng.next_u64().is_multiple_of(2) {
                    pre.s[i] = pre.s[i - 1];
                }
            }
        }
    }
    let prev: Vec<f64> = (0..=m)
        .map(|_| match rng.next_u64() % 4 {
            0 => f64::INFINITY,
            1 => 0.0,
            _ => (rng.next_u64() % 3) as f64,
        })
        .collect();
    (pre, prev)
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_vector_scan_picks_what_the_plain_scan_picks() {
    if !vector::available() {
        eprintln!("skipped: this processor has no AVX (the vector scan is never used here)");
        return;
    }
    let mut rng = SplitMix64::new(0x51d);
    let mut zero_widths = 0;
    for case in 0..300u64 {
        let n = 1 + (rng.next_u64() % 90) as usize;
        let (pre, prev) = scan_case(case, n, &mut rng);
        let m = pre.w.len() - 1;
        for j in 1..=m {
            for lo in 0..j {
                zero_widths += usize::from(pre.w[j] - pre.w[lo] <= 0.0);
                for hi in lo..j {
                    // SAFETY: the processor has AVX (checked above)
                    let a = unsafe { vector::best_start(&pre, &prev, j, lo, hi) };
                    let b = scan_reference(&pre, &prev, j, lo, hi);
                    assert_eq!(
                        (a.0.to_bits(), a.1),
                        (b.0.to_bits(), b.1),
                        "case {case} j {j} lo {lo} hi {hi}"
                    );
                }
            }
        }
    }
    assert!(zero_widths > 0, "some candidates had w <= 0");
}

/// Sorted distinct values of one kind of awkward row, with weights (all 1 for some kinds).
fn awkward_points(kind: u64, n: usize, rng: &mut SplitMix64) -> Points {
    let mut pairs: Vec<(f64, f64)> = (0..n)
        .map(|_| {
            let u = rng.next_f64();
            let g = (-2.0 * (rng.next_f64() + 1e-300).ln()).sqrt()
                * (std::f64::consts::TAU * rng.next_f64()).cos();
            let v = match kind % 5 {
                0 => g,                                        // Gaussian weights
                1 => g * g * g,                                // heavy tails
                2 => (u * 12.0).floor(),                       // few distinct values
                3 => f64::from(half::f16::from_f64(g * 0.02)), // fp16 codes, duplicates
                _ => {
                    if u < 0.5 {
                        g - 4.0
                    } else {
                        3.0 * g + 4.0
                    }
                } // two modes
            };
            (
                v,
                if kind.is_multiple_of(2) {
                    1.0
                } else {
                    rng.next_f64() * 3.0 + 0.01
                },
            )
        })
        .collect();
    pairs.push((0.0, 1.0));
    distinct(pairs)
}

#[test]
fn the_reachable_states_give_the_splits_of_the_whole_programme() {
    let mut rng = SplitMix64::new(0x5eed_da7a);
    let mut fallbacks = 0;
    for case in 0..600u64 {
        let n = [2, 5, 17, 64, 300, 1280][(case % 6) as usize] + (rng.next_u64() % 40) as usize;
        let p = awkward_points(case, n, &mut rng);
        let pre = Prefix::new(&p);
        let m = p.x.len();
        for k in [1, 2, 3, 4, 8, 16, 64] {
            if k > m {
                continue;
            }
            let all = dynamic_programme(&pre, m, k, false).unwrap();
            match dynamic_programme(&pre, m, k, true) {
                Some(reachable) => assert_eq!(reachable, all, "case {case} n {m} k {k}"),
                None => fallbacks += 1,
            }
            assert_eq!(exact_bounds(&pre, m, k), all, "case {case} n {m} k {k}");
        }
    }
    assert_eq!(
        fallbacks, 0,
        "the reachable states' bound held on every row"
    );
}

#[test]
fn a_read_outside_the_computed_states_is_caught() {
    let p = awkward_points(0, 50, &mut SplitMix64::new(3));
    let pre = Prefix::new(&p);
    let n = p.x.len();
    let prev: Vec<f64> = (0..=n).map(|j| pre.cost(0, j)).collect();
    let below = vec![0u32; n + 1];
    let mut layer = Layer {
        pre: &pre,
        prev: &prev,
        below: &below,
        from_prev: 10,
        outside: false,
        cur: vec![f64::INFINITY; n + 1],
        opt: vec![0; n + 1],
    };
    layer.solve(2, n, 1, n - 1);
    assert!(
        layer.outside,
        "candidates below the computed states were refused"
    );
}

/// `distinct` as first written: a stable sort by `total_cmp`, equal neighbours merged.
fn distinct_reference(mut pairs: Vec<(f64, f64)>) -> Points {
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut x, mut w): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for (v, wt) in pairs {
        match x.last() {
            Some(&last) if last == v => *w.last_mut().unwrap() += wt,
            _ => {
                x.push(v);
                w.push(wt);
            }
        }
    }
    Points { x, w }
}

#[test]
fn distinct_values_and_their_weight_sums_match_the_stable_sort() {
    let mut rng = SplitMix64::new(0xd157);
    for case in 0..300u64 {
        let n = 1 + (rng.next_u64() % 3000) as usize;
        let pairs: Vec<(f64, f64)> = (0..n)
            .map(|_| {
                let v = match case % 4 {
                    0 => [0.0, -0.0, 1.5, -1.5, 1e-300, -1e-300][(rng.next_u64() % 6) as usize],
                    1 => f64::from(half::f16::from_f64(rng.next_f64() - 0.5)),
                    2 => (rng.next_u64() % 7) as f64 - 3.0,
                    _ => rng.next_f64() * 1e6 - 5e5,
                };
                // weights that do not sum exactly: the order of the sums shows
                (v, rng.next_f64() * 0.3 + 1e-3)
            })
            .collect();
        let (a, b) = (distinct(pairs.clone()), distinct_reference(pairs));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.x), bits(&b.x), "case {case}: values");
        assert_eq!(bits(&a.w), bits(&b.w), "case {case}: weight sums");
    }
}

#[test]
fn counting_the_midpoints_finds_what_the_binary_search_finds() {
    let mut rng = SplitMix64::new(0x1d);
    for case in 0..2000u64 {
        let k = [1usize, 2, 3, 4, 8, 9, 16, 32, 33, 64][(case % 10) as usize];
        // ascending tables with repeated entries (padded tables) and exact midpoints
        let mut lut: Vec<f32> = (0..k)
            .map(|_| ((rng.next_u64() % 9) as f32 - 4.0) * 0.5)
            .collect();
        lut.sort_by(|a, b| a.total_cmp(b));
        let m = Midpoints::new(&lut);
        for _ in 0..50 {
            let v = match rng.next_u64() % 3 {
                0 => ((rng.next_u64() % 40) as f64 - 20.0) * 0.125, // on midpoints and entries
                1 => rng.next_f64() * 10.0 - 5.0,
                _ => [f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.0][(rng.next_u64() % 4) as usize],
            };
            assert_eq!(m.nearest(v), nearest(&lut, v), "table {lut:?}, value {v}");
        }
    }
}
