//! Elementwise math that vectorizes: `exp` from a degree-6 polynomial after range reduction
//! (relative error below 2 ulp over the clamped range), and the GELU(tanh) built on it. libm's
//! `expf`/`tanhf` are scalar calls and dominated the GELU and softmax of a step.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `e^x` for `x` clamped to `[-87.3, 88]` (results from about 1.2e-38 to 1.7e38, never inf).
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    // Taylor coefficients 1/k! in Horner form; |r| <= ln2/2 keeps the truncation below 1e-7.
    let mut p: f32 = 1.0 / 720.0;
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, written as `x / (1 + e^(−2u))`.
#[inline(always)]
pub(super) fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * x * 0.044_715f32.mul_add(x * x, 1.0);
    x / (1.0 + exp(-2.0 * u))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), (x as f64).exp());
            let rel = ((got as f64 - want) / want).abs();
            assert!(rel < 2.5e-7, "exp({x}) = {got}, want {want} (rel {rel:e})");
            x += 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn gelu_matches_the_tanh_formula() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let xd = x as f64;
            let want = 0.5 * xd * (1.0 + (0.797_884_560_802_865_4 * (xd + 0.044_715 * xd * xd * xd)).tanh());
            let got = gelu_tanh(x) as f64;
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-3), "gelu({x}) = {got}, want {want}");
            x += 0.01;
        }
    }
}
