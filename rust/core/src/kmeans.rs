//! Deterministic k-means (minimum within-cluster sum of squares) on unit matrices.
//!
//! * Initialisation: seeded k-means++ (D^2 sampling), or Ward agglomeration (merge the pair of
//!   clusters whose fusion raises the sum of squares least, until K remain), which is close to
//!   optimal when K is near N, the usual case for light sparsity. `Init::Auto` picks Ward when
//!   K >= N/2 and N <= [`WARD_MAX_N`], else k-means++.
//! * Lloyd refinement: the candidate nearest centroid of each unit comes from an f32 GEMM
//!   (`|c|^2 - 2 x.c`); a unit moves only when its exact f64 distance to the candidate is strictly
//!   smaller than to its current centroid, so the exact inertia never increases. Units that sit
//!   exactly on their centroid (distance 0, e.g. singletons) cannot improve and are skipped.
//! * Empty clusters take the unit farthest from its centroid among clusters with >= 2 members,
//!   so the result always has K non-empty clusters.
//! * All parallel work is split into blocks whose bounds do not depend on the thread count, and
//!   every reduction runs in a fixed order: output is byte-identical for any number of threads.

use crate::error::{invalid, CoreError, Result};
use crate::linalg::{cross_dots, cross_dots_strided, first_non_finite, sq_dist, sq_norm};
use crate::rng::SplitMix64;
use rayon::prelude::*;

/// Largest N for which Ward initialisation (an N x N f64 matrix) is used by `Init::Auto`.
pub const WARD_MAX_N: usize = 8192;
/// Up to this many units, Ward's pairwise costs are exact f64 distances, one pair per task.
const ROW_BLOCK: usize = 128;
/// Rows per GEMM block in the distance steps (fixed: independent of the thread count; a dot
/// product's value does not depend on the block it is computed in).
const GEMM_BLOCK: usize = 512;
/// Side of the square tiles in which a matrix's upper triangle is copied to its lower one.
const MIRROR_TILE: usize = 64;
/// Rows per step of the staircase in which Ward's pairwise GEMM covers a diagonal block.
const STAIR_ROWS: usize = 128;

/// The names [`Init::parse`] accepts, in the order the documentation lists them.
pub const INIT_NAMES: [&str; 3] = ["auto", "kmeans++", "ward"];

/// How the first K centroids are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Ward when K >= N/2 and N <= WARD_MAX_N, else k-means++.
    Auto,
    /// Seeded k-means++ (one D^2-weighted draw per centroid).
    KMeansPlusPlus,
    /// Ward agglomeration (deterministic; the seed is not used).
    Ward,
}

impl Init {
    pub fn name(self) -> &'static str {
        match self {
            Init::Auto => "auto",
            Init::KMeansPlusPlus => "kmeans++",
            Init::Ward => "ward",
        }
    }

    pub fn parse(s: &str) -> Result<Init> {
        match s {
            "auto" => Ok(Init::Auto),
            "kmeans++" | "k-means++" => Ok(Init::KMeansPlusPlus),
            "ward" => Ok(Init::Ward),
            other => invalid(format!(
                "unknown k-means init '{other}' (expected auto, kmeans++ or ward)"
            )),
        }
    }

    fn resolve(self, n: usize, k: usize) -> Init {
        match self {
            Init::Auto if n <= WARD_MAX_N && 2 * k >= n => Init::Ward,
            Init::Auto => Init::KMeansPlusPlus,
            other => other,
        }
    }
}

/// Parameters of one k-means run.
#[derive(Clone, Debug)]
pub struct KMeansConfig {
    pub k: usize,
    /// Maximum number of Lloyd iterations after initialisation.
    pub max_iter: usize,
    /// Stop when an iteration lowers the inertia by no more than `tol` relative (0: run until
    /// no unit moves or `max_iter`).
    pub tol: f64,
    pub seed: u64,
    pub init: Init,
}

impl KMeansConfig {
    pub fn new(k: usize) -> Self {
        KMeansConfig {
            k,
            max_iter: 100,
            tol: 0.0,
            seed: 0,
            init: Init::Auto,
        }
    }
}

/// Outcome of k-means: cluster of every unit, the K centroids (row-major K x d), the exact
/// inertia (sum of squared distances to the assigned centroid, f64), its history (after the
/// initial assignment and after each Lloyd iteration), and the init actually used.
#[derive(Clone, Debug, PartialEq)]
pub struct KMeansResult {
    pub assignments: Vec<u32>,
    pub centroids: Vec<f32>,
    pub inertia: f64,
    pub inertia_history: Vec<f64>,
    pub n_iter: usize,
    pub converged: bool,
    pub init: Init,
}

