//! Palettization: the scalar weights of a matrix clustered into 2^b values per look-up table
//! (one table per row, per group of `group_rows` rows, or per tensor), stored as b-bit indices.
//!
//! * The 1-D problem (weighted k-means of the group's values) is solved either exactly, by
//!   dynamic programming over the sorted distinct values (optimal clusters are contiguous in
//!   sorted order; the optimal split points are monotone, so each of the k layers is a
//!   divide-and-conquer pass, O(k n log n); long candidate scans four at a time where the
//!   processor has AVX, with the same result), or by Lloyd's iteration on the sorted values with
//!   prefix sums (each step is k binary searches, O(k log n), after one O(n log n) sort).
//! * Weights: every value may carry a weight (a column weight times a row weight), so the
//!   objective is a modelled output error rather than the weight MSE.
//! * Optional: a per-row scale (max |w| of the row, values clustered in [-1, 1]); a fraction of
//!   outliers per group kept exactly (largest weighted magnitude), outside the clustering.
//! * Deterministic: groups are independent, results are collected in group order, ties broken by
//!   index; output is byte-identical whatever the thread count and whether AVX is used.

use crate::error::{invalid, CoreError, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// The bit widths a table may have (2^b entries; indices stored as one byte in memory).
pub const BITS: [u32; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
/// The names [`Method::parse`] accepts.
pub const METHOD_NAMES: [&str; 4] = ["exact", "binned", "ward", "lloyd"];
/// Bins per table entry of [`Method::Binned`] (32: within 0.1 % of the optimum on long rows, measured).
pub const BINS_PER_ENTRY: usize = 32;

/// How the 1-D k-means problem of one table is solved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Optimal (dynamic programming).
    Exact,
    /// The exact solution on [`BINS_PER_ENTRY`] x k equal-count bins of the sorted values,
    /// refined by Lloyd's iteration on all values (exact when there are no more values than bins).
    Binned,
    /// Ward agglomeration of neighbouring sorted values (merge the adjacent pair that raises the
    /// sum of squares least, until k remain; O(n log n)), refined by Lloyd's iteration.
    Ward,
    /// Lloyd's iteration from an equal-weight split of the sorted values.
    Lloyd,
}

impl Method {
    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "exact" => Ok(Method::Exact),
            "binned" => Ok(Method::Binned),
            "ward" => Ok(Method::Ward),
            "lloyd" => Ok(Method::Lloyd),
            other => invalid(format!(
                "unknown 1-D k-means method '{other}' (expected exact, binned, ward or lloyd)"
            )),
        }
    }
}

/// The storage precision of the table entries (values are rounded to it before the final
/// assignment, so indices are nearest to the stored values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LutDtype {
    F32,
    F16,
    BF16,
}

impl LutDtype {
    pub fn parse(s: &str) -> Result<LutDtype> {
        match s {
            "float32" | "F32" => Ok(LutDtype::F32),
            "float16" | "F16" => Ok(LutDtype::F16),
            "bfloat16" | "BF16" => Ok(LutDtype::BF16),
            other => invalid(format!(
                "unknown table dtype '{other}' (expected float32, float16 or bfloat16)"
            )),
        }
    }

    fn round(self, v: f64) -> f32 {
        match self {
            LutDtype::F32 => v as f32,
            LutDtype::F16 => f16::from_f64(v).to_f32(),
            LutDtype::BF16 => bf16::from_f64(v).to_f32(),
        }
    }
}

/// Parameters of one palettization.
#[derive(Clone, Debug)]
pub struct PaletteSpec {
    pub bits: u32,
    /// Rows sharing one table (1: per channel; the row count: per tensor). Must divide the rows.
    pub group_rows: usize,
    pub method: Method,
    /// Lloyd iterations at most (Lloyd only).
    pub max_iter: usize,
    pub lut_dtype: LutDtype,
    /// Divide each row by its max |w| (rounded to the table dtype) before clustering.
    pub row_scale: bool,
    /// Fraction of each group's values kept exactly (largest weight * value^2), in [0, 0.5].
    pub outlier_fraction: f64,
}

