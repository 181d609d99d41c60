//! Spectral ops: DFT, STFT, the Hann/Hamming/Blackman window generators and MelWeightMatrix.
//!
//! Transforms run in f64 with an O(n log n) FFT for every length (radix-2, or Bluestein's
//! chirp-z algorithm on top of it for other lengths) and are rounded once to the input dtype.
//! Complex tensors use ONNX's layout: a trailing dimension of 2 (real, imaginary); a trailing
//! dimension of 1 is a real signal.

use super::{scalar_f64, scalar_i64, tensor_from_f64, Rounding};
use crate::util::{opt_tensor_arg, single, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{checked_numel, DType, Value};
use std::f64::consts::PI;

/// DFT (opset 20 form: `axis` is an input; the importer rewrites opset 17's attribute).
pub(super) fn dft(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let dtype = super::require_float(x, "input")?;
    let inverse = ctx.attrs.int("inverse", 0)? != 0;
    let onesided = ctx.attrs.int("onesided", 0)? != 0;
    let shape = x.shape();
    let rank = shape.len();
    if rank < 2 {
        return Err(format!("input must have rank >= 2 ([..., signal, 1 or 2]), got {rank}"));
    }
    let c = shape[rank - 1];
    if c != 1 && c != 2 {
        return Err(format!("the last dimension must be 1 (real) or 2 (complex), got {c}"));
    }
    let axis = match opt_tensor_arg(inputs, 2)? {
        Some(_) => scalar_i64(inputs, 2, "axis")?,
        None => -2,
    };
    let axis = crate::util::normalize_axis(axis, rank)?;
    if axis == rank - 1 {
        return Err("axis must not be the last (real/imaginary) dimension".into());
    }
    let n_in = shape[axis];
    let length = match opt_tensor_arg(inputs, 1)? {
        Some(_) => {
            let l = scalar_i64(inputs, 1, "dft_length")?;
            if l < 1 {
                return Err(format!("dft_length must be positive, got {l}"));
            }
            usize::try_from(l).map_err(|_| format!("dft_length {l} is too large"))?
        }
        // irfft's default output length is that of the even signal whose half spectrum this is.
        None if inverse && onesided => 2 * n_in.saturating_sub(1),
        None => n_in,
    };
    if length == 0 {
        return Err("the transform length is 0".into());
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..rank - 1].iter().product();
    let (n_out, c_out) = match (inverse, onesided) {
        (false, true) => (length / 2 + 1, 2),
        (true, true) => (length, 1),
        _ => (length, 2),
    };
    let mut out_shape = shape.to_vec();
    out_shape[axis] = n_out;
    out_shape[rank - 1] = c_out;
    let total = checked_numel(&out_shape).map_err(|e| e.to_string())?;

    let data = x.to_f64_vec();
    let mut out = vec![0.0f64; total];
    let plan = FftPlan::new(length);
    let mut re = vec![0.0; length];
    let mut im = vec![0.0; length];
    let mut scratch = Scratch::default();
    for o in 0..outer {
        for i in 0..inner {
            // Element k of this line is at ((o * n + k) * inner + i) * c.
            let at_in = |k: usize| ((o * n_in + k) * inner + i) * c;
            let at_out = |k: usize| ((o * n_out + k) * inner + i) * c_out;
            re.fill(0.0);
            im.fill(0.0);
            if inverse && onesided {
                // Rebuild the Hermitian spectrum from its first half (numpy's irfft: the
                // imaginary parts of the DC and Nyquist bins are ignored).
                let half = length / 2 + 1;
                for k in 0..n_in.min(half) {
                    re[k] = data[at_in(k)];
                    im[k] = if c == 2 { data[at_in(k) + 1] } else { 0.0 };
                }
                im[0] = 0.0;
                if length % 2 == 0 {
                    im[length / 2] = 0.0;
                }
                for k in 1..half {
                    if length - k >= half {
                        re[length - k] = re[k];
                        im[length - k] = -im[k];
                    }
                }
            } else {
                for k in 0..n_in.min(length) {
                    re[k] = data[at_in(k)];
                    im[k] = if c == 2 { data[at_in(k) + 1] } else { 0.0 };
                }
            }
            plan.run(&mut re, &mut im, inverse, &mut scratch);
            for k in 0..n_out {
                let p = at_out(k);
                out[p] = re[k];
                if c_out == 2 {
                    out[p + 1] = im[k];
                }
            }
        }
    }
    Ok(single(tensor_from_f64(dtype, out_shape, &out, Rounding::HalfEven)?))
}

/// STFT: frames of `frame_length` every `frame_step` samples, windowed, each transformed.
pub(super) fn stft(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let dtype = super::require_float(x, "signal")?;
    let onesided = ctx.attrs.int("onesided", 1)? != 0;
    let &[batch, sig_len, c] = x.shape() else {
        return Err(format!("signal must be 3-D [batch, length, 1 or 2], got shape {:?}", x.shape()));
    };
    if c != 1 && c != 2 {
        return Err(format!("the signal's last dimension must be 1 (real) or 2 (complex), got {c}"));
    }
    let step = scalar_i64(inputs, 1, "frame_step")?;
    if step < 1 {
        return Err(format!("frame_step must be positive, got {step}"));
    }
    let window = opt_tensor_arg(inputs, 2)?;
    if let Some(w) = window {
        if w.rank() != 1 {
            return Err(format!("window must be 1-D, got shape {:?}", w.shape()));
        }
    }
    let frame_len = match opt_tensor_arg(inputs, 3)? {
        Some(_) => {
            let f = scalar_i64(inputs, 3, "frame_length")?;
            if let Some(w) = window {
                if w.len() as i64 != f {
                    return Err(format!("window has {} values but frame_length is {f}", w.len()));
                }
            }
            f
        }
        None => window.map(|w| w.len()).unwrap_or(sig_len) as i64,
    };
    if frame_len < 1 || frame_len > sig_len as i64 {
        return Err(format!("frame_length {frame_len} must be in 1..={sig_len} (the signal length)"));
    }
    let fl = frame_len as usize;
    let step = step as usize;
    let frames = (sig_len - fl) / step + 1;
    let bins = if onesided { fl / 2 + 1 } else { fl };
    let out_shape = vec![batch, frames, bins, 2];
    let total = checked_numel(&out_shape).map_err(|e| e.to_string())?;
    let win: Vec<f64> = match window {
        Some(w) => w.to_f64_vec(),
        None => vec![1.0; fl],
    };

    let data = x.to_f64_vec();
    let mut out = vec![0.0f64; total];
    let plan = FftPlan::new(fl);
    let (mut re, mut im) = (vec![0.0; fl], vec![0.0; fl]);
    let mut scratch = Scratch::default();
    for b in 0..batch {
        for f in 0..frames {
            for t in 0..fl {
                let p = (b * sig_len + f * step + t) * c;
                re[t] = data[p] * win[t];
                im[t] = if c == 2 { data[p + 1] * win[t] } else { 0.0 };
            }
            plan.run(&mut re, &mut im, false, &mut scratch);
            let base = (b * frames + f) * bins * 2;
            for k in 0..bins {
                out[base + 2 * k] = re[k];
                out[base + 2 * k + 1] = im[k];
            }
        }
    }
    Ok(single(tensor_from_f64(dtype, out_shape, &out, Rounding::HalfEven)?))
}

pub(super) fn hann_window(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    window(ctx, inputs, |n, denom| (PI * n / denom).sin().powi(2))
}

pub(super) fn hamming_window(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    // The spec's (and PyTorch's) alpha is 25/46 ≈ 0.54, beta = 1 - alpha.
    const ALPHA: f64 = 25.0 / 46.0;
    window(ctx, inputs, |n, denom| ALPHA - (2.0 * PI * n / denom).cos() * (1.0 - ALPHA))
}

pub(super) fn blackman_window(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    window(ctx, inputs, |n, denom| 0.42 - 0.5 * (2.0 * PI * n / denom).cos() + 0.08 * (4.0 * PI * n / denom).cos())
}

/// MelWeightMatrix: triangular filters on the mel scale, [dft_length / 2 + 1, num_mel_bins].
pub(super) fn mel_weight_matrix(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let dtype = output_datatype(ctx)?;
    let num_mel_bins = scalar_i64(inputs, 0, "num_mel_bins")?;
    let dft_length = scalar_i64(inputs, 1, "dft_length")?;
    let sample_rate = scalar_i64(inputs, 2, "sample_rate")?;
    let lower = scalar_f64(inputs, 3, "lower_edge_hertz")?;
    let upper = scalar_f64(inputs, 4, "upper_edge_hertz")?;
    if num_mel_bins < 0 || dft_length < 1 || sample_rate < 1 {
        return Err(format!(
            "need num_mel_bins >= 0, dft_length >= 1 and sample_rate >= 1, got {num_mel_bins}, {dft_length}, {sample_rate}"
        ));
    }
    let spec_bins = (dft_length / 2 + 1) as usize;
    let mel_bins = num_mel_bins as usize;
    let shape = vec![spec_bins, mel_bins];
    let total = checked_numel(&shape).map_err(|e| e.to_string())?;

    // Band edges: num_mel_bins + 2 points evenly spaced in mel, mapped back to Hz and then to
    // spectrogram bins (floor((dft_length + 1) * hz / sample_rate), as in the reference).
    let hz_to_mel = |hz: f64| 2595.0 * (hz / 700.0).ln_1p() / std::f64::consts::LN_10;
    let (low_mel, high_mel) = (hz_to_mel(lower), hz_to_mel(upper));
    let points = mel_bins + 2;
    let mel_step = (high_mel - low_mel) / points as f64;
    let mut edges = Vec::with_capacity(points);
    for i in 0..points {
        let mel = i as f64 * mel_step + low_mel;
        let hz = 700.0 * (mel / 2595.0 * std::f64::consts::LN_10).exp_m1();
        let bin = py_floordiv((dft_length + 1) as f64 * hz, sample_rate as f64);
        if !bin.is_finite() {
            return Err(format!("mel band edge {hz} Hz is not finite"));
        }
        edges.push(bin as i64);
    }
    let mut out = vec![0.0f64; total];
    let mut set = |row: i64, col: usize, v: f64| -> Result<(), String> {
        if row < 0 || row as usize >= spec_bins {
            return Err(format!(
                "mel band edge falls on spectrogram bin {row}, outside 0..{spec_bins} (is upper_edge_hertz above \
                 sample_rate / 2, or lower_edge_hertz negative?)"
            ));
        }
        out[row as usize * mel_bins + col] = v;
        Ok(())
    };
    for i in 0..mel_bins {
        let (lo, center, hi) = (edges[i], edges[i + 1], edges[i + 2]);
        let rise = center.saturating_sub(lo);
        if rise == 0 {
            set(center, i, 1.0)?;
        } else {
            for j in lo..=center {
                set(j, i, (j - lo) as f64 / rise as f64)?;
            }
        }
        let fall = hi.saturating_sub(center);
        if fall > 0 {
            for j in center..hi {
                set(j, i, (hi - j) as f64 / fall as f64)?;
            }
        }
    }
    Ok(single(tensor_from_f64(dtype, shape, &out, Rounding::Truncate)?))
}

/// Shared body of the window generators: `f(n, denominator)` for n in 0..size.
fn window(ctx: &KernelCtx, inputs: &[Option<&Value>], f: impl Fn(f64, f64) -> f64) -> Result<Vec<Value>, String> {
    let dtype = output_datatype(ctx)?;
    let periodic = ctx.attrs.int("periodic", 1)? != 0;
    let size = scalar_i64(inputs, 0, "size")?;
    if size < 0 {
        return Err(format!("size must not be negative, got {size}"));
    }
    let n = size as usize;
    checked_numel(&[n]).map_err(|e| e.to_string())?;
    // A periodic window is one period of a window of size + 1; a symmetric one spans size - 1.
    let denom = if periodic { n as f64 } else { n as f64 - 1.0 };
    let values: Vec<f64> = if n == 1 && !periodic {
        // The formula is 0/0 here; a one-point symmetric window is [1] (as in PyTorch).
        vec![1.0]
    } else {
        (0..n).map(|i| f(i as f64, denom)).collect()
    };
    // The reference casts with astype, which truncates for integer output types.
    Ok(single(tensor_from_f64(dtype, vec![n], &values, Rounding::Truncate)?))
}

fn output_datatype(ctx: &KernelCtx) -> Result<DType, String> {
    let code = ctx.attrs.int("output_datatype", 1)?;
    let d = DType::from_onnx_code(code as i32).map_err(|e| format!("output_datatype {code} ({e}) is not supported"))?;
    if d == DType::Bool {
        return Err("output_datatype must be numeric, not bool".into());
    }
    Ok(d)
}

/// Python/numpy float floor division (`a // b`), which can differ from `floor(a / b)` when the
/// quotient rounds onto an integer.
fn py_floordiv(a: f64, b: f64) -> f64 {
    let m = a % b;
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div != 0.0 {
        let fl = div.floor();
        if div - fl > 0.5 {
            fl + 1.0
        } else {
            fl
        }
    } else {
        0.0f64.copysign(a / b)
    }
}

/// Work buffers reused across transforms of one plan.
#[derive(Default)]
struct Scratch {
    re: Vec<f64>,
    im: Vec<f64>,
}

/// A complex FFT of one length. Power-of-two lengths use an iterative radix-2 transform; any
/// other length uses Bluestein's algorithm (the DFT as a convolution with a chirp, done with a
/// power-of-two FFT of at least 2n - 1 points).
struct FftPlan {
    n: usize,
    kind: PlanKind,
}

enum PlanKind {
    Trivial,
    Radix2 {
        /// e^{-2πik/n} for k < n/2.
        tw_re: Vec<f64>,
        tw_im: Vec<f64>,
    },
    Bluestein {
        inner: Box<FftPlan>,
        /// The chirp w_k = e^{-πik²/n}, k < n.
        chirp_re: Vec<f64>,
        chirp_im: Vec<f64>,
        /// FFT of the zero-padded, wrapped conjugate chirp (the convolution kernel).
        kern_re: Vec<f64>,
        kern_im: Vec<f64>,
    },
}

impl FftPlan {
    fn new(n: usize) -> FftPlan {
        if n <= 1 {
            return FftPlan { n, kind: PlanKind::Trivial };
        }
        if n.is_power_of_two() {
            let (tw_re, tw_im) =
                (0..n / 2).map(|k| (-2.0 * PI * k as f64 / n as f64).sin_cos()).map(|(s, c)| (c, s)).unzip();
            return FftPlan { n, kind: PlanKind::Radix2 { tw_re, tw_im } };
        }
        let m = (2 * n - 1).next_power_of_two();
        let inner = Box::new(FftPlan::new(m));
        // k² mod 2n keeps the angle argument small, so the chirp stays accurate for large n.
        let two_n = 2 * n as u128;
        let (chirp_re, chirp_im): (Vec<f64>, Vec<f64>) = (0..n)
            .map(|k| {
                let q = (k as u128 * k as u128 % two_n) as f64;
                let (s, c) = (-PI * q / n as f64).sin_cos();
                (c, s)
            })
            .unzip();
        let (mut kern_re, mut kern_im) = (vec![0.0; m], vec![0.0; m]);
        for k in 0..n {
            kern_re[k] = chirp_re[k];
            kern_im[k] = -chirp_im[k];
            if k > 0 {
                kern_re[m - k] = chirp_re[k];
                kern_im[m - k] = -chirp_im[k];
            }
        }
        let mut s = Scratch::default();
        inner.run(&mut kern_re, &mut kern_im, false, &mut s);
        FftPlan { n, kind: PlanKind::Bluestein { inner, chirp_re, chirp_im, kern_re, kern_im } }
    }

    /// In-place transform; `inverse` computes the inverse DFT including the 1/n factor.
    fn run(&self, re: &mut [f64], im: &mut [f64], inverse: bool, scratch: &mut Scratch) {
        if inverse {
            // ifft(x) = conj(fft(conj(x))) / n.
            im.iter_mut().for_each(|v| *v = -*v);
            self.forward(re, im, scratch);
            let inv = 1.0 / self.n as f64;
            re.iter_mut().for_each(|v| *v *= inv);
            im.iter_mut().for_each(|v| *v = -*v * inv);
        } else {
            self.forward(re, im, scratch);
        }
    }

    fn forward(&self, re: &mut [f64], im: &mut [f64], scratch: &mut Scratch) {
        let n = self.n;
        match &self.kind {
            PlanKind::Trivial => {}
            PlanKind::Radix2 { tw_re, tw_im } => {
                // Bit-reversal permutation.
                let bits = n.trailing_zeros();
                for i in 0..n {
                    let j = i.reverse_bits() >> (usize::BITS - bits);
                    if j > i {
                        re.swap(i, j);
                        im.swap(i, j);
                    }
                }
                let mut len = 2;
                while len <= n {
                    let half = len / 2;
                    let stride = n / len;
                    for start in (0..n).step_by(len) {
                        for j in 0..half {
                            let (wr, wi) = (tw_re[j * stride], tw_im[j * stride]);
                            let (a, b) = (start + j, start + j + half);
                            let vr = re[b] * wr - im[b] * wi;
                            let vi = re[b] * wi + im[b] * wr;
                            re[b] = re[a] - vr;
                            im[b] = im[a] - vi;
                            re[a] += vr;
                            im[a] += vi;
                        }
                    }
                    len *= 2;
                }
            }
            PlanKind::Bluestein { inner, chirp_re, chirp_im, kern_re, kern_im } => {
                let m = inner.n;
                let mut a_re = std::mem::take(&mut scratch.re);
                let mut a_im = std::mem::take(&mut scratch.im);
                a_re.clear();
                a_im.clear();
                a_re.resize(m, 0.0);
                a_im.resize(m, 0.0);
                for k in 0..n {
                    a_re[k] = re[k] * chirp_re[k] - im[k] * chirp_im[k];
                    a_im[k] = re[k] * chirp_im[k] + im[k] * chirp_re[k];
                }
                // The inner plan is radix-2 and needs no scratch of its own.
                let mut none = Scratch::default();
                inner.forward(&mut a_re, &mut a_im, &mut none);
                for k in 0..m {
                    let (r, i) = (a_re[k], a_im[k]);
                    a_re[k] = r * kern_re[k] - i * kern_im[k];
                    a_im[k] = r * kern_im[k] + i * kern_re[k];
                }
                inner.run(&mut a_re, &mut a_im, true, &mut none);
                for k in 0..n {
                    re[k] = a_re[k] * chirp_re[k] - a_im[k] * chirp_im[k];
                    im[k] = a_re[k] * chirp_im[k] + a_im[k] * chirp_re[k];
                }
                scratch.re = a_re;
                scratch.im = a_im;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct O(n²) DFT for checking the FFT.
    fn naive(re: &[f64], im: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let n = re.len();
        let mut out = (vec![0.0; n], vec![0.0; n]);
        for k in 0..n {
            for t in 0..n {
                let (s, c) = (-2.0 * PI * (k * t % n) as f64 / n as f64).sin_cos();
                out.0[k] += re[t] * c - im[t] * s;
                out.1[k] += re[t] * s + im[t] * c;
            }
        }
        out
    }

    #[test]
    fn fft_matches_naive_dft_for_all_small_lengths() {
        for n in 1..=40 {
            let re: Vec<f64> = (0..n).map(|i| ((i * 7 + 3) % 11) as f64 - 4.5).collect();
            let im: Vec<f64> = (0..n).map(|i| ((i * 5 + 1) % 13) as f64 * 0.25).collect();
            let (wr, wi) = naive(&re, &im);
            let (mut r, mut i) = (re.clone(), im.clone());
            let plan = FftPlan::new(n);
            let mut s = Scratch::default();
            plan.run(&mut r, &mut i, false, &mut s);
            for k in 0..n {
                assert!((r[k] - wr[k]).abs() < 1e-9 && (i[k] - wi[k]).abs() < 1e-9, "n={n} k={k}");
            }
            plan.run(&mut r, &mut i, true, &mut s);
            for k in 0..n {
                assert!((r[k] - re[k]).abs() < 1e-9 && (i[k] - im[k]).abs() < 1e-9, "inverse n={n} k={k}");
            }
        }
    }

    #[test]
    fn py_floordiv_matches_python() {
        assert_eq!(py_floordiv(7.0, 2.0), 3.0);
        assert_eq!(py_floordiv(-7.0, 2.0), -4.0);
        assert_eq!(py_floordiv(6.0, 3.0), 2.0);
    }
}