/// Runs k-means on the `n` rows (units) of the row-major `n x d` matrix `data`.
pub fn kmeans(data: &[f32], n: usize, d: usize, cfg: &KMeansConfig) -> Result<KMeansResult> {
    let norms = validate(data, n, d, cfg.k)?;
    let k = cfg.k;
    let init = cfg.init.resolve(n, k);
    if k == n {
        return Ok(KMeansResult {
            assignments: (0..n as u32).collect(),
            centroids: data.to_vec(),
            inertia: 0.0,
            inertia_history: vec![0.0],
            n_iter: 0,
            converged: true,
            init,
        });
    }
    // Ward's pairwise dot products, when it computed them, serve the first Lloyd step
    let (mut assign, mut pair_dots) = match init {
        Init::Ward => {
            let ward = ward_assignments(data, &norms, d, k);
            (ward.assign, ward.pair_dots)
        }
        _ => {
            let seeds = kmeanspp_centroids(data, n, d, k, cfg.seed);
            let mut assign = nearest_all(data, n, d, &seeds, k);
            let mut own: Vec<f64> = own_distances(data, d, &seeds, &assign);
            fill_empty_clusters(&mut assign, &mut own, k);
            (assign, None)
        }
    };
    let mut centroids = vec![0f32; k * d];
    update_centroids(data, d, &assign, k, &mut centroids);
    let mut own = distances_to_means(data, d, &centroids, &assign, k);
    let mut inertia: f64 = own.iter().sum();
    let mut history = vec![inertia];
    let mut n_iter = 0;
    let mut converged = false;
    while n_iter < cfg.max_iter {
        let movable: Vec<usize> = (0..n).filter(|&i| own[i] > 0.0).collect();
        let candidates = match pair_dots.take() {
            Some(dots) => nearest_rows_known(data, d, &movable, &centroids, k, &assign, &dots),
            None => nearest_rows(data, d, &movable, &centroids, k),
        };
        let moves: Vec<Option<(u32, f64)>> = movable
            .par_iter()
            .zip(candidates.par_iter())
            .map(|(&i, &c)| {
                if c == assign[i] {
                    return None;
                }
                let dist = sq_dist(row(data, d, i), row(&centroids, d, c as usize));
                (dist < own[i]).then_some((c, dist))
            })
            .collect();
        let mut changed = 0usize;
        for (&i, m) in movable.iter().zip(moves) {
            if let Some((c, dist)) = m {
                assign[i] = c;
                own[i] = dist;
                changed += 1;
            }
        }
        changed += fill_empty_clusters(&mut assign, &mut own, k);
        if changed == 0 {
            converged = true;
            break;
        }
        update_centroids(data, d, &assign, k, &mut centroids);
        own = distances_to_means(data, d, &centroids, &assign, k);
        let next: f64 = own.iter().sum();
        n_iter += 1;
        history.push(next);
        let gain = inertia - next;
        inertia = next;
        if cfg.tol > 0.0 && gain <= cfg.tol * history[history.len() - 2] {
            converged = true;
            break;
        }
    }
    Ok(KMeansResult {
        assignments: assign,
        centroids,
        inertia,
        inertia_history: history,
        n_iter,
        converged,
        init,
    })
}

/// Checks the arguments and the units; returns every unit's squared norm.
fn validate(data: &[f32], n: usize, d: usize, k: usize) -> Result<Vec<f64>> {
    if n == 0 {
        return invalid("k-means needs at least one unit (N = 0)");
    }
    if data.len() != n * d {
        return invalid(format!(
            "unit matrix has {} values, expected N x d = {n} x {d}",
            data.len()
        ));
    }
    if k < 1 || k > n {
        return invalid(format!("K = {k} is outside [1, N = {n}]"));
    }
    if let Some(pos) = first_non_finite(data) {
        return Err(CoreError::NonFinite {
            row: pos / d.max(1),
            col: pos % d.max(1),
        });
    }
    let norms = sq_norms(data, n, d);
    if let Some(i) = norms.iter().position(|&norm| norm > MAX_SQ_NORM) {
        return invalid(format!(
            "unit {i} has squared norm {:.3e}, more than the f32 distance products can hold \
             ({MAX_SQ_NORM:.3e})",
            norms[i]
        ));
    }
    Ok(norms)
}

/// The squared norm of each of the `n` rows of `data`, in f64.
fn sq_norms(data: &[f32], n: usize, d: usize) -> Vec<f64> {
    (0..n)
        .into_par_iter()
        .map(|i| sq_norm(row(data, d, i)))
        .collect()
}

/// The largest squared norm of a unit: every dot product of two units, and every partial sum of
/// one, is at most f32::MAX / 4 in magnitude (Cauchy-Schwarz), so every f32 GEMM value and every
/// distance and Ward cost made from them is finite.
const MAX_SQ_NORM: f64 = f32::MAX as f64 / 4.0;

fn row(data: &[f32], d: usize, i: usize) -> &[f32] {
    &data[i * d..(i + 1) * d]
}

/// The listed rows of the row-major matrix `data` (`d` columns), one after the other.
fn gather_rows(data: &[f32], d: usize, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * d);
    for &i in rows {
        out.extend_from_slice(row(data, d, i));
    }
    out
}

