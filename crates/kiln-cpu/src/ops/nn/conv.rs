//! Convolutions: Conv, ConvInteger, QLinearConv (im2col + GEMM per group), ConvTranspose and
//! Col2Im (GEMM + col2im), DeformConv (bilinear-sampled im2col + GEMM), CausalConvWithState.

use super::gemm::{gemm_acc, gemm_acc_then, requant_multipliers, saturate_round, transpose};
use super::{next_index, round_to_dtype, valid_range, with_acc, zeros, Acc, Epilogue, Window};
use crate::util::{opt_tensor_arg, single, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{checked_numel, strides_of, Activation, Attributes, DType, Tensor, Value};
use rayon::prelude::*;

/// Conv: N-D grouped convolution with optional bias. The fused form (inputs
/// [X, W, B?, Residual?], optional activation) computes `act(conv(X, W) + B + Residual)`, the
/// residual and activation applied to each block of output rows as the GEMM finishes it.
pub(super) fn conv(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (x, w, b) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 1)?, opt_tensor_arg(inputs, 2)?);
    if !x.dtype().is_float() || w.dtype() != x.dtype() || b.is_some_and(|b| b.dtype() != x.dtype()) {
        return Err("X, W and B must share one float dtype".into());
    }
    if inputs.len() > 4 {
        return Err(format!("Conv takes at most 4 inputs (X, W, B, Residual), got {}", inputs.len()));
    }
    let residual = opt_tensor_arg(inputs, 3)?;
    let act = super::activation(ctx.attrs, x.dtype())?;
    let spec = ConvSpec::new(ctx.attrs, x.shape(), w.shape())?;
    if let Some(b) = b {
        if b.len() != spec.m || b.rank() != 1 {
            return Err(format!("B has shape {:?}, expected [{}] (output channels)", b.shape(), spec.m));
        }
    }
    super::check_residual(residual, x.dtype(), &spec.output_shape())?;
    fn run<T: Acc>(
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        (residual, act): (Option<&Tensor>, Option<Activation>),
        spec: &ConvSpec,
    ) -> Result<Tensor, String> {
        let bias = b.map(T::load);
        let res = residual.map(T::load);
        let epi = Epilogue { scale: None, addend: None, residual: res.as_deref(), act };
        let y = conv_core::<T>(&T::load(x), &T::load(w), bias.as_deref(), spec, &epi)?;
        T::store(x.dtype(), spec.output_shape(), y)
    }
    Ok(single(with_acc!(x.dtype(), run(x, w, b, (residual, act), &spec))?))
}

/// ConvInteger: convolution of zero-point-centred 8-bit operands into int32.
pub(super) fn conv_integer(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (x, w) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 1)?);
    let spec = ConvSpec::new(ctx.attrs, x.shape(), w.shape())?;
    let xv = centered(x, opt_tensor_arg(inputs, 2)?, 1)?;
    let wv = centered(w, opt_tensor_arg(inputs, 3)?, spec.m)?;
    let y = conv_core::<i64>(&xv, &wv, None, &spec, &Epilogue::none())?;
    Ok(single(i64::store(DType::I32, spec.output_shape(), y)?))
}

/// QLinearConv: integer convolution (+ int32 bias) requantized with
/// `x_scale * w_scale / y_scale` (w_scale per tensor or per output channel).
pub(super) fn qlinear_conv(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (x, w) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 3)?);
    let (x_scale, w_scale, y_scale) = (tensor_arg(inputs, 1)?, tensor_arg(inputs, 4)?, tensor_arg(inputs, 6)?);
    let (y_zp, bias) = (opt_tensor_arg(inputs, 7)?, opt_tensor_arg(inputs, 8)?);
    let spec = ConvSpec::new(ctx.attrs, x.shape(), w.shape())?;
    let xv = centered(x, opt_tensor_arg(inputs, 2)?, 1)?;
    let wv = centered(w, opt_tensor_arg(inputs, 5)?, spec.m)?;
    let bias = match bias {
        Some(b) if b.dtype() != DType::I32 || b.len() != spec.m => {
            return Err(format!("B must be int32 with {} entries, got {} {:?}", spec.m, b.dtype(), b.shape()))
        }
        Some(b) => Some(b.to_i64_vec()),
        None => None,
    };
    let acc = conv_core::<i64>(&xv, &wv, bias.as_deref(), &spec, &Epilogue::none())?;
    let mult = requant_multipliers(&[x_scale, w_scale], y_scale, spec.m)?;
    let out_dtype = y_zp.map_or(x.dtype(), |z| z.dtype());
    let zp = match y_zp {
        Some(z) if z.len() == 1 => z.to_i64_vec()[0],
        Some(z) => return Err(format!("y_zero_point must be a scalar, got shape {:?}", z.shape())),
        None => 0,
    };
    let os = spec.win.output_size();
    let q: Vec<i64> = acc
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / os.max(1)) % spec.m;
            saturate_round(v as f64 * mult[if mult.len() == 1 { 0 } else { ch }], zp, out_dtype)
        })
        .collect::<Result<_, _>>()?;
    Ok(single(i64::store(out_dtype, spec.output_shape(), q)?))
}

