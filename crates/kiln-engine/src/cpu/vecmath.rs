//! Vectorized f32 math for the native kernels — GELU (erf form), exp, softmax rows, layer-norm
//! rows — with runtime dispatch: each function is compiled three times (AVX-512, AVX2+FMA,
//! portable) from one branch-free body that LLVM vectorizes, and the best version the CPU
//! supports is picked once per call.
//!
//! The transcendental functions are polynomial approximations accurate to a few ulp in f32
//! (Eigen's rational erf, a Cephes-style exp), not the f64 series kiln-ir's reference
//! activation uses: that is exact but costs ~60 ns per element, a third of BERT's run time.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Level {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The widest instruction set this CPU runs (detected once).
pub(crate) fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Level::Avx2;
            }
        }
        Level::Portable
    })
}

/// `fn $name(args) -> ret` dispatching to an AVX-512, an AVX2+FMA or the portable build of the
/// same body.
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::cpu::vecmath::{level, Level};
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match level() {
                    // SAFETY: level() checked that the CPU has these features.
                    Level::Avx512 => return unsafe { avx512($($arg),*) },
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Portable => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

const LANES: usize = 16;

/// erf(x), |error| < 2e-7: Eigen's rational approximation on [-4, 4] (erf is ±1 in f32 beyond).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_3e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}

/// e^x for x in f32's range: 2^n · e^r with n = round(x·log2 e), r = x − n·ln 2 split in two
/// parts, e^r by a degree-6 polynomial. Flushes to 0 below −87.3, saturates at e^88 above 88
/// (2^n must stay a normal f32).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

multiversion! {
    /// `x ← 0.5·x·(1 + erf(x/√2))` in place.
    pub(crate) fn gelu_erf(xs: &mut [f32]) {
        for v in xs.iter_mut() {
            let x = *v;
            *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

multiversion! {
    /// `x ← tanh(x)` in place, as 1 − 2/(e^{2x} + 1).
    pub(crate) fn tanh(xs: &mut [f32]) {
        for v in xs.iter_mut() {
            *v = 1.0 - 2.0 / (exp(2.0 * *v) + 1.0);
        }
    }
}

multiversion! {
    /// `row ← softmax(row · scale + mask)` in place; `mask` (when given) has the row's length.
    /// A row that is −∞ everywhere gives zeros, as ONNX Attention does.
    pub(crate) fn softmax_row(row: &mut [f32], scale: f32, mask: Option<&[f32]>) {
        match mask {
            Some(m) => row.iter_mut().zip(m).for_each(|(x, m)| *x = *x * scale + m),
            None if scale != 1.0 => row.iter_mut().for_each(|x| *x *= scale),
            None => {}
        }
        let mut maxes = [f32::NEG_INFINITY; LANES];
        let chunks = row.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                maxes[i] = if c[i] > maxes[i] { c[i] } else { maxes[i] };
            }
        }
        let mut max = tail.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        for m in maxes {
            max = if m > max { m } else { max };
        }
        if max == f32::NEG_INFINITY {
            row.fill(0.0);
            return;
        }
        let mut sums = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                c[i] = exp(c[i] - max);
                sums[i] += c[i];
            }
        }
        let mut sum: f32 = 0.0;
        for x in chunks.into_remainder() {
            *x = exp(*x - max);
            sum += *x;
        }
        sum += sums.iter().sum::<f32>();
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

multiversion! {
    /// `out ← (x − mean) / √(var + eps) · scale + bias` over one row (population variance,
    /// two passes in f32 with lane-wise partial sums).
    pub(crate) fn layer_norm_row(x: &[f32], out: &mut [f32], scale: &[f32], bias: Option<&[f32]>, eps: f32) {
        let n = x.len();
        // Lane-wise partial sums (a plain f32 sum does not vectorize: it would reorder adds).
        let mut acc = [0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let mut total: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for i in 0..LANES {
                acc[i] += c[i];
            }
        }
        total += acc.iter().sum::<f32>();
        let mean = total / n as f32;
        let mut acc = [0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let mut total: f32 = chunks.remainder().iter().map(|&v| (v - mean) * (v - mean)).sum();
        for c in chunks {
            for i in 0..LANES {
                acc[i] += (c[i] - mean) * (c[i] - mean);
            }
        }
        total += acc.iter().sum::<f32>();
        let var = total / n as f32;
        let inv = 1.0 / (var + eps).sqrt();
        match bias {
            Some(b) => {
                for (((o, &v), &s), &b) in out.iter_mut().zip(x).zip(scale).zip(b) {
                    *o = (v - mean) * inv * s + b;
                }
            }
            None => {
                for ((o, &v), &s) in out.iter_mut().zip(x).zip(scale) {
                    *o = (v - mean) * inv * s;
                }
            }
        }
    }
}

/// `r[i][j] ← r[j][i]` for an 8×8 block of f32 in AVX registers: unpack pairs, 64-bit
/// shuffles, then 128-bit halves.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn transpose8(r: &mut [std::arch::x86_64::__m256; 8]) {
    use std::arch::x86_64::*;
    let mut t = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm256_setzero_ps(); 8];
    for q in 0..2 {
        let b = 4 * q;
        u[b] = _mm256_shuffle_ps(t[b], t[b + 2], 0x44);
        u[b + 1] = _mm256_shuffle_ps(t[b], t[b + 2], 0xEE);
        u[b + 2] = _mm256_shuffle_ps(t[b + 1], t[b + 3], 0x44);
        u[b + 3] = _mm256_shuffle_ps(t[b + 1], t[b + 3], 0xEE);
    }
    for i in 0..4 {
        r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
        r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf64(x: f64) -> f64 {
        kiln_ir::activation::erf(x, 1e-17)
    }

    #[test]
    fn gelu_tanh_and_exp_match_float64_over_a_wide_range() {
        let xs: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) / 200.0).collect(); // [-10, 10]
        let mut g = xs.clone();
        gelu_erf(&mut g);
        let mut t = xs.clone();
        tanh(&mut t);
        for ((&x, &g), &t) in xs.iter().zip(&g).zip(&t) {
            let x64 = x as f64;
            let want = 0.5 * x64 * (1.0 + erf64(x64 / 2f64.sqrt()));
            assert!((g as f64 - want).abs() <= 1e-6 * want.abs().max(1.0), "gelu({x}) = {g}, want {want}");
            assert!((t as f64 - x64.tanh()).abs() <= 2e-6, "tanh({x}) = {t}");
        }
        for i in 0..2000 {
            let x = (i as f32 - 1000.0) / 11.3; // [-88.5, 88.5]
            if x > 88.0 {
                assert_eq!(exp(x), exp(88.0));
                continue;
            }
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            if want < 1e-37 {
                assert!(got < 2e-37, "exp({x}) = {got}");
            } else {
                assert!((got - want).abs() <= 3e-7 * want, "exp({x}) = {got}, want {want}");
            }
        }
    }

    #[test]
    fn softmax_and_layer_norm_rows_match_float64() {
        for n in [1usize, 7, 16, 33, 128] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7).collect();
            let mask: Vec<f32> = (0..n).map(|i| if i % 5 == 4 { -10000.0 } else { 0.25 }).collect();
            let mut row = x.clone();
            softmax_row(&mut row, 0.5, Some(&mask));
            let s: Vec<f64> = x.iter().zip(&mask).map(|(&v, &m)| v as f64 * 0.5 + m as f64).collect();
            let max = s.iter().cloned().fold(f64::MIN, f64::max);
            let total: f64 = s.iter().map(|v| (v - max).exp()).sum();
            for (got, v) in row.iter().zip(&s) {
                assert!((*got as f64 - (v - max).exp() / total).abs() < 1e-6, "softmax n={n}");
            }
            let scale: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.01).collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * -0.02).collect();
            let mut out = vec![0f32; n];
            layer_norm_row(&x, &mut out, &scale, Some(&bias), 1e-5);
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            for i in 0..n {
                let want = (x[i] as f64 - mean) / (var + 1e-5).sqrt() * scale[i] as f64 + bias[i] as f64;
                assert!((out[i] as f64 - want).abs() < 1e-5, "layer norm n={n} i={i}: {} vs {want}", out[i]);
            }
        }
        let mut all_masked = vec![f32::NEG_INFINITY; 5];
        softmax_row(&mut all_masked, 1.0, None);
        assert_eq!(all_masked, vec![0.0; 5]);
    }
}
