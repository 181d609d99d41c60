//! `Add(MatMul(A, B), bias)` with a 2-D `A`, a constant 2-D `B` and a constant bias along the
//! last dim (either operand order) becomes `Gemm(A, B, C = bias)`: one layer, and the form the
//! epilogue pass and the backends know best for a linear layer.

use crate::passes::fuse_epilogue::{bias_vector, reader_layers, same_static_type, tensor_type, to_tensor, unique_name};
use crate::passes::{constant_input, reader_counts};
use crate::{Pass, Rebuilder};
use kiln_ir::{spec, Activation, Attribute, Attributes, DType, IrError, Network, TensorId};

pub struct MatMulAddToGemm;

/// One rewrite: the MatMul, the Add, and the bias values.
struct Rewrite {
    matmul: usize,
    add: usize,
    bias: Vec<f64>,
}

impl Pass for MatMulAddToGemm {
    fn name(&self) -> &'static str {
        "matmul-add-to-gemm"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let counts = reader_counts(net);
        let readers = reader_layers(net);
        let n = net.layers().len();
        let mut at_add: Vec<Option<Rewrite>> = (0..n).map(|_| None).collect();
        let mut skip = vec![false; n];
        for (i, s) in skip.iter_mut().enumerate() {
            if let Some(r) = rewrite(net, i, &counts, &readers) {
                *s = true;
                let add = r.add;
                at_add[add] = Some(r);
            }
        }
        if at_add.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut rb = Rebuilder::new(net)?;
        for (i, layer) in net.layers().iter().enumerate() {
            if skip[i] {
                continue;
            }
            let Some(r) = at_add[i].take() else {
                rb.copy_layer(layer)?;
                continue;
            };
            let mm = &net.layers()[r.matmul];
            let ab = rb.map_inputs(&mm.inputs[..2])?;
            let out = layer.outputs[0].expect("checked");
            let dtype = tensor_type(net, out).map_or(DType::F32, |t| t.dtype);
            let c = to_tensor(dtype, vec![r.bias.len()], &r.bias).ok_or_else(|| IrError::Layer {
                layer: mm.name.clone(),
                op: mm.op.clone(),
                message: format!("cannot build a {dtype} bias"),
            })?;
            let c = rb.constant_named(&unique_name(&rb, &format!("{}::bias", mm.name)), c)?;
            let mut attrs = Attributes::new();
            attrs.set(spec::FUSED_NODES_ATTR, Attribute::Strings(spec::merged_fused_nodes([mm, layer])));
            rb.add_layer(&mm.name, "Gemm", attrs, &[ab[0], ab[1], Some(c)], &[Some(out)])?;
        }
        Ok(Some(rb.finish()?))
    }
}

fn rewrite(net: &Network, i: usize, counts: &[usize], readers: &[Vec<usize>]) -> Option<Rewrite> {
    let mm = &net.layers()[i];
    if mm.op != "MatMul" || mm.inputs.len() != 2 || mm.outputs.len() != 1 {
        return None;
    }
    if !matches!(Activation::from_attrs(&mm.attrs), Ok(None)) {
        return None;
    }
    let (a, y) = (mm.inputs[0]?, mm.outputs[0]?);
    let ty = tensor_type(net, y)?;
    if !matches!(ty.dtype, DType::F32 | DType::F64) || tensor_type(net, a)?.shape.as_ref()?.len() != 2 {
        return None;
    }
    let w = constant_input(net, mm, 1)?;
    if w.rank() != 2 || counts[y.0] != 1 || readers[y.0].len() != 1 {
        return None;
    }
    let add_index = readers[y.0][0];
    let add = &net.layers()[add_index];
    if add.op != "Add" || add.inputs.len() != 2 || add.outputs.len() != 1 {
        return None;
    }
    let other: TensorId = if add.inputs[0] == Some(y) { add.inputs[1]? } else { add.inputs[0]? };
    let c = net.tensor(other).constant()?;
    let out = add.outputs[0]?;
    if c.dtype() != ty.dtype || !same_static_type(net, out, y) {
        return None;
    }
    let bias = bias_vector(c, 2, 1, w.shape()[1])?;
    Some(Rewrite { matmul: i, add: add_index, bias })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::fuse_epilogue::tests::assert_close;
    use crate::passes::test_support::*;
    use kiln_ir::Tensor;

    fn linear(bias_shape: &[usize], bias_first: bool, a_shape: &[usize]) -> Network {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", a_shape);
        let w = net.add_constant("w", values(&[6, 5], 1.0)).unwrap();
        let mm = layer(&mut net, "mm", "MatMul", Attributes::new(), &[x, w]);
        let b = net.add_constant("b", values(bias_shape, 2.0)).unwrap();
        let ins = if bias_first { [b, mm] } else { [mm, b] };
        let y = layer(&mut net, "add", "Add", Attributes::new(), &ins);
        net.mark_output(y).unwrap();
        net
    }

    #[test]
    fn matmul_plus_bias_becomes_gemm() {
        for (shape, first) in [(vec![5], false), (vec![1, 5], true), (vec![], false)] {
            let net = linear(&shape, first, &[4, 6]);
            let out = MatMulAddToGemm.run(&net).unwrap().expect("changed");
            let ops: Vec<&str> = out.layers().iter().map(|l| l.op.as_str()).collect();
            assert_eq!(ops, vec!["Gemm"]);
            assert_eq!(out.layers()[0].name, "mm");
            assert_eq!(spec::fused_nodes(&out.layers()[0]), vec!["mm", "add"]);
            assert_close(&net, &out, &[("x", values(&[4, 6], 0.5))], 1e-6);
        }
    }

    #[test]
    fn other_shapes_and_non_constants_stay() {
        // 3-D A (BERT): the epilogue pass fuses it into the MatMul instead.
        assert!(MatMulAddToGemm.run(&linear(&[5], false, &[2, 4, 6])).unwrap().is_none());
        // A bias along the rows, or one that grows the output.
        assert!(MatMulAddToGemm.run(&linear(&[4, 1], false, &[4, 6])).unwrap().is_none());
        assert!(MatMulAddToGemm.run(&linear(&[2, 1, 5], false, &[4, 6])).unwrap().is_none());
        // A non-constant B.
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[4, 6]);
        let w = input(&mut net, "w", &[6, 5]);
        let mm = layer(&mut net, "mm", "MatMul", Attributes::new(), &[x, w]);
        let b = net.add_constant("b", Tensor::from_vec(vec![5], vec![1.0f32; 5]).unwrap()).unwrap();
        let y = layer(&mut net, "add", "Add", Attributes::new(), &[mm, b]);
        net.mark_output(y).unwrap();
        assert!(MatMulAddToGemm.run(&net).unwrap().is_none());
        // A second reader of the product.
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[4, 6]);
        let w = net.add_constant("w", values(&[6, 5], 1.0)).unwrap();
        let mm = layer(&mut net, "mm", "MatMul", Attributes::new(), &[x, w]);
        let b = net.add_constant("b", values(&[5], 2.0)).unwrap();
        let y = layer(&mut net, "add", "Add", Attributes::new(), &[mm, b]);
        net.mark_output(y).unwrap();
        net.mark_output(mm).unwrap();
        assert!(MatMulAddToGemm.run(&net).unwrap().is_none());
    }
}
