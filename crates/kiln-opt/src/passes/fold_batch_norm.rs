//! BatchNormalization folded into the Conv or Gemm before it: `BN(Conv(x, W, B))` becomes
//! `Conv(x, W·s, (B − mean)·s + beta)` with `s = scale / sqrt(var + epsilon)` per output
//! channel, so inference pays for one layer instead of two. A Gemm's output channel is its last
//! dim (BN over `[M, N]` normalizes axis 1): its weight columns (rows when `transB`) scale by
//! `s` and its C becomes `(beta_gemm·C − mean)·s + beta`, with the Gemm's beta set to 1.

use crate::passes::reader_counts;
use crate::{Pass, Rebuilder};
use kiln_ir::{
    spec, Activation, Attribute, DType, Element, IrError, Layer, Network, Tensor, TensorData, TensorId, TensorSource,
};

pub struct FoldBatchNormIntoConv;

/// What folding one BN does to the layer before it.
#[derive(Clone)]
struct Fold {
    /// Index of the Conv / Gemm.
    producer: usize,
    weight: Tensor,
    /// Conv's B / Gemm's C.
    bias: Tensor,
}

impl Pass for FoldBatchNormIntoConv {
    fn name(&self) -> &'static str {
        "fold-batch-norm-into-conv"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let readers = reader_counts(net);
        // BN layer index → the folded producer's new weights and bias.
        let mut folds: Vec<Option<Fold>> = vec![None; net.layers().len()];
        let mut folded = vec![false; net.layers().len()];
        for (i, bn) in net.layers().iter().enumerate() {
            if let Some(f) = fold(net, bn, &readers) {
                folded[f.producer] = true;
                folds[i] = Some(f);
            }
        }
        if folds.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut rb = Rebuilder::new(net)?;
        for (i, layer) in net.layers().iter().enumerate() {
            if folded[i] {
                continue;
            }
            let Some(f) = folds[i].take() else {
                rb.copy_layer(layer)?;
                continue;
            };
            let producer = &net.layers()[f.producer];
            let x = rb.map_inputs(&producer.inputs[..1])?[0];
            let w = rb.constant_named(&format!("{}::folded_weight", producer.name), f.weight)?;
            let b = rb.constant_named(&format!("{}::folded_bias", producer.name), f.bias)?;
            let out = layer.outputs[0];
            let mut attrs = producer.attrs.clone();
            if producer.op == "Gemm" {
                attrs.set("beta", 1.0f32);
            }
            attrs.set(spec::FUSED_NODES_ATTR, Attribute::Strings(spec::merged_fused_nodes([producer, layer])));
            rb.add_layer(&producer.name, &producer.op, attrs, &[x, Some(w), Some(b)], &[out])?;
        }
        Ok(Some(rb.finish()?))
    }
}

/// If `bn` is an inference BatchNormalization reading a Conv or Gemm output nobody else reads,
/// with every parameter constant: what folding it changes.
fn fold(net: &Network, bn: &Layer, readers: &[usize]) -> Option<Fold> {
    if bn.op != "BatchNormalization" || bn.outputs.iter().skip(1).any(Option::is_some) {
        return None;
    }
    if bn.attrs.int("training_mode", 0).ok()? != 0 {
        return None;
    }
    let x = bn.inputs.first().copied().flatten()?;
    let TensorSource::Layer { layer: producer_id, .. } = net.tensor(x).source else { return None };
    let producer = net.layer(producer_id);
    if !matches!(producer.op.as_str(), "Conv" | "Gemm") || readers[x.0] != 1 {
        return None;
    }
    // A fused residual or activation comes after the product: BN cannot move before it.
    if producer.inputs.len() > 3 || !matches!(Activation::from_attrs(&producer.attrs), Ok(None)) {
        return None;
    }
    let constant = |i: Option<&Option<TensorId>>| i.copied().flatten().and_then(|id| net.tensor(id).constant());
    let w = constant(producer.inputs.get(1))?;
    let old_bias = match producer.inputs.get(2).copied().flatten() {
        None => None,
        Some(id) => Some(net.tensor(id).constant()?),
    };
    let [scale, beta, mean, var] = [1, 2, 3, 4].map(|i| constant(bn.inputs.get(i)));
    let (scale, beta, mean, var) = (scale?, beta?, mean?, var?);
    let eps = bn.attrs.float("epsilon", 1e-5).ok()? as f64;
    let dtype = w.dtype();
    if producer.op == "Gemm" {
        return fold_gemm(producer, w, old_bias, [scale, beta, mean, var], eps).map(|(weight, bias)| Fold {
            producer: producer_id.0,
            weight,
            bias,
        });
    }
    let channels = *w.shape().first()?;
    if [scale, beta, mean, var].iter().any(|t| t.len() != channels) || old_bias.is_some_and(|b| b.len() != channels) {
        return None;
    }
    let (scale, beta, mean, var) = (scale.to_f64_vec(), beta.to_f64_vec(), mean.to_f64_vec(), var.to_f64_vec());
    let s: Vec<f64> = (0..channels).map(|c| scale[c] / (var[c] + eps).sqrt()).collect();
    let per_channel = w.len() / channels.max(1);
    let w_new: Vec<f64> = w.to_f64_vec().iter().enumerate().map(|(i, &v)| v * s[i / per_channel]).collect();
    let b_old = old_bias.map(|b| b.to_f64_vec()).unwrap_or_else(|| vec![0.0; channels]);
    let b_new: Vec<f64> = (0..channels).map(|c| (b_old[c] - mean[c]) * s[c] + beta[c]).collect();
    Some(Fold {
        producer: producer_id.0,
        weight: cast(dtype, w.shape().to_vec(), &w_new)?,
        bias: cast(dtype, vec![channels], &b_new)?,
    })
}