/// The palettized matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Palette {
    /// groups x 2^b table entries, ascending within a table (already rounded to the table dtype).
    pub luts: Vec<f32>,
    /// One scale per row when `row_scale`, else empty.
    pub scales: Vec<f32>,
    /// rows x cols table indices.
    pub indices: Vec<u8>,
    /// Flat positions (row * cols + col), ascending, of the values kept exactly.
    pub outliers: Vec<u64>,
    /// Per group: the weighted sum of squared errors of the dequantized values (outliers exact).
    pub wsse: Vec<f64>,
}

/// Sorted distinct values and their summed weights.
struct Points {
    x: Vec<f64>,
    w: Vec<f64>,
}

fn distinct(pairs: Vec<(f64, f64)>) -> Points {
    // sorted by the values' total order (-0 before +0), equal values in input order: an
    // unstable sort of (order key, position) pairs, which is as stable as a stable sort and
    // compares integers (a third of the time of `sort_by(total_cmp)` on rows of 1280 values)
    let mut order: Vec<(u64, usize)> = pairs
        .iter()
        .enumerate()
        .map(|(i, &(v, _))| {
            let b = v.to_bits();
            (if b >> 63 == 1 { !b } else { b | 1 << 63 }, i)
        })
        .collect();
    order.sort_unstable();
    let mut x: Vec<f64> = Vec::with_capacity(pairs.len());
    let mut w: Vec<f64> = Vec::with_capacity(pairs.len());
    for (_, i) in order {
        let (v, wt) = pairs[i];
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

/// Prefix sums of w, w x, w x^2 (x centred on the weighted mean, against cancellation).
struct Prefix {
    shift: f64,
    w: Vec<f64>,
    s: Vec<f64>,
    q: Vec<f64>,
}

impl Prefix {
    fn new(p: &Points) -> Prefix {
        let total: f64 = p.w.iter().sum();
        let shift = if total > 0.0 {
            p.x.iter().zip(&p.w).map(|(x, w)| x * w).sum::<f64>() / total
        } else {
            0.0
        };
        let n = p.x.len();
        let (mut w, mut s, mut q) = (vec![0.0; n + 1], vec![0.0; n + 1], vec![0.0; n + 1]);
        for i in 0..n {
            let (x, wt) = (p.x[i] - shift, p.w[i]);
            w[i + 1] = w[i] + wt;
            s[i + 1] = s[i] + wt * x;
            q[i + 1] = q[i] + wt * x * x;
        }
        Prefix { shift, w, s, q }
    }

    /// Weighted sum of squares of points i..j around their weighted mean.
    fn cost(&self, i: usize, j: usize) -> f64 {
        let w = self.w[j] - self.w[i];
        if w <= 0.0 {
            return 0.0;
        }
        let s = self.s[j] - self.s[i];
        (self.q[j] - self.q[i] - s * s / w).max(0.0)
    }

    fn mean(&self, p: &Points, i: usize, j: usize) -> f64 {
        let w = self.w[j] - self.w[i];
        if w > 0.0 {
            (self.s[j] - self.s[i]) / w + self.shift
        } else {
            0.5 * (p.x[i] + p.x[j - 1])
        }
    }
}

/// Cluster boundaries (k + 1 start indices, first 0, last n) of the optimal weighted 1-D
/// k-means of `n >= k` sorted distinct points.
///
/// Layer m holds the best cost of the first j points in m clusters and where its last cluster
/// starts, opt_m(j). The sum-of-squares cost is a Monge array, so opt_m(j) is non-decreasing in
/// j (each layer is a divide-and-conquer pass) and opt_{m-1}(j) <= opt_m(j) (a lower bound from
/// the previous layer). Ties take the earliest start.
///
/// Only the states the last layer can reach are computed: the last layer needs j = n alone,
/// and layer m no j below a_m = opt_m(a_{m+1}) (a_k = n), which is at least
/// opt_{m-1} applied k - m times to n (opt_{m-1} <= opt_{m'} for m' >= m - 1, all
/// non-decreasing), known before layer m is computed. That skips about 40 % of the work on
/// rows of weights at 4 bits. Every read is checked to fall in what was computed; should
/// rounding ever break the bound, the whole programme is solved again over all states.
fn exact_bounds(pre: &Prefix, n: usize, k: usize) -> Vec<usize> {
    dynamic_programme(pre, n, k, true).unwrap_or_else(|| {
        dynamic_programme(pre, n, k, false)
            .expect("the programme over all states reads only what it computed")
    })
}

/// The dynamic programme of [`exact_bounds`]; `reachable`: only the states the last layer can
/// reach (`None` when a read fell outside them), else every state of every layer.
fn dynamic_programme(pre: &Prefix, n: usize, k: usize, reachable: bool) -> Option<Vec<usize>> {
    let mut prev: Vec<f64> = (0..=n).map(|j| pre.cost(0, j)).collect();
    let mut opts: Vec<Vec<u32>> = Vec::with_capacity(k.saturating_sub(1));
    let mut below = vec![0u32; n + 1];
    // prev and below hold layer m - 1 for j >= from_prev
    let mut from_prev = 0usize;
    for m in 2..=k {
        let mut layer = Layer {
            pre,
            prev: &prev,
            below: &below,
            from_prev,
            outside: false,
            cur: vec![f64::INFINITY; n + 1],
            opt: vec![0u32; n + 1],
        };
        let from = if !reachable {
            m
        } else if m == k {
            n
        } else {
            let mut j = n;
            for _ in m..k {
                if j < from_prev {
                    break;
                }
                j = below[j] as usize;
            }
            j.max(from_prev).max(m)
        };
        if reachable && m == k {
            let lo = (m - 1).max(below[n] as usize);
            if lo < from_prev {
                return None;
            }
            let (best, arg) = layer.best_start(n, lo, n - 1);
            layer.cur[n] = best;
            layer.opt[n] = arg as u32;
        } else {
            layer.solve(from, n, m - 1, n - 1);
        }
        if layer.outside {
            return None;
        }
        let (cur, opt) = (layer.cur, layer.opt);
        prev = cur;
        below.copy_from_slice(&opt);
        opts.push(opt);
        from_prev = from;
    }
    let mut bounds = vec![0usize; k + 1];
    bounds[k] = n;
    let mut j = n;
    for m in (2..=k).rev() {
        let i = opts[m - 2][j] as usize;
        bounds[m - 1] = i;
        j = i;
    }
    Some(bounds)
}

/// Candidate scans of more than this many candidates are evaluated four at a time where the
/// processor has AVX (a shorter scan costs more to set up than it saves; 15 measured fastest of
/// 7, 15 and 31 on rows of fp16 weights); the others one at a time.
const VECTOR_SCAN_FROM: usize = 15;

/// The candidate scan four candidates at a time (AVX). Every candidate goes through the same
/// IEEE operations as in the scalar scan (differences, product, quotient, maximum with 0, sum;
/// each exactly rounded in either form), so its value is the same; each lane keeps its earliest
/// minimum, and the lanes' minima are merged taking the earliest position among equal values:
/// the scalar scan's earliest minimum.
#[cfg(target_arch = "x86_64")]
mod vector {
    use super::Prefix;
    use std::arch::x86_64::*;

    /// Whether the processor has AVX (std detects it once and keeps the answer).
    #[inline]
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx")
    }

    /// [`super::Layer::best_start`] over lo..=hi, lo <= hi.
    ///
    /// # Safety
    /// The processor must have AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn best_start(
        pre: &Prefix,
        prev: &[f64],
        j: usize,
        lo: usize,
        hi: usize,
    ) -> (f64, usize) {
        /// Lanes 0..r of a mask set, for r in 0..=3.
        const FIRST_LANES: [[i64; 4]; 4] =
            [[0, 0, 0, 0], [-1, 0, 0, 0], [-1, -1, 0, 0], [-1, -1, -1, 0]];
        let end = hi + 1;
        // every read below is within these four slices (the slicing panics otherwise)
        let (prev, pw, ps, pq) = (&prev[..end], &pre.w[..end], &pre.s[..end], &pre.q[..end]);
        let (wj, sj, qj) = (
            _mm256_set1_pd(pre.w[j]),
            _mm256_set1_pd(pre.s[j]),
            _mm256_set1_pd(pre.q[j]),
        );
        let zero = _mm256_setzero_pd();
        let (mut best, mut arg) = (_mm256_set1_pd(f64::INFINITY), _mm256_set1_pd(lo as f64));
        let mut at = _mm256_setr_pd(lo as f64, (lo + 1) as f64, (lo + 2) as f64, (lo + 3) as f64);
        // four candidates from i, the lanes of `live` only (the others neither read nor kept)
        let mut step = |i: usize, live: Option<__m256i>| {
            let load = |a: &[f64]| match live {
                None => _mm256_loadu_pd(a.as_ptr().add(i)),
                Some(mask) => _mm256_maskload_pd(a.as_ptr().add(i), mask),
            };
            let w = _mm256_sub_pd(wj, load(pw));
            let s = _mm256_sub_pd(sj, load(ps));
            let d = _mm256_sub_pd(qj, load(pq));
            // w = 0 (equal prefix sums; they never fall): the quotient is NaN or infinite, and
            // the maximum with 0 (its second operand when either is NaN) is 0, as in the
            // scalar scan's branch
            let cost = _mm256_max_pd(
                _mm256_sub_pd(d, _mm256_div_pd(_mm256_mul_pd(s, s), w)),
                zero,
            );
            let v = _mm256_add_pd(load(prev), cost);
            let mut better = _mm256_cmp_pd::<_CMP_LT_OQ>(v, best);
            if let Some(mask) = live {
                better = _mm256_and_pd(better, _mm256_castsi256_pd(mask));
            }
            best = _mm256_blendv_pd(best, v, better);
            arg = _mm256_blendv_pd(arg, at, better);
            at = _mm256_add_pd(at, _mm256_set1_pd(4.0));
        };
        let mut i = lo;
        while i + 4 <= end {
            step(i, None);
            i += 4;
        }
        if i < end {
            step(
                i,
                Some(_mm256_loadu_si256(FIRST_LANES[end - i].as_ptr().cast())),
            );
        }
        let (mut lane_best, mut lane_arg) = ([0.0f64; 4], [0.0f64; 4]);
        _mm256_storeu_pd(lane_best.as_mut_ptr(), best);
        _mm256_storeu_pd(lane_arg.as_mut_ptr(), arg);
        let mut out = (lane_best[0], lane_arg[0] as usize);
        for (&v, &at) in lane_best.iter().zip(&lane_arg).skip(1) {
            let at = at as usize;
            if v < out.0 || (v == out.0 && at < out.1) {
                out = (v, at);
            }
        }
        out
    }
}

