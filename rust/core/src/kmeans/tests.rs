#![allow(clippy::needless_range_loop)] // index loops read clearer in brute-force references

use super::*;
use crate::rng::SplitMix64;

fn random_matrix(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n * d)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect()
}

/// `groups` well-separated blobs of `per` units each, shuffled.
fn blobs(groups: usize, per: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let centers: Vec<f32> = (0..groups * d)
        .map(|_| (rng.next_f64() * 40.0 - 20.0) as f32)
        .collect();
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for g in 0..groups {
        for _ in 0..per {
            rows.push(
                (0..d)
                    .map(|p| centers[g * d + p] + (rng.next_f64() * 0.2 - 0.1) as f32)
                    .collect(),
            );
        }
    }
    for i in (1..rows.len()).rev() {
        rows.swap(i, rng.below(i + 1));
    }
    rows.concat()
}

fn inertia_of(data: &[f32], d: usize, assign: &[usize], k: usize) -> f64 {
    let mut best = 0.0;
    for j in 0..k {
        let members: Vec<usize> = (0..assign.len()).filter(|&i| assign[i] == j).collect();
        if members.is_empty() {
            return f64::INFINITY;
        }
        let mean: Vec<f64> = (0..d)
            .map(|p| {
                members.iter().map(|&i| data[i * d + p] as f64).sum::<f64>() / members.len() as f64
            })
            .collect();
        for &i in &members {
            best += (0..d)
                .map(|p| (data[i * d + p] as f64 - mean[p]).powi(2))
                .sum::<f64>();
        }
    }
    best
}

/// Global optimum by enumerating every assignment (tiny inputs only).
fn brute_force_optimum(data: &[f32], n: usize, d: usize, k: usize) -> f64 {
    let mut best = f64::INFINITY;
    let mut assign = vec![0usize; n];
    loop {
        best = best.min(inertia_of(data, d, &assign, k));
        let mut pos = 0;
        loop {
            if pos == n {
                return best;
            }
            assign[pos] += 1;
            if assign[pos] < k {
                break;
            }
            assign[pos] = 0;
            pos += 1;
        }
    }
}

fn run(data: &[f32], n: usize, d: usize, k: usize, init: Init, seed: u64) -> KMeansResult {
    let cfg = KMeansConfig {
        init,
        seed,
        ..KMeansConfig::new(k)
    };
    kmeans(data, n, d, &cfg).unwrap()
}

#[test]
fn inertia_never_increases_across_lloyd_steps() {
    for seed in 0..6 {
        let (n, d) = (300, 9);
        let data = random_matrix(n, d, 100 + seed);
        for (k, init) in [
            (7, Init::KMeansPlusPlus),
            (40, Init::KMeansPlusPlus),
            (200, Init::Ward),
        ] {
            let r = run(&data, n, d, k, init, seed);
            assert!(r.n_iter >= 1 || r.converged);
            for w in r.inertia_history.windows(2) {
                assert!(
                    w[1] <= w[0],
                    "inertia rose from {} to {} ({init:?}, k={k})",
                    w[0],
                    w[1]
                );
            }
            assert_eq!(*r.inertia_history.last().unwrap(), r.inertia);
        }
    }
}

#[test]
fn result_is_a_lloyd_fixed_point_with_exact_inertia() {
    let (n, d, k) = (120, 6, 13);
    let data = random_matrix(n, d, 7);
    for init in [Init::KMeansPlusPlus, Init::Ward] {
        let r = run(&data, n, d, k, init, 3);
        assert!(r.converged);
        let assign: Vec<usize> = r.assignments.iter().map(|&a| a as usize).collect();
        let reference = inertia_of(&data, d, &assign, k);
        assert!((reference - r.inertia).abs() <= 1e-9 * reference.max(1.0));
        for i in 0..n {
            let own = sq_dist(row(&data, d, i), row(&r.centroids, d, assign[i]));
            for j in 0..k {
                let other = sq_dist(row(&data, d, i), row(&r.centroids, d, j));
                assert!(
                    own <= other * (1.0 + 1e-5) + 1e-9,
                    "unit {i} is closer to cluster {j}"
                );
            }
        }
    }
}

