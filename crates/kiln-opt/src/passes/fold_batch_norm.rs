//! BatchNormalization folded into the Conv before it: `BN(Conv(x, W, B))` becomes
//! `Conv(x, W·s, (B − mean)·s + beta)` with `s = scale / sqrt(var + epsilon)` per output
//! channel, so inference pays for one layer instead of two.

use crate::passes::reader_counts;
use crate::{Pass, Rebuilder};
use kiln_ir::{spec, Attribute, DType, Element, IrError, Layer, Network, Tensor, TensorData, TensorId, TensorSource};

pub struct FoldBatchNormIntoConv;

impl Pass for FoldBatchNormIntoConv {
    fn name(&self) -> &'static str {
        "fold-batch-norm-into-conv"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let readers = reader_counts(net);
        // BN layer index → the folded Conv's new weights and bias.
        let mut folds: Vec<Option<(usize, Tensor, Tensor)>> = vec![None; net.layers().len()];
        let mut folded_convs = vec![false; net.layers().len()];
        for (i, bn) in net.layers().iter().enumerate() {
            if let Some((conv, w, b)) = fold(net, bn, &readers) {
                folded_convs[conv] = true;
                folds[i] = Some((conv, w, b));
            }
        }
        if folds.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut rb = Rebuilder::new(net)?;
        for (i, layer) in net.layers().iter().enumerate() {
            if folded_convs[i] {
                continue;
            }
            let Some((conv_index, w, b)) = folds[i].take() else {
                rb.copy_layer(layer)?;
                continue;
            };
            let conv = &net.layers()[conv_index];
            let x = rb.map_inputs(&conv.inputs[..1])?[0];
            let w = rb.constant_named(&format!("{}::folded_weight", conv.name), w)?;
            let b = rb.constant_named(&format!("{}::folded_bias", conv.name), b)?;
            let out = layer.outputs[0];
            let mut attrs = conv.attrs.clone();
            attrs.set(spec::FUSED_NODES_ATTR, Attribute::Strings(spec::merged_fused_nodes([conv, layer])));
            rb.add_layer(&conv.name, "Conv", attrs, &[x, Some(w), Some(b)], &[out])?;
        }
        Ok(Some(rb.finish()?))
    }
}

/// If `bn` is an inference BatchNormalization reading a Conv output nobody else reads, with
/// every parameter constant: (conv layer index, folded weight, folded bias).
fn fold(net: &Network, bn: &Layer, readers: &[usize]) -> Option<(usize, Tensor, Tensor)> {
    if bn.op != "BatchNormalization" || bn.outputs.iter().skip(1).any(Option::is_some) {
        return None;
    }
    if bn.attrs.int("training_mode", 0).ok()? != 0 {
        return None;
    }
    let x = bn.inputs.first().copied().flatten()?;
    let TensorSource::Layer { layer: conv_id, .. } = net.tensor(x).source else { return None };
    let conv = net.layer(conv_id);
    if conv.op != "Conv" || readers[x.0] != 1 {
        return None;
    }
    let constant = |i: Option<&Option<TensorId>>| i.copied().flatten().and_then(|id| net.tensor(id).constant());
    let w = constant(conv.inputs.get(1))?;
    let conv_bias = match conv.inputs.get(2).copied().flatten() {
        None => None,
        Some(id) => Some(net.tensor(id).constant()?),
    };
    let [scale, beta, mean, var] = [1, 2, 3, 4].map(|i| constant(bn.inputs.get(i)));
    let (scale, beta, mean, var) = (scale?, beta?, mean?, var?);
    let eps = bn.attrs.float("epsilon", 1e-5).ok()? as f64;
    let channels = *w.shape().first()?;
    if [scale, beta, mean, var].iter().any(|t| t.len() != channels) || conv_bias.is_some_and(|b| b.len() != channels) {
        return None;
    }
    let (scale, beta, mean, var) = (scale.to_f64_vec(), beta.to_f64_vec(), mean.to_f64_vec(), var.to_f64_vec());
    let s: Vec<f64> = (0..channels).map(|c| scale[c] / (var[c] + eps).sqrt()).collect();
    let per_channel = w.len() / channels.max(1);
    let w_new: Vec<f64> = w.to_f64_vec().iter().enumerate().map(|(i, &v)| v * s[i / per_channel]).collect();
    let b_old = conv_bias.map(|b| b.to_f64_vec()).unwrap_or_else(|| vec![0.0; channels]);
    let b_new: Vec<f64> = (0..channels).map(|c| (b_old[c] - mean[c]) * s[c] + beta[c]).collect();
    let dtype = w.dtype();
    Some((conv_id.0, cast(dtype, w.shape().to_vec(), &w_new)?, cast(dtype, vec![channels], &b_new)?))
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
}
