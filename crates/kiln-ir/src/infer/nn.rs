//! Inference rules for the `nn` family: matrix products, convolutions, pooling and linear
//! (de)quantization (see `infer/mod.rs`).

use super::helpers::{broadcast_shapes, normalize_axis, unranked};
use super::{InferFn, Known};
use crate::{Activation, Attributes, DType, Dim, Shape, ValueType};

pub(super) fn rule(op: &str) -> Option<InferFn> {
    Some(match op {
        "MatMul" => matmul,
        "MatMulInteger" => matmul_integer,
        "QLinearMatMul" => qlinear_matmul,
        "Gemm" => gemm,
        "Conv" => conv,
        crate::inverted_bottleneck::OP => inverted_bottleneck,
        "ConvInteger" => conv_integer,
        "QLinearConv" => qlinear_conv,
        "ConvTranspose" => conv_transpose,
        "DeformConv" => deform_conv,
        "MaxPool" => max_pool,
        "AveragePool" | "LpPool" => avg_lp_pool,
        "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => global_pool,
        "MaxUnpool" => max_unpool,
        "Col2Im" => col2im,
        "CausalConvWithState" => causal_conv_with_state,
        "QuantizeLinear" => quantize_linear,
        "DequantizeLinear" => dequantize_linear,
        "DynamicQuantizeLinear" => dynamic_quantize_linear,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Matrix products

/// MatMul; the fused form (inputs [A, B, Bias?, Residual?] and/or an activation) computes
/// `act(A·B + Bias + Residual)`, Bias 1-D along the output's last dim.
fn matmul(k: &Known) -> Result<Vec<ValueType>, String> {
    let (a, b) = (k.tensor(0)?, k.tensor(1)?);
    if a.dtype != b.dtype {
        return Err(format!("inputs must have the same dtype, got {} and {}", a.dtype, b.dtype));
    }
    if !(a.dtype.is_float() || matches!(a.dtype, DType::I32 | DType::I64 | DType::U32 | DType::U64)) {
        return Err(format!("dtype {} is not supported", a.dtype));
    }
    let out = matmul_type(a.dtype, a.shape.as_ref(), b.shape.as_ref())?;
    if k.has_input(2) && b.shape.as_ref().is_some_and(|s| s.len() < 2) {
        return Err("a fused Bias needs B of rank >= 2 (it runs along B's last dim)".into());
    }
    let rank = out.as_tensor().and_then(|t| t.rank());
    check_epilogue(k, &out, rank.map(|r| r.saturating_sub(1)), "Bias")?;
    Ok(vec![out])
}

/// The epilogue of a fused Conv / Gemm / MatMul (see `kiln_ir::activation`): at most four
/// inputs; input 2, if `bias_axis` is given, is 1-D along that axis of the output; input 3
/// (the residual) has the output's dtype and exactly its shape; the activation attributes are
/// valid and only on float layers.
fn check_epilogue(k: &Known, out: &ValueType, bias_axis: Option<usize>, bias_name: &str) -> Result<(), String> {
    if k.inputs.len() > 4 {
        return Err(format!("takes at most 4 inputs, got {}", k.inputs.len()));
    }
    let Some(out) = out.as_tensor() else { return Ok(()) };
    let act = Activation::from_attrs(k.attrs)?;
    let fused = act.is_some() || k.inputs.len() > 2 && k.op == "MatMul" || k.has_input(3);
    if fused && !out.dtype.is_float() {
        return Err(format!("a fused bias, residual or activation needs a float dtype, got {}", out.dtype));
    }
    if let (Some(axis), Some(b)) = (bias_axis, k.opt_tensor(2)?) {
        if b.dtype != out.dtype {
            return Err(format!("{bias_name} must have dtype {}, got {}", out.dtype, b.dtype));
        }
        if let Some(bs) = &b.shape {
            if bs.len() != 1 {
                return Err(format!("{bias_name} must be 1-D, got shape {}", crate::format_shape(bs)));
            }
            if let (Some(Dim::Known(n)), Dim::Known(len)) = (out.shape.as_ref().and_then(|s| s.get(axis)), &bs[0]) {
                if n != len {
                    return Err(format!("{bias_name} has {len} entries, expected {n} (output dim {axis})"));
                }
            }
        }
    }
    if let Some(r) = k.opt_tensor(3)? {
        if r.dtype != out.dtype {
            return Err(format!("Residual must have dtype {}, got {}", out.dtype, r.dtype));
        }
        if let (Some(rs), Some(os)) = (&r.shape, &out.shape) {
            let differ = rs.len() != os.len()
                || rs.iter().zip(os).any(|(x, y)| matches!((x, y), (Dim::Known(p), Dim::Known(q)) if p != q));
            if differ {
                return Err(format!(
                    "Residual of shape {} differs from the output shape {}",
                    crate::format_shape(rs),
                    crate::format_shape(os)
                ));
            }
        }
    }
    Ok(())
}

fn matmul_integer(k: &Known) -> Result<Vec<ValueType>, String> {
    for i in [0, 1] {
        let d = k.dtype(i)?;
        if !matches!(d, DType::I8 | DType::U8) {
            return Err(format!("input {i} must be int8 or uint8, got {d}"));
        }
    }
    check_zero_point(k, 2, 0)?;
    check_zero_point(k, 3, 1)?;
    Ok(vec![matmul_type(DType::I32, k.tensor(0)?.shape.as_ref(), k.tensor(1)?.shape.as_ref())?])
}

fn qlinear_matmul(k: &Known) -> Result<Vec<ValueType>, String> {
    let out = quantized_output_dtype(k, 0, 7)?;
    check_zero_point(k, 2, 0)?;
    check_zero_point(k, 5, 3)?;
    for i in [1, 4, 6] {
        let d = k.dtype(i)?;
        if !d.is_float() {
            return Err(format!("scale input {i} must be a float tensor, got {d}"));
        }
    }
    Ok(vec![matmul_type(out, k.tensor(0)?.shape.as_ref(), k.tensor(3)?.shape.as_ref())?])
}

/// numpy `matmul` shape rule: 1-D operands are promoted (and the added axis dropped again),
/// leading axes broadcast.
fn matmul_type(dtype: DType, a: Option<&Shape>, b: Option<&Shape>) -> Result<ValueType, String> {
    let (Some(a), Some(b)) = (a, b) else { return Ok(unranked(dtype)) };
    if a.is_empty() || b.is_empty() {
        return Err("MatMul operands must have rank >= 1".into());
    }
    let (a2, b2) = (a.len() == 1, b.len() == 1);
    let am: Shape = if a2 { vec![Dim::Known(1), a[0].clone()] } else { a.clone() };
    let bm: Shape = if b2 { vec![b[0].clone(), Dim::Known(1)] } else { b.clone() };
    let (ka, kb) = (&am[am.len() - 1], &bm[bm.len() - 2]);
    if let (Dim::Known(x), Dim::Known(y)) = (ka, kb) {
        if x != y {
            return Err(format!("inner dimensions differ: {} vs {}", crate::format_shape(a), crate::format_shape(b)));
        }
    }
    let mut out = broadcast_shapes(&am[..am.len() - 2].to_vec(), &bm[..bm.len() - 2].to_vec())?;
    if !a2 {
        out.push(am[am.len() - 2].clone());
    }
    if !b2 {
        out.push(bm[bm.len() - 1].clone());
    }
    Ok(ValueType::tensor(dtype, out))
}

fn gemm(k: &Known) -> Result<Vec<ValueType>, String> {
    let (a, b) = (k.tensor(0)?, k.tensor(1)?);
    if a.dtype != b.dtype {
        return Err(format!("A and B must have the same dtype, got {} and {}", a.dtype, b.dtype));
    }
    if !(a.dtype.is_float() || matches!(a.dtype, DType::I32 | DType::I64 | DType::U32 | DType::U64)) {
        return Err(format!("dtype {} is not supported", a.dtype));
    }
    if let Some(c) = k.opt_tensor(2)? {
        if c.dtype != a.dtype {
            return Err(format!("C must have dtype {}, got {}", a.dtype, c.dtype));
        }
    }
    let (ta, tb) = (k.attrs.int("transA", 0)? != 0, k.attrs.int("transB", 0)? != 0);
    let (Some(sa), Some(sb)) = (&a.shape, &b.shape) else {
        let out = super::helpers::unknown_dims(a.dtype, 2);
        check_epilogue(k, &out, None, "C")?;
        return Ok(vec![out]);
    };
    if sa.len() != 2 || sb.len() != 2 {
        return Err(format!("A and B must be 2-D, got ranks {} and {}", sa.len(), sb.len()));
    }
    let (m, ka) = if ta { (&sa[1], &sa[0]) } else { (&sa[0], &sa[1]) };
    let (kb, n) = if tb { (&sb[1], &sb[0]) } else { (&sb[0], &sb[1]) };
    if let (Dim::Known(x), Dim::Known(y)) = (ka, kb) {
        if x != y {
            return Err(format!("inner dimensions differ: {x} vs {y}"));
        }
    }
    let out = vec![m.clone(), n.clone()];
    check_epilogue(k, &ValueType::tensor(a.dtype, out.clone()), None, "C")?;
    if let Some(Some(sc)) = k.opt_tensor(2)?.map(|c| &c.shape) {
        if sc.len() > 2 {
            return Err(format!("C must have rank <= 2, got {}", sc.len()));
        }
        // C must broadcast unidirectionally to [M, N]: each of its (right-aligned) dims is 1
        // or equal to the output's.
        for (dc, dout) in sc.iter().rev().zip(out.iter().rev()) {
            if let (Dim::Known(c), Dim::Known(o)) = (dc, dout) {
                if *c != 1 && c != o {
                    return Err(format!(
                        "C of shape {} does not broadcast to [M, N] = {}",
                        crate::format_shape(sc),
                        crate::format_shape(&out)
                    ));
                }
            }
        }
    }
    Ok(vec![ValueType::tensor(a.dtype, out)])
}

// ---------------------------------------------------------------------------------------------
// Convolutions

/// Conv; the fused form (inputs [X, W, B?, Residual?] and/or an activation) computes
/// `act(conv(X, W) + B + Residual)`.
fn conv(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if !x.dtype.is_float() {
        return Err(format!("X must be a float tensor, got {}", x.dtype));
    }
    for i in [1, 2] {
        if let Some(t) = k.opt_tensor(i)? {
            if t.dtype != x.dtype {
                return Err(format!("input {i} must have dtype {}, got {}", x.dtype, t.dtype));
            }
        }
    }
    let out = conv_shape(k, x.dtype, 0, 1)?;
    check_epilogue(k, &out, Some(1), "B")?;
    Ok(vec![out])
}

/// KilnInvertedBottleneck (kiln_ir::inverted_bottleneck): the Conv rule per stage, on the
/// NCHW view of the NHWC image.
fn inverted_bottleneck(k: &Known) -> Result<Vec<ValueType>, String> {
    use crate::channels_last::{permute_type, TO_NCHW, TO_NHWC};
    use crate::inverted_bottleneck::{stage_attrs, Stage, INPUTS, RESIDUAL, X};
    if k.inputs.len() > INPUTS {
        return Err(format!("takes at most {INPUTS} inputs, got {}", k.inputs.len()));
    }
    let nchw = |i: usize| k.inputs.get(i).copied().flatten().map(|t| permute_type(t, &TO_NCHW));
    let mut x = nchw(X).ok_or("the image input X is missing")?;
    for stage in Stage::ALL {
        let (wi, bi) = (stage.weight_input(), stage.bias_input());
        let Some(w) = k.inputs.get(wi).copied().flatten() else {
            if stage == Stage::Expand && !k.has_input(bi) {
                continue;
            }
            return Err(format!("the {} stage's weight (input {wi}) is missing", stage.name()));
        };
        let residual = if stage == Stage::Project { nchw(RESIDUAL) } else { None };
        let attrs = stage_attrs(k.attrs, stage);
        let b = k.inputs.get(bi).copied().flatten();
        let consts = [None, k.const_inputs.get(wi).copied().flatten(), k.const_inputs.get(bi).copied().flatten(), None];
        let inputs = vec![Some(&x), Some(w), b, residual.as_ref()];
        let known = Known { op: "Conv", attrs: &attrs, inputs, const_inputs: &consts, num_outputs: 1 };
        let out = conv(&known).map_err(|e| format!("{} stage: {e}", stage.name()))?;
        x = out.into_iter().next().ok_or("the Conv rule gave no output")?;
    }
    Ok(vec![permute_type(&x, &TO_NHWC)])
}

fn conv_integer(k: &Known) -> Result<Vec<ValueType>, String> {
    for i in [0, 1] {
        let d = k.dtype(i)?;
        if !matches!(d, DType::I8 | DType::U8) {
            return Err(format!("input {i} must be int8 or uint8, got {d}"));
        }
    }
    check_zero_point(k, 2, 0)?;
    check_zero_point(k, 3, 1)?;
    Ok(vec![conv_shape(k, DType::I32, 0, 1)?])
}

fn qlinear_conv(k: &Known) -> Result<Vec<ValueType>, String> {
    let out = quantized_output_dtype(k, 0, 7)?;
    check_zero_point(k, 2, 0)?;
    check_zero_point(k, 5, 3)?;
    if let Some(b) = k.opt_tensor(8)? {
        if b.dtype != DType::I32 {
            return Err(format!("B must be int32, got {}", b.dtype));
        }
    }
    Ok(vec![conv_shape(k, out, 0, 3)?])
}

/// Output type of a convolution with data input `xi` and weights `wi` ([M, C/group, k...]).
fn conv_shape(k: &Known, dtype: DType, xi: usize, wi: usize) -> Result<ValueType, String> {
    let (x, w) = (k.tensor(xi)?, k.tensor(wi)?);
    let rank = match (&x.shape, &w.shape) {
        (Some(s), _) | (None, Some(s)) => s.len(),
        (None, None) => return Ok(unranked(dtype)),
    };
    if rank < 3 {
        return Err(format!("input rank must be >= 3 (N, C, spatial...), got {rank}"));
    }
    if let (Some(xs), Some(ws)) = (&x.shape, &w.shape) {
        if xs.len() != ws.len() {
            return Err(format!("X has rank {} but W has rank {}", xs.len(), ws.len()));
        }
    }
    let nsp = rank - 2;
    let group = k.attrs.int("group", 1)?;
    if group < 1 {
        return Err(format!("group must be >= 1, got {group}"));
    }
    let kernel = kernel_shape(k.attrs, w.shape.as_ref(), nsp)?;
    let geo = Geometry::read(k.attrs, nsp)?;
    if let (Some(xs), Some(ws)) = (&x.shape, &w.shape) {
        if let (Dim::Known(c), Dim::Known(wc)) = (&xs[1], &ws[1]) {
            if (*wc as i64).checked_mul(group) != Some(*c as i64) {
                return Err(format!("X has {c} channels but W expects {wc} x group {group}"));
            }
        }
        if let Dim::Known(m) = &ws[0] {
            if *m as i64 % group != 0 {
                return Err(format!("output channels {m} are not divisible by group {group}"));
            }
        }
    }
    let mut out = vec![
        x.shape.as_ref().map_or(Dim::Unknown, |s| s[0].clone()),
        w.shape.as_ref().map_or(Dim::Unknown, |s| s[0].clone()),
    ];
    for i in 0..nsp {
        let d = x.shape.as_ref().map_or(Dim::Unknown, |s| s[i + 2].clone());
        out.push(match (d.known(), kernel.as_ref()) {
            (Some(n), Some(kern)) => Dim::Known(geo.out_dim(i, n, kern[i], false)?),
            _ => Dim::Unknown,
        });
    }
    Ok(ValueType::tensor(dtype, out))
}

fn conv_transpose(k: &Known) -> Result<Vec<ValueType>, String> {
    let (x, w) = (k.tensor(0)?, k.tensor(1)?);
    if !x.dtype.is_float() {
        return Err(format!("X must be a float tensor, got {}", x.dtype));
    }
    if w.dtype != x.dtype {
        return Err(format!("W must have dtype {}, got {}", x.dtype, w.dtype));
    }
    let rank = match (&x.shape, &w.shape) {
        (Some(s), _) | (None, Some(s)) => s.len(),
        (None, None) => return Ok(vec![unranked(x.dtype)]),
    };
    if rank < 3 {
        return Err(format!("input rank must be >= 3 (N, C, spatial...), got {rank}"));
    }
    let nsp = rank - 2;
    let group = k.attrs.int("group", 1)?;
    if group < 1 {
        return Err(format!("group must be >= 1, got {group}"));
    }
    let kernel = kernel_shape(k.attrs, w.shape.as_ref(), nsp)?;
    let geo = Geometry::read(k.attrs, nsp)?;
    let out_pad = ints_or(k.attrs, "output_padding", nsp, 0)?;
    let out_shape = k.attrs.ints_opt("output_shape")?;
    let mut out = vec![
        x.shape.as_ref().map_or(Dim::Unknown, |s| s[0].clone()),
        w.shape.as_ref().map_or(Dim::Unknown, |s| match &s[1] {
            Dim::Known(m) => m.checked_mul(group as usize).map_or(Dim::Unknown, Dim::Known),
            _ => Dim::Unknown,
        }),
    ];
    for i in 0..nsp {
        if let Some(os) = &out_shape {
            // output_shape may list only spatial dims or (as some exporters do) all dims.
            let v = if os.len() == nsp {
                os[i]
            } else if os.len() == rank {
                os[i + 2]
            } else {
                -1
            };
            if v < 0 {
                return Err(format!("output_shape {os:?} does not match {nsp} spatial dims"));
            }
            out.push(Dim::Known(v as usize));
            continue;
        }
        let d = x.shape.as_ref().and_then(|s| s[i + 2].known());
        out.push(match (d, kernel.as_ref()) {
            (Some(n), Some(kern)) => {
                let (n, s) = (n as i128, geo.strides[i] as i128);
                let dk = (kern[i] as i128 - 1) * geo.dilations[i] as i128 + 1;
                let v = if geo.auto_pad == "SAME_UPPER" || geo.auto_pad == "SAME_LOWER" {
                    n * s
                } else {
                    let pads = if geo.auto_pad == "VALID" { (0, 0) } else { (geo.pads[i], geo.pads[i + nsp]) };
                    s * (n - 1) + out_pad[i] as i128 + dk - pads.0 as i128 - pads.1 as i128
                };
                Dim::Known(to_dim(v, i)?)
            }
            _ => Dim::Unknown,
        });
    }
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn deform_conv(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if !x.dtype.is_float() {
        return Err(format!("X must be a float tensor, got {}", x.dtype));
    }
    for i in 1..5 {
        if let Some(t) = k.opt_tensor(i)? {
            if t.dtype != x.dtype {
                return Err(format!("input {i} must have dtype {}, got {}", x.dtype, t.dtype));
            }
        }
    }
    let (w, off) = (k.tensor(1)?, k.tensor(2)?);
    for (name, t) in [("X", x), ("W", w), ("offset", off)] {
        if let Some(s) = &t.shape {
            if s.len() < 3 {
                return Err(format!("{name} must have rank >= 3, got {}", crate::format_shape(s)));
            }
        }
    }
    let Some(os) = &off.shape else { return Ok(vec![unranked(x.dtype)]) };
    let mut out = vec![
        x.shape.as_ref().map_or(Dim::Unknown, |s| s[0].clone()),
        w.shape.as_ref().map_or(Dim::Unknown, |s| s[0].clone()),
    ];
    out.extend(os[2..].iter().cloned());
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn causal_conv_with_state(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if !matches!(x.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(format!("input must be float, float16 or bfloat16, got {}", x.dtype));
    }
    for i in 1..4 {
        if let Some(t) = k.opt_tensor(i)? {
            if t.dtype != x.dtype {
                return Err(format!("input {i} must have dtype {}, got {}", x.dtype, t.dtype));
            }
        }
    }
    let act = k.attrs.string("activation", "none".into())?;
    if !matches!(act.as_str(), "none" | "silu" | "swish") {
        return Err(format!("unsupported activation '{act}' (expected none, silu or swish)"));
    }
    let w = k.tensor(1)?;
    for (name, t) in [("input", x), ("weight", w)] {
        if let Some(s) = &t.shape {
            if s.len() != 3 {
                return Err(format!("{name} must be rank 3, got {}", crate::format_shape(s)));
            }
        }
    }
    let (b, c) = match &x.shape {
        Some(s) => (s[0].clone(), s[1].clone()),
        None => (Dim::Unknown, Dim::Unknown),
    };
    let km1 = match w.shape.as_ref().map(|s| &s[2]) {
        Some(Dim::Known(0)) => return Err("kernel size must be >= 1".into()),
        Some(Dim::Known(n)) => Dim::Known(n - 1),
        _ => Dim::Unknown,
    };
    let out = match &x.shape {
        Some(s) => ValueType::tensor(x.dtype, s.clone()),
        None => ValueType::tensor(x.dtype, vec![Dim::Unknown; 3]),
    };
    Ok(vec![out, ValueType::tensor(x.dtype, vec![b, c, km1])])
}

fn col2im(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    for i in [1, 2] {
        if k.dtype(i)? != DType::I64 {
            return Err(format!("input {i} must be int64"));
        }
    }
    if let Some(s) = &x.shape {
        if s.len() != 3 {
            return Err(format!("input must have rank 3 (N, C*prod(block), L), got {}", crate::format_shape(s)));
        }
    }
    let image = k.const_input(1).map(|t| t.to_i64_vec());
    let block = k.const_input(2).map(|t| t.to_i64_vec());
    if image.as_ref().is_some_and(|im| im.iter().any(|&d| d < 0)) {
        return Err(format!("image_shape {image:?} has negative entries"));
    }
    let n = x.shape.as_ref().map_or(Dim::Unknown, |s| s[0].clone());
    let c = match (x.shape.as_ref().and_then(|s| s[1].known()), &block) {
        (Some(cb), Some(bl)) => {
            let p = bl.iter().try_fold(1i64, |acc, &b| acc.checked_mul(b)).unwrap_or(0);
            if p <= 0 || cb as i64 % p != 0 {
                return Err(format!("input dim 1 ({cb}) is not a multiple of prod(block_shape {bl:?})"));
            }
            Dim::Known(cb / p as usize)
        }
        _ => Dim::Unknown,
    };
    // Without constant image_shape only the rank (from image_shape's length) is known.
    let Some(image) = image else {
        return Ok(vec![match k.tensor(1)?.shape.as_ref().and_then(|s| s.first()).and_then(Dim::known) {
            Some(r) => {
                let mut out = vec![n, c];
                out.resize(r + 2, Dim::Unknown);
                ValueType::tensor(x.dtype, out)
            }
            None => unranked(x.dtype),
        }]);
    };
    let mut out = vec![n, c];
    out.extend(image.iter().map(|&d| Dim::Known(d as usize)));
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

// ---------------------------------------------------------------------------------------------
// Pooling

fn max_pool(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if !(x.dtype.is_float() || matches!(x.dtype, DType::I8 | DType::U8)) {
        return Err(format!("dtype {} is not supported", x.dtype));
    }
    if k.attrs.int("storage_order", 0)? > 1 {
        return Err("storage_order must be 0 or 1".into());
    }
    let y = pool_shape(k, x.dtype)?;
    let mut out = vec![y.clone()];
    if k.num_outputs > 1 {
        let shape = y.as_tensor().and_then(|t| t.shape.clone());
        out.push(ValueType::Tensor(crate::TensorType { dtype: DType::I64, shape }));
    }
    Ok(out)
}

fn avg_lp_pool(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if !x.dtype.is_float() {
        return Err(format!("X must be a float tensor, got {}", x.dtype));
    }
    check_lp_order(k)?;
    Ok(vec![pool_shape(k, x.dtype)?])
}

fn pool_shape(k: &Known, dtype: DType) -> Result<ValueType, String> {
    let x = k.tensor(0)?;
    let kernel = k.attrs.req_ints("kernel_shape")?;
    let nsp = kernel.len();
    if nsp == 0 || kernel.iter().any(|&v| v < 1) {
        return Err(format!("kernel_shape {kernel:?} must be non-empty and positive"));
    }
    let geo = Geometry::read(k.attrs, nsp)?;
    let ceil = k.attrs.int("ceil_mode", 0)? != 0;
    let Some(xs) = &x.shape else { return Ok(unranked(dtype)) };
    if xs.len() != nsp + 2 {
        return Err(format!("input rank {} does not match kernel_shape {kernel:?} (+2)", xs.len()));
    }
    let mut out = vec![xs[0].clone(), xs[1].clone()];
    for i in 0..nsp {
        out.push(match xs[i + 2].known() {
            Some(n) => Dim::Known(geo.out_dim(i, n, kernel[i] as usize, ceil)?),
            None => Dim::Unknown,
        });
    }
    Ok(ValueType::tensor(dtype, out))
}

fn global_pool(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if !x.dtype.is_float() {
        return Err(format!("X must be a float tensor, got {}", x.dtype));
    }
    check_lp_order(k)?;
    let Some(xs) = &x.shape else { return Ok(vec![unranked(x.dtype)]) };
    if xs.len() < 2 {
        return Err(format!("input must have rank >= 2, got {}", xs.len()));
    }
    let mut out = xs[..2].to_vec();
    out.resize(xs.len(), Dim::Known(1));
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

fn max_unpool(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if k.dtype(1)? != DType::I64 {
        return Err("indices must be int64".into());
    }
    if let Some(t) = k.opt_tensor(2)? {
        if t.dtype != DType::I64 {
            return Err("output_shape must be int64".into());
        }
    }
    let kernel = k.attrs.req_ints("kernel_shape")?;
    let nsp = kernel.len();
    if nsp == 0 {
        return Err("kernel_shape must be non-empty".into());
    }
    let strides = ints_or(k.attrs, "strides", nsp, 1)?;
    let pads = ints_or(k.attrs, "pads", 2 * nsp, 0)?;
    if k.has_input(2) {
        return Ok(vec![match k.const_input(2) {
            Some(t) => {
                let v = t.to_i64_vec();
                if v.iter().any(|&d| d < 0) {
                    return Err(format!("output_shape {v:?} has negative entries"));
                }
                ValueType::tensor(x.dtype, v.iter().map(|&d| Dim::Known(d as usize)).collect())
            }
            None => super::helpers::unknown_dims(x.dtype, nsp + 2),
        }]);
    }
    let Some(xs) = &x.shape else { return Ok(vec![unranked(x.dtype)]) };
    if xs.len() != nsp + 2 {
        return Err(format!("input rank {} does not match kernel_shape {kernel:?} (+2)", xs.len()));
    }
    let mut out = vec![xs[0].clone(), xs[1].clone()];
    for i in 0..nsp {
        out.push(match xs[i + 2].known() {
            Some(n) => {
                let v =
                    (n as i128 - 1) * strides[i] as i128 + kernel[i] as i128 - pads[i] as i128 - pads[i + nsp] as i128;
                Dim::Known(to_dim(v, i)?)
            }
            None => Dim::Unknown,
        });
    }
    Ok(vec![ValueType::tensor(x.dtype, out)])
}

// ---------------------------------------------------------------------------------------------
// Quantization

fn quantize_linear(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if !matches!(x.dtype, DType::F32 | DType::F16 | DType::BF16 | DType::I32) {
        return Err(format!("x must be float, float16, bfloat16 or int32, got {}", x.dtype));
    }
    let s = k.dtype(1)?;
    if !matches!(s, DType::F32 | DType::F16 | DType::BF16 | DType::I32) {
        return Err(format!("y_scale must be float, float16, bfloat16 or int32, got {s}"));
    }
    let attr = k.attrs.int("output_dtype", 0)?;
    let out = match (k.opt_tensor(2)?, attr) {
        (Some(zp), 0) => zp.dtype,
        (Some(zp), code) => {
            let d = onnx_dtype(code)?;
            if d != zp.dtype {
                return Err(format!("output_dtype {d} differs from y_zero_point's dtype {}", zp.dtype));
            }
            d
        }
        (None, 0) => DType::U8,
        (None, code) => onnx_dtype(code)?,
    };
    if !matches!(out, DType::I8 | DType::U8 | DType::I16 | DType::U16) {
        return Err(format!("quantized dtype {out} is not supported"));
    }
    check_quant_params(k, x.shape.as_ref())?;
    Ok(vec![ValueType::Tensor(crate::TensorType { dtype: out, shape: x.shape.clone() })])
}

fn dequantize_linear(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if !matches!(x.dtype, DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::I32) {
        return Err(format!("x dtype {} is not supported", x.dtype));
    }
    if let Some(zp) = k.opt_tensor(2)? {
        if zp.dtype != x.dtype {
            return Err(format!("x_zero_point must have x's dtype {}, got {}", x.dtype, zp.dtype));
        }
    }
    let s = k.dtype(1)?;
    if !matches!(s, DType::F32 | DType::F16 | DType::BF16) {
        return Err(format!("x_scale must be float, float16 or bfloat16, got {s}"));
    }
    let out = match k.attrs.int("output_dtype", 0)? {
        0 => s,
        code => onnx_dtype(code)?,
    };
    if !matches!(out, DType::F32 | DType::F16 | DType::BF16) {
        return Err(format!("output_dtype {out} is not supported (float, float16 or bfloat16)"));
    }
    check_quant_params(k, x.shape.as_ref())?;
    Ok(vec![ValueType::Tensor(crate::TensorType { dtype: out, shape: x.shape.clone() })])
}

fn dynamic_quantize_linear(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    if x.dtype != DType::F32 {
        return Err(format!("x must be float, got {}", x.dtype));
    }
    Ok(vec![
        ValueType::Tensor(crate::TensorType { dtype: DType::U8, shape: x.shape.clone() }),
        ValueType::tensor(DType::F32, vec![]),
        ValueType::tensor(DType::U8, vec![]),
    ])
}

/// Scale / zero-point shapes: scalar (per tensor), 1-D of the axis length (per axis), or the
/// input's shape with the axis divided into blocks of `block_size` (blocked).
fn check_quant_params(k: &Known, x: Option<&Shape>) -> Result<(), String> {
    let scale = k.tensor(1)?;
    if let (Some(s), Some(z)) = (&scale.shape, k.opt_tensor(2)?.and_then(|z| z.shape.as_ref())) {
        if s.len() != z.len() {
            return Err(format!(
                "scale {} and zero point {} must have the same shape",
                crate::format_shape(s),
                crate::format_shape(z)
            ));
        }
    }
    let (Some(xs), Some(ss)) = (x, &scale.shape) else { return Ok(()) };
    let block = k.attrs.int("block_size", 0)?;
    if block < 0 {
        return Err(format!("block_size must be >= 0, got {block}"));
    }
    if ss.is_empty() || ss.len() == 1 && ss[0] == Dim::Known(1) && block == 0 {
        return Ok(());
    }
    let axis = normalize_axis(k.attrs.int("axis", 1)?, xs.len())?;
    if block == 0 {
        if ss.len() != 1 {
            return Err(format!("per-axis scale must be 1-D, got {}", crate::format_shape(ss)));
        }
        if let (Dim::Known(a), Dim::Known(b)) = (&xs[axis], &ss[0]) {
            if a != b {
                return Err(format!("per-axis scale has {b} entries but axis {axis} has size {a}"));
            }
        }
        return Ok(());
    }
    if ss.len() != xs.len() {
        return Err(format!("blocked scale must have the input's rank {}, got {}", xs.len(), ss.len()));
    }
    for (i, (a, b)) in xs.iter().zip(ss).enumerate() {
        if let (Dim::Known(a), Dim::Known(b)) = (a, b) {
            let want = if i == axis { a.div_ceil(block as usize) } else { *a };
            if *b != want {
                return Err(format!(
                    "blocked scale dim {i} is {b}, expected {want} (input {}, block_size {block})",
                    crate::format_shape(xs)
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// LpPool / GlobalLpPool: `p` must be a positive integer.
fn check_lp_order(k: &Known) -> Result<(), String> {
    if k.op.contains("Lp") {
        let p = k.attrs.int("p", 2)?;
        if p < 1 {
            return Err(format!("p must be >= 1, got {p}"));
        }
    }
    Ok(())
}

/// An optional zero-point input `zi` must match the dtype of its data input `di`.
fn check_zero_point(k: &Known, zi: usize, di: usize) -> Result<(), String> {
    if let Some(z) = k.opt_tensor(zi)? {
        let d = k.dtype(di)?;
        if z.dtype != d {
            return Err(format!("zero point input {zi} must have dtype {d}, got {}", z.dtype));
        }
    }
    Ok(())
}

/// QLinear* output dtype: the output zero point's dtype, which must be 8-bit.
fn quantized_output_dtype(k: &Known, xi: usize, zi: usize) -> Result<DType, String> {
    let x = k.dtype(xi)?;
    if !matches!(x, DType::I8 | DType::U8) {
        return Err(format!("input {xi} must be int8 or uint8, got {x}"));
    }
    let out = match k.opt_tensor(zi)? {
        Some(z) => z.dtype,
        None => x,
    };
    if !matches!(out, DType::I8 | DType::U8) {
        return Err(format!("output zero point must be int8 or uint8, got {out}"));
    }
    Ok(out)
}

fn onnx_dtype(code: i64) -> Result<DType, String> {
    let c = i32::try_from(code).map_err(|_| format!("invalid dtype code {code}"))?;
    DType::from_onnx_code(c).map_err(|name| format!("dtype {name} is not supported"))
}

/// An ints attribute of length `n`, or `n` copies of `default` when absent.
fn ints_or(attrs: &Attributes, name: &str, n: usize, default: i64) -> Result<Vec<i64>, String> {
    match attrs.ints_opt(name)? {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n => Ok(v),
        Some(v) => Err(format!("attribute '{name}' has {} entries, expected {n}", v.len())),
    }
}

/// `kernel_shape` from the attribute, else from the weights' spatial dims (if known).
fn kernel_shape(attrs: &Attributes, w: Option<&Shape>, nsp: usize) -> Result<Option<Vec<usize>>, String> {
    if let Some(ks) = attrs.ints_opt("kernel_shape")? {
        if ks.len() != nsp || ks.iter().any(|&v| v < 1) {
            return Err(format!("kernel_shape {ks:?} must have {nsp} positive entries"));
        }
        return Ok(Some(ks.iter().map(|&v| v as usize).collect()));
    }
    Ok(w.and_then(|s| s[2..].iter().map(Dim::known).collect()))
}

/// Strides, dilations, pads and auto_pad of a windowed op, validated.
struct Geometry {
    auto_pad: String,
    strides: Vec<i64>,
    dilations: Vec<i64>,
    /// [begin..., end...]
    pads: Vec<i64>,
}

impl Geometry {
    fn read(attrs: &Attributes, nsp: usize) -> Result<Self, String> {
        let auto_pad = attrs.string("auto_pad", "NOTSET".into())?;
        if !matches!(auto_pad.as_str(), "NOTSET" | "SAME_UPPER" | "SAME_LOWER" | "VALID") {
            return Err(format!("unknown auto_pad '{auto_pad}'"));
        }
        let strides = ints_or(attrs, "strides", nsp, 1)?;
        let dilations = ints_or(attrs, "dilations", nsp, 1)?;
        let pads = ints_or(attrs, "pads", 2 * nsp, 0)?;
        // Bounded so that window arithmetic cannot overflow (no model needs more).
        const MAX: i64 = 1 << 31;
        if strides.iter().chain(&dilations).any(|&v| !(1..=MAX).contains(&v)) {
            return Err(format!("strides {strides:?} and dilations {dilations:?} must be in 1..=2^31"));
        }
        if pads.iter().any(|&p| !(0..=MAX).contains(&p)) {
            return Err(format!("pads {pads:?} must be in 0..=2^31"));
        }
        Ok(Geometry { auto_pad, strides, dilations, pads })
    }

    /// Output length along spatial axis `i` for input length `n` and kernel `k`.
    fn out_dim(&self, i: usize, n: usize, k: usize, ceil: bool) -> Result<usize, String> {
        // i128: declared dims and attributes are arbitrary, the arithmetic must not overflow.
        let nsp = self.strides.len();
        let (n, s) = (n as i128, self.strides[i] as i128);
        let (pb, pe) = (self.pads[i] as i128, self.pads[i + nsp] as i128);
        let dk = (k as i128 - 1) * self.dilations[i] as i128 + 1;
        let v = match self.auto_pad.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => (n + s - 1) / s,
            // A window larger than the (padded) input gives an empty output, as ONNX's floor
            // and ceil formulas do; only a negative size is an error.
            "VALID" => (n - dk).div_euclid(s) + 1,
            _ => {
                let span = n + pb + pe - dk;
                if ceil {
                    let mut o = -(-span).div_euclid(s) + 1;
                    // The last window must start inside the input or its begin padding.
                    if (o - 1) * s >= n + pb {
                        o -= 1;
                    }
                    o
                } else {
                    span.div_euclid(s) + 1
                }
            }
        };
        if v < 0 {
            return Err(format!("window of extent {dk} does not fit input length {n} along spatial axis {i}"));
        }
        to_dim(v, i)
    }
}

/// A computed spatial size as a dimension: an error if negative or beyond usize.
fn to_dim(v: i128, axis: usize) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("computed output size {v} along spatial axis {axis} is invalid"))
}