/// Exact f64 distance of every unit to its assigned centroid.
fn own_distances(data: &[f32], d: usize, centroids: &[f32], assign: &[u32]) -> Vec<f64> {
    (0..assign.len())
        .into_par_iter()
        .map(|i| sq_dist(row(data, d, i), row(centroids, d, assign[i] as usize)))
        .collect()
}

/// [`own_distances`] when each centroid is the mean of its members ([`update_centroids`]): a
/// unit alone in its cluster is its centroid, at distance 0 (what the sum of its zero squared
/// differences gives, bit for bit), without reading it.
fn distances_to_means(
    data: &[f32],
    d: usize,
    centroids: &[f32],
    assign: &[u32],
    k: usize,
) -> Vec<f64> {
    let mut size = vec![0usize; k];
    for &a in assign {
        size[a as usize] += 1;
    }
    (0..assign.len())
        .into_par_iter()
        .map(|i| {
            let c = assign[i] as usize;
            if size[c] == 1 {
                0.0
            } else {
                sq_dist(row(data, d, i), row(centroids, d, c))
            }
        })
        .collect()
}

/// Centroid = f64 mean of the members, summed in unit order. Empty clusters keep their value.
fn update_centroids(data: &[f32], d: usize, assign: &[u32], k: usize, centroids: &mut [f32]) {
    let mut start = vec![0usize; k + 1];
    for &a in assign {
        start[a as usize + 1] += 1;
    }
    for j in 0..k {
        start[j + 1] += start[j];
    }
    let mut fill = start.clone();
    let mut members = vec![0usize; assign.len()];
    for (i, &a) in assign.iter().enumerate() {
        members[fill[a as usize]] = i;
        fill[a as usize] += 1;
    }
    centroids
        .par_chunks_mut(d.max(1))
        .enumerate()
        .for_each(|(j, c)| {
            let m = &members[start[j]..start[j + 1]];
            if m.is_empty() {
                return;
            }
            if m.len() == 1 {
                c.copy_from_slice(row(data, d, m[0]));
                return;
            }
            let mut acc = vec![0f64; d];
            for &i in m {
                for (a, &x) in acc.iter_mut().zip(row(data, d, i)) {
                    *a += x as f64;
                }
            }
            let inv = 1.0 / m.len() as f64;
            for (c, a) in c.iter_mut().zip(acc) {
                *c = (a * inv) as f32;
            }
        });
}

/// Moves, for each empty cluster in ascending order, the unit farthest from its centroid among
/// clusters with at least two members (ties: lowest index). Returns the number of moves.
fn fill_empty_clusters(assign: &mut [u32], own: &mut [f64], k: usize) -> usize {
    let mut size = vec![0usize; k];
    for &a in assign.iter() {
        size[a as usize] += 1;
    }
    let mut moved = 0;
    for j in 0..k {
        if size[j] > 0 {
            continue;
        }
        let mut best: Option<usize> = None;
        for i in 0..assign.len() {
            if size[assign[i] as usize] >= 2 && best.is_none_or(|b| own[i] > own[b]) {
                best = Some(i);
            }
        }
        let i = best.expect("an empty cluster implies a cluster with two members when K <= N");
        size[assign[i] as usize] -= 1;
        assign[i] = j as u32;
        own[i] = 0.0;
        size[j] = 1;
        moved += 1;
    }
    moved
}

/// Index of the nearest centroid (by the GEMM score |c|^2 - 2 x.c; ties: lowest index) for the
/// listed rows.
fn nearest_rows(data: &[f32], d: usize, rows: &[usize], centroids: &[f32], k: usize) -> Vec<u32> {
    let cnorm: Vec<f64> = centroids.par_chunks(d.max(1)).map(sq_norm).collect();
    rows.par_chunks(GEMM_BLOCK)
        .map(|block| {
            let gathered = gather_rows(data, d, block);
            let mut dots = vec![0f32; block.len() * k];
            cross_dots(&gathered, block.len(), centroids, k, d, &mut dots);
            dots.chunks(k)
                .map(|r| best_score(&cnorm, |j| r[j]))
                .collect::<Vec<u32>>()
        })
        .collect::<Vec<_>>()
        .concat()
}

/// The centroid of least score |c_j|^2 - 2 x.c_j given each dot product (ties: lowest index).
#[inline]
fn best_score(cnorm: &[f64], dot: impl Fn(usize) -> f32) -> u32 {
    let mut best = 0usize;
    let mut best_score = f64::INFINITY;
    for (j, &norm) in cnorm.iter().enumerate() {
        let score = norm - 2.0 * dot(j) as f64;
        if score < best_score {
            best_score = score;
            best = j;
        }
    }
    best as u32
}

