//! How evenly new connections spread over a Service's backends: Pearson's χ²
//! of the per-backend counts against a uniform split, its p-value, and the
//! largest and smallest backend's share relative to the mean.

/// The spread of one Service's connections over its backends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Pearson's χ² against a uniform split (every backend `total / n`).
    pub chi2: f64,
    /// Degrees of freedom: backends - 1.
    pub df: usize,
    /// The chance of a χ² at least this large if the choice were uniform.
    pub p: f64,
    /// The busiest and the idlest backend's count ÷ the mean count.
    pub share_max: f64,
    pub share_min: f64,
}

impl Spread {
    /// The spread of `counts` (one per backend); `None` with fewer than two
    /// backends or no connection at all.
    pub fn of(counts: &[u64]) -> Option<Spread> {
        let total: u64 = counts.iter().sum();
        if counts.len() < 2 || total == 0 {
            return None;
        }
        let mean = total as f64 / counts.len() as f64;
        let chi2 = chi2_uniform(counts);
        let df = counts.len() - 1;
        let max = counts.iter().copied().max().unwrap_or(0);
        let min = counts.iter().copied().min().unwrap_or(0);
        Some(Spread {
            chi2,
            df,
            p: chi2_p(chi2, df),
            share_max: max as f64 / mean,
            share_min: min as f64 / mean,
        })
    }
}

/// Pearson's χ² of `counts` against a uniform split: Σ (O - E)² / E with
/// E = total / n. NaN when there is nothing to compare.
pub fn chi2_uniform(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if counts.is_empty() || total == 0 {
        return f64::NAN;
    }
    let e = total as f64 / counts.len() as f64;
    counts.iter().map(|&o| (o as f64 - e).powi(2) / e).sum()
}

/// The upper tail P(X ≥ `chi2`) of the χ² distribution with `df` degrees of
/// freedom. Exact for df = 1 (`erfc(√(χ²/2))`) and df = 2 (`exp(-χ²/2)`);
/// otherwise the Wilson–Hilferty approximation ((χ²/df)^⅓ is nearly normal
/// with mean 1 - 2/(9 df) and variance 2/(9 df)), good to a few parts in a
/// thousand in the upper tail at df ≥ 3 and better as df grows (χ² = 0 is
/// p = 1 exactly).
pub fn chi2_p(chi2: f64, df: usize) -> f64 {
    if df == 0 || !chi2.is_finite() || chi2 < 0.0 {
        return f64::NAN;
    }
    if chi2 == 0.0 {
        return 1.0;
    }
    match df {
        1 => erfc((chi2 / 2.0).sqrt()),
        2 => (-chi2 / 2.0).exp(),
        _ => {
            let k = df as f64;
            let v = 2.0 / (9.0 * k);
            let z = ((chi2 / k).cbrt() - (1.0 - v)) / v.sqrt();
            0.5 * erfc(z / std::f64::consts::SQRT_2)
        }
    }
}

/// The complementary error function, with a fractional error below 1.2e-7
/// everywhere (Numerical Recipes' `erfcc`, a Chebyshev fit).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn erfc_matches_tables() {
        assert!(close(erfc(0.0), 1.0, 1e-7));
        assert!(close(erfc(0.5), 0.479_500_122, 1e-7));
        assert!(close(erfc(1.0), 0.157_299_207, 1e-7));
        assert!(close(erfc(2.0), 0.004_677_735, 1e-8));
        assert!(close(erfc(-1.0), 1.842_700_793, 1e-7));
        assert!(close(erfc(4.0), 1.541_725_8e-8, 1e-13));
    }

    #[test]
    fn p_values_match_tables() {
        // Exact at df = 1 and 2.
        assert!(close(chi2_p(3.841, 1), 0.05, 2e-4));
        assert!(close(chi2_p(13.8155, 2), 0.001, 1e-6));
        assert!(close(chi2_p(5.991, 2), 0.05, 1e-4));
        // Wilson–Hilferty: the 5% and 1% points of χ² tables.
        assert!(close(chi2_p(18.307, 10), 0.05, 1e-3));
        assert!(close(chi2_p(23.209, 10), 0.01, 5e-4));
        assert!(close(chi2_p(123.225, 99), 0.05, 1e-3));
        assert!(close(chi2_p(7.815, 3), 0.05, 2e-3));
        // The median is near df, and the tails are 0 and 1.
        assert!(close(chi2_p(4095.0, 4095), 0.5, 0.01));
        assert!(chi2_p(1e6, 4095) < 1e-12);
        assert!(close(chi2_p(0.0, 2), 1.0, 1e-12));
        assert!(chi2_p(0.0, 50) > 0.999_999);
        assert!(chi2_p(1.0, 0).is_nan());
        assert!(chi2_p(f64::NAN, 3).is_nan());
    }

    #[test]
    fn chi2_and_shares_of_counts() {
        assert_eq!(chi2_uniform(&[10, 10, 10]), 0.0);
        // E = 10: (100 + 0 + 100) / 10.
        assert!(close(chi2_uniform(&[20, 10, 0]), 20.0, 1e-12));
        assert!(chi2_uniform(&[0, 0]).is_nan());
        assert!(chi2_uniform(&[]).is_nan());

        let s = Spread::of(&[20, 10, 0]).unwrap();
        assert_eq!(s.df, 2);
        assert!(close(s.p, (-10.0f64).exp(), 1e-12));
        assert!(close(s.share_max, 2.0, 1e-12));
        assert_eq!(s.share_min, 0.0);
        let even = Spread::of(&[7, 7, 7, 7]).unwrap();
        assert_eq!((even.chi2, even.share_max, even.share_min), (0.0, 1.0, 1.0));
        assert!(close(even.p, 1.0, 1e-9));
        assert!(Spread::of(&[5]).is_none());
        assert!(Spread::of(&[0, 0, 0]).is_none());
    }
}