/// ConvTranspose: per group `col = W_gᵀ · X_g`, then col2im scatter-add into the output.
pub(super) fn conv_transpose(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (x, w, b) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 1)?, opt_tensor_arg(inputs, 2)?);
    if !x.dtype().is_float() || w.dtype() != x.dtype() || b.is_some_and(|b| b.dtype() != x.dtype()) {
        return Err("X, W and B must share one float dtype".into());
    }
    let spec = TransposeSpec::new(ctx.attrs, x.shape(), w.shape())?;
    if let Some(b) = b {
        if b.len() != spec.m {
            return Err(format!("B has {} entries, expected {} (output channels)", b.len(), spec.m));
        }
    }
    fn run<T: Acc>(x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: &TransposeSpec) -> Result<Tensor, String> {
        let (xv, wv) = (T::load(x), T::load(w));
        let bias = b.map(T::load);
        let (cg, mg, ks) = (s.c / s.group, s.m / s.group, s.kernel.iter().product::<usize>());
        let is: usize = s.input.iter().product();
        let os: usize = s.output.iter().product();
        let mut y = zeros::<T>(&s.output_shape())?;
        // Wᵀ per group: [mg*ks, cg].
        let wt: Vec<Vec<T>> =
            (0..s.group).map(|g| transpose(&wv[g * cg * mg * ks..(g + 1) * cg * mg * ks], cg, mg * ks)).collect();
        let mut col = zeros::<T>(&[mg * ks, is])?;
        for n in 0..s.n {
            for (g, wg) in wt.iter().enumerate() {
                col.iter_mut().for_each(|v| *v = T::ZERO);
                let xg = &xv[(n * s.c + g * cg) * is..(n * s.c + (g + 1) * cg) * is];
                gemm_acc(mg * ks, is, cg, wg, xg, &mut col);
                let yg = &mut y[(n * s.m + g * mg) * os..(n * s.m + (g + 1) * mg) * os];
                let geo = Col2ImGeometry {
                    kernel: &s.kernel,
                    strides: &s.strides,
                    dilations: &s.dilations,
                    pad_begin: &s.pad_begin,
                    grid: &s.input,
                    image: &s.output,
                };
                col2im_add(&col, mg, &geo, yg);
            }
            if let Some(bias) = &bias {
                for (mi, row) in y[n * s.m * os..(n + 1) * s.m * os].chunks_mut(os.max(1)).enumerate() {
                    row.iter_mut().for_each(|v| *v = v.add(bias[mi]));
                }
            }
        }
        T::store(x.dtype(), s.output_shape(), y)
    }
    Ok(single(with_acc!(x.dtype(), run(x, w, b, &spec))?))
}