/// [`nearest_rows`] when the dot products of every pair of units are known (`pair_dots`, row-major
/// N x N, as the same GEMM computes them): the centroid of a one-unit cluster is that unit's
/// row, so only the other centroids' dot products are computed. The same answer, bit for bit.
fn nearest_rows_known(
    data: &[f32],
    d: usize,
    rows: &[usize],
    centroids: &[f32],
    k: usize,
    assign: &[u32],
    pair_dots: &[f32],
) -> Vec<u32> {
    let n = assign.len();
    let cnorm: Vec<f64> = centroids.par_chunks(d.max(1)).map(sq_norm).collect();
    let mut size = vec![0usize; k];
    let mut member = vec![0usize; k];
    for (i, &a) in assign.iter().enumerate() {
        size[a as usize] += 1;
        member[a as usize] = i;
    }
    let others: Vec<usize> = (0..k).filter(|&j| size[j] != 1).collect();
    let mut column = vec![usize::MAX; k]; // position of centroid j among the others
    for (p, &j) in others.iter().enumerate() {
        column[j] = p;
    }
    let other_rows = gather_rows(centroids, d, &others);
    let m = others.len();
    rows.par_chunks(GEMM_BLOCK)
        .map(|block| {
            let gathered = gather_rows(data, d, block);
            let mut dots = vec![0f32; block.len() * m];
            cross_dots(&gathered, block.len(), &other_rows, m, d, &mut dots);
            block
                .iter()
                .enumerate()
                .map(|(r, &i)| {
                    let known = &pair_dots[i * n..(i + 1) * n];
                    let computed = &dots[r * m..(r + 1) * m];
                    best_score(&cnorm, |j| {
                        if size[j] == 1 {
                            known[member[j]]
                        } else {
                            computed[column[j]]
                        }
                    })
                })
                .collect::<Vec<u32>>()
        })
        .collect::<Vec<_>>()
        .concat()
}

fn nearest_all(data: &[f32], n: usize, d: usize, centroids: &[f32], k: usize) -> Vec<u32> {
    let rows: Vec<usize> = (0..n).collect();
    nearest_rows(data, d, &rows, centroids, k)
}

/// The host side of seeded k-means++: the engine's SplitMix64 stream and the D^2 draws. The
/// caller keeps each unit's squared distance to its nearest chosen centroid (`mind`) up to date,
/// on the CPU ([`kmeans`]) or on a GPU (the Python array-namespace backend), so both draw the
/// same units from the same distances.
#[derive(Clone, Debug)]
pub struct PlusPlusSampler {
    rng: SplitMix64,
    chosen: Vec<bool>,
    first: usize,
}

impl PlusPlusSampler {
    /// A sampler over `n >= 1` units; the first centroid is drawn uniformly.
    pub fn new(n: usize, seed: u64) -> Result<Self> {
        if n == 0 {
            return invalid("k-means++ needs at least one unit (N = 0)");
        }
        let mut rng = SplitMix64::new(seed);
        let first = rng.below(n);
        let mut chosen = vec![false; n];
        chosen[first] = true;
        Ok(PlusPlusSampler { rng, chosen, first })
    }

    /// The first (uniformly drawn) unit.
    pub fn first(&self) -> usize {
        self.first
    }

    /// The next unit, drawn with probability proportional to `mind` (summed in unit order).
    /// When every distance is zero (duplicate units) the lowest-index unchosen unit is taken.
    pub fn next(&mut self, mind: &[f64]) -> Result<usize> {
        if mind.len() != self.chosen.len() {
            return invalid(format!(
                "k-means++: {} distances for {} units",
                mind.len(),
                self.chosen.len()
            ));
        }
        if let Some(i) = mind.iter().position(|m| !m.is_finite() || *m < 0.0) {
            return invalid(format!(
                "k-means++: distance {} of unit {i} is not finite and >= 0",
                mind[i]
            ));
        }
        let total: f64 = mind.iter().sum();
        let next = if total > 0.0 {
            let target = self.rng.next_f64() * total;
            let mut acc = 0.0;
            let mut pick = None;
            for (i, &m) in mind.iter().enumerate() {
                if m > 0.0 {
                    acc += m;
                    pick = Some(i);
                    if acc > target {
                        break;
                    }
                }
            }
            pick.expect("total > 0 implies a unit with positive distance")
        } else {
            match self.chosen.iter().position(|&c| !c) {
                Some(i) => i,
                None => return invalid("k-means++: every unit was already chosen (K > N)"),
            }
        };
        self.chosen[next] = true;
        Ok(next)
    }
}

/// Seeded k-means++ (see [`PlusPlusSampler`]): first centroid uniform, then each next one drawn
/// with probability proportional to the squared distance to the nearest chosen centroid.
fn kmeanspp_centroids(data: &[f32], n: usize, d: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut sampler = PlusPlusSampler::new(n, seed).expect("validated: N >= 1");
    let first = sampler.first();
    let mut picks = vec![first];
    let mut mind: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| sq_dist(row(data, d, i), row(data, d, first)))
        .collect();
    while picks.len() < k {
        let next = sampler.next(&mind).expect("validated: K <= N, finite data");
        picks.push(next);
        let c = row(data, d, next);
        mind.par_iter_mut().enumerate().for_each(|(i, m)| {
            let dist = sq_dist(row(data, d, i), c);
            if dist < *m {
                *m = dist;
            }
        });
    }
    gather_rows(data, d, &picks)
}