#[test]
fn matches_brute_force_optimum_on_tiny_inputs() {
    for seed in 0..8 {
        let (n, d, k) = (8, 3, 3);
        let data = blobs(k, 3, d, seed)[..n * d].to_vec();
        let optimum = brute_force_optimum(&data, n, d, k);
        for init in [Init::KMeansPlusPlus, Init::Ward] {
            let r = run(&data, n, d, k, init, seed);
            assert!(
                (r.inertia - optimum).abs() <= 1e-6 * optimum.max(1e-12),
                "seed {seed} {init:?}: {} vs optimum {optimum}",
                r.inertia
            );
        }
        // Random (unclustered) tiny inputs: never below the optimum, Ward at K = N - 1 exact.
        let data = random_matrix(n, d, 50 + seed);
        let opt = brute_force_optimum(&data, n, d, k);
        assert!(run(&data, n, d, k, Init::Ward, 0).inertia >= opt * (1.0 - 1e-9));
        let opt7 = brute_force_optimum(&data, n, d, n - 1);
        let r7 = run(&data, n, d, n - 1, Init::Ward, 0);
        assert!((r7.inertia - opt7).abs() <= 1e-6 * opt7);
    }
}

#[test]
fn always_returns_k_nonempty_clusters_with_duplicates_and_zeros() {
    let d = 4;
    let mut data = vec![0f32; 10 * d]; // ten all-zero units
    data.extend(std::iter::repeat_n([1.0f32, 2.0, 3.0, 4.0], 5).flatten());
    data.extend(random_matrix(3, d, 9));
    let n = data.len() / d;
    for k in [1, 2, 5, 9, 12, n - 1, n] {
        for init in [Init::KMeansPlusPlus, Init::Ward] {
            let r = run(&data, n, d, k, init, 11);
            let mut size = vec![0; k];
            for &a in &r.assignments {
                size[a as usize] += 1;
            }
            assert!(
                size.iter().all(|&s| s > 0),
                "k={k} {init:?}: sizes {size:?}"
            );
            assert_eq!(r.centroids.len(), k * d);
        }
    }
}

#[test]
fn k_one_gives_the_mean_and_k_n_the_identity() {
    let (n, d) = (17, 5);
    let data = random_matrix(n, d, 21);
    let r = run(&data, n, d, 1, Init::Auto, 0);
    for p in 0..d {
        let mean = (0..n).map(|i| data[i * d + p] as f64).sum::<f64>() / n as f64;
        assert!((r.centroids[p] as f64 - mean).abs() < 1e-6);
    }
    assert!(r.assignments.iter().all(|&a| a == 0));
    let r = run(&data, n, d, n, Init::Auto, 0);
    assert_eq!(r.inertia, 0.0);
    assert_eq!(r.centroids, data);
    assert_eq!(r.assignments, (0..n as u32).collect::<Vec<_>>());
}

#[test]
fn same_seed_same_result_and_thread_count_does_not_matter() {
    let (n, d) = (700, 33);
    let data = random_matrix(n, d, 5);
    for (k, init) in [(50, Init::KMeansPlusPlus), (600, Init::Ward)] {
        let reference = run(&data, n, d, k, init, 42);
        assert_eq!(reference, run(&data, n, d, k, init, 42));
        for threads in [1, 2, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let r = pool.install(|| run(&data, n, d, k, init, 42));
            assert_eq!(r.assignments, reference.assignments);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&r.centroids), bits(&reference.centroids));
            assert_eq!(r.inertia.to_bits(), reference.inertia.to_bits());
        }
    }
    let a = run(&data, n, d, 50, Init::KMeansPlusPlus, 1);
    let b = run(&data, n, d, 50, Init::KMeansPlusPlus, 2);
    assert_ne!(
        a.assignments, b.assignments,
        "different seeds should give different seeding"
    );
}

#[test]
fn ward_and_kmeanspp_find_separated_blobs() {
    let (groups, per, d) = (6, 10, 5);
    let data = blobs(groups, per, d, 77);
    let n = groups * per;
    let a = run(&data, n, d, groups, Init::Ward, 0);
    let same_partition =
        |x: &[u32], y: &[u32]| (0..n).all(|i| (0..n).all(|j| (x[i] == x[j]) == (y[i] == y[j])));
    let brute: Vec<u32> = {
        // Reference partition: units within 1.0 of each other belong together.
        let mut label = vec![u32::MAX; n];
        let mut next = 0;
        for i in 0..n {
            if label[i] == u32::MAX {
                for j in 0..n {
                    if sq_dist(row(&data, d, i), row(&data, d, j)) < 1.0 {
                        label[j] = next;
                    }
                }
                next += 1;
            }
        }
        label
    };
    assert!(same_partition(&a.assignments, &brute));
    assert_eq!(a.init, Init::Ward);
}

