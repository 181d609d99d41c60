//! The activation a fused layer applies to its output (the "epilogue" of a Conv / Gemm /
//! MatMul): `y = act(op(...) + bias + residual)`.
//!
//! A fusion pass records it on the layer with two internal attributes, [`ACTIVATION_ATTR`]
//! (the variant's name, e.g. `"Clip"`) and [`ACTIVATION_PARAMS_ATTR`] (its float parameters in
//! the order the variant lists them; absent or empty for parameterless ones). Inference rules
//! and kernels read it back with [`Activation::from_attrs`], which refuses unknown names and
//! wrong parameter counts with a message.
//!
//! The formulas are those of the ONNX ops the activations replace, written exactly as kiln's
//! element-wise kernels compute them, so a fused layer returns the same values as the unfused
//! pair (up to the order of the additions before the activation).

use crate::{Attribute, Attributes};

/// Internal attribute: the fused activation's name (see [`Activation::name`]).
pub const ACTIVATION_ATTR: &str = "kiln_activation";
/// Internal attribute: the fused activation's float parameters.
pub const ACTIVATION_PARAMS_ATTR: &str = "kiln_activation_params";

/// An activation fused into the layer that produces its input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `max(x, 0)` (NaN stays NaN).
    Relu,
    /// `min(max(x, min), max)`; an absent bound is ±infinity. Relu6 is `Clip { 0, 6 }`.
    Clip { min: f32, max: f32 },
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `x · sigmoid(x)` (SiLU / Swish with alpha 1).
    Silu,
    /// `0.5 · x · (1 + erf(x / √2))` (ONNX Gelu, approximate = "none").
    GeluErf,
    /// `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))` (Gelu, approximate = "tanh").
    GeluTanh,
    /// `x · max(0, min(1, x / 6 + 0.5))`.
    HardSwish,
    /// `max(0, min(1, alpha · x + beta))`.
    HardSigmoid { alpha: f32, beta: f32 },
    /// `x` where `x > 0`, else `alpha · x`.
    LeakyRelu { alpha: f32 },
    /// `tanh(x)`.
    Tanh,
}