/// Ward's initial clusters, and the f32 dot products of every pair of units when they were
/// computed by GEMM (row-major N x N, symmetric).
struct WardInit {
    assign: Vec<u32>,
    pair_dots: Option<Vec<f32>>,
}

/// Copies the upper triangle of the row-major `n x n` matrix `m` to its lower triangle, one
/// square tile at a time (a plain column walk misses the cache on every value), bands of tiles
/// in parallel.
fn mirror_upper<T: Copy + Send + Sync>(m: &mut [T], n: usize) {
    /// The matrix's first value, shared by the tasks (see the SAFETY note below).
    struct Base<T>(*mut T);
    // SAFETY: the tasks write disjoint values and read only values that no task writes
    unsafe impl<T: Send> Sync for Base<T> {}
    assert_eq!(m.len(), n * n);
    let base = Base(m.as_mut_ptr());
    let base = &base;
    (0..n.div_ceil(MIRROR_TILE))
        .into_par_iter()
        .for_each(|band| {
            let ib = band * MIRROR_TILE;
            for jb in (0..=ib).step_by(MIRROR_TILE) {
                for i in ib..(ib + MIRROR_TILE).min(n) {
                    for j in jb..(jb + MIRROR_TILE).min(i) {
                        // SAFETY: i, j < n, so both values are within `m`; only this task writes
                        // rows ib..ib + MIRROR_TILE, and only below the diagonal (j < i); every read
                        // is above it (row j < i, column i), where nothing is written
                        unsafe { *base.0.add(i * n + j) = *base.0.add(j * n + i) };
                    }
                }
            }
        });
}

/// The dot products of every pair of the `n` rows of `data` (row-major `n x n`): the upper
/// triangle by blocks of [`GEMM_BLOCK`] rows (each the rectangle right of its diagonal block,
/// then the diagonal block as a staircase of [`STAIR_ROWS`] rows, so little below the diagonal
/// is computed), then mirrored. Each value is the one [`cross_dots`] computes for that pair
/// (a dot product's value does not depend on the call; x_i . x_j = x_j . x_i bit for bit).
fn pairwise_dots(data: &[f32], n: usize, d: usize) -> Vec<f32> {
    let mut dots = vec![0f32; n * n];
    dots.par_chunks_mut(GEMM_BLOCK * n)
        .enumerate()
        .for_each(|(b, band)| {
            let lo = b * GEMM_BLOCK;
            let rows = band.len() / n;
            let hi = lo + rows;
            let block = &data[lo * d..hi * d];
            cross_dots_strided(block, rows, &data[hi * d..], n - hi, d, &mut band[hi..], n);
            for s in (0..rows).step_by(STAIR_ROWS) {
                let (r, c0) = (STAIR_ROWS.min(rows - s), lo + s);
                let stair = &data[c0 * d..(c0 + r) * d];
                let out = &mut band[s * n + c0..];
                cross_dots_strided(stair, r, &data[c0 * d..hi * d], hi - c0, d, out, n);
            }
        });
    mirror_upper(&mut dots, n);
    dots
}

/// Ward agglomeration from N singletons down to K clusters. The merge cost of clusters A and B
/// is the rise in the sum of squares, |A||B|/(|A|+|B|) |c_A - c_B|^2, updated by the
/// Lance-Williams recurrence. `norms`: the units' squared norms ([`sq_norms`]), one per unit.
/// Returns cluster labels 0..K in order of each cluster's first unit.
fn ward_assignments(data: &[f32], norms: &[f64], d: usize, k: usize) -> WardInit {
    let n = norms.len();
    if n <= ROW_BLOCK {
        // Few, long units (attention heads): exact f64 distances, one pair per task.
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .collect();
        let costs: Vec<f64> = pairs
            .par_iter()
            .map(|&(i, j)| 0.5 * sq_dist(row(data, d, i), row(data, d, j)))
            .collect();
        let mut w = vec![0f64; n * n];
        for (&(i, j), &c) in pairs.iter().zip(&costs) {
            w[i * n + j] = c;
        }
        mirror_upper(&mut w, n);
        return WardInit {
            assign: ward_merge_unchecked(&DenseCosts { w, n }, n, k),
            pair_dots: None,
        };
    }
    let dots = pairwise_dots(data, n, d);
    let costs = DotCosts {
        dots: &dots,
        norms,
        n,
    };
    let assign = ward_merge_unchecked(&costs, n, k);
    WardInit {
        assign,
        pair_dots: Some(dots),
    }
}

/// What merging two singletons costs, as Ward's merge loop reads it (i != j; the same value,
/// bit for bit, for (i, j) and (j, i); finite).
trait SingletonCosts: Sync {
    fn cost(&self, i: usize, j: usize) -> f64;