#[test]
fn bad_arguments_are_rejected_with_the_value() {
    let data = random_matrix(4, 2, 0);
    let err = kmeans(&data, 4, 2, &KMeansConfig::new(5)).unwrap_err();
    assert_eq!(err.to_string(), "K = 5 is outside [1, N = 4]");
    assert!(kmeans(&data, 4, 2, &KMeansConfig::new(0)).is_err());
    assert!(kmeans(&data, 3, 2, &KMeansConfig::new(1)).is_err());
    let mut bad = data.clone();
    bad[5] = f32::NAN;
    assert_eq!(
        kmeans(&bad, 4, 2, &KMeansConfig::new(2)).unwrap_err(),
        CoreError::NonFinite { row: 2, col: 1 }
    );
    // finite, but too long for f32 dot products: refused, naming the unit; just inside: kept
    let mut long = data.clone();
    long[6] = 1e19;
    let err = kmeans(&long, 4, 2, &KMeansConfig::new(2)).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("unit 3 has squared norm 1.000e38, more than"),
        "{err}"
    );
    long[6] = 4e18;
    long[7] = 0.0;
    assert!(kmeans(&long, 4, 2, &KMeansConfig::new(2)).is_ok());
    assert!(Init::parse("nope").is_err());
    assert_eq!(Init::parse("ward").unwrap(), Init::Ward);
}

#[test]
fn auto_init_picks_ward_for_k_near_n() {
    assert_eq!(Init::Auto.resolve(100, 90), Init::Ward);
    assert_eq!(Init::Auto.resolve(100, 10), Init::KMeansPlusPlus);
    assert_eq!(
        Init::Auto.resolve(WARD_MAX_N + 1, WARD_MAX_N),
        Init::KMeansPlusPlus
    );
}

/// The exported Ward merge, fed the engine's own cost matrix, gives the engine's Ward labels.
#[test]
fn ward_merge_from_a_cost_matrix_matches_ward_init() {
    for &(n, d, k, seed) in &[
        (9usize, 5usize, 4usize, 1u64),
        (40, 3, 25, 2),
        (200, 7, 150, 3),
    ] {
        let data = random_matrix(n, d, seed);
        let mut costs = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                costs[i * n + j] = 0.5 * sq_dist(row(&data, d, i), row(&data, d, j));
            }
        }
        let labels = ward_merge(costs, n, k).unwrap();
        let engine = ward_assignments(&data, &sq_norms(&data, n, d), d, k).assign;
        if n <= ROW_BLOCK {
            assert_eq!(labels, engine, "n={n}");
        }
        let distinct: std::collections::BTreeSet<u32> = labels.iter().copied().collect();
        assert_eq!(distinct.len(), k);
        // first-member numbering: the label of unit i is at most the number of clusters seen before it
        let mut seen = 0u32;
        for &l in &labels {
            assert!(l <= seen);
            seen = seen.max(l + 1);
        }
    }
}