/// BN over a Gemm's `[M, N]` output: (new B, new C for beta = 1).
fn fold_gemm(gemm: &Layer, w: &Tensor, c: Option<&Tensor>, bn: [&Tensor; 4], eps: f64) -> Option<(Tensor, Tensor)> {
    let trans_b = gemm.attrs.int("transB", 0).ok()? != 0;
    let gemm_beta = gemm.attrs.float("beta", 1.0).ok()? as f64;
    let &[r, cols] = w.shape() else { return None };
    let n = if trans_b { r } else { cols };
    if bn.iter().any(|t| t.len() != n) {
        return None;
    }
    let [scale, beta, mean, var] = bn.map(|t| t.to_f64_vec());
    let s: Vec<f64> = (0..n).map(|j| scale[j] / (var[j] + eps).sqrt()).collect();
    // B is [K, N] (scale columns) or, with transB, [N, K] (scale rows).
    let w_new: Vec<f64> =
        w.to_f64_vec().iter().enumerate().map(|(i, &v)| v * s[if trans_b { i / cols } else { i % cols }]).collect();
    // C broadcasts to [M, N]: keep its rows if it has more than one, else make it [N].
    let (rows, c_vals, row_stride, col_stride) = match c {
        None => (1, vec![0.0], 0, 0),
        Some(c) => {
            let (cm, cn) = match c.shape() {
                [] => (1, 1),
                [x] => (1, *x),
                [x, y] => (*x, *y),
                _ => return None,
            };
            if cn != 1 && cn != n {
                return None;
            }
            (cm, c.to_f64_vec(), if cm == 1 { 0 } else { cn }, usize::from(cn != 1))
        }
    };
    // beta == 0 leaves C out (as the kernel does, so NaN/Inf in C do not leak).
    let c_at =
        |i: usize, j: usize| if gemm_beta == 0.0 { 0.0 } else { gemm_beta * c_vals[i * row_stride + j * col_stride] };
    let c_new: Vec<f64> = (0..rows)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| (c_at(i, j) - mean[j]) * s[j] + beta[j])
        .collect();
    let c_shape = if rows == 1 { vec![n] } else { vec![rows, n] };
    let dtype = w.dtype();
    Some((cast(dtype, w.shape().to_vec(), &w_new)?, cast(dtype, c_shape, &c_new)?))
}