    /// The first j != i with `plain[j]` of least cost to i, and that cost ((usize::MAX,
    /// +infinity) when there is none): what [`nearest_in_row`] answers for i's row of costs.
    fn nearest_plain(&self, i: usize, plain: &[bool]) -> (usize, f64);
}

/// The first j != i with `plain[j]` of least `row[j]`, and that cost: the least finite one, else
/// the first candidate, as a scan that takes the first value it meets and then only lower ones;
/// (usize::MAX, +infinity) when there is no candidate.
fn nearest_in_row(i: usize, row: &[f64], plain: &[bool]) -> (usize, f64) {
    let mut costs: Vec<f64> = row
        .iter()
        .zip(plain)
        .map(|(&v, &p)| if p { v } else { f64::INFINITY })
        .collect();
    costs[i] = f64::INFINITY;
    let best = first_least(&costs);
    if best.0 != usize::MAX {
        return best;
    }
    // no candidate below +infinity (costs overflow only from a caller's matrix of huge values)
    first_candidate(i, plain).map_or(best, |j| (j, row[j]))
}

/// The first j != i with `plain[j]`.
fn first_candidate(i: usize, plain: &[bool]) -> Option<usize> {
    (0..plain.len()).find(|&j| j != i && plain[j])
}

/// The first index of the least value (+infinity marks what is not a candidate; candidates'
/// values are finite), and that value; (usize::MAX, +infinity) when there is no candidate. The
/// minimum is taken over four lanes, then the first index holding it is looked for: the answer
/// of a scan that keeps the first least value.
fn first_least(values: &[f64]) -> (usize, f64) {
    let mut lanes = [f64::INFINITY; 4];
    let chunks = values.chunks_exact(4);
    for &v in chunks.remainder() {
        lanes[0] = if v < lanes[0] { v } else { lanes[0] };
    }
    for c in chunks {
        for l in 0..4 {
            lanes[l] = if c[l] < lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let best = lanes
        .iter()
        .fold(f64::INFINITY, |m, &v| if v < m { v } else { m });
    match values.iter().position(|&v| v == best) {
        Some(j) if best < f64::INFINITY => (j, best),
        _ => (usize::MAX, f64::INFINITY),
    }
}

/// The costs as a symmetric row-major `n x n` matrix.
struct DenseCosts {
    w: Vec<f64>,
    n: usize,
}

impl SingletonCosts for DenseCosts {
    #[inline]
    fn cost(&self, i: usize, j: usize) -> f64 {
        self.w[i * self.n + j]
    }

    fn nearest_plain(&self, i: usize, plain: &[bool]) -> (usize, f64) {
        nearest_in_row(i, &self.w[i * self.n..(i + 1) * self.n], plain)
    }
}

/// The costs from the units' pairwise dot products and squared norms: 0.5 |x_i - x_j|^2 =
/// 0.5 max(|x_i|^2 + |x_j|^2 - 2 x_i . x_j, 0), computed when read (the sum of the norms is the
/// same either way round, and so is the dot product).
struct DotCosts<'a> {
    dots: &'a [f32],
    norms: &'a [f64],
    n: usize,
}

impl SingletonCosts for DotCosts<'_> {
    #[inline]
    fn cost(&self, i: usize, j: usize) -> f64 {
        half_d2(self.norms[i], self.norms[j], self.dots[i * self.n + j])
    }

    /// Without a row of costs in memory: the least cost on each
    /// side of i, four lanes at a time, then the first j that has it (each cost computed again
    /// by the same expression, so the same value).
    fn nearest_plain(&self, i: usize, plain: &[bool]) -> (usize, f64) {
        let (dots, ni) = (&self.dots[i * self.n..(i + 1) * self.n], self.norms[i]);
        let norms = &self.norms[..self.n];
        let side = |r: std::ops::Range<usize>| {
            lane_least(ni, &norms[r.clone()], &dots[r.clone()], &plain[r])
        };
        let (left, right) = (side(0..i), side(i + 1..self.n));
        let best = if right < left { right } else { left };
        if best < f64::INFINITY {
            let find = |r: std::ops::Range<usize>| {
                let at = lane_find(
                    ni,
                    &norms[r.clone()],
                    &dots[r.clone()],
                    &plain[r.clone()],
                    best,
                );
                at.map(|p| r.start + p)
            };
            let at = find(0..i).or_else(|| find(i + 1..self.n));
            return (at.expect("the least cost is some candidate's"), best);
        }
        match first_candidate(i, plain) {
            Some(j) => (j, half_d2(ni, norms[j], dots[j])),
            None => (usize::MAX, f64::INFINITY),
        }
    }
}

/// 0.5 max(|x_i|^2 + |x_j|^2 - 2 x_i . x_j, 0): half the squared distance of two units.
#[inline]
fn half_d2(ni: f64, nj: f64, dot: f32) -> f64 {
    0.5 * (ni + nj - 2.0 * dot as f64).max(0.0)
}