/// One layer of the dynamic programme.
struct Layer<'a> {
    pre: &'a Prefix,
    prev: &'a [f64],
    below: &'a [u32],
    /// The previous layer's states below this one were not computed.
    from_prev: usize,
    /// A candidate scan would have read a state below `from_prev`.
    outside: bool,
    cur: Vec<f64>,
    opt: Vec<u32>,
}

impl Layer<'_> {
    /// The earliest i in lo..=hi minimising prev[i] + cost(i, j), and that value (lo.min(hi)
    /// and infinity when none is below infinity): four candidates at a time in long scans
    /// ([`vector`]), one at a time in the others; the same answer either way.
    #[inline]
    fn best_start(&self, j: usize, lo: usize, hi: usize) -> (f64, usize) {
        #[cfg(target_arch = "x86_64")]
        if hi >= lo + VECTOR_SCAN_FROM && vector::available() {
            // SAFETY: the processor has AVX (checked above)
            return unsafe { vector::best_start(self.pre, self.prev, j, lo, hi) };
        }
        self.scalar_best_start(j, lo, hi)
    }

    /// [`Layer::best_start`] one candidate at a time: the same sums as `Prefix::cost`, over
    /// slices (no bounds checks in the loop) and without a branch on the comparison.
    #[inline]
    fn scalar_best_start(&self, j: usize, lo: usize, hi: usize) -> (f64, usize) {
        let (mut best, mut arg) = (f64::INFINITY, lo.min(hi));
        if lo > hi {
            return (best, arg);
        }
        let pre = self.pre;
        let (wj, sj, qj) = (pre.w[j], pre.s[j], pre.q[j]);
        let range = lo..hi + 1;
        let candidates = self.prev[range.clone()]
            .iter()
            .zip(&pre.w[range.clone()])
            .zip(&pre.s[range.clone()])
            .zip(&pre.q[range]);
        for (at, (((&prev, &wi), &si), &qi)) in candidates.enumerate() {
            let w = wj - wi;
            let s = sj - si;
            let cost = if w <= 0.0 {
                0.0
            } else {
                (qj - qi - s * s / w).max(0.0)
            };
            let v = prev + cost;
            let better = v < best;
            best = if better { v } else { best };
            arg = if better { lo + at } else { arg };
        }
        (best, arg)
    }

    /// Fills j in jlo..=jhi, whose last cluster starts in ilo..=ihi.
    fn solve(&mut self, jlo: usize, jhi: usize, ilo: usize, ihi: usize) {
        if jlo > jhi || self.outside {
            return;
        }
        let mid = (jlo + jhi) / 2;
        let lo = ilo.max(self.below[mid] as usize);
        let hi = ihi.min(mid - 1);
        if lo < self.from_prev && lo <= hi {
            self.outside = true;
            return;
        }
        let (best, arg) = self.best_start(mid, lo, hi);
        self.cur[mid] = best;
        self.opt[mid] = arg as u32;
        if mid > jlo {
            self.solve(jlo, mid - 1, ilo, arg);
        }
        self.solve(mid + 1, jhi, arg, ihi);
    }
}

