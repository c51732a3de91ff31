//! The statistics the on-sale report rests on: Kendall's τ-b (how closely admission
//! order follows lottery rank or join order), a χ² test of independence (whether joining
//! early in the pre-queue bought a better lottery place) and a Kolmogorov–Smirnov test
//! of uniformity (whether the lottery values look like a fair draw).
//!
//! Written here rather than taken from a statistics crate: τ-b needs Knight's
//! O(n log n) algorithm for a million pairs (the crates at hand are O(n²) or pull in a
//! linear-algebra stack), and the two p-values are a few lines each. Each is checked
//! against a brute-force or textbook value in the tests below.

/// Kendall's τ-b of paired observations, in O(n log n) (Knight's algorithm: sort by the
/// first value, then count the inversions a merge sort of the second one undoes). `None`
/// below two pairs or when either side is constant.
pub fn kendall_tau_b(pairs: &[(f64, f64)]) -> Option<f64> {
    let n = pairs.len();
    if n < 2 {
        return None;
    }
    let mut v = pairs.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let pairs_in = |t: usize| (t as u128) * (t as u128).saturating_sub(1) / 2;
    let n0 = pairs_in(n);
    // Ties in the first value (n1), and in both (n3).
    let (mut n1, mut n3) = (0u128, 0u128);
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && v[j].0 == v[i].0 {
            j += 1;
        }
        n1 += pairs_in(j - i);
        let mut k = i;
        while k < j {
            let mut l = k + 1;
            while l < j && v[l].1 == v[k].1 {
                l += 1;
            }
            n3 += pairs_in(l - k);
            k = l;
        }
        i = j;
    }
    let mut ys: Vec<f64> = v.iter().map(|p| p.1).collect();
    let mut scratch = vec![0.0; n];
    let swaps = inversions(&mut ys, &mut scratch);
    // `ys` is sorted now: ties in the second value (n2).
    let mut n2 = 0u128;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && ys[j] == ys[i] {
            j += 1;
        }
        n2 += pairs_in(j - i);
        i = j;
    }
    let (x_pairs, y_pairs) = (n0 - n1, n0 - n2);
    if x_pairs == 0 || y_pairs == 0 {
        return None;
    }
    let concordant_minus_discordant = (n0 + n3) as f64 - n1 as f64 - n2 as f64 - 2.0 * swaps as f64;
    Some(concordant_minus_discordant / ((x_pairs as f64) * (y_pairs as f64)).sqrt())
}

/// Sorts `v` and returns how many pairs were strictly out of order.
fn inversions(v: &mut [f64], scratch: &mut [f64]) -> u128 {
    let n = v.len();
    if n < 2 {
        return 0;
    }
    let mid = n / 2;
    let (left, right) = v.split_at_mut(mid);
    let mut count = inversions(left, &mut scratch[..mid]) + inversions(right, &mut scratch[mid..]);
    let (mut i, mut j, mut k) = (0, 0, 0);
    while i < left.len() && j < right.len() {
        if right[j] < left[i] {
            // Every element still in `left` is greater than this one.
            count += (left.len() - i) as u128;
            scratch[k] = right[j];
            j += 1;
        } else {
            scratch[k] = left[i];
            i += 1;
        }
        k += 1;
    }
    while i < left.len() {
        scratch[k] = left[i];
        i += 1;
        k += 1;
    }
    while j < right.len() {
        scratch[k] = right[j];
        j += 1;
        k += 1;
    }
    v.copy_from_slice(&scratch[..n]);
    count
}

/// Standard normal upper tail, P(Z > z) (Abramowitz and Stegun 7.1.26 on erfc; absolute
/// error below 1.5e-7).
pub fn normal_upper_tail(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-x * x).exp();
    if z >= 0.0 { erfc / 2.0 } else { 1.0 - erfc / 2.0 }
}

/// P(χ²_k > x), by the Wilson–Hilferty cube-root approximation (good to about 1e-3 for
/// the 81 degrees of freedom used here).
pub fn chi_square_p(x: f64, k: f64) -> f64 {
    if k <= 0.0 {
        return 1.0;
    }
    let h = 2.0 / (9.0 * k);
    let z = ((x / k).cbrt() - (1.0 - h)) / h.sqrt();
    normal_upper_tail(z)
}

/// χ² test of independence of a table of counts: the statistic and its p-value.
pub fn chi_square_independence(table: &[Vec<u64>]) -> (f64, f64) {
    let rows = table.len();
    let cols = table.first().map_or(0, Vec::len);
    let total: u64 = table.iter().flatten().sum();
    if rows < 2 || cols < 2 || total == 0 {
        return (0.0, 1.0);
    }
    let row_sums: Vec<f64> = table.iter().map(|r| r.iter().sum::<u64>() as f64).collect();
    let col_sums: Vec<f64> =
        (0..cols).map(|c| table.iter().map(|r| r[c]).sum::<u64>() as f64).collect();
    let mut stat = 0.0;
    for (r, row) in table.iter().enumerate() {
        for (c, &o) in row.iter().enumerate() {
            let e = row_sums[r] * col_sums[c] / total as f64;
            if e > 0.0 {
                stat += (o as f64 - e).powi(2) / e;
            }
        }
    }
    let df = ((rows - 1) * (cols - 1)) as f64;
    (stat, chi_square_p(stat, df))
}