/// [`half_d2`] where `plain`, +infinity elsewhere. A cost is >= +0, so raising it to +infinity,
/// or to +0, masks it without a branch.
#[inline]
fn masked_half_d2(ni: f64, nj: f64, dot: f32, plain: bool) -> f64 {
    const FLOOR: [f64; 2] = [f64::INFINITY, 0.0];
    let (c, floor) = (half_d2(ni, nj, dot), FLOOR[plain as usize]);
    if c > floor {
        c
    } else {
        floor
    }
}

/// The least [`masked_half_d2`] over the slices (+infinity when no value is `plain`), four lanes
/// at a time.
#[inline]
fn lane_least(ni: f64, norms: &[f64], dots: &[f32], plain: &[bool]) -> f64 {
    let mut lanes = [f64::INFINITY; 4];
    let (n4, d4, p4) = (
        norms.chunks_exact(4),
        dots.chunks_exact(4),
        plain.chunks_exact(4),
    );
    let tail = n4
        .remainder()
        .iter()
        .zip(d4.remainder())
        .zip(p4.remainder());
    for ((&nj, &dot), &p) in tail {
        let v = masked_half_d2(ni, nj, dot, p);
        lanes[0] = if v < lanes[0] { v } else { lanes[0] };
    }
    for ((nj, dot), p) in n4.zip(d4).zip(p4) {
        for l in 0..4 {
            let v = masked_half_d2(ni, nj[l], dot[l], p[l]);
            lanes[l] = if v < lanes[l] { v } else { lanes[l] };
        }
    }
    lanes
        .iter()
        .fold(f64::INFINITY, |m, &v| if v < m { v } else { m })
}

/// The first position in the slices whose [`masked_half_d2`] is `value`, four at a time.
#[inline]
fn lane_find(ni: f64, norms: &[f64], dots: &[f32], plain: &[bool], value: f64) -> Option<usize> {
    let (n4, d4, p4) = (
        norms.chunks_exact(4),
        dots.chunks_exact(4),
        plain.chunks_exact(4),
    );
    let body = n4.len() * 4;
    let tail = n4
        .remainder()
        .iter()
        .zip(d4.remainder())
        .zip(p4.remainder());
    for (c, ((nj, dot), p)) in n4.zip(d4).zip(p4).enumerate() {
        let hit: [bool; 4] =
            std::array::from_fn(|l| masked_half_d2(ni, nj[l], dot[l], p[l]) == value);
        if hit.iter().any(|&h| h) {
            return hit.iter().position(|&h| h).map(|l| c * 4 + l);
        }
    }
    tail.into_iter()
        .position(|((&nj, &dot), &p)| masked_half_d2(ni, nj, dot, p) == value)
        .map(|t| body + t)
}

/// Ward agglomeration from a precomputed cost matrix: `costs` is the row-major N x N matrix of
/// the pairwise merge costs of singletons, 0.5 |x_i - x_j|^2. Only the upper triangle is read
/// (it is mirrored, as the CPU path does with its own matrix); the diagonal is ignored. This is
/// the host half of Ward initialisation when a GPU computes the matrix. Returns cluster labels
/// 0..K in order of each cluster's first unit.
pub fn ward_merge(mut costs: Vec<f64>, n: usize, k: usize) -> Result<Vec<u32>> {
    if n == 0 {
        return invalid("Ward needs at least one unit (N = 0)");
    }
    if costs.len() != n * n {
        return invalid(format!(
            "Ward cost matrix has {} values, expected N x N = {n} x {n}",
            costs.len()
        ));
    }
    if k < 1 || k > n {
        return invalid(format!("K = {k} is outside [1, N = {n}]"));
    }
    for i in 0..n {
        for j in i + 1..n {
            let c = costs[i * n + j];
            if !c.is_finite() || c < 0.0 {
                return invalid(format!("Ward cost ({i}, {j}) = {c} is not finite and >= 0"));
            }
            costs[j * n + i] = c;
        }
        costs[i * n + i] = f64::INFINITY;
    }
    Ok(ward_merge_unchecked(&DenseCosts { w: costs, n }, n, k))
}

/// The merge costs of the clusters that are left: a pair of singletons costs what `base` says;
/// a pair with a merged cluster costs what the later merge of the two wrote into its own row
/// (one row of costs per merged cluster, rewritten at its every merge: no column is ever
/// written, and no N x N matrix is needed besides `base`).
struct ClusterCosts<'a, C> {
    base: &'a C,
    /// When each cluster last absorbed another (0: never; increasing).
    stamp: Vec<usize>,
    rows: Vec<Option<Vec<f64>>>,
    /// Left and never merged (a singleton).
    plain: Vec<bool>,
    /// The merged clusters that are left.
    merged: Vec<usize>,
}