/// Col2Im: scatter-add the columns `[N, C*prod(block), L]` back into images `[N, C, image...]`.
pub(super) fn col2im(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let image = tensor_arg(inputs, 1)?.to_i64_vec();
    let block = tensor_arg(inputs, 2)?.to_i64_vec();
    if x.rank() != 3 {
        return Err(format!("input must have rank 3, got shape {:?}", x.shape()));
    }
    let nsp = image.len();
    if block.len() != nsp || nsp == 0 {
        return Err(format!("image_shape {image:?} and block_shape {block:?} must have the same non-zero length"));
    }
    if image.iter().any(|&d| d < 0) || block.iter().any(|&d| d < 1) {
        return Err(format!("invalid image_shape {image:?} or block_shape {block:?}"));
    }
    let image: Vec<usize> = image.iter().map(|&d| d as usize).collect();
    let kernel: Vec<usize> = block.iter().map(|&d| d as usize).collect();
    let strides = super::ints_or(ctx.attrs, "strides", nsp, 1)?;
    let dilations = super::ints_or(ctx.attrs, "dilations", nsp, 1)?;
    let pads = super::ints_or(ctx.attrs, "pads", 2 * nsp, 0)?;
    super::check_window_attrs(&strides, &dilations, &pads)?;
    if block.iter().any(|&b| b > super::MAX_WINDOW) {
        return Err(format!("block_shape {block:?} is too large"));
    }
    let mut grid = Vec::with_capacity(nsp);
    for i in 0..nsp {
        let dk = (kernel[i] as i64 - 1) * dilations[i] + 1;
        let span = image[i] as i64 + pads[i] + pads[i + nsp] - dk;
        if span < 0 {
            return Err(format!("block of extent {dk} does not fit the padded image along axis {i}"));
        }
        grid.push((span / strides[i] + 1) as usize);
    }
    let ks = checked_numel(&kernel).map_err(|e| e.to_string())?;
    let (n, ck, l) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    if ck % ks != 0 || l != grid.iter().product::<usize>() {
        return Err(format!(
            "input shape {:?} does not match block_shape {kernel:?} ({ks} per channel) and {} block positions",
            x.shape(),
            grid.iter().product::<usize>()
        ));
    }
    let c = ck / ks;
    let mut out_shape = vec![n, c];
    out_shape.extend(&image);
    let strides: Vec<usize> = strides.iter().map(|&v| v as usize).collect();
    let dilations: Vec<usize> = dilations.iter().map(|&v| v as usize).collect();
    let pad_begin: Vec<isize> = pads[..nsp].iter().map(|&p| p as isize).collect();
    fn run<T: Acc>(x: &Tensor, shape: Vec<usize>, geo: &Col2ImGeometry, c: usize) -> Result<Tensor, String> {
        let xv = T::load(x);
        let mut y = zeros::<T>(&shape)?;
        let per_in = x.len() / shape[0].max(1);
        let per_out = y.len() / shape[0].max(1);
        if per_in > 0 && per_out > 0 {
            for (xi, yi) in xv.chunks(per_in).zip(y.chunks_mut(per_out)) {
                col2im_add(xi, c, geo, yi);
            }
        }
        T::store(x.dtype(), shape, y)
    }
    let geo = Col2ImGeometry {
        kernel: &kernel,
        strides: &strides,
        dilations: &dilations,
        pad_begin: &pad_begin,
        grid: &grid,
        image: &image,
    };
    Ok(single(with_acc!(x.dtype(), run(x, out_shape, &geo, c))?))
}