/// Kolmogorov–Smirnov test of `values` (each in [0, 1)) against the uniform distribution:
/// the statistic D and its asymptotic p-value.
pub fn ks_uniform(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (0.0, 1.0);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let nf = n as f64;
    let d = v
        .iter()
        .enumerate()
        .map(|(i, &x)| ((i as f64 + 1.0) / nf - x).max(x - i as f64 / nf))
        .fold(0.0, f64::max);
    let sqrt_n = nf.sqrt();
    let lambda = (sqrt_n + 0.12 + 0.11 / sqrt_n) * d;
    if lambda < 0.2 {
        // The series does not converge in reach there; its value is 1 to 15 digits.
        return (d, 1.0);
    }
    let mut p = 0.0;
    for k in 1..=100 {
        let term = (-2.0 * (k as f64).powi(2) * lambda * lambda).exp();
        p += if k % 2 == 1 { 2.0 * term } else { -2.0 * term };
        if term < 1e-12 {
            break;
        }
    }
    (d, p.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_tau_b(p: &[(f64, f64)]) -> f64 {
        let (mut c, mut d, mut tx, mut ty) = (0i64, 0i64, 0i64, 0i64);
        for i in 0..p.len() {
            for j in i + 1..p.len() {
                let dx = p[i].0.total_cmp(&p[j].0) as i64;
                let dy = p[i].1.total_cmp(&p[j].1) as i64;
                match (dx, dy) {
                    (0, 0) => {}
                    (0, _) => tx += 1,
                    (_, 0) => ty += 1,
                    _ if dx == dy => c += 1,
                    _ => d += 1,
                }
            }
        }
        (c - d) as f64 / (((c + d + tx) as f64) * ((c + d + ty) as f64)).sqrt()
    }

    /// A small deterministic generator (no dependency for a test's noise).
    fn lcg(seed: &mut u64) -> u64 {
        *seed =
            seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        *seed >> 33
    }

    #[test]
    fn tau_b_matches_the_pairwise_definition_with_and_without_ties() {
        let mut seed = 7;
        for (n, spread) in [(2, 2), (10, 3), (200, 5), (500, 1000), (300, 40)] {
            let pairs: Vec<(f64, f64)> = (0..n)
                .map(|_| ((lcg(&mut seed) % spread) as f64, (lcg(&mut seed) % spread) as f64))
                .collect();
            let fast = kendall_tau_b(&pairs);
            let slow = brute_tau_b(&pairs);
            match fast {
                Some(f) => assert!((f - slow).abs() < 1e-9, "n={n}: {f} vs {slow}"),
                None => assert!(slow.is_nan(), "n={n}: None vs {slow}"),
            }
        }
        let same: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, i as f64 * 2.0)).collect();
        assert_eq!(kendall_tau_b(&same), Some(1.0));
        let reversed: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, -(i as f64))).collect();
        assert_eq!(kendall_tau_b(&reversed), Some(-1.0));
        // One swapped neighbour pair in 1000 costs 2 / 499,500 of τ.
        let mut one_swap = same.clone();
        one_swap.swap(10, 11);
        let t = kendall_tau_b(&one_swap.iter().map(|&(x, _)| (x, 0.0)).collect::<Vec<_>>());
        assert_eq!(t, None, "a constant side has no τ");
        let swapped: Vec<(f64, f64)> =
            same.iter().enumerate().map(|(i, &(x, _))| (x, one_swap[i].1)).collect();
        let t = kendall_tau_b(&swapped).unwrap();
        assert!((t - (1.0 - 2.0 / 499_500.0)).abs() < 1e-12, "{t}");
    }

    #[test]
    fn the_p_values_match_textbook_values() {
        // P(Z > 1.96) = 0.025; P(χ²_81 > 103.0) ≈ 0.05 (tables: 103.01).
        assert!((normal_upper_tail(1.96) - 0.025).abs() < 1e-4);
        assert!((normal_upper_tail(-1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((chi_square_p(103.01, 81.0) - 0.05).abs() < 2e-3);
        assert!((chi_square_p(81.0, 81.0) - 0.48).abs() < 0.01);
        // Independent counts pass, a diagonal table fails.
        let flat = vec![vec![100u64; 10]; 10];
        assert!(chi_square_independence(&flat).1 > 0.99);
        let diagonal: Vec<Vec<u64>> =
            (0..10).map(|r| (0..10).map(|c| if r == c { 100 } else { 1 }).collect()).collect();
        assert!(chi_square_independence(&diagonal).1 < 1e-6);
        // Evenly spread values are uniform; values crowded low are not.
        let even: Vec<f64> = (0..10_000).map(|i| (i as f64 + 0.5) / 10_000.0).collect();
        assert!(ks_uniform(&even).1 > 0.99);
        let low: Vec<f64> = even.iter().map(|x| x * x).collect();
        assert!(ks_uniform(&low).1 < 1e-6);
        // λ = 1.36 is the 5 % point of the Kolmogorov distribution.
        let n = 10_000.0f64;
        let d = 1.36 / (n.sqrt() + 0.12 + 0.11 / n.sqrt());
        let shifted: Vec<f64> = even.iter().map(|x| (x + d).min(0.999_999)).collect();
        assert!((ks_uniform(&shifted).1 - 0.05).abs() < 0.005, "{}", ks_uniform(&shifted).1);
    }
}