/// The merge loop as first written: one dense N x N matrix, both triangles rewritten at every
/// merge. The engine's loop (a row per merged cluster, costs of singletons read from `base`)
/// must make the same merges.
fn reference_ward_merge(mut w: Vec<f64>, n: usize, k: usize) -> Vec<u32> {
    let mut active = vec![true; n];
    let mut size = vec![1f64; n];
    let mut parent: Vec<usize> = (0..n).collect();
    let nearest = |w: &[f64], active: &[bool], i: usize| -> (usize, f64) {
        let mut best = (usize::MAX, f64::INFINITY);
        for j in 0..n {
            if active[j] && j != i && (best.0 == usize::MAX || w[i * n + j] < best.1) {
                best = (j, w[i * n + j]);
            }
        }
        best
    };
    let (mut nn, mut nnc): (Vec<usize>, Vec<f64>) = (0..n).map(|i| nearest(&w, &active, i)).unzip();
    for _ in 0..(n - k) {
        let mut i = usize::MAX;
        for c in 0..n {
            if active[c] && (i == usize::MAX || nnc[c] < nnc[i]) {
                i = c;
            }
        }
        let (a, b) = (i.min(nn[i]), i.max(nn[i]));
        let (na, nb, wab) = (size[a], size[b], w[a * n + b]);
        for c in 0..n {
            if active[c] && c != a && c != b {
                let nc = size[c];
                let v = ((na + nc) * w[a * n + c] + (nb + nc) * w[b * n + c] - nc * wab)
                    / (na + nb + nc);
                w[a * n + c] = v;
                w[c * n + a] = v;
            }
        }
        active[b] = false;
        size[a] = na + nb;
        parent[b] = a;
        (nn[a], nnc[a]) = nearest(&w, &active, a);
        for c in 0..n {
            if !active[c] || c == a {
                continue;
            }
            if nn[c] == a || nn[c] == b {
                (nn[c], nnc[c]) = nearest(&w, &active, c);
            } else if w[a * n + c] < nnc[c] || (w[a * n + c] == nnc[c] && a < nn[c]) {
                nn[c] = a;
                nnc[c] = w[a * n + c];
            }
        }
    }
    let mut label = vec![u32::MAX; n];
    let mut next = 0u32;
    (0..n)
        .map(|i| {
            let mut r = i;
            while parent[r] != r {
                r = parent[r];
            }
            if label[r] == u32::MAX {
                label[r] = next;
                next += 1;
            }
            label[r]
        })
        .collect()
}

/// Ward's merges from the pairwise dot products (the GEMM path) and from a dense matrix are the
/// reference loop's, on random units, duplicates, all-zero units and coarse values (exact ties),
/// from K = 1 to K = N.
#[test]
fn ward_merges_are_the_dense_reference_loops() {
    let mut rng = SplitMix64::new(33);
    for case in 0..30 {
        let n = [2usize, 3, 17, 129, 300][case % 5];
        let d = [1usize, 4, 33][case % 3];
        let mut data = random_matrix(n, d, 500 + case as u64);
        match case % 4 {
            1 => {
                for i in (0..n).step_by(2) {
                    let src = row(&data, d, 0).to_vec();
                    data[i * d..(i + 1) * d].copy_from_slice(&src);
                }
            }
            2 => data.iter_mut().take(n * d / 2).for_each(|v| *v = 0.0),
            3 => data.iter_mut().for_each(|v| *v = (*v * 2.0).round()),
            _ => {}
        }
        let norms = sq_norms(&data, n, d);
        let dots = pairwise_dots(&data, n, d);
        let from_dots = DotCosts {
            dots: &dots,
            norms: &norms,
            n,
        };
        let dense: Vec<f64> = (0..n * n)
            .map(|p| {
                if p / n == p % n {
                    f64::INFINITY
                } else {
                    from_dots.cost(p / n, p % n)
                }
            })
            .collect();
        for k in [1, 1 + rng.below(n), n / 2 + 1, n - 1, n] {
            let k = k.clamp(1, n);
            let want = reference_ward_merge(dense.clone(), n, k);
            assert_eq!(
                ward_merge_unchecked(&from_dots, n, k),
                want,
                "case {case} n={n} k={k}"
            );
            let matrix = DenseCosts {
                w: dense.clone(),
                n,
            };
            assert_eq!(
                ward_merge_unchecked(&matrix, n, k),
                want,
                "dense, case {case} k={k}"
            );
        }
        if n > ROW_BLOCK {
            let k = n / 2 + 1;
            assert_eq!(
                ward_assignments(&data, &norms, d, k).assign,
                reference_ward_merge(dense, n, k)
            );
        }
    }
}

/// Costs that overflow to +infinity (a caller's matrix of huge values): the merges are still
/// the reference loop's, which takes the first cluster it meets when none is below infinity.
#[test]
fn ward_merges_past_infinite_costs_are_the_reference_loops() {
    let n = 4;
    let mut w = vec![f64::INFINITY; n * n];
    w[1] = 1.0; // (0, 1)
    w[n] = 1.0; // (1, 0)
    for k in [2, 3] {
        let want = reference_ward_merge(w.clone(), n, k);
        let got = ward_merge_unchecked(&DenseCosts { w: w.clone(), n }, n, k);
        assert_eq!(got, want, "k={k}");
    }
    assert_eq!(
        ward_merge_unchecked(&DenseCosts { w, n }, n, 2),
        vec![0, 0, 0, 1]
    );
}