/// DeformConv: like Conv, but every kernel tap samples the input (bilinearly, zero outside) at
/// its regular position plus a learned offset, optionally scaled by a mask.
pub(super) fn deform_conv(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (x, w, off) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 1)?, tensor_arg(inputs, 2)?);
    let (b, mask) = (opt_tensor_arg(inputs, 3)?, opt_tensor_arg(inputs, 4)?);
    let dt = x.dtype();
    if !dt.is_float() || [Some(w), Some(off), b, mask].iter().flatten().any(|t| t.dtype() != dt) {
        return Err("X, W, offset, B and mask must share one float dtype".into());
    }
    let spec = ConvSpec::new(ctx.attrs, x.shape(), w.shape())?;
    let og = ctx.attrs.int("offset_group", 1)?;
    if og < 1 || spec.c % og as usize != 0 {
        return Err(format!("offset_group {og} must be positive and divide the {} input channels", spec.c));
    }
    let og = og as usize;
    let nsp = spec.win.kernel.len();
    let ks = spec.win.kernel_size();
    let mut want_off = vec![spec.n, og * ks * nsp];
    want_off.extend(&spec.win.output);
    if off.shape() != want_off.as_slice() {
        return Err(format!("offset has shape {:?}, expected {want_off:?}", off.shape()));
    }
    if let Some(mk) = mask {
        let mut want = vec![spec.n, og * ks];
        want.extend(&spec.win.output);
        if mk.shape() != want.as_slice() {
            return Err(format!("mask has shape {:?}, expected {want:?}", mk.shape()));
        }
    }
    if let Some(b) = b {
        if b.len() != spec.m {
            return Err(format!("B has {} entries, expected {}", b.len(), spec.m));
        }
    }
    fn run<T: Acc>(
        x: &Tensor,
        w: &Tensor,
        off: &Tensor,
        b: Option<&Tensor>,
        mask: Option<&Tensor>,
        s: &ConvSpec,
        og: usize,
    ) -> Result<Tensor, String> {
        let (xv, wv, offv) = (T::load(x), T::load(w), T::load(off));
        let maskv = mask.map(T::load);
        let bias = b.map(T::load);
        let win = &s.win;
        let nsp = win.kernel.len();
        let (ks, os, is) = (win.kernel_size(), win.output_size(), win.input_size());
        let (cg, mg) = (s.c / s.group, s.m / s.group);
        let c_per_og = s.c / og;
        let istr = strides_of(&win.input);
        let mut y = zeros::<T>(&s.output_shape())?;
        let mut col = zeros::<T>(&[cg * ks, os])?;
        let mut kidx = vec![0usize; nsp];
        let mut oidx = vec![0usize; nsp];
        let mut pos = vec![0f64; nsp];
        for n in 0..s.n {
            for g in 0..s.group {
                for ci in 0..cg {
                    let ch = g * cg + ci;
                    let ogi = ch / c_per_og;
                    let xc = &xv[(n * s.c + ch) * is..(n * s.c + ch + 1) * is];
                    kidx.fill(0);
                    for kf in 0..ks {
                        let row = &mut col[(ci * ks + kf) * os..(ci * ks + kf + 1) * os];
                        let obase = ((n * og + ogi) * ks + kf) * nsp;
                        oidx.fill(0);
                        for (p, r) in row.iter_mut().enumerate() {
                            for a in 0..nsp {
                                let regular = (oidx[a] * win.strides[a] + kidx[a] * win.dilations[a]) as f64
                                    - win.pad_begin[a] as f64;
                                pos[a] = regular + offv[(obase + a) * os + p].as_f64();
                            }
                            let mut v = sample(xc, &win.input, &istr, &pos);
                            if let Some(mk) = &maskv {
                                v *= mk[((n * og + ogi) * ks + kf) * os + p].as_f64();
                            }
                            *r = T::of_f64(v);
                            next_index(&mut oidx, &win.output);
                        }
                        next_index(&mut kidx, &win.kernel);
                    }
                }
                let yg = &mut y[(n * s.m + g * mg) * os..(n * s.m + (g + 1) * mg) * os];
                if let Some(bias) = &bias {
                    for (mi, row) in yg.chunks_mut(os.max(1)).enumerate() {
                        row.fill(bias[g * mg + mi]);
                    }
                }
                gemm_acc(mg, os, cg * ks, &wv[g * mg * cg * ks..(g + 1) * mg * cg * ks], &col, yg);
            }
        }
        T::store(x.dtype(), s.output_shape(), y)
    }
    Ok(single(with_acc!(dt, run(x, w, off, b, mask, &spec, og))?))
}

/// CausalConvWithState: depthwise causal 1-D convolution over `[past_state | input]`, with an
/// optional fused SiLU; also returns the last `k - 1` positions as the next state.
pub(super) fn causal_conv_with_state(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (x, w) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 1)?);
    let (b, past) = (opt_tensor_arg(inputs, 2)?, opt_tensor_arg(inputs, 3)?);
    let dt = x.dtype();
    if !matches!(dt, DType::F32 | DType::F16 | DType::BF16)
        || [Some(w), b, past].iter().flatten().any(|t| t.dtype() != dt)
    {
        return Err("input, weight, bias and past_state must share one of float, float16, bfloat16".into());
    }
    let act = ctx.attrs.string("activation", "none".into())?;
    let silu = match act.as_str() {
        "none" => false,
        "silu" | "swish" => true,
        other => return Err(format!("unsupported activation '{other}' (expected none, silu or swish)")),
    };
    if x.rank() != 3 || w.rank() != 3 {
        return Err(format!("input and weight must be rank 3, got {:?} and {:?}", x.shape(), w.shape()));
    }
    let (nb, c, l) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let k = w.shape()[2];
    if w.shape()[0] != c || w.shape()[1] != 1 || k == 0 {
        return Err(format!("weight must have shape [{c}, 1, k>=1], got {:?}", w.shape()));
    }
    if let Some(b) = b {
        if b.shape() != [c] {
            return Err(format!("bias must have shape [{c}], got {:?}", b.shape()));
        }
    }
    if let Some(p) = past {
        if p.shape() != [nb, c, k - 1] {
            return Err(format!("past_state must have shape [{nb}, {c}, {}], got {:?}", k - 1, p.shape()));
        }
    }
    let (xv, wv) = (f32::load(x), f32::load(w));
    let bv = b.map(f32::load);
    let pv = past.map(f32::load);
    let (mut y, mut state) = (zeros::<f32>(&[nb, c, l])?, zeros::<f32>(&[nb, c, k - 1])?);
    let mut padded = vec![0f32; l + k - 1];
    for bc in 0..nb * c {
        let ch = bc % c;
        if let Some(p) = &pv {
            padded[..k - 1].copy_from_slice(&p[bc * (k - 1)..(bc + 1) * (k - 1)]);
        } else {
            padded[..k - 1].fill(0.0);
        }
        padded[k - 1..].copy_from_slice(&xv[bc * l..(bc + 1) * l]);
        let wk = &wv[ch * k..(ch + 1) * k];
        let b0 = bv.as_ref().map_or(0.0, |b| b[ch]);
        for (t, out) in y[bc * l..(bc + 1) * l].iter_mut().enumerate() {
            let v = wk.iter().zip(&padded[t..t + k]).fold(b0, |s, (&a, &b)| s + a * b);
            *out = if silu {
                // The reference rounds the convolution to the input dtype before the activation.
                let v = round_to_dtype(dt, v as f64) as f32;
                v / (1.0 + (-v).exp())
            } else {
                v
            };
        }
        state[bc * (k - 1)..(bc + 1) * (k - 1)].copy_from_slice(&padded[l..]);
    }
    Ok(vec![
        Value::Tensor(f32::store(dt, vec![nb, c, l], y)?),
        Value::Tensor(f32::store(dt, vec![nb, c, k - 1], state)?),
    ])
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Resolved shapes of a (forward) convolution.
struct ConvSpec {
    n: usize,
    c: usize,
    m: usize,
    group: usize,
    win: Window,
}

