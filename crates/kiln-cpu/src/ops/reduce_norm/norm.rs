//! Normalization layers: LayerNormalization, RMSNormalization, BatchNormalization,
//! InstanceNormalization, GroupNormalization, LpNormalization, MeanVarianceNormalization, LRN.
//!
//! Statistics are computed in f64 with two passes (mean, then the mean squared deviation),
//! which is both stable and what the reference's numpy code computes.

use super::reduce::ReducePlan;
use super::{unidirectional_indices, with_float, PER_GROUP_SCALE_ATTR};
use crate::util::{make, normalize_axis, opt_tensor_arg, single, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{DType, Element, Tensor, Value};

type Out = Result<Vec<Value>, String>;

pub(super) fn layer_normalization(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let x = tensor_arg(inputs, 0)?;
    let scale = tensor_arg(inputs, 1)?;
    let bias = opt_tensor_arg(inputs, 2)?;
    let axis = normalize_axis(ctx.attrs.int("axis", -1)?, x.rank())?;
    let eps = ctx.attrs.float("epsilon", 1e-5)? as f64;
    let stash = stash_dtype(ctx.attrs.int("stash_type", 1)?)?;
    let rows: usize = x.shape()[..axis].iter().product();
    let cols: usize = x.shape()[axis..].iter().product();
    let scale_map = Bcast::new(scale.shape(), x.shape(), "Scale")?;
    let bias_map = bias.map(|b| Bcast::new(b.shape(), x.shape(), "B")).transpose()?;
    let s = scale.to_f64_vec();
    let b = bias.map(|b| b.to_f64_vec());
    let mut means = Vec::with_capacity(rows);
    let mut inv_stds = Vec::with_capacity(rows);
    let y = with_float!(x, ctx.op, v => {
        let mut y = v.to_vec();
        for r in 0..rows {
            let row = &v[r * cols..(r + 1) * cols];
            let (mean, var) = mean_var(row.iter().map(|e| e.to_f64()), cols);
            let inv = 1.0 / (var + eps).sqrt();
            for (j, &e) in row.iter().enumerate() {
                let f = r * cols + j;
                let mut val = (e.to_f64() - mean) * inv * s[scale_map.at(f)];
                if let (Some(b), Some(m)) = (&b, &bias_map) {
                    val += b[m.at(f)];
                }
                y[f] = Element::from_f64(val);
            }
            means.push(mean);
            inv_stds.push(inv);
        }
        make(x.shape().to_vec(), y)
    })?;
    let mut stat_shape = x.shape().to_vec();
    stat_shape[axis..].fill(1);
    let mut out = vec![Value::Tensor(y)];
    if ctx.num_outputs > 1 {
        out.push(Value::Tensor(f64_tensor(stash, stat_shape.clone(), &means)?));
    }
    if ctx.num_outputs > 2 {
        out.push(Value::Tensor(f64_tensor(stash, stat_shape, &inv_stds)?));
    }
    Ok(out)
}

pub(super) fn rms_normalization(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let x = tensor_arg(inputs, 0)?;
    let scale = tensor_arg(inputs, 1)?;
    let axis = normalize_axis(ctx.attrs.int("axis", -1)?, x.rank())?;
    let eps = ctx.attrs.float("epsilon", 1e-5)? as f64;
    stash_dtype(ctx.attrs.int("stash_type", 1)?)?;
    let rows: usize = x.shape()[..axis].iter().product();
    let cols: usize = x.shape()[axis..].iter().product();
    let scale_map = Bcast::new(scale.shape(), x.shape(), "Scale")?;
    let s = scale.to_f64_vec();
    let y = with_float!(x, ctx.op, v => {
        let mut y = v.to_vec();
        for r in 0..rows {
            let row = &v[r * cols..(r + 1) * cols];
            let ms = row.iter().map(|e| e.to_f64() * e.to_f64()).sum::<f64>() / cols as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            for (j, &e) in row.iter().enumerate() {
                let f = r * cols + j;
                y[f] = Element::from_f64(e.to_f64() * inv * s[scale_map.at(f)]);
            }
        }
        make(x.shape().to_vec(), y)
    })?;
    Ok(single(y))
}

pub(super) fn batch_normalization(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let x = tensor_arg(inputs, 0)?;
    let (n, c, spatial) = channel_layout(x, ctx.op)?;
    let params: Vec<&Tensor> = (1..5).map(|i| tensor_arg(inputs, i)).collect::<Result<_, _>>()?;
    for (t, name) in params.iter().zip(["scale", "B", "input_mean", "input_var"]) {
        if t.len() != c || t.rank() != 1 {
            return Err(format!("{name} must have shape [{c}], got {:?}", t.shape()));
        }
    }
    let [scale, bias, mean_in, var_in] = [0, 1, 2, 3].map(|i| params[i].to_f64_vec());
    let eps = ctx.attrs.float("epsilon", 1e-5)? as f64;
    let momentum = ctx.attrs.float("momentum", 0.9)? as f64;
    let training = ctx.attrs.int("training_mode", 0)? != 0;
    with_float!(x, ctx.op, v => {
        let (mean, var) = if training {
            // Batch statistics per channel over N and the spatial dims (population variance).
            let mut mean = vec![0f64; c];
            let mut var = vec![0f64; c];
            for ch in 0..c {
                let it = (0..n).flat_map(|b| v[(b * c + ch) * spatial..(b * c + ch + 1) * spatial].iter());
                let (m, s2) = mean_var(it.map(|e| e.to_f64()), n * spatial);
                mean[ch] = m;
                var[ch] = s2;
            }
            (mean, var)
        } else {
            (mean_in.clone(), var_in.clone())
        };
        let mut y = v.to_vec();
        for b in 0..n {
            for ch in 0..c {
                let k = scale[ch] / (var[ch] + eps).sqrt();
                let base = (b * c + ch) * spatial;
                for i in base..base + spatial {
                    y[i] = Element::from_f64((v[i].to_f64() - mean[ch]) * k + bias[ch]);
                }
            }
        }
        let mut out = vec![Value::Tensor(make(x.shape().to_vec(), y)?)];
        // Running statistics: input * momentum + batch * (1 - momentum), in input_mean's type.
        // Outside training mode there are no batch statistics: they pass through unchanged.
        let mix = |run: &[f64], batch: &[f64]| -> Vec<f64> {
            if !training {
                return run.to_vec();
            }
            run.iter().zip(batch).map(|(&r, &b)| r * momentum + b * (1.0 - momentum)).collect()
        };
        let running = [mix(&mean_in, &mean), mix(&var_in, &var)];
        for (i, r) in running.iter().enumerate().take(ctx.num_outputs.saturating_sub(1)) {
            out.push(Value::Tensor(f64_tensor(params[2 + i].dtype(), vec![c], r)?));
        }
        Ok(out)
    })
}

pub(super) fn instance_normalization(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let x = tensor_arg(inputs, 0)?;
    let (_, c, _) = channel_layout(x, ctx.op)?;
    let scale = tensor_arg(inputs, 1)?;
    let bias = tensor_arg(inputs, 2)?;
    for (t, name) in [(scale, "scale"), (bias, "B")] {
        if t.len() != c || t.rank() != 1 {
            return Err(format!("{name} must have shape [{c}], got {:?}", t.shape()));
        }
    }
    let eps = ctx.attrs.float("epsilon", 1e-5)? as f64;
    // Instance normalization is group normalization with one channel per group.
    grouped(x, c, 1, &scale.to_f64_vec(), &bias.to_f64_vec(), eps, ctx.op)
}

pub(super) fn group_normalization(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let x = tensor_arg(inputs, 0)?;
    let (_, c, _) = channel_layout(x, ctx.op)?;
    let groups = ctx.attrs.req_int("num_groups")?;
    if groups <= 0 || c % groups as usize != 0 {
        return Err(format!("num_groups {groups} must be positive and divide the channel count {c}"));
    }
    let groups = groups as usize;
    let per_group = ctx.attrs.int(PER_GROUP_SCALE_ATTR, 0)? != 0;
    let want = if per_group { groups } else { c };
    let mut params = Vec::new();
    for (i, name) in [(1, "scale"), (2, "bias")] {
        let t = tensor_arg(inputs, i)?;
        if t.len() != want || t.rank() != 1 {
            return Err(format!("{name} must have shape [{want}], got {:?}", t.shape()));
        }
        let v = t.to_f64_vec();
        // Opset 18's per-group parameters apply to every channel of their group.
        params.push(if per_group { (0..c).map(|ch| v[ch / (c / groups)]).collect() } else { v });
    }
    stash_dtype(ctx.attrs.int("stash_type", 1)?)?;
    let eps = ctx.attrs.float("epsilon", 1e-5)? as f64;
    grouped(x, c, c / groups, &params[0], &params[1], eps, ctx.op)
}

pub(super) fn lp_normalization(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let x = tensor_arg(inputs, 0)?;
    let p = ctx.attrs.int("p", 2)?;
    if p != 1 && p != 2 {
        return Err(format!("p must be 1 or 2, got {p}"));
    }
    if x.rank() == 0 {
        return Err("LpNormalization needs an input of rank >= 1".into());
    }
    let axis = normalize_axis(ctx.attrs.int("axis", -1)?, x.rank())?;
    let (outer, n, inner) = super::split_at_axis(x.shape(), axis);
    let y = with_float!(x, ctx.op, v => {
        let mut norm = vec![0f64; inner];
        let mut y = v.to_vec();
        for o in 0..outer {
            let base = o * n * inner;
            norm.fill(0.0);
            for k in 0..n {
                for (i, acc) in norm.iter_mut().enumerate() {
                    let e = v[base + k * inner + i].to_f64();
                    *acc += if p == 1 { e.abs() } else { e * e };
                }
            }
            if p == 2 {
                norm.iter_mut().for_each(|a| *a = a.sqrt());
            }
            for k in 0..n {
                for (i, &nm) in norm.iter().enumerate() {
                    let f = base + k * inner + i;
                    // An all-zero slice normalizes to zeros, not 0/0.
                    y[f] = Element::from_f64(if nm == 0.0 { 0.0 } else { v[f].to_f64() / nm });
                }
            }
        }
        make(x.shape().to_vec(), y)
    })?;
    Ok(single(y))
}

pub(super) fn mean_variance_normalization(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let x = tensor_arg(inputs, 0)?;
    let rank = x.rank();
    let axes = ctx.attrs.ints("axes", vec![0, 2, 3])?;
    let mut reduced = vec![false; rank];
    for &a in &axes {
        let ax = normalize_axis(a, rank)?;
        if reduced[ax] {
            return Err(format!("axes {axes:?} repeat an axis"));
        }
        reduced[ax] = true;
    }
    let plan = ReducePlan::new(x.shape(), &reduced, true)?;
    let count = plan.count as f64;
    let y = with_float!(x, ctx.op, v => {
        let mut mean = vec![0f64; plan.out_len];
        plan.walk(|i, o| mean[o] += v[i].to_f64());
        mean.iter_mut().for_each(|m| *m /= count);
        let mut var = vec![0f64; plan.out_len];
        plan.walk(|i, o| {
            let d = v[i].to_f64() - mean[o];
            var[o] += d * d;
        });
        // (x - mean) / (std + 1e-9), the epsilon outside the square root as in the spec.
        let denom: Vec<f64> = var.iter().map(|s| (s / count).sqrt() + 1e-9).collect();
        let mut y = v.to_vec();
        plan.walk(|i, o| y[i] = Element::from_f64((v[i].to_f64() - mean[o]) / denom[o]));
        make(x.shape().to_vec(), y)
    })?;
    Ok(single(y))
}

pub(super) fn lrn(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let x = tensor_arg(inputs, 0)?;
    let (n, c, spatial) = channel_layout(x, ctx.op)?;
    let size = ctx.attrs.req_int("size")?;
    if size <= 0 {
        return Err(format!("size must be positive, got {size}"));
    }
    let alpha = ctx.attrs.float("alpha", 1e-4)? as f64;
    let beta = ctx.attrs.float("beta", 0.75)? as f64;
    let bias = ctx.attrs.float("bias", 1.0)? as f64;
    let size = size as usize;
    // Channels summed for channel ch: [ch - floor((size-1)/2), ch + ceil((size-1)/2)].
    let before = (size - 1) / 2;
    let after = size - 1 - before;
    let y = with_float!(x, ctx.op, v => {
        let mut y = v.to_vec();
        let mut sq = vec![0f64; spatial];
        for b in 0..n {
            for ch in 0..c {
                sq.fill(0.0);
                for j in ch.saturating_sub(before)..(ch + after + 1).min(c) {
                    let src = &v[(b * c + j) * spatial..(b * c + j + 1) * spatial];
                    for (acc, e) in sq.iter_mut().zip(src) {
                        *acc += e.to_f64() * e.to_f64();
                    }
                }
                let base = (b * c + ch) * spatial;
                for (i, &s) in sq.iter().enumerate() {
                    y[base + i] = Element::from_f64(v[base + i].to_f64() / (bias + alpha / size as f64 * s).powf(beta));
                }
            }
        }
        make(x.shape().to_vec(), y)
    })?;
    Ok(single(y))
}

/// Normalize each (n, group) block of `channels_per_group` consecutive channels of an
/// [N, C, ...] tensor, then apply per-channel scale and bias.
fn grouped(x: &Tensor, c: usize, cpg: usize, scale: &[f64], bias: &[f64], eps: f64, op: &str) -> Out {
    let (n, _, spatial) = channel_layout(x, op)?;
    let block = cpg * spatial;
    let y = with_float!(x, op, v => {
        let mut y = v.to_vec();
        let blocks = n * c.checked_div(cpg).unwrap_or(0);
        for g in 0..blocks {
            let base = g * block;
            let (mean, var) = mean_var(v[base..base + block].iter().map(|e| e.to_f64()), block);
            let inv = 1.0 / (var + eps).sqrt();
            for i in 0..block {
                let ch = (g * cpg + i / spatial.max(1)) % c;
                y[base + i] = Element::from_f64((v[base + i].to_f64() - mean) * inv * scale[ch] + bias[ch]);
            }
        }
        make(x.shape().to_vec(), y)
    })?;
    Ok(single(y))
}

/// (N, C, product of the remaining dims) of an [N, C, ...] input.
fn channel_layout(x: &Tensor, op: &str) -> Result<(usize, usize, usize), String> {
    if x.rank() < 2 {
        return Err(format!("{op} needs an input of rank >= 2 ([N, C, ...]), got shape {:?}", x.shape()));
    }
    Ok((x.shape()[0], x.shape()[1], x.shape()[2..].iter().product()))
}

/// Mean and population variance of `len` values (two passes over a cloneable iterator).
fn mean_var(it: impl Iterator<Item = f64> + Clone, len: usize) -> (f64, f64) {
    let n = len as f64;
    let mean = it.clone().sum::<f64>() / n;
    let var = it.map(|e| (e - mean) * (e - mean)).sum::<f64>() / n;
    (mean, var)
}

/// The float dtype named by a `stash_type` attribute.
fn stash_dtype(code: i64) -> Result<DType, String> {
    match DType::from_onnx_code(code as i32) {
        Ok(d) if d.is_float() => Ok(d),
        _ => Err(format!("stash_type {code} is not a supported floating-point type")),
    }
}

/// A tensor of `dtype` from f64 values.
fn f64_tensor(dtype: DType, shape: Vec<usize>, v: &[f64]) -> Result<Tensor, String> {
    match dtype {
        DType::F32 => super::store_f64::<f32>(shape, v),
        DType::F64 => super::store_f64::<f64>(shape, v),
        DType::F16 => super::store_f64::<kiln_ir::f16>(shape, v),
        DType::BF16 => super::store_f64::<kiln_ir::bf16>(shape, v),
        other => Err(format!("cannot produce statistics of type {other}")),
    }
}

/// How a unidirectionally broadcast parameter (Scale, B) is indexed by flat input position.
enum Bcast {
    /// The parameter's shape (without leading 1s) is a suffix of the input's: index modulo.
    Suffix(usize),
    /// General broadcasting: a full index table.
    Table(Vec<usize>),
}

impl Bcast {
    fn new(param: &[usize], x: &[usize], what: &str) -> Result<Bcast, String> {
        let lead = param.iter().take_while(|&&d| d == 1).count();
        let core = &param[lead..];
        if param.len() <= x.len() && x.ends_with(core) {
            return Ok(Bcast::Suffix(core.iter().product::<usize>().max(1)));
        }
        Ok(Bcast::Table(unidirectional_indices(param, x, what)?))
    }

    fn at(&self, flat: usize) -> usize {
        match self {
            Bcast::Suffix(n) => flat % n,
            Bcast::Table(t) => t[flat],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_var_is_population_variance() {
        let (m, v) = mean_var([1.0, 2.0, 3.0, 6.0].into_iter(), 4);
        assert_eq!(m, 3.0);
        assert_eq!(v, (4.0 + 1.0 + 0.0 + 9.0) / 4.0);
    }

    #[test]
    fn bcast_suffix_and_table() {
        // Scale [1, 4] against X [2, 3, 4]: a suffix, indexed modulo 4.
        let b = Bcast::new(&[1, 4], &[2, 3, 4], "Scale").unwrap();
        assert_eq!((b.at(5), b.at(23)), (1, 3));
        // Scale [3, 1] against X [2, 3, 4]: a general broadcast (one value per middle index).
        let b = Bcast::new(&[3, 1], &[2, 3, 4], "Scale").unwrap();
        assert_eq!((b.at(0), b.at(4), b.at(11), b.at(12)), (0, 1, 2, 0));
        assert!(Bcast::new(&[5], &[2, 3, 4], "Scale").is_err());
    }

    #[test]
    fn grouped_normalizes_each_group() {
        // X [1, 2, 2]: one group per channel; channel 0 = [1, 3], channel 1 = [2, 2].
        let x = Tensor::from_vec(vec![1, 2, 2], vec![1.0f64, 3.0, 2.0, 2.0]).unwrap();
        let out = grouped(&x, 2, 1, &[2.0, 1.0], &[0.5, -1.0], 0.0, "InstanceNormalization").unwrap();
        let y = out[0].as_tensor().unwrap().as_slice::<f64>().unwrap().to_vec();
        // Channel 0: mean 2, std 1 -> [-1, 1] * 2 + 0.5; channel 1: zero variance with eps 0 -> NaN.
        assert_eq!(&y[..2], &[-1.5, 2.5]);
        assert!(y[2].is_nan());
    }
}
