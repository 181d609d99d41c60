//! What a network costs: parameters (constant elements) and floating-point operations per run
//! at its static shapes. Products count two operations per multiply-add, attention its two
//! batched products, everything else one operation per output element. A layer whose output
//! shape is not fully known counts nothing (`unknown_layers` says how many).

use kiln_ir::{Dim, Layer, Network, TensorId, ValueType};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Constant elements (weights, biases, other constants).
    pub params: u64,
    pub flops: u64,
    /// Layers whose shapes were not known, so their FLOPs are missing.
    pub unknown_layers: u64,
}

fn dims(net: &Network, t: TensorId) -> Option<Vec<u64>> {
    let Some(ValueType::Tensor(tt)) = &net.tensor(t).ty else { return None };
    tt.shape.as_ref()?.iter().map(|d| Dim::known(d).map(|n| n as u64)).collect()
}

/// FLOPs of one layer, `None` when its shapes are not known.
pub fn layer_flops(net: &Network, layer: &Layer) -> Option<u64> {
    let input = |i: usize| layer.inputs.get(i).copied().flatten().and_then(|id| dims(net, id));
    let out = dims(net, layer.outputs.iter().flatten().next().copied()?)?;
    let numel: u64 = out.iter().product();
    Some(match layer.op.as_str() {
        "Conv" => {
            // Each output element: C/group · kernel multiply-adds.
            let w = input(1)?;
            2 * numel * w[1..].iter().product::<u64>()
        }
        "MatMul" | "Gemm" => {
            let a = input(0)?;
            let k =
                if layer.op == "Gemm" && layer.attrs.int("transA", 0).unwrap_or(0) != 0 { a[0] } else { *a.last()? };
            2 * numel * k
        }
        "Attention" => {
            // Q·Kᵀ and P·V: 2 · (q elements · kv_len) + 2 · (output elements · kv_len).
            let (q, k) = (input(0)?, input(1)?);
            let kv_len = if k.len() == 3 { k[1] } else { k[k.len() - 2] };
            2 * q.iter().product::<u64>() * kv_len + 2 * numel * kv_len
        }
        _ => numel,
    })
}

/// The cost of `net` at its static shapes.
pub fn cost(net: &Network) -> Cost {
    let mut c = Cost { params: net.parameter_count() as u64, ..Default::default() };
    for layer in net.layers() {
        match layer_flops(net, layer) {
            Some(f) => c.flops += f,
            None => c.unknown_layers += 1,
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_support::*;
    use kiln_ir::Attributes;

    #[test]
    fn conv_and_matmul_count_two_flops_per_multiply_add() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 4, 8, 8]);
        let w = net.add_constant("w", values(&[6, 2, 3, 3], 1.0)).unwrap();
        let y =
            layer(&mut net, "conv", "Conv", Attributes::new().with("group", 2i64).with("pads", vec![1i64; 4]), &[x, w]);
        let f = layer(&mut net, "flat", "Flatten", Attributes::new(), &[y]);
        let b = net.add_constant("b", values(&[384, 10], 2.0)).unwrap();
        let z = layer(&mut net, "mm", "MatMul", Attributes::new(), &[f, b]);
        net.mark_output(z).unwrap();
        let c = cost(&net);
        assert_eq!(c.params, 6 * 2 * 9 + 384 * 10);
        // conv: 6·8·8 outputs · 2·9 MACs; flatten: 384; matmul: 10 outputs · 384 MACs.
        assert_eq!(c.flops, 2 * 384 * 18 + 384 + 2 * 10 * 384);
        assert_eq!(c.unknown_layers, 0);
    }
}