impl ConvSpec {
    fn new(attrs: &Attributes, x: &[usize], w: &[usize]) -> Result<ConvSpec, String> {
        if x.len() < 3 || w.len() != x.len() {
            return Err(format!("X {x:?} must have rank >= 3 and W {w:?} the same rank"));
        }
        let group = attrs.int("group", 1)?;
        if group < 1 {
            return Err(format!("group must be >= 1, got {group}"));
        }
        let group = group as usize;
        let (n, c, m) = (x[0], x[1], w[0]);
        if w[1].checked_mul(group) != Some(c) || m % group != 0 {
            return Err(format!("X {x:?} and W {w:?} do not match group {group}"));
        }
        let kernel: Vec<usize> = match attrs.ints_opt("kernel_shape")? {
            Some(ks) => {
                if ks.iter().map(|&v| v as usize).ne(w[2..].iter().copied()) {
                    return Err(format!("kernel_shape {ks:?} differs from W's spatial shape {:?}", &w[2..]));
                }
                w[2..].to_vec()
            }
            None => w[2..].to_vec(),
        };
        let win = Window::resolve(attrs, &x[2..], &kernel, false)?;
        Ok(ConvSpec { n, c, m, group, win })
    }

    fn output_shape(&self) -> Vec<usize> {
        let mut s = vec![self.n, self.m];
        s.extend(&self.win.output);
        s
    }
}

/// Grouped convolution core: per image and group, im2col then `W_g · col` (bias first), then
/// the epilogue on the finished rows (row = image · M + output channel).
fn conv_core<T: Acc>(x: &[T], w: &[T], bias: Option<&[T]>, s: &ConvSpec, epi: &Epilogue<T>) -> Result<Vec<T>, String> {
    let win = &s.win;
    let (ks, os, is) = (win.kernel_size(), win.output_size(), win.input_size());
    let (cg, mg) = (s.c / s.group, s.m / s.group);
    let rows = cg * ks;
    let mut y = zeros::<T>(&s.output_shape())?;
    if y.is_empty() {
        return Ok(y);
    }
    if let Some(b) = bias {
        for (i, row) in y.chunks_mut(os).enumerate() {
            row.fill(b[i % s.m]);
        }
    }
    // A 1x1 kernel with unit strides and no padding reads the input as it is.
    let direct = ks == 1 && win.output == win.input && win.strides.iter().all(|&v| v == 1);
    let one = |ng: usize, yg: &mut [T], col: &mut Vec<T>| {
        let (n, g) = (ng / s.group, ng % s.group);
        let xg = &x[(n * s.c + g * cg) * is..(n * s.c + (g + 1) * cg) * is];
        let colref: &[T] = if direct {
            xg
        } else {
            im2col(xg, cg, win, col);
            col
        };
        let wg = &w[g * mg * rows..(g + 1) * mg * rows];
        // Rows of this (image, group) block are output rows ng · mg + r.
        gemm_acc_then(mg, os, rows, wg, colref, yg, &|r0, block| epi.apply(ng * mg + r0, block, os));
    };
    let col_len = if direct { 0 } else { checked_numel(&[rows, os]).map_err(|e| e.to_string())? };
    if s.group > 1 && mg < 16 && s.n * s.group >= 2 {
        // Many thin groups (depthwise): parallel over (image, group), each with its own buffer.
        y.par_chunks_mut(mg * os)
            .enumerate()
            .for_each_init(|| vec![T::ZERO; col_len], |col, (ng, yg)| one(ng, yg, col));
    } else {
        let mut col = vec![T::ZERO; col_len];
        for (ng, yg) in y.chunks_mut(mg * os).enumerate() {
            one(ng, yg, &mut col);
        }
    }
    Ok(y)
}

