//! Scalar arithmetic traits that let one generic kernel serve every float or integer dtype.
//!
//! `Real` covers f32 and f64 (f16/bf16 are computed in f32 and rounded once, by the callers);
//! `Int` covers the eight integer dtypes with the wrapping, C-like semantics numpy and the
//! ONNX reference use (integer overflow wraps, division truncates toward zero).

use kiln_ir::Element;
use std::ops::{Add, Div, Mul, Neg, Rem, Sub};

/// A floating-point compute type (f32 or f64).
pub(super) trait Real:
    Element
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + Rem<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    /// Relative tolerance at which series expansions (erf) may stop for this precision.
    const SERIES_EPS: f64;
    fn abs(self) -> Self;
    fn sqrt(self) -> Self;
    fn exp(self) -> Self;
    fn exp_m1(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn ceil(self) -> Self;
    fn floor(self) -> Self;
    fn round_ties_even(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn tan(self) -> Self;
    fn asin(self) -> Self;
    fn acos(self) -> Self;
    fn atan(self) -> Self;
    fn sinh(self) -> Self;
    fn cosh(self) -> Self;
    fn tanh(self) -> Self;
    fn asinh(self) -> Self;
    fn acosh(self) -> Self;
    fn atanh(self) -> Self;
    fn is_nan(self) -> bool;
    fn copysign(self, sign: Self) -> Self;
    /// The constant `v` in this precision.
    fn c(v: f64) -> Self {
        Self::from_f64(v)
    }
    /// The error function, accurate to this type's precision.
    fn erf(self) -> Self {
        Self::from_f64(kiln_ir::activation::erf(self.to_f64(), Self::SERIES_EPS))
    }
    fn erfc(self) -> Self {
        Self::from_f64(kiln_ir::activation::erfc(self.to_f64(), Self::SERIES_EPS))
    }
}

macro_rules! impl_real {
    ($t:ty, $eps:expr) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const SERIES_EPS: f64 = $eps;
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn exp_m1(self) -> Self {
                <$t>::exp_m1(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn ceil(self) -> Self {
                <$t>::ceil(self)
            }
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            fn round_ties_even(self) -> Self {
                <$t>::round_ties_even(self)
            }
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            fn tan(self) -> Self {
                <$t>::tan(self)
            }
            fn asin(self) -> Self {
                <$t>::asin(self)
            }
            fn acos(self) -> Self {
                <$t>::acos(self)
            }
            fn atan(self) -> Self {
                <$t>::atan(self)
            }
            fn sinh(self) -> Self {
                <$t>::sinh(self)
            }
            fn cosh(self) -> Self {
                <$t>::cosh(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn asinh(self) -> Self {
                <$t>::asinh(self)
            }
            fn acosh(self) -> Self {
                <$t>::acosh(self)
            }
            fn atanh(self) -> Self {
                <$t>::atanh(self)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn copysign(self, sign: Self) -> Self {
                <$t>::copysign(self, sign)
            }
        }
    };
}
impl_real!(f32, 1e-9);
impl_real!(f64, 1e-17);

/// An integer dtype with numpy's wrapping semantics.
pub(super) trait Int: Element + Ord {
    const ZERO: Self;
    fn wrapping_add(self, o: Self) -> Self;
    fn wrapping_sub(self, o: Self) -> Self;
    fn wrapping_mul(self, o: Self) -> Self;
    fn wrapping_neg(self) -> Self;
    fn wrapping_abs(self) -> Self;
    fn signum(self) -> Self;
    /// Quotient truncated toward zero (C); 0 for a zero divisor, as numpy returns.
    fn div_trunc(self, o: Self) -> Self;
    /// Remainder with the dividend's sign (C `%`, `fmod`); 0 for a zero divisor.
    fn rem_trunc(self, o: Self) -> Self;
    /// Remainder with the divisor's sign (Python `%`); 0 for a zero divisor.
    fn rem_floor(self, o: Self) -> Self;
    fn bitand(self, o: Self) -> Self;
    fn bitor(self, o: Self) -> Self;
    fn bitxor(self, o: Self) -> Self;
    fn bitnot(self) -> Self;
    /// ONNX BitShift: a shift amount < 0 or >= BITS gives 0 (or -1 for a right shift of a
    /// negative value); right shifts of signed values are arithmetic.
    fn shift(self, amount: Self, left: bool) -> Self;
    /// `self` to the power `e`, wrapping on overflow; a negative `e` gives the truncated
    /// quotient 1 / self^|e| (0 unless |self| == 1).
    fn pow_int(self, e: i64) -> Self;
}

macro_rules! impl_int {
    ($t:ty) => {
        impl Int for $t {
            const ZERO: Self = 0;
            fn wrapping_add(self, o: Self) -> Self {
                <$t>::wrapping_add(self, o)
            }
            fn wrapping_sub(self, o: Self) -> Self {
                <$t>::wrapping_sub(self, o)
            }
            fn wrapping_mul(self, o: Self) -> Self {
                <$t>::wrapping_mul(self, o)
            }
            #[allow(unused_comparisons)]
            fn wrapping_neg(self) -> Self {
                <$t>::wrapping_neg(self)
            }
            #[allow(unused_comparisons)]
            fn wrapping_abs(self) -> Self {
                if self < 0 {
                    self.wrapping_neg()
                } else {
                    self
                }
            }
            #[allow(unused_comparisons)]
            fn signum(self) -> Self {
                if self > 0 {
                    1
                } else if self < 0 {
                    (0 as $t).wrapping_sub(1)
                } else {
                    0
                }
            }
            fn div_trunc(self, o: Self) -> Self {
                if o == 0 {
                    0
                } else {
                    <$t>::wrapping_div(self, o)
                }
            }
            fn rem_trunc(self, o: Self) -> Self {
                if o == 0 {
                    0
                } else {
                    <$t>::wrapping_rem(self, o)
                }
            }
            #[allow(unused_comparisons)]
            fn rem_floor(self, o: Self) -> Self {
                let r = self.rem_trunc(o);
                if r != 0 && ((r < 0) != (o < 0)) {
                    r.wrapping_add(o)
                } else {
                    r
                }
            }
            fn bitand(self, o: Self) -> Self {
                self & o
            }
            fn bitor(self, o: Self) -> Self {
                self | o
            }
            fn bitxor(self, o: Self) -> Self {
                self ^ o
            }
            fn bitnot(self) -> Self {
                !self
            }
            #[allow(unused_comparisons)]
            fn shift(self, amount: Self, left: bool) -> Self {
                if amount < 0 || (amount as u128) >= <$t>::BITS as u128 {
                    return if !left && self < 0 { (0 as $t).wrapping_sub(1) } else { 0 };
                }
                let n = amount as u32;
                if left {
                    // Bits shifted past the top (and past a signed value's sign bit) are lost.
                    <$t>::wrapping_shl(self, n)
                } else {
                    // `>>` is arithmetic for signed types and logical for unsigned ones.
                    self >> n
                }
            }
            fn pow_int(self, e: i64) -> Self {
                if e < 0 {
                    // 1 / self^|e| truncated toward zero.
                    return match self as i128 {
                        1 => 1,
                        -1 => {
                            if e % 2 == 0 {
                                1
                            } else {
                                self
                            }
                        }
                        _ => 0,
                    };
                }
                let (mut base, mut e, mut acc): (Self, u64, Self) = (self, e as u64, 1);
                while e > 0 {
                    if e & 1 == 1 {
                        acc = acc.wrapping_mul(base);
                    }
                    base = base.wrapping_mul(base);
                    e >>= 1;
                }
                acc
            }
        }
    };
}
impl_int!(i8);
impl_int!(u8);
impl_int!(i16);
impl_int!(u16);
impl_int!(i32);
impl_int!(u32);
impl_int!(i64);
impl_int!(u64);