/// Ward agglomeration of sorted points: adjacent clusters only (an optimal 1-D clustering is
/// contiguous), the pair whose merge raises the sum of squares least first (ties: the leftmost).
fn ward_bounds(p: &Points, pre: &Prefix, k: usize) -> Vec<usize> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let n = p.x.len();
    // cluster c spans points start[c]..start[next[c]]; clusters are identified by their first point
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    let mut alive = vec![true; n];
    let merge_cost = |a: usize, b_end: usize, mid: usize| -> f64 {
        pre.cost(a, b_end) - pre.cost(a, mid) - pre.cost(mid, b_end)
    };
    let mut heap: BinaryHeap<Reverse<(u64, usize, usize)>> = BinaryHeap::with_capacity(n);
    // costs are >= 0: their f64 bit patterns order like the values
    let key = |c: f64| c.max(0.0).to_bits();
    for i in 0..n.saturating_sub(1) {
        heap.push(Reverse((key(merge_cost(i, i + 2, i + 1)), i, i + 2)));
    }
    let mut clusters = n;
    while clusters > k {
        let Some(Reverse((_, a, b_end))) = heap.pop() else {
            break;
        };
        let b = next[a];
        if !alive[a] || b >= n || !alive[b] || next[b] != b_end {
            continue; // stale entry
        }
        alive[b] = false;
        next[a] = b_end;
        if b_end < n {
            prev[b_end] = a;
        }
        clusters -= 1;
        if b_end < n {
            heap.push(Reverse((
                key(merge_cost(a, next[b_end], b_end)),
                a,
                next[b_end],
            )));
        }
        let left = prev[a];
        if left < n {
            heap.push(Reverse((key(merge_cost(left, next[a], a)), left, next[a])));
        }
    }
    let mut bounds: Vec<usize> = (0..n).filter(|&i| alive[i]).collect();
    bounds.push(n);
    bounds
}