/// Lay out every kernel tap's view of `cg` channels of `x` as rows of `col`
/// (`[cg * kernel_size, output_size]`), zeros where a tap falls into padding.
fn im2col<T: Acc>(x: &[T], cg: usize, win: &Window, col: &mut [T]) {
    let (ks, os, is) = (win.kernel_size(), win.output_size(), win.input_size());
    let rows = &mut col[..cg * ks * os];
    // Channels fill disjoint rows; split them over threads when there is enough to copy.
    if cg >= 2 && rows.len() >= 1 << 16 {
        rows.par_chunks_mut(ks * os).zip(x.par_chunks(is)).for_each(|(r, xc)| im2col_channel(xc, win, r));
    } else {
        rows.chunks_mut(ks * os).zip(x.chunks(is)).for_each(|(r, xc)| im2col_channel(xc, win, r));
    }
}

/// im2col of one channel `xc` into its `kernel_size` rows.
fn im2col_channel<T: Acc>(xc: &[T], win: &Window, rows: &mut [T]) {
    let nsp = win.kernel.len();
    let os = win.output_size();
    let last = nsp - 1;
    let ol = win.output[last];
    let istr = strides_of(&win.input);
    let mut kidx = vec![0usize; nsp];
    let mut oidx = vec![0usize; last];
    for row in rows.chunks_mut(os) {
        // Along the last axis the tap reads input o * stride + off.
        let off = (kidx[last] * win.dilations[last]) as isize - win.pad_begin[last] as isize;
        let st = win.strides[last];
        let (lo, hi) = valid_range(ol, win.input[last], st, off);
        oidx.fill(0);
        for seg in row.chunks_mut(ol) {
            let mut base = Some(0usize);
            for ax in 0..last {
                base = base.and_then(|b| win.coord(ax, oidx[ax], kidx[ax]).map(|c| b + c * istr[ax]));
            }
            match base {
                Some(b) if lo < hi => {
                    seg[..lo].fill(T::ZERO);
                    seg[hi..].fill(T::ZERO);
                    // First tap read; non-negative by construction of `lo`.
                    let src = (b as isize + off + (lo * st) as isize) as usize;
                    if st == 1 {
                        seg[lo..hi].copy_from_slice(&xc[src..src + (hi - lo)]);
                    } else {
                        for (o, v) in seg[lo..hi].iter_mut().enumerate() {
                            *v = xc[src + o * st];
                        }
                    }
                }
                _ => seg.fill(T::ZERO),
            }
            next_index(&mut oidx, &win.output[..last]);
        }
        next_index(&mut kidx, &win.kernel);
    }
}

/// Where col2im puts things: block positions on a `grid`, taps of `kernel` placed at
/// `grid_pos * stride + tap * dilation - pad_begin` in an `image`.
struct Col2ImGeometry<'a> {
    kernel: &'a [usize],
    strides: &'a [usize],
    dilations: &'a [usize],
    pad_begin: &'a [isize],
    grid: &'a [usize],
    image: &'a [usize],
}