#[test]
fn ward_merge_rejects_bad_matrices() {
    assert!(ward_merge(vec![0.0; 8], 3, 2).is_err());
    assert!(ward_merge(vec![0.0; 9], 3, 0).is_err());
    assert!(ward_merge(vec![0.0; 9], 3, 4).is_err());
    let mut bad = vec![0.0; 9];
    bad[1] = f64::NAN;
    assert!(ward_merge(bad, 3, 2).is_err());
    // K = N keeps every unit; duplicates (zero costs) merge first member first
    assert_eq!(ward_merge(vec![0.0; 9], 3, 3).unwrap(), vec![0, 1, 2]);
    assert_eq!(ward_merge(vec![0.0; 9], 3, 1).unwrap(), vec![0, 0, 0]);
}

/// The sampler draws what a brute-force reference of the same stream draws.
#[test]
fn plusplus_sampler_follows_the_reference_draws() {
    let n = 50;
    let mut reference = SplitMix64::new(7);
    let mut sampler = PlusPlusSampler::new(n, 7).unwrap();
    assert_eq!(sampler.first(), reference.below(n));
    let mut chosen = vec![false; n];
    chosen[sampler.first()] = true;
    let mut gen = SplitMix64::new(99);
    for round in 0..20 {
        let mind: Vec<f64> = (0..n)
            .map(|i| {
                if chosen[i] || i % 7 == round % 7 {
                    0.0
                } else {
                    gen.next_f64()
                }
            })
            .collect();
        let total: f64 = mind.iter().sum();
        let target = reference.next_f64() * total;
        let mut acc = 0.0;
        let mut want = usize::MAX;
        for i in 0..n {
            if mind[i] > 0.0 {
                acc += mind[i];
                want = i;
                if acc > target {
                    break;
                }
            }
        }
        let got = sampler.next(&mind).unwrap();
        assert_eq!(got, want);
        chosen[got] = true;
    }
    // all distances zero: lowest unchosen; wrong length or NaN: an error
    let first_free = (0..n).find(|&i| !chosen[i]).unwrap();
    assert_eq!(sampler.next(&vec![0.0; n]).unwrap(), first_free);
    assert!(sampler.next(&[0.0; 3]).is_err());
    assert!(sampler.next(&vec![f64::NAN; n]).is_err());
    assert!(PlusPlusSampler::new(0, 1).is_err());
}

#[test]
fn wards_pair_dots_are_the_dots_the_distance_step_computes() {
    // the first Lloyd step reads them in place of its own GEMM: they must be the same numbers
    for &(n, d, seed) in &[
        (129usize, 1usize, 1u64),
        (300, 7, 2),
        (700, 300, 3),
        (1030, 33, 4),
    ] {
        let data = random_matrix(n, d, seed);
        let dots = ward_assignments(&data, &sq_norms(&data, n, d), d, n / 2 + 1)
            .pair_dots
            .expect("GEMM pairwise step above ROW_BLOCK units");
        let mut direct = vec![0f32; n * n];
        cross_dots(&data, n, &data, n, d, &mut direct);
        for i in 0..n {
            for j in 0..n {
                assert_eq!(
                    dots[i * n + j].to_bits(),
                    direct[i * n + j].to_bits(),
                    "({i}, {j}) n={n} d={d}"
                );
            }
        }
    }
    let small = random_matrix(ROW_BLOCK, 3, 5);
    assert!(
        ward_assignments(&small, &sq_norms(&small, ROW_BLOCK, 3), 3, 70)
            .pair_dots
            .is_none()
    );
    // units of no width: every distance 0, a Ward run and its first Lloyd step still answer
    let r = kmeans(&[], 200, 0, &KMeansConfig::new(150)).unwrap();
    assert_eq!((r.assignments.len(), r.inertia), (200, 0.0));
}