impl Activation {
    /// The name stored in [`ACTIVATION_ATTR`].
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "Relu",
            Activation::Clip { .. } => "Clip",
            Activation::Sigmoid => "Sigmoid",
            Activation::Silu => "Silu",
            Activation::GeluErf => "GeluErf",
            Activation::GeluTanh => "GeluTanh",
            Activation::HardSwish => "HardSwish",
            Activation::HardSigmoid { .. } => "HardSigmoid",
            Activation::LeakyRelu { .. } => "LeakyRelu",
            Activation::Tanh => "Tanh",
        }
    }

    /// The parameters stored in [`ACTIVATION_PARAMS_ATTR`].
    pub fn params(&self) -> Vec<f32> {
        match *self {
            Activation::Clip { min, max } => vec![min, max],
            Activation::HardSigmoid { alpha, beta } => vec![alpha, beta],
            Activation::LeakyRelu { alpha } => vec![alpha],
            _ => Vec::new(),
        }
    }

    /// Record this activation on a layer's attributes.
    pub fn to_attrs(&self, attrs: &mut Attributes) {
        attrs.set(ACTIVATION_ATTR, self.name());
        let params = self.params();
        if params.is_empty() {
            attrs.remove(ACTIVATION_PARAMS_ATTR);
        } else {
            attrs.set(ACTIVATION_PARAMS_ATTR, Attribute::Floats(params));
        }
    }

    /// The activation recorded on a layer, `None` when there is none; unknown names, wrong
    /// parameter counts or parameters without an activation are errors.
    pub fn from_attrs(attrs: &Attributes) -> Result<Option<Activation>, String> {
        let params = attrs.floats_opt(ACTIVATION_PARAMS_ATTR)?;
        let Some(name) = attrs.string_opt(ACTIVATION_ATTR)? else {
            return match params {
                None => Ok(None),
                Some(_) => Err(format!("attribute '{ACTIVATION_PARAMS_ATTR}' is set without '{ACTIVATION_ATTR}'")),
            };
        };
        let p = params.unwrap_or_default();
        let want = |n: usize| -> Result<(), String> {
            if p.len() == n {
                Ok(())
            } else {
                Err(format!("activation '{name}' takes {n} parameters in '{ACTIVATION_PARAMS_ATTR}', got {}", p.len()))
            }
        };
        let act = match name.as_str() {
            "Relu" => Activation::Relu,
            "Clip" => {
                want(2)?;
                if p[0].is_nan() || p[1].is_nan() {
                    return Err(format!("Clip activation bounds must not be NaN, got {p:?}"));
                }
                Activation::Clip { min: p[0], max: p[1] }
            }
            "Sigmoid" => Activation::Sigmoid,
            "Silu" => Activation::Silu,
            "GeluErf" => Activation::GeluErf,
            "GeluTanh" => Activation::GeluTanh,
            "HardSwish" => Activation::HardSwish,
            "HardSigmoid" => {
                want(2)?;
                Activation::HardSigmoid { alpha: p[0], beta: p[1] }
            }
            "LeakyRelu" => {
                want(1)?;
                Activation::LeakyRelu { alpha: p[0] }
            }
            "Tanh" => Activation::Tanh,
            other => {
                return Err(format!(
                    "unknown activation '{other}' in '{ACTIVATION_ATTR}' (expected Relu, Clip, Sigmoid, Silu, \
                     GeluErf, GeluTanh, HardSwish, HardSigmoid, LeakyRelu or Tanh)"
                ))
            }
        };
        if !matches!(act, Activation::Clip { .. } | Activation::HardSigmoid { .. } | Activation::LeakyRelu { .. }) {
            want(0)?;
        }
        Ok(Some(act))
    }

    /// The activation of one f32 value.
    #[inline]
    pub fn apply_f32(self, x: f32) -> f32 {
        match self {
            Activation::Relu => relu(x),
            Activation::Clip { min, max } => clip(x, min, max),
            Activation::Sigmoid => sigmoid_f32(x),
            Activation::Silu => x * sigmoid_f32(x),
            Activation::GeluErf => gelu_erf_f32(x),
            Activation::GeluTanh => gelu_tanh_f32(x),
            Activation::HardSwish => x * clamp01(x * (1.0 / 6.0) + 0.5),
            Activation::HardSigmoid { alpha, beta } => clamp01(alpha * x + beta),
            Activation::LeakyRelu { alpha } => leaky_relu(x, alpha),
            Activation::Tanh => x.tanh(),
        }
    }

    /// The activation of one f64 value (f64 layers compute in f64).
    #[inline]
    pub fn apply_f64(self, x: f64) -> f64 {
        match self {
            Activation::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            Activation::Clip { min, max } => clip(x, min as f64, max as f64),
            Activation::Sigmoid => sigmoid_f64(x),
            Activation::Silu => x * sigmoid_f64(x),
            Activation::GeluErf => 0.5 * x * erfc(-x * std::f64::consts::FRAC_1_SQRT_2, 1e-17),
            Activation::GeluTanh => x * sigmoid_f64(2.0 * GELU_TANH_K * (x + 0.044715 * x * x * x)),
            Activation::HardSwish => x * clamp01(x * (1.0 / 6.0) + 0.5),
            Activation::HardSigmoid { alpha, beta } => clamp01(alpha as f64 * x + beta as f64),
            Activation::LeakyRelu { alpha } => {
                if x > 0.0 {
                    x
                } else {
                    x * alpha as f64
                }
            }
            Activation::Tanh => x.tanh(),
        }
    }

    /// [`Activation::apply_f32`] over a slice, the variant chosen once so that each loop is a
    /// straight (vectorizable) loop over one formula.
    pub fn apply_slice_f32(self, xs: &mut [f32]) {
        #[inline(always)]
        fn each(xs: &mut [f32], f: impl Fn(f32) -> f32) {
            for v in xs {
                *v = f(*v);
            }
        }
        match self {
            Activation::Relu => each(xs, relu),
            Activation::Clip { min, max } => each(xs, |x| clip(x, min, max)),
            Activation::Sigmoid => each(xs, sigmoid_f32),
            Activation::Silu => each(xs, |x| x * sigmoid_f32(x)),
            Activation::GeluErf => each(xs, gelu_erf_f32),
            Activation::GeluTanh => each(xs, gelu_tanh_f32),
            Activation::HardSwish => each(xs, |x| x * clamp01(x * (1.0 / 6.0) + 0.5)),
            Activation::HardSigmoid { alpha, beta } => each(xs, |x| clamp01(alpha * x + beta)),
            Activation::LeakyRelu { alpha } => each(xs, |x| leaky_relu(x, alpha)),
            Activation::Tanh => each(xs, f32::tanh),
        }
    }

    /// [`Activation::apply_f64`] over a slice.
    pub fn apply_slice_f64(self, xs: &mut [f64]) {
        xs.iter_mut().for_each(|v| *v = self.apply_f64(*v))
    }
}