/// Scatter-add `col` (`[channels * kernel_size, grid_size]`) into `out` (`[channels, image]`).
fn col2im_add<T: Acc>(col: &[T], channels: usize, g: &Col2ImGeometry, out: &mut [T]) {
    let ks: usize = g.kernel.iter().product();
    let gs: usize = g.grid.iter().product();
    let is: usize = g.image.iter().product();
    if gs == 0 || is == 0 || ks == 0 {
        return;
    }
    let (col, out) = (&col[..channels * ks * gs], &mut out[..channels * is]);
    // Channels write disjoint images; split them over threads when there is enough work.
    if channels >= 2 && col.len() >= 1 << 16 {
        out.par_chunks_mut(is).zip(col.par_chunks(ks * gs)).for_each(|(o, c)| col2im_channel(c, g, o));
    } else {
        out.chunks_mut(is).zip(col.chunks(ks * gs)).for_each(|(o, c)| col2im_channel(c, g, o));
    }
}

/// col2im of one channel's `kernel_size` rows into its image `oc`.
fn col2im_channel<T: Acc>(rows: &[T], g: &Col2ImGeometry, oc: &mut [T]) {
    let nsp = g.kernel.len();
    let gs: usize = g.grid.iter().product();
    let istr = strides_of(g.image);
    let last = nsp - 1;
    let gl = g.grid[last];
    let coord = |ax: usize, p: usize, k: usize| -> Option<usize> {
        let c = (p * g.strides[ax] + k * g.dilations[ax]) as isize - g.pad_begin[ax];
        (c >= 0 && (c as usize) < g.image[ax]).then_some(c as usize)
    };
    let mut kidx = vec![0usize; nsp];
    let mut pidx = vec![0usize; last];
    for row in rows.chunks(gs) {
        let off = (kidx[last] * g.dilations[last]) as isize - g.pad_begin[last];
        let st = g.strides[last];
        let (lo, hi) = valid_range(gl, g.image[last], st, off);
        pidx.fill(0);
        for seg in row.chunks(gl) {
            let mut base = Some(0usize);
            for ax in 0..last {
                base = base.and_then(|b| coord(ax, pidx[ax], kidx[ax]).map(|c| b + c * istr[ax]));
            }
            if let (Some(b), true) = (base, lo < hi) {
                // First position written; non-negative by construction of `lo`.
                let dst = (b as isize + off + (lo * st) as isize) as usize;
                for (p, &v) in seg[lo..hi].iter().enumerate() {
                    let o = &mut oc[dst + p * st];
                    *o = o.add(v);
                }
            }
            next_index(&mut pidx, &g.grid[..last]);
        }
        next_index(&mut kidx, g.kernel);
    }
}

/// Resolved shapes of a transposed convolution.
struct TransposeSpec {
    n: usize,
    c: usize,
    m: usize,
    group: usize,
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    /// May be negative when `output_shape` asks for more than the natural size.
    pad_begin: Vec<isize>,
    input: Vec<usize>,
    output: Vec<usize>,
}