#[test]
fn the_nearest_step_with_known_dots_picks_what_the_full_gemm_picks() {
    let mut rng = SplitMix64::new(21);
    for case in 0..24 {
        let n = 150 + rng.below(500);
        let d = [1usize, 2, 5, 64, 257][case % 5];
        let mut data = random_matrix(n, d, case as u64 + 100);
        match case % 4 {
            1 => {
                // duplicate units: equal scores, the lowest index must win in both
                for i in (0..n).step_by(3) {
                    let src = row(&data, d, 0).to_vec();
                    data[i * d..(i + 1) * d].copy_from_slice(&src);
                }
            }
            2 => data.iter_mut().take(n * d / 3).for_each(|v| *v = 0.0), // all-zero units
            3 => data.iter_mut().for_each(|v| *v = (*v * 3.0).round()), // coarse values: exact ties
            _ => {}
        }
        let k = n / 2 + rng.below(n / 2);
        // an assignment with one-unit clusters and larger ones (and, for some, empty ones)
        let mut assign: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
        for _ in 0..n / 4 {
            let i = rng.below(n);
            assign[i] = rng.below(k) as u32;
        }
        let mut centroids = vec![0f32; k * d];
        update_centroids(&data, d, &assign, k, &mut centroids);
        let mut pair_dots = vec![0f32; n * n];
        cross_dots(&data, n, &data, n, d, &mut pair_dots);
        let rows: Vec<usize> = (0..n).filter(|_| rng.below(3) > 0).collect();
        let full = nearest_rows(&data, d, &rows, &centroids, k);
        let known = nearest_rows_known(&data, d, &rows, &centroids, k, &assign, &pair_dots);
        assert_eq!(full, known, "case {case}: n={n} d={d} k={k}");
    }
}

#[test]
fn mirroring_copies_the_upper_triangle_for_every_size() {
    for n in [0usize, 1, 2, 63, 64, 65, 130] {
        let mut m: Vec<u64> = (0..n * n).map(|v| v as u64).collect();
        mirror_upper(&mut m, n);
        for i in 0..n {
            for j in 0..n {
                let (a, b) = (i.min(j), i.max(j));
                assert_eq!(m[i * n + j], (a * n + b) as u64, "n={n} ({i}, {j})");
            }
        }
    }
}

#[test]
fn distances_to_means_are_the_distances_computed_in_full() {
    let mut rng = SplitMix64::new(8);
    for case in 0..12 {
        let (n, d) = (50 + rng.below(200), [1usize, 3, 40][case % 3]);
        let mut data = random_matrix(n, d, 900 + case as u64);
        if case % 2 == 1 {
            data.iter_mut().take(n * d / 3).for_each(|v| *v = 0.0); // all-zero units
        }
        let k = 1 + rng.below(n);
        // one-unit clusters, larger ones and (for some) empty ones
        let assign: Vec<u32> = (0..n)
            .map(|i| if i < k { i as u32 } else { rng.below(k) as u32 })
            .map(|a| if case % 4 == 0 { a / 2 } else { a })
            .collect();
        let mut centroids = vec![0f32; k * d];
        update_centroids(&data, d, &assign, k, &mut centroids);
        let full = own_distances(&data, d, &centroids, &assign);
        let skipped = distances_to_means(&data, d, &centroids, &assign, k);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&skipped),
            bits(&full),
            "case {case}: n={n} d={d} k={k}"
        );
    }
}

/// The fused nearest-singleton pass of the dot-product costs answers what the plain scan of a
/// row of costs answers, for every unit, every remainder of four on both sides of it, masks
/// with few or no candidates, and exact ties (coarse values).
#[test]
fn the_fused_nearest_pass_is_the_row_scans() {
    let mut rng = SplitMix64::new(61);
    for case in 0..40 {
        let (n, d) = (2 + case % 13, 1 + case % 3);
        let mut data = random_matrix(n, d, 700 + case as u64);
        if case % 2 == 0 {
            data.iter_mut().for_each(|v| *v = (*v * 2.0).round()); // equal costs
        }
        let norms = sq_norms(&data, n, d);
        let dots = pairwise_dots(&data, n, d);
        let costs = DotCosts {
            dots: &dots,
            norms: &norms,
            n,
        };
        let plain: Vec<bool> = (0..n).map(|_| rng.below(4) > case % 4).collect();
        for i in 0..n {
            let row: Vec<f64> = (0..n).map(|j| costs.cost(i, j)).collect();
            let want = nearest_in_row(i, &row, &plain);
            assert_eq!(
                costs.nearest_plain(i, &plain),
                want,
                "case {case} n={n} i={i}"
            );
        }
    }
}