impl<C: SingletonCosts> ClusterCosts<'_, C> {
    #[inline]
    fn cost(&self, x: usize, y: usize) -> f64 {
        let (sx, sy) = (self.stamp[x], self.stamp[y]);
        if sx > sy {
            self.row(x)[y]
        } else if sy > sx {
            self.row(y)[x]
        } else {
            self.base.cost(x, y) // both singletons (stamps are distinct once set)
        }
    }

    #[inline]
    fn row(&self, x: usize) -> &[f64] {
        self.rows[x]
            .as_deref()
            .expect("a merged cluster has its row")
    }

    /// The cluster other than i that is left of least cost to i (ties: the lowest index): the
    /// singletons by one scan, then the merged clusters.
    fn nearest(&self, i: usize) -> (usize, f64) {
        let mut best = if self.stamp[i] == 0 {
            self.base.nearest_plain(i, &self.plain)
        } else {
            nearest_in_row(i, self.row(i), &self.plain)
        };
        for &j in &self.merged {
            if j != i {
                let v = if self.stamp[i] == 0 {
                    self.row(j)[i]
                } else {
                    self.cost(i, j)
                };
                if v < best.1 || (v == best.1 && j < best.0) {
                    best = (j, v);
                }
            }
        }
        best
    }

    /// Cluster a absorbs b: a's row of costs by the Lance-Williams recurrence (from the costs
    /// before the merge), b leaves. `size`: the clusters' sizes before the merge.
    fn merge(&mut self, a: usize, b: usize, at: usize, size: &[f64], active: &[bool]) {
        let n = size.len();
        let (na, nb, wab) = (size[a], size[b], self.cost(a, b));
        // where a's old row holds a cost, it is read before it is overwritten
        let mut row_a = self.rows[a].take().unwrap_or_else(|| vec![0f64; n]);
        let old = self.stamp[a];
        let row_b = self.rows[b].as_deref();
        for c in 0..n {
            if !active[c] || c == a || c == b {
                continue;
            }
            let (w_ac, w_bc) = if self.plain[c] {
                // a singleton: the row of a or b where they are merged, else the base cost
                let w_ac = if old > 0 {
                    row_a[c]
                } else {
                    self.base.cost(a, c)
                };
                (w_ac, row_b.map_or_else(|| self.base.cost(b, c), |r| r[c]))
            } else {
                let w_ac = match self.stamp[c] {
                    sc if old > sc => row_a[c],
                    sc if sc > old => self.row(c)[a],
                    _ => self.base.cost(a, c),
                };
                (w_ac, self.cost(b, c))
            };
            let nc = size[c];
            row_a[c] = ((na + nc) * w_ac + (nb + nc) * w_bc - nc * wab) / (na + nb + nc);
        }
        self.rows[a] = Some(row_a);
        self.stamp[a] = at;
        self.rows[b] = None;
        self.plain[a] = false;
        self.plain[b] = false;
        self.merged.retain(|&c| c != b);
        if old == 0 {
            self.merged.push(a);
        }
    }
}

/// The merge loop of Ward from the costs of the singletons.
fn ward_merge_unchecked<C: SingletonCosts>(base: &C, n: usize, k: usize) -> Vec<u32> {
    let mut active = vec![true; n];
    let mut size = vec![1f64; n];
    let mut parent: Vec<usize> = (0..n).collect();
    let mut costs = ClusterCosts {
        base,
        stamp: vec![0; n],
        rows: vec![None; n],
        plain: vec![true; n],
        merged: Vec::new(),
    };
    let (mut nn, mut nnc): (Vec<usize>, Vec<f64>) =
        (0..n).into_par_iter().map(|i| costs.nearest(i)).unzip();
    for at in 1..=(n - k) {
        let mut i = usize::MAX;
        for c in 0..n {
            if active[c] && (i == usize::MAX || nnc[c] < nnc[i]) {
                i = c;
            }
        }
        let j = nn[i];
        let (a, b) = (i.min(j), i.max(j));
        costs.merge(a, b, at, &size, &active);
        active[b] = false;
        size[a] += size[b];
        parent[b] = a;
        (nn[a], nnc[a]) = costs.nearest(a);
        let row_a = costs.row(a);
        for c in 0..n {
            if !active[c] || c == a {
                continue;
            }
            if nn[c] == a || nn[c] == b {
                (nn[c], nnc[c]) = costs.nearest(c);
            } else if row_a[c] < nnc[c] || (row_a[c] == nnc[c] && a < nn[c]) {
                nn[c] = a;
                nnc[c] = row_a[c];
            }
        }
    }
    let root: Vec<usize> = (0..n)
        .map(|i| {
            let mut r = i;
            while parent[r] != r {
                r = parent[r];
            }
            r
        })
        .collect();
    let mut label = vec![u32::MAX; n];
    let mut next = 0u32;
    root.iter()
        .map(|&r| {
            if label[r] == u32::MAX {
                label[r] = next;
                next += 1;
            }
            label[r]
        })
        .collect()
}

#[cfg(test)]
mod tests;