impl TransposeSpec {
    fn new(attrs: &Attributes, x: &[usize], w: &[usize]) -> Result<TransposeSpec, String> {
        if x.len() < 3 || w.len() != x.len() {
            return Err(format!("X {x:?} must have rank >= 3 and W {w:?} the same rank"));
        }
        let nsp = x.len() - 2;
        let group = attrs.int("group", 1)?;
        if group < 1 || x[1] != w[0] || !x[1].is_multiple_of(group as usize) {
            return Err(format!("X {x:?} and W {w:?} do not match group {group}"));
        }
        let group = group as usize;
        let kernel = w[2..].to_vec();
        if kernel.contains(&0) {
            return Err(format!("W {w:?} has a zero kernel extent"));
        }
        if let Some(ks) = attrs.ints_opt("kernel_shape")? {
            if ks.iter().map(|&v| v as usize).ne(kernel.iter().copied()) {
                return Err(format!("kernel_shape {ks:?} differs from W's spatial shape {kernel:?}"));
            }
        }
        let auto_pad = attrs.string("auto_pad", "NOTSET".into())?;
        let strides = super::ints_or(attrs, "strides", nsp, 1)?;
        let dilations = super::ints_or(attrs, "dilations", nsp, 1)?;
        let pads = super::ints_or(attrs, "pads", 2 * nsp, 0)?;
        let out_pad = super::ints_or(attrs, "output_padding", nsp, 0)?;
        super::check_window_attrs(&strides, &dilations, &pads)?;
        super::check_window_attrs(&[], &[], &out_pad)?;
        if kernel.iter().any(|&k| k as u64 > super::MAX_WINDOW as u64) {
            return Err(format!("W {w:?} has an oversized kernel extent"));
        }
        let out_shape = match attrs.ints_opt("output_shape")? {
            Some(os) if os.len() == nsp => Some(os),
            Some(os) if os.len() == nsp + 2 => Some(os[2..].to_vec()),
            Some(os) => return Err(format!("output_shape {os:?} does not match {nsp} spatial dims")),
            None => None,
        };
        let mut pad_begin = Vec::with_capacity(nsp);
        let mut output = Vec::with_capacity(nsp);
        for i in 0..nsp {
            // i64 suffices: dims <= 2^34 (allocated), strides/dilations/kernel/pads <= 2^31.
            let (n, s) = (x[i + 2] as i64, strides[i]);
            let dk = (kernel[i] as i64 - 1) * dilations[i] + 1;
            let full = s.saturating_mul(n - 1).saturating_add(out_pad[i] + dk);
            let same = matches!(auto_pad.as_str(), "SAME_UPPER" | "SAME_LOWER");
            let (begin, out) = if out_shape.is_some() || same {
                // Pads derived from the requested size (floor division: a negative total pads
                // the end, as the reference computes it).
                let out = out_shape.as_ref().map_or(n.saturating_mul(s), |os| os[i]);
                let total = full.saturating_sub(out);
                let half = total.div_euclid(2);
                let begin = if auto_pad == "SAME_UPPER" { half } else { total - half };
                (begin, out)
            } else {
                match auto_pad.as_str() {
                    "VALID" => (0, full),
                    "NOTSET" => (pads[i], full - pads[i] - pads[i + nsp]),
                    other => return Err(format!("unknown auto_pad '{other}'")),
                }
            };
            if out < 0 {
                return Err(format!("computed output size {out} along spatial axis {i} is negative"));
            }
            pad_begin.push(begin as isize);
            output.push(out as usize);
        }
        Ok(TransposeSpec {
            n: x[0],
            c: x[1],
            m: w[1].checked_mul(group).ok_or_else(|| format!("W {w:?} with group {group} is too large"))?,
            group,
            kernel,
            strides: strides.iter().map(|&v| v as usize).collect(),
            dilations: dilations.iter().map(|&v| v as usize).collect(),
            pad_begin,
            input: x[2..].to_vec(),
            output,
        })
    }

    fn output_shape(&self) -> Vec<usize> {
        let mut s = vec![self.n, self.m];
        s.extend(&self.output);
        s
    }
}

/// An 8-bit conv operand minus its zero point (a scalar, or one per leading-axis slice when
/// `per_channel` > 1, i.e. per output channel of W).
fn centered(t: &Tensor, zp: Option<&Tensor>, per_channel: usize) -> Result<Vec<i64>, String> {
    if !matches!(t.dtype(), DType::I8 | DType::U8) {
        return Err(format!("quantized operand must be int8 or uint8, got {}", t.dtype()));
    }
    let mut v = t.to_i64_vec();
    let Some(zp) = zp else { return Ok(v) };
    if zp.dtype() != t.dtype() {
        return Err(format!("zero point dtype {} differs from its operand's {}", zp.dtype(), t.dtype()));
    }
    let z = zp.to_i64_vec();
    if z.len() == 1 {
        v.iter_mut().for_each(|e| *e -= z[0]);
    } else if z.len() == per_channel && per_channel > 1 {
        let per = v.len() / per_channel;
        for (i, e) in v.iter_mut().enumerate() {
            *e -= z[i / per.max(1)];
        }
    } else {
        return Err(format!("zero point of shape {:?} does not match operand shape {:?}", zp.shape(), t.shape()));
    }
    Ok(v)
}

/// Multilinear interpolation of `x` (dims `dims`) at real coordinates `pos`, corners outside the
/// input contributing zero (GridSample with align_corners and zero padding).
fn sample<T: Acc>(x: &[T], dims: &[usize], strides: &[usize], pos: &[f64]) -> f64 {
    let nsp = dims.len();
    let mut acc = 0.0;
    'corner: for corner in 0..(1usize << nsp) {
        let mut weight = 1.0;
        let mut off = 0usize;
        for a in 0..nsp {
            let f = pos[a].floor();
            let hi = corner >> a & 1 == 1;
            let c = if hi { f + 1.0 } else { f };
            let wgt = if hi { pos[a] - f } else { 1.0 - (pos[a] - f) };
            if !(c >= 0.0 && c < dims[a] as f64) || wgt == 0.0 {
                continue 'corner;
            }
            weight *= wgt;
            off += c as usize * strides[a];
        }
        acc += weight * x[off].as_f64();
    }
    acc
}
