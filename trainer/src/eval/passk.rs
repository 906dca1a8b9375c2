//! pass@k with the unbiased estimator of Chen et al. (2021): with `n` samples of which `c`
//! pass, pass@k = 1 − C(n−c, k) / C(n, k).

/// The probability that at least one of `k` samples drawn from `n` (of which `correct` pass)
/// passes; `None` when `k` > `n`.
pub fn pass_at_k(n: usize, correct: usize, k: usize) -> Option<f64> {
    if k == 0 || k > n || correct > n {
        return None;
    }
    if n - correct < k {
        return Some(1.0);
    }
    // C(n−c, k)/C(n, k) = Π_{i=n−c+1}^{n} (1 − k/i), stable for large n.
    let fail: f64 = ((n - correct + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product();
    Some(1.0 - fail)
}

/// The mean of pass@k over problems, each `(samples, correct)`; `None` when a problem has
/// fewer than `k` samples or there are none.
pub fn mean_pass_at_k(problems: &[(usize, usize)], k: usize) -> Option<f64> {
    if problems.is_empty() {
        return None;
    }
    let mut total = 0.0;
    for &(n, c) in problems {
        total += pass_at_k(n, c, k)?;
    }
    Some(total / problems.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn matches_hand_computed_values() {
        // n=1: pass@1 is the fraction correct.
        assert_eq!(pass_at_k(1, 1, 1), Some(1.0));
        assert_eq!(pass_at_k(1, 0, 1), Some(0.0));
        // n=20, c=1: pass@1 = 1/20; pass@10 = 1 − C(19,10)/C(20,10) = 1 − 10/20 = 0.5.
        assert!(close(pass_at_k(20, 1, 1).expect("k <= n"), 0.05));
        assert!(close(pass_at_k(20, 1, 10).expect("k <= n"), 0.5));
        // n=5, c=2, k=2: 1 − C(3,2)/C(5,2) = 1 − 3/10.
        assert!(close(pass_at_k(5, 2, 2).expect("k <= n"), 0.7));
        // n=20, c=3, k=10: 1 − C(17,10)/C(20,10) = 1 − 19448/184756.
        assert!(close(
            pass_at_k(20, 3, 10).expect("k <= n"),
            1.0 - 19448.0 / 184756.0
        ));
        // Fewer failures than k: certain.
        assert_eq!(pass_at_k(20, 15, 10), Some(1.0));
        assert_eq!(pass_at_k(5, 0, 10), None);
        assert!(close(
            mean_pass_at_k(&[(1, 1), (1, 0), (1, 1), (1, 1)], 1).expect("n >= k"),
            0.75
        ));
    }
}