/// √(2/π).
const GELU_TANH_K: f64 = 0.797_884_560_802_865_4;

/// `max(x, 0)`, NaN staying NaN.
#[inline(always)]
fn relu<T: PartialOrd + Copy + From<u8>>(x: T) -> T {
    if x < T::from(0) {
        T::from(0)
    } else {
        x
    }
}

#[inline(always)]
fn leaky_relu(x: f32, alpha: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        x * alpha
    }
}

/// 0.5·x·erfc(−x/√2): accurate for large negative x, where 1 + erf cancels.
#[inline]
fn gelu_erf_f32(x: f32) -> f32 {
    let u = -x * std::f32::consts::FRAC_1_SQRT_2;
    0.5 * x * erfc(u as f64, 1e-9) as f32
}

/// 0.5·x·(1 + tanh(u)) = x·sigmoid(2u), without cancellation for large negative x.
#[inline(always)]
fn gelu_tanh_f32(x: f32) -> f32 {
    let two_k = (2.0 * GELU_TANH_K) as f32;
    x * sigmoid_f32(two_k * (x + 0.044715 * x * x * x))
}

#[inline(always)]
fn clip<T: PartialOrd + Copy>(x: T, min: T, max: T) -> T {
    // As the Clip kernel: NaN stays NaN; min > max gives max.
    let x = if x < min { min } else { x };
    if x > max {
        max
    } else {
        x
    }
}

#[inline(always)]
fn clamp01<T: PartialOrd + Copy + From<u8>>(x: T) -> T {
    clip(x, T::from(0), T::from(1))
}

