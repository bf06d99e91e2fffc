//! Freivalds' check of a matrix product: is C = A·B? Each round multiplies by a random ±1 vector,
//! O(n^2) instead of the O(n^3) of redoing the product, and catches a wrong C with probability at
//! least 1/2 per round (a single wrong element is caught in every round).
//!
//! f32 results are not exact, so rows are compared in f64 up to an allowance:
//! `|(A·(B·r))_i - (C·r)_i| <= SLACK·eps_f32·(|A|·|B|·|r|)_i`. The rounding error of a correct f32
//! product is far below that (its row sums with random signs shrink like `1/sqrt(n·k)` relative to
//! the bound), so correct results pass; an error in one element is caught when it exceeds the
//! allowance of its row, about `SLACK·eps·n·k·mean|a|·mean|b|`.

use crate::kernels::random_f32s;

/// Allowance in units of f32 epsilon times the row's absolute bound.
pub const SLACK: f64 = 4.0;

/// A round found C wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "C is not A·B: round {round}, row {row}: A·(B·r) = {expected}, C·r = {got}, allowed error {allowed:e}"
)]
pub struct Mismatch {
    /// Which round (from 0).
    pub round: u32,
    /// Which row of C.
    pub row: usize,
    /// Row `row` of A·(B·r).
    pub expected: f64,
    /// Row `row` of C·r.
    pub got: f64,
    /// The rounding allowance for that row.
    pub allowed: f64,
}

/// Checks C (m x n) = A (m x k) · B (k x n), all row-major, with `rounds` random vectors drawn from
/// `seed`. Panics if a slice's length does not match its dimensions.
pub fn check(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    c: &[f32],
    rounds: u32,
    seed: u32,
) -> Result<(), Mismatch> {
    assert_eq!(a.len(), m * k, "A is not m x k");
    assert_eq!(b.len(), k * n, "B is not k x n");
    assert_eq!(c.len(), m * n, "C is not m x n");
    let tolerance = SLACK * f64::from(f32::EPSILON);
    for round in 0..rounds {
        let r: Vec<f64> = random_f32s(n, seed.wrapping_add(round.wrapping_mul(0x9E37_79B9)))
            .into_iter()
            .map(|x| if x < 0.0 { -1.0 } else { 1.0 })
            .collect();
        // B·r and |B|·|r| (= |B|·1), each of length k.
        let mut br = vec![0.0f64; k];
        let mut babs = vec![0.0f64; k];
        for l in 0..k {
            let row = &b[l * n..(l + 1) * n];
            br[l] = row.iter().zip(&r).map(|(&x, &s)| f64::from(x) * s).sum();
            babs[l] = row.iter().map(|&x| f64::from(x).abs()).sum();
        }
        for i in 0..m {
            let arow = &a[i * k..(i + 1) * k];
            let expected: f64 = arow.iter().zip(&br).map(|(&x, &y)| f64::from(x) * y).sum();
            let bound: f64 = arow
                .iter()
                .zip(&babs)
                .map(|(&x, &y)| f64::from(x).abs() * y)
                .sum();
            let got: f64 = c[i * n..(i + 1) * n]
                .iter()
                .zip(&r)
                .map(|(&x, &s)| f64::from(x) * s)
                .sum();
            let allowed = tolerance * bound + f64::from(f32::MIN_POSITIVE);
            // A NaN or infinite C must fail too (a NaN compares false with everything).
            if !got.is_finite() || (expected - got).abs() > allowed {
                return Err(Mismatch {
                    round,
                    row: i,
                    expected,
                    got,
                    allowed,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::sgemm_reference;

    #[test]
    fn a_correct_product_passes_and_one_wrong_element_fails() {
        let (m, n, k) = (48, 40, 56);
        let a = random_f32s(m * k, 1);
        let b = random_f32s(k * n, 2);
        let mut c = sgemm_reference(m, n, k, &a, &b);
        check((m, n, k), &a, &b, &c, 8, 7).expect("correct product");
        c[17 * n + 3] += 0.01;
        let err = check((m, n, k), &a, &b, &c, 8, 7).expect_err("tampered");
        assert_eq!((err.round, err.row), (0, 17));
    }

    #[test]
    fn a_nan_result_is_caught() {
        let (m, n, k) = (16, 16, 16);
        let a = random_f32s(m * k, 5);
        let b = random_f32s(k * n, 6);
        let mut c = sgemm_reference(m, n, k, &a, &b);
        c[40] = f32::NAN;
        assert!(check((m, n, k), &a, &b, &c, 1, 3).is_err());
    }

    #[test]
    fn swapped_rows_are_caught() {
        let (m, n, k) = (16, 16, 16);
        let a = random_f32s(m * k, 3);
        let b = random_f32s(k * n, 4);
        let mut c = sgemm_reference(m, n, k, &a, &b);
        for j in 0..n {
            c.swap(j, n + j);
        }
        assert!(check((m, n, k), &a, &b, &c, 4, 9).is_err());
    }
}