/// An equal-weight split of sorted points into k contiguous non-empty clusters.
fn quantile_bounds(pre: &Prefix, n: usize, k: usize) -> Vec<usize> {
    let total = pre.w[n];
    let mut bounds = vec![0usize; k + 1];
    bounds[k] = n;
    for m in 1..k {
        let target = total * m as f64 / k as f64;
        let at = pre.w.partition_point(|&c| c < target);
        bounds[m] = at.clamp(bounds[m - 1] + 1, n - (k - m));
    }
    bounds
}

/// The exact clustering of `bins` equal-count runs of the sorted points (each run one point at
/// its weighted mean, with its weight), as boundaries of the points.
fn binned_bounds(p: &Points, pre: &Prefix, k: usize, bins: usize) -> Vec<usize> {
    let n = p.x.len();
    let edges: Vec<usize> = (0..=bins).map(|b| b * n / bins).collect();
    let coarse = Points {
        x: edges.windows(2).map(|e| pre.mean(p, e[0], e[1])).collect(),
        w: edges
            .windows(2)
            .map(|e| pre.w[e[1]] - pre.w[e[0]])
            .collect(),
    };
    let coarse_bounds = exact_bounds(&Prefix::new(&coarse), bins, k);
    coarse_bounds.iter().map(|&b| edges[b]).collect()
}