fn cast(dtype: DType, shape: Vec<usize>, v: &[f64]) -> Option<Tensor> {
    fn conv<T: Element>(v: &[f64]) -> TensorData {
        T::into_data(v.iter().map(|&x| T::from_f64(x)).collect())
    }
    let data = match dtype {
        DType::F32 => conv::<f32>(v),
        DType::F64 => conv::<f64>(v),
        DType::F16 => conv::<kiln_ir::f16>(v),
        DType::BF16 => conv::<kiln_ir::bf16>(v),
        _ => return None,
    };
    Tensor::new(shape, data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_support::*;
    use kiln_ir::Attributes;

    #[test]
    fn conv_bn_becomes_one_conv_with_the_same_outputs() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 2, 5, 5]);
        let w = net.add_constant("w", values(&[3, 2, 3, 3], 1.0)).unwrap();
        let b = net.add_constant("b", values(&[3], 2.0)).unwrap();
        let conv = layer(&mut net, "conv", "Conv", Attributes::new().with("pads", vec![1i64, 1, 1, 1]), &[x, w, b]);
        let p: Vec<TensorId> = ["scale", "beta", "mean"]
            .iter()
            .enumerate()
            .map(|(i, n)| net.add_constant(n, values(&[3], 3.0 + i as f32)).unwrap())
            .collect();
        let var = net.add_constant("var", Tensor::from_vec(vec![3], vec![0.5f32, 1.0, 2.0]).unwrap()).unwrap();
        let bn = layer(&mut net, "bn", "BatchNormalization", Attributes::new(), &[conv, p[0], p[1], p[2], var]);
        let y = layer(&mut net, "relu", "Relu", Attributes::new(), &[bn]);
        net.mark_output(y).unwrap();
        let out = FoldBatchNormIntoConv.run(&net).unwrap().expect("changed");
        let ops: Vec<&str> = out.layers().iter().map(|l| l.op.as_str()).collect();
        assert_eq!(ops, vec!["Conv", "Relu"]);
        let input = values(&[1, 2, 5, 5], 0.25);
        let bind = |n: &Network| {
            let m = [("x".to_string(), kiln_ir::Value::Tensor(input.clone()))].into_iter().collect();
            kiln_cpu::execute_named(n, m).unwrap()[0].as_tensor().unwrap().to_f64_vec()
        };
        for (a, b) in bind(&net).iter().zip(bind(&out)) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn a_conv_output_read_elsewhere_is_not_folded() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 1, 3, 3]);
        let w = net.add_constant("w", values(&[1, 1, 1, 1], 1.0)).unwrap();
        let conv = layer(&mut net, "conv", "Conv", Attributes::new(), &[x, w]);
        let p: Vec<TensorId> =
            ["s", "b", "m", "v"].iter().map(|n| net.add_constant(n, values(&[1], 5.0)).unwrap()).collect();
        let bn = layer(&mut net, "bn", "BatchNormalization", Attributes::new(), &[conv, p[0], p[1], p[2], p[3]]);
        let y = layer(&mut net, "add", "Add", Attributes::new(), &[bn, conv]);
        net.mark_output(y).unwrap();
        assert!(FoldBatchNormIntoConv.run(&net).unwrap().is_none());
    }

    fn bn_params(net: &mut Network, n: usize) -> Vec<TensorId> {
        let mut p: Vec<TensorId> = ["scale", "beta", "mean"]
            .iter()
            .enumerate()
            .map(|(i, name)| net.add_constant(name, values(&[n], 3.0 + i as f32)).unwrap())
            .collect();
        let var: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 * 0.25).collect();
        p.push(net.add_constant("var", Tensor::from_vec(vec![n], var).unwrap()).unwrap());
        p
    }

    #[test]
    fn gemm_bn_folds_for_either_transb_and_any_c() {
        for (trans_b, c_shape) in [(0i64, None), (1, Some(vec![5])), (0, Some(vec![4, 1])), (1, Some(vec![4, 5]))] {
            let mut net = Network::new("t");
            let x = input(&mut net, "x", &[4, 6]);
            let w_shape = if trans_b == 1 { [5, 6] } else { [6, 5] };
            let w = net.add_constant("w", values(&w_shape, 1.0)).unwrap();
            let mut ins = vec![x, w];
            if let Some(cs) = &c_shape {
                ins.push(net.add_constant("c", values(cs, 2.0)).unwrap());
            }
            let attrs = Attributes::new().with("transB", trans_b).with("beta", 0.5f32).with("alpha", 1.5f32);
            let g = layer(&mut net, "gemm", "Gemm", attrs, &ins);
            let p = bn_params(&mut net, 5);
            let y = layer(&mut net, "bn", "BatchNormalization", Attributes::new(), &[g, p[0], p[1], p[2], p[3]]);
            net.mark_output(y).unwrap();
            let out = FoldBatchNormIntoConv.run(&net).unwrap().expect("changed");
            let ops: Vec<&str> = out.layers().iter().map(|l| l.op.as_str()).collect();
            assert_eq!(ops, vec!["Gemm"], "{trans_b} {c_shape:?}");
            assert_eq!(spec::fused_nodes(&out.layers()[0]), vec!["gemm", "bn"]);
            crate::passes::fuse_epilogue::tests::assert_close(&net, &out, &[("x", values(&[4, 6], 0.5))], 1e-5);
        }
    }

    #[test]
    fn a_conv_with_a_fused_activation_is_not_folded() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 1, 3, 3]);
        let w = net.add_constant("w", values(&[1, 1, 1, 1], 1.0)).unwrap();
        let mut attrs = Attributes::new();
        Activation::Relu.to_attrs(&mut attrs);
        let conv = layer(&mut net, "conv", "Conv", attrs, &[x, w]);
        let p = bn_params(&mut net, 1);
        let y = layer(&mut net, "bn", "BatchNormalization", Attributes::new(), &[conv, p[0], p[1], p[2], p[3]]);
        net.mark_output(y).unwrap();
        assert!(FoldBatchNormIntoConv.run(&net).unwrap().is_none());
    }
}
