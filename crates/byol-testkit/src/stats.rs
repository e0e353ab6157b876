//! Statistical tests for random draws, with the chance of a false failure stated by the caller.

/// The two-sample Kolmogorov-Smirnov statistic: the largest distance between the empirical
/// distribution functions of `a` and `b`.
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    let sorted = |s: &[f64]| {
        let mut s = s.to_vec();
        s.sort_by(f64::total_cmp);
        s
    };
    let (a, b) = (sorted(a), sorted(b));
    // Walk both sorted samples past each distinct value; the distance can only peak there.
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < a.len() && j < b.len() {
        let value = a[i].min(b[j]);
        while i < a.len() && a[i] <= value {
            i += 1;
        }
        while j < b.len() && b[j] <= value {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

/// The statistic above which two samples of sizes `n` and `m` of one continuous distribution
/// fall with probability at most `alpha` (the asymptotic critical value
/// `sqrt(-ln(alpha / 2) / 2) * sqrt((n + m) / (n m))`, accurate for a few hundred draws or more).
pub fn ks_critical(n: usize, m: usize, alpha: f64) -> f64 {
    let (n, m) = (n as f64, m as f64);
    (-(alpha / 2.0).ln() / 2.0).sqrt() * ((n + m) / (n * m)).sqrt()
}

/// Asserts that `hits` of `n` trials is within `sigmas` binomial standard deviations of `n p`
/// (5 sigmas: a false failure about once in 1.7 million checks in the normal approximation; the
/// binomial's skewed tail makes it about once in a million for p = 0.01 at 20,000 trials).
pub fn assert_frequency(what: &str, hits: usize, n: usize, p: f64, sigmas: f64) {
    let expected = n as f64 * p;
    let sigma = (expected * (1.0 - p)).sqrt();
    assert!(
        (hits as f64 - expected).abs() <= sigmas * sigma,
        "{what}: {hits} of {n}, expected {expected:.1} +- {sigmas} x {sigma:.1} (p = {p})"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statistic_is_the_largest_gap_of_the_distribution_functions() {
        assert_eq!(ks_statistic(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
        assert_eq!(ks_statistic(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
        // After 1 and 2: a at 1/2 and 1, b at 0 and 1/2.
        assert_eq!(ks_statistic(&[1.0, 2.0], &[2.0, 3.0]), 0.5);
        // Ties across the samples count together.
        assert_eq!(ks_statistic(&[1.0, 1.0, 2.0, 2.0], &[1.0, 2.0]), 0.0);
    }

    #[test]
    fn the_critical_value_is_the_textbook_one() {
        // alpha 0.05: c = 1.358; n = m = 100: sqrt(2 / 100).
        assert!((ks_critical(100, 100, 0.05) - 1.358 * 0.02f64.sqrt()).abs() < 1e-3);
    }
}