/// Lloyd's iteration on sorted points (contiguous clusters) from the boundaries `bounds`.
fn lloyd_refine(p: &Points, pre: &Prefix, mut bounds: Vec<usize>, max_iter: usize) -> Vec<usize> {
    let k = bounds.len() - 1;
    let mut centroids: Vec<f64> = (0..k)
        .map(|m| pre.mean(p, bounds[m], bounds[m + 1]))
        .collect();
    for _ in 0..max_iter {
        let mut next = bounds.clone();
        for m in 1..k {
            let mid = 0.5 * (centroids[m - 1] + centroids[m]);
            next[m] = p.x.partition_point(|&x| x <= mid).max(next[m - 1]);
        }
        if next == bounds {
            break;
        }
        bounds = next;
        for m in 0..k {
            if bounds[m] < bounds[m + 1] {
                centroids[m] = pre.mean(p, bounds[m], bounds[m + 1]);
            }
        }
    }
    bounds
}

/// Weighted 1-D k-means of `values` (any order, finite) with `weights` (> 0, finite; empty:
/// all 1): the k centroids in ascending order (when there are fewer distinct values than k,
/// the distinct values, the last repeated) and the weighted sum of squares.
pub fn kmeans_1d(
    values: &[f64],
    weights: &[f64],
    k: usize,
    method: Method,
    max_iter: usize,
) -> Result<(Vec<f64>, f64)> {
    if k == 0 {
        return invalid("a table needs at least one entry (k = 0)");
    }
    if values.is_empty() {
        return invalid("1-D k-means of an empty set of values");
    }
    if !weights.is_empty() && weights.len() != values.len() {
        return invalid(format!(
            "{} weights for {} values",
            weights.len(),
            values.len()
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(CoreError::NonFinite { row: 0, col: i });
    }
    if let Some(i) = weights.iter().position(|w| !(w.is_finite() && *w > 0.0)) {
        return invalid(format!(
            "weight {i} is {} (weights must be positive and finite)",
            weights[i]
        ));
    }
    let pairs = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, if weights.is_empty() { 1.0 } else { weights[i] }))
        .collect();
    let p = distinct(pairs);
    let pre = Prefix::new(&p);
    let (centroids, _) = solve(&p, &pre, k, method, max_iter);
    let mut cost = 0.0;
    for (i, &v) in values.iter().enumerate() {
        let c = centroids[nearest(&centroids, v)];
        cost += (if weights.is_empty() { 1.0 } else { weights[i] }) * (v - c) * (v - c);
    }
    Ok((centroids, cost))
}

/// Centroids (k, ascending, padded with the last) and boundaries of sorted distinct points.
fn solve(
    p: &Points,
    pre: &Prefix,
    k: usize,
    method: Method,
    max_iter: usize,
) -> (Vec<f64>, Vec<usize>) {
    let n = p.x.len();
    if n <= k {
        let mut c = p.x.clone();
        c.resize(k, p.x[n - 1]);
        return (c, (0..=n).collect());
    }
    let bounds = match method {
        Method::Exact => exact_bounds(pre, n, k),
        Method::Binned if n > BINS_PER_ENTRY * k => {
            let start = binned_bounds(p, pre, k, BINS_PER_ENTRY * k);
            lloyd_refine(p, pre, start, max_iter)
        }
        Method::Binned => exact_bounds(pre, n, k),
        Method::Ward => lloyd_refine(p, pre, ward_bounds(p, pre, k), max_iter),
        Method::Lloyd => lloyd_refine(p, pre, quantile_bounds(pre, n, k), max_iter),
    };
    let mut c: Vec<f64> = Vec::with_capacity(k);
    for m in 0..k {
        if bounds[m] < bounds[m + 1] {
            c.push(pre.mean(p, bounds[m], bounds[m + 1]));
        }
    }
    let last = *c.last().unwrap();
    c.resize(k, last);
    (c, bounds)
}