#[inline(always)]
fn sigmoid_f32(x: f32) -> f32 {
    // Only ever exponentiates a non-positive number, so nothing overflows.
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[inline(always)]
fn sigmoid_f64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// erfc(x) to relative accuracy about `eps` (the method of kiln's Erf / Gelu kernels): the
/// positive-term series for |x| < 3, the continued fraction beyond.
pub fn erfc(x: f64, eps: f64) -> f64 {
    if x.is_nan() {
        x
    } else if x >= 3.0 {
        erfc_fraction(x)
    } else if x <= -3.0 {
        2.0 - erfc_fraction(-x)
    } else if x >= 0.0 {
        1.0 - erf_series(x, eps)
    } else {
        1.0 + erf_series(-x, eps)
    }
}

/// erf(x) to relative accuracy about `eps`.
pub fn erf(x: f64, eps: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    let r = if ax < 3.0 { erf_series(ax, eps) } else { 1.0 - erfc_fraction(ax) };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

/// erf(x) for 0 <= x < 3: 2/√π · e^(−x²) · Σ 2ⁿ x^(2n+1) / (1·3·…·(2n+1)), all terms positive.
fn erf_series(x: f64, eps: f64) -> f64 {
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    for n in 1..200u32 {
        term *= 2.0 * x2 / (2 * n + 1) as f64;
        sum += term;
        if term <= sum * eps {
            break;
        }
    }
    std::f64::consts::FRAC_2_SQRT_PI * (-x2).exp() * sum
}

/// erfc(x) for x >= 3 by its continued fraction, evaluated bottom-up.
fn erfc_fraction(x: f64) -> f64 {
    let mut f = x;
    for k in (1..=80).rev() {
        f = x + (k as f64 * 0.5) / f;
    }
    (-x * x).exp() / (std::f64::consts::PI.sqrt() * f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference formulas, in f64, written the textbook way.
    fn reference(act: Activation, x: f64) -> f64 {
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        match act {
            Activation::Relu => x.max(0.0),
            Activation::Clip { min, max } => x.max(min as f64).min(max as f64),
            Activation::Sigmoid => sig(x),
            Activation::Silu => x * sig(x),
            Activation::GeluErf => 0.5 * x * (1.0 + erf_reference(x / 2f64.sqrt())),
            Activation::GeluTanh => {
                0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
            }
            Activation::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Activation::HardSigmoid { alpha, beta } => (alpha as f64 * x + beta as f64).clamp(0.0, 1.0),
            Activation::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha as f64 * x
                }
            }
            Activation::Tanh => x.tanh(),
        }
    }

    /// erf by Simpson's rule on 2/√π ∫₀ˣ e^(−t²) dt (independent of the series above).
    fn erf_reference(x: f64) -> f64 {
        let n = 2000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * std::f64::consts::FRAC_2_SQRT_PI
    }

    const ALL: [Activation; 11] = [
        Activation::Relu,
        Activation::Clip { min: 0.0, max: 6.0 },
        Activation::Clip { min: -0.5, max: f32::INFINITY },
        Activation::Sigmoid,
        Activation::Silu,
        Activation::GeluErf,
        Activation::GeluTanh,
        Activation::HardSwish,
        Activation::HardSigmoid { alpha: 0.2, beta: 0.5 },
        Activation::LeakyRelu { alpha: 0.1 },
        Activation::Tanh,
    ];

    #[test]
    fn formulas_match_the_f64_references() {
        for act in ALL {
            for i in -80..=80 {
                let x = i as f64 * 0.1 + 0.013;
                let want = reference(act, x);
                let got64 = act.apply_f64(x);
                assert!((got64 - want).abs() <= 1e-10 * (1e-3 + want.abs()), "{act:?}({x}): f64 {got64} vs {want}");
                // f32: against the reference at the rounded input; an f32 rounding of the terms
                // (about 1e-7 of |x|) is the absolute floor where they cancel (HardSwish near -3).
                let x32 = x as f32;
                let want = reference(act, x32 as f64);
                let got32 = act.apply_f32(x32) as f64;
                let tol = 1e-6 * want.abs() + 1e-7 * (1.0 + x.abs());
                assert!((got32 - want).abs() <= tol, "{act:?}({x}): f32 {got32} vs {want}");
            }
        }
    }

    #[test]
    fn tails_keep_their_relative_accuracy() {
        // GELU of a large negative number is tiny but not zero.
        let x = -7.0f64;
        let want = 0.5 * x * erfc(-x * std::f64::consts::FRAC_1_SQRT_2, 1e-17);
        assert!(want < 0.0 && want > -1e-10);
        let got = Activation::GeluErf.apply_f32(x as f32) as f64;
        assert!(((got - want) / want).abs() < 1e-5, "{got} vs {want}");
        assert_eq!(Activation::Sigmoid.apply_f32(-200.0), 0.0);
        assert_eq!(Activation::Sigmoid.apply_f32(200.0), 1.0);
        assert!(Activation::Relu.apply_f32(f32::NAN).is_nan());
        assert!(Activation::Clip { min: 0.0, max: 6.0 }.apply_f32(f32::NAN).is_nan());
    }

    #[test]
    fn slices_agree_with_scalars() {
        for act in ALL {
            let xs: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
            let mut s = xs.clone();
            act.apply_slice_f32(&mut s);
            for (x, y) in xs.iter().zip(&s) {
                assert_eq!(act.apply_f32(*x).to_bits(), y.to_bits(), "{act:?}({x})");
            }
            let mut d: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
            act.apply_slice_f64(&mut d);
            for (x, y) in xs.iter().zip(&d) {
                assert_eq!(act.apply_f64(*x as f64), *y);
            }
        }
    }

    #[test]
    fn attributes_round_trip() {
        for act in ALL {
            let mut attrs = Attributes::new();
            act.to_attrs(&mut attrs);
            assert_eq!(Activation::from_attrs(&attrs).unwrap(), Some(act));
        }
        assert_eq!(Activation::from_attrs(&Attributes::new()).unwrap(), None);
    }

    #[test]
    fn bad_attributes_are_errors() {
        let bad = [
            Attributes::new().with(ACTIVATION_ATTR, "Swishy"),
            Attributes::new().with(ACTIVATION_ATTR, "Clip"),
            Attributes::new().with(ACTIVATION_ATTR, "Clip").with(ACTIVATION_PARAMS_ATTR, vec![0.0f32]),
            Attributes::new().with(ACTIVATION_ATTR, "Relu").with(ACTIVATION_PARAMS_ATTR, vec![1.0f32]),
            Attributes::new().with(ACTIVATION_ATTR, "LeakyRelu"),
            Attributes::new().with(ACTIVATION_PARAMS_ATTR, vec![1.0f32]),
            Attributes::new().with(ACTIVATION_ATTR, 3i64),
        ];
        for attrs in bad {
            let err = Activation::from_attrs(&attrs).unwrap_err();
            assert!(!err.is_empty());
        }
    }
}