/// Index of the entry of the ascending table `lut` nearest to `v` (ties: the lower entry).
fn nearest<T: Copy + Into<f64>>(lut: &[T], v: f64) -> usize {
    let (mut lo, mut hi) = (0usize, lut.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let boundary = 0.5 * (lut[mid].into() + lut[mid + 1].into());
        if v <= boundary {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// The midpoints of a small ascending table, for [`nearest`] without branches: the entry
/// nearest to v is the number of midpoints below v (they are ascending, so the midpoints below
/// v are the first ones, and the binary search stops at the first midpoint not below v).
struct Midpoints<'a> {
    lut: &'a [f32],
    /// 0.5 (lut[j] + lut[j + 1]), j < len - 1, as [`nearest`] computes them; padded
    /// with infinity to a multiple of 8 (empty: the table is searched).
    at: Vec<f64>,
}

impl<'a> Midpoints<'a> {
    /// Tables of up to this many entries are counted; larger ones searched.
    const COUNTED: usize = 32;

    fn new(lut: &'a [f32]) -> Midpoints<'a> {
        let mut at: Vec<f64> = Vec::new();
        if lut.len() <= Self::COUNTED {
            at = lut
                .windows(2)
                .map(|p| 0.5 * (f64::from(p[0]) + f64::from(p[1])))
                .collect();
            at.resize(at.len().div_ceil(8) * 8, f64::INFINITY);
        }
        Midpoints { lut, at }
    }

    #[inline]
    fn nearest(&self, v: f64) -> usize {
        if self.at.is_empty() {
            return nearest(self.lut, v);
        }
        self.at
            .chunks_exact(8)
            .map(|c| c.iter().map(|&m| usize::from(m < v)).sum::<usize>())
            .sum()
    }
}

fn check(
    data: &[f32],
    rows: usize,
    cols: usize,
    col_weights: &[f64],
    row_weights: &[f64],
    spec: &PaletteSpec,
) -> Result<()> {
    if !BITS.contains(&spec.bits) {
        return invalid(format!("bits {} is not one of 1..8", spec.bits));
    }
    if rows == 0 || cols == 0 || data.len() != rows * cols {
        return invalid(format!(
            "matrix has {} values, expected rows x cols = {rows} x {cols} (both >= 1)",
            data.len()
        ));
    }
    if spec.group_rows == 0 || !rows.is_multiple_of(spec.group_rows) {
        return invalid(format!(
            "group size {} does not divide the {rows} rows",
            spec.group_rows
        ));
    }
    if !(0.0..=0.5).contains(&spec.outlier_fraction) {
        return invalid(format!(
            "outlier fraction {} is outside [0, 0.5]",
            spec.outlier_fraction
        ));
    }
    for (what, w, len) in [("column", col_weights, cols), ("row", row_weights, rows)] {
        if !w.is_empty() && w.len() != len {
            return invalid(format!("{} {what} weights for {len} {what}s", w.len()));
        }
        if let Some(i) = w.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return invalid(format!(
                "{what} weight {i} is {} (weights must be positive and finite)",
                w[i]
            ));
        }
    }
    if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
        return Err(CoreError::NonFinite {
            row: pos / cols,
            col: pos % cols,
        });
    }
    Ok(())
}

struct Group {
    lut: Vec<f32>,
    scales: Vec<f32>,
    indices: Vec<u8>,
    outliers: Vec<u64>,
    wsse: f64,
}

/// Palettizes the row-major `rows x cols` matrix `data`. `col_weights` / `row_weights`: the
/// weight of every column / row in the objective (empty: all 1).
pub fn palettize(
    data: &[f32],
    rows: usize,
    cols: usize,
    col_weights: &[f64],
    row_weights: &[f64],
    spec: &PaletteSpec,
) -> Result<Palette> {
    check(data, rows, cols, col_weights, row_weights, spec)?;
    let g = spec.group_rows;
    let groups: Vec<Group> = (0..rows / g)
        .into_par_iter()
        .map(|gi| palettize_group(data, cols, gi * g, g, col_weights, row_weights, spec))
        .collect();
    let mut out = Palette {
        luts: Vec::with_capacity(groups.len() << spec.bits),
        scales: Vec::new(),
        indices: Vec::with_capacity(rows * cols),
        outliers: Vec::new(),
        wsse: Vec::with_capacity(groups.len()),
    };
    for grp in groups {
        out.luts.extend(grp.lut);
        out.scales.extend(grp.scales);
        out.indices.extend(grp.indices);
        out.outliers.extend(grp.outliers);
        out.wsse.push(grp.wsse);
    }
    Ok(out)
}

fn palettize_group(
    data: &[f32],
    cols: usize,
    row0: usize,
    g: usize,
    col_weights: &[f64],
    row_weights: &[f64],
    spec: &PaletteSpec,
) -> Group {
    let k = 1usize << spec.bits;
    let values = &data[row0 * cols..(row0 + g) * cols];
    let scales: Vec<f32> = if spec.row_scale {
        values
            .chunks(cols)
            .map(|r| {
                let m = r.iter().fold(0f32, |a, v| a.max(v.abs()));
                let s = spec.lut_dtype.round(m as f64);
                if s > 0.0 && s.is_finite() {
                    s
                } else {
                    1.0
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let scale = |i: usize| -> f64 {
        if scales.is_empty() {
            1.0
        } else {
            scales[i / cols] as f64
        }
    };
    let weight = |i: usize| -> f64 {
        let c = if col_weights.is_empty() {
            1.0
        } else {
            col_weights[i % cols]
        };
        let r = if row_weights.is_empty() {
            1.0
        } else {
            row_weights[row0 + i / cols]
        };
        c * r
    };
    let n = values.len();
    let n_out = ((spec.outlier_fraction * n as f64).round() as usize).min(n - 1);
    let mut is_outlier = vec![false; n];
    let mut outliers: Vec<u64> = Vec::new();
    if n_out > 0 {
        let score = |i: usize| weight(i) * (values[i] as f64).powi(2);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
        for &i in &order[..n_out] {
            is_outlier[i] = true;
        }
        outliers = (0..n)
            .filter(|&i| is_outlier[i])
            .map(|i| (row0 * cols + i) as u64)
            .collect();
    }
    // in the scaled space, the weight of a value is w * s^2 (its error is scaled by s)
    let pairs: Vec<(f64, f64)> = (0..n)
        .filter(|&i| !is_outlier[i])
        .map(|i| {
            let s = scale(i);
            (values[i] as f64 / s, weight(i) * s * s)
        })
        .collect();
    let p = distinct(pairs);
    let pre = Prefix::new(&p);
    let (centroids, _) = solve(&p, &pre, k, spec.method, spec.max_iter);
    let mut lut: Vec<f32> = centroids.iter().map(|&c| spec.lut_dtype.round(c)).collect();
    lut.sort_by(|a, b| a.total_cmp(b)); // rounding keeps the order; this only guards it
    let mut indices = vec![0u8; n];
    let mut wsse = 0.0;
    let midpoints = Midpoints::new(&lut);
    for i in 0..n {
        let s = scale(i);
        let idx = midpoints.nearest(values[i] as f64 / s);
        indices[i] = idx as u8;
        if !is_outlier[i] {
            let deq = (lut[idx] * s as f32) as f64;
            wsse += weight(i) * (values[i] as f64 - deq).powi(2);
        }
    }
    Group {
        lut,
        scales,
        indices,
        outliers,
        wsse,
    }
}

#[cfg(test)]
mod tests;
