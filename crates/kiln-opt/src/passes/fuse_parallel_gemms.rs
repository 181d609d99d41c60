//! Horizontal fusion: matrix products that read the same A with constant weights of the same K
//! (attention's Q, K and V projections) become one product with the weights concatenated along
//! N, followed by one `Split` along the last axis into the original output tensors:
//!
//! ```text
//! Add(MatMul(A, Bq), bq), Add(MatMul(A, Bk), bk), Add(MatMul(A, Bv), bv)
//!   → Split(Add(MatMul(A, [Bq Bk Bv]), [bq bk bv]), [Nq, Nk, Nv], axis = -1)
//! ```
//!
//! Members come in three forms, and a group has one form: a plain MatMul, with or without a
//! following constant per-column bias Add; a fused MatMul `[A, B, Bias?]` (no Residual) with the
//! same activation attributes; a Gemm (transA = 0; transB and alpha folded into the weights,
//! beta into the bias) without Residual and with the same activation attributes. Plain f32/f64
//! products with their bias Adds become one fused MatMul `[A, Bcat, BiasCat]` (the epilogue
//! format), so the group costs two layers: the product and the Split.

use crate::passes::pattern::{self, float_tensor, fused_attr, only_output, Graph, Rewrite};
use crate::Pass;
use kiln_ir::{spec, Attributes, DType, IrError, Network, Tensor, TensorId};

pub struct FuseParallelGemms;

impl Pass for FuseParallelGemms {
    fn name(&self) -> &'static str {
        "fuse-parallel-gemms"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let g = Graph::new(net);
        let mut groups: Vec<(Signature, Vec<Member>)> = Vec::new();
        for i in 0..net.layers().len() {
            let Some((sig, member)) = member(&g, i) else { continue };
            match groups.iter_mut().find(|(s, _)| *s == sig) {
                Some((_, members)) => members.push(member),
                None => groups.push((sig, vec![member])),
            }
        }
        let rewrites =
            groups.into_iter().filter(|(_, m)| m.len() >= 2).filter_map(|(sig, m)| rewrite(&g, sig, m)).collect();
        pattern::apply(net, rewrites)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    /// MatMul [A, B], then (if `bias`) an Add of a constant.
    Plain,
    /// MatMul [A, B, Bias?] with epilogue attributes.
    FusedMatMul,
    /// Gemm [A, B, C?].
    Gemm,
}

/// What members of one group share.
#[derive(Debug, PartialEq)]
struct Signature {
    a: TensorId,
    form: Form,
    k: usize,
    dtype: DType,
    bias: bool,
    /// The layer's attributes that are not normalized into the weights (activation).
    attrs: Attributes,
}

struct Member {
    /// The product (first) and its bias Add, if any.
    layers: Vec<usize>,
    /// The tensor the member hands to its readers.
    out: TensorId,
    /// Weights as [K, N] (transB and alpha applied), in f64.
    b: Vec<f64>,
    n: usize,
    /// Per-column bias (beta applied).
    bias: Option<Vec<f64>>,
}

/// A constant that adds one value per output column: N values, every other dim 1.
fn column_bias(t: &Tensor, n: usize, max_rank: usize) -> Option<Vec<f64>> {
    let shape = t.shape();
    let ok = t.len() == n && t.rank() <= max_rank && shape.last() == Some(&n);
    ok.then(|| t.to_f64_vec())
}

/// Layer `i` as a member of a parallel group, with its group signature.
fn member(g: &Graph, i: usize) -> Option<(Signature, Member)> {
    let layer = g.layer(i);
    if layer.op != "MatMul" && layer.op != "Gemm" {
        return None;
    }
    let a = layer.inputs.first().copied().flatten()?;
    let b_t = g.constant(layer.inputs.get(1).copied().flatten()?)?;
    let dtype = g.dtype(a)?;
    if !dtype.is_float() || b_t.dtype() != dtype || b_t.rank() != 2 || layer.inputs.get(3).copied().flatten().is_some()
    {
        return None;
    }
    let out = only_output(layer)?;
    let mut attrs = layer.attrs.clone();
    attrs.remove(spec::FUSED_NODES_ATTR);
    let (rows, cols) = (b_t.shape()[0], b_t.shape()[1]);
    let mut b = b_t.to_f64_vec();
    let bias_input = match layer.inputs.get(2).copied().flatten() {
        Some(id) => Some(g.constant(id)?),
        None => None,
    };
    let (form, k, n, bias, layers, out) = if layer.op == "Gemm" {
        if attrs.remove("transA").is_some_and(|t| t != kiln_ir::Attribute::Int(0)) {
            return None;
        }
        let trans_b = attrs.remove("transB").map_or(Ok(0), |t| match t {
            kiln_ir::Attribute::Int(v) => Ok(v),
            _ => Err(()),
        });
        let alpha = attr_float(attrs.remove("alpha"), 1.0)?;
        let beta = attr_float(attrs.remove("beta"), 1.0)?;
        let (k, n) = if trans_b.ok()? != 0 { (cols, rows) } else { (rows, cols) };
        if k == rows && n == cols {
            b.iter_mut().for_each(|v| *v *= alpha);
        } else {
            b = (0..k * n).map(|idx| alpha * b[(idx % n) * cols + idx / n]).collect();
        }
        let bias = match bias_input {
            None => None,
            Some(c) if c.dtype() == dtype && c.len() == 1 && c.rank() <= 2 => Some(vec![beta * c.to_f64_vec()[0]; n]),
            Some(c) => Some(column_bias(c, n, 2)?.into_iter().map(|v| v * beta).collect()),
        };
        (Form::Gemm, k, n, bias, vec![i], out)
    } else if layer.inputs.len() > 2 || !attrs.0.is_empty() {
        let bias = match bias_input {
            None => None,
            Some(c) if c.dtype() == dtype && c.rank() == 1 && c.len() == cols => Some(c.to_f64_vec()),
            Some(_) => return None,
        };
        (Form::FusedMatMul, rows, cols, bias, vec![i], out)
    } else {
        // A plain MatMul; a constant per-column Add after it joins the member.
        let out_rank = g.shape(out)?.len();
        let add = match g.readers(out) {
            [r] if !g.is_output(out) && g.layer(*r).op == "Add" => Some((*r, g.layer(*r))),
            _ => None,
        };
        let with_bias = add.and_then(|(r, add)| {
            let (x, y) = pattern::two_inputs(add)?;
            let c = g.constant(if x == out { y } else { x })?;
            let bias = (c.dtype() == dtype && x != y).then(|| column_bias(c, cols, out_rank))??;
            Some((r, only_output(add)?, bias))
        });
        match with_bias {
            Some((r, add_out, bias)) => (Form::Plain, rows, cols, Some(bias), vec![i, r], add_out),
            None => (Form::Plain, rows, cols, None, vec![i], out),
        }
    };
    let sig = Signature { a, form, k, dtype, bias: bias.is_some(), attrs };
    Some((sig, Member { layers, out, b, n, bias }))
}

fn attr_float(a: Option<kiln_ir::Attribute>, default: f64) -> Option<f64> {
    match a {
        None => Some(default),
        Some(kiln_ir::Attribute::Float(v)) => Some(v as f64),
        Some(_) => None,
    }
}

fn rewrite(g: &Graph, sig: Signature, members: Vec<Member>) -> Option<Rewrite> {
    let covered: Vec<usize> = members.iter().flat_map(|m| m.layers.iter().copied()).collect();
    let outs: Vec<TensorId> = members.iter().map(|m| m.out).collect();
    if !g.sealed(&covered, &outs) {
        return None;
    }
    let k = sig.k;
    let total: usize = members.iter().map(|m| m.n).sum();
    let mut w = Vec::with_capacity(k * total);
    for row in 0..k {
        for m in &members {
            w.extend_from_slice(&m.b[row * m.n..(row + 1) * m.n]);
        }
    }
    let w = float_tensor(sig.dtype, vec![k, total], &w)?;
    let bias = sig.bias.then(|| {
        let v: Vec<f64> = members.iter().flat_map(|m| m.bias.clone().unwrap_or_default()).collect();
        float_tensor(sig.dtype, vec![total], &v)
    });
    let bias = match bias {
        Some(b) => Some(b?),
        None => None,
    };
    let sizes = Tensor::from_vec(vec![members.len()], members.iter().map(|m| m.n as i64).collect()).ok()?;

    let net = g.net;
    let products: Vec<usize> = members.iter().map(|m| m.layers[0]).collect();
    let adds: Vec<usize> = members.iter().filter_map(|m| m.layers.get(1).copied()).collect();
    let first = &net.layers()[products[0]];
    let name = first.name.clone();
    let add_name = adds.first().map(|&a| net.layers()[a].name.clone());
    // Plain products with a bias become one fused MatMul [A, Bcat, BiasCat] where its kernel adds
    // the bias exactly as the Add did (f32, f64: one rounding of the same sum); other float types
    // keep MatMul + Add.
    let fuse_bias = sig.form == Form::Plain && sig.bias && matches!(sig.dtype, DType::F32 | DType::F64);
    let form = if fuse_bias { Form::FusedMatMul } else { sig.form };
    let mut attrs = sig.attrs.clone();
    let fused_layers: Vec<usize> = if fuse_bias { covered.clone() } else { products.clone() };
    attrs.set(spec::FUSED_NODES_ATTR, fused_attr(net, &fused_layers));
    let add_fused = (!adds.is_empty()).then(|| fused_attr(net, &adds));
    let a = sig.a;
    Some(Rewrite {
        covered,
        at: products[0],
        emit: Box::new(move |rb| {
            let a = rb.map(a)?;
            let w = rb.constant_named(&pattern::fresh_name(rb, &format!("{name}::weight_cat")), w)?;
            let bias = match bias {
                Some(b) => Some(rb.constant_named(&pattern::fresh_name(rb, &format!("{name}::bias_cat")), b)?),
                None => None,
            };
            let product_out = pattern::fresh_name(rb, &format!("{name}_output_cat"));
            let mut y = match form {
                Form::Plain => rb.add_new_layer(&name, "MatMul", attrs, &[Some(a), Some(w)], &[&product_out])?,
                Form::FusedMatMul | Form::Gemm => {
                    rb.add_new_layer(&name, first_op(form), attrs, &[Some(a), Some(w), bias], &[&product_out])?
                }
            }[0];
            if let (Form::Plain, Some(bias), Some(add_name)) = (form, bias, add_name) {
                let out = pattern::fresh_name(rb, &format!("{add_name}_output_cat"));
                let mut add_attrs = Attributes::new();
                add_attrs.set(spec::FUSED_NODES_ATTR, add_fused.expect("adds exist"));
                y = rb.add_new_layer(&add_name, "Add", add_attrs, &[y, Some(bias)], &[&out])?[0];
            }
            let sizes = rb.constant_named(&pattern::fresh_name(rb, &format!("{name}::split_sizes")), sizes)?;
            let split = pattern::fresh_layer_name(rb, &format!("{name}::split"));
            let replaces: Vec<Option<TensorId>> = outs.iter().map(|&o| Some(o)).collect();
            rb.add_layer(&split, "Split", Attributes::new().with("axis", -1i64), &[y, Some(sizes)], &replaces)?;
            Ok(())
        }),
    })
}

fn first_op(form: Form) -> &'static str {
    match form {
        Form::Gemm => "Gemm",
        _ => "MatMul",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::dead_layers::DeadLayerElimination;
    use crate::passes::pattern::testing::*;
    use crate::passes::test_support::layer;
    use kiln_ir::Dim;

    fn linear(net: &mut Network, name: &str, x: TensorId, k: usize, n: usize, seed: u64) -> TensorId {
        let w = net.add_constant(&format!("{name}.w"), random(&[k, n], seed, 1.0)).unwrap();
        let b = net.add_constant(&format!("{name}.b"), random(&[n], seed + 100, 1.0)).unwrap();
        let m = layer(net, &format!("{name}/MatMul"), "MatMul", Attributes::new(), &[x, w]);
        layer(net, &format!("{name}/Add"), "Add", Attributes::new(), &[b, m])
    }

    fn x_input(net: &mut Network) -> TensorId {
        sym_input(net, "x", &[Dim::Symbol("b".into()), Dim::Symbol("s".into()), Dim::Known(8)])
    }

    fn fuse(net: &Network) -> Network {
        let out = FuseParallelGemms.run(net).unwrap().expect("fused");
        DeadLayerElimination.run(&out).unwrap().unwrap_or(out)
    }

    fn inputs() -> Vec<(&'static str, Tensor)> {
        vec![("x", random(&[2, 3, 8], 9, 1.0))]
    }

    #[test]
    fn q_k_v_projections_become_one_matmul_and_a_split() {
        let mut net = Network::new("t");
        let x = x_input(&mut net);
        let q = linear(&mut net, "q", x, 8, 4, 1);
        // Q's reader comes before K and V exist: the fused product goes where Q's was.
        let q = layer(&mut net, "relu", "Relu", Attributes::new(), &[q]);
        let k = linear(&mut net, "k", x, 8, 4, 2);
        let v = linear(&mut net, "v", x, 8, 6, 3);
        let kv = layer(&mut net, "kv", "Concat", Attributes::new().with("axis", -1i64), &[k, v]);
        net.mark_output(q).unwrap();
        net.mark_output(kv).unwrap();
        net.mark_output(v).unwrap();
        let out = fuse(&net);
        assert_eq!(ops(&out), vec!["MatMul", "Split", "Relu", "Concat"]);
        let mm = &out.layers()[0];
        assert_eq!(mm.name, "q/MatMul");
        let nodes = ["q/MatMul", "q/Add", "k/MatMul", "k/Add", "v/MatMul", "v/Add"];
        assert_eq!(spec::fused_nodes(mm), nodes);
        assert_eq!(out.tensor(mm.inputs[1].unwrap()).constant().unwrap().shape(), &[8, 14]);
        assert_eq!(out.tensor(mm.inputs[2].unwrap()).constant().unwrap().shape(), &[14]);
        assert_close(&net, &out, &inputs(), 1e-6);
    }

    #[test]
    fn f16_products_keep_their_bias_add() {
        let mut net = Network::new("t");
        let x = net.add_input("x", kiln_ir::ValueType::tensor(DType::F16, vec![Dim::Known(3), Dim::Known(8)])).unwrap();
        let mut outs = Vec::new();
        for (i, n) in [4usize, 2].into_iter().enumerate() {
            let half = |t: Tensor| float_tensor(DType::F16, t.shape().to_vec(), &t.to_f64_vec()).unwrap();
            let w = net.add_constant(&format!("w{i}"), half(random(&[8, n], i as u64, 1.0))).unwrap();
            let b = net.add_constant(&format!("b{i}"), half(random(&[n], 7 + i as u64, 1.0))).unwrap();
            let m = layer(&mut net, &format!("mm{i}"), "MatMul", Attributes::new(), &[x, w]);
            outs.push(layer(&mut net, &format!("add{i}"), "Add", Attributes::new(), &[m, b]));
        }
        outs.iter().for_each(|&o| net.mark_output(o).unwrap());
        let out = fuse(&net);
        assert_eq!(ops(&out), vec!["MatMul", "Add", "Split"]);
        let x = float_tensor(DType::F16, vec![3, 8], &random(&[3, 8], 5, 1.0).to_f64_vec()).unwrap();
        assert_close(&net, &out, &[("x", x)], 1e-3);
    }

    #[test]
    fn products_without_bias_and_gemms_fuse_too() {
        let mut net = Network::new("t");
        let x = x_input(&mut net);
        let w1 = net.add_constant("w1", random(&[8, 3], 1, 1.0)).unwrap();
        let w2 = net.add_constant("w2", random(&[8, 5], 2, 1.0)).unwrap();
        let a = layer(&mut net, "a", "MatMul", Attributes::new(), &[x, w1]);
        let b = layer(&mut net, "b", "MatMul", Attributes::new(), &[x, w2]);
        net.mark_output(a).unwrap();
        net.mark_output(b).unwrap();
        let out = fuse(&net);
        assert_eq!(ops(&out), vec!["MatMul", "Split"]);
        assert_close(&net, &out, &inputs(), 1e-6);

        let mut net = Network::new("t");
        let x = sym_input(&mut net, "x", &[Dim::Symbol("m".into()), Dim::Known(8)]);
        let w1 = net.add_constant("w1", random(&[3, 8], 1, 1.0)).unwrap();
        let c1 = net.add_constant("c1", random(&[3], 2, 1.0)).unwrap();
        let w2 = net.add_constant("w2", random(&[8, 5], 3, 1.0)).unwrap();
        let c2 = net.add_constant("c2", random(&[1, 5], 4, 1.0)).unwrap();
        let g1 = Attributes::new().with("transB", 1i64).with("alpha", 0.5f32).with("beta", 2.0f32);
        let a = layer(&mut net, "a", "Gemm", g1, &[x, w1, c1]);
        let b = layer(&mut net, "b", "Gemm", Attributes::new(), &[x, w2, c2]);
        net.mark_output(a).unwrap();
        net.mark_output(b).unwrap();
        let out = fuse(&net);
        assert_eq!(ops(&out), vec!["Gemm", "Split"]);
        assert_close(&net, &out, &[("x", random(&[4, 8], 5, 1.0))], 1e-6);
    }

    #[test]
    fn the_fused_matmul_form_keeps_its_bias_and_activation() {
        let mut net = Network::new("t");
        let x = x_input(&mut net);
        let mut outs = Vec::new();
        for (i, n) in [4usize, 6].into_iter().enumerate() {
            let w = net.add_constant(&format!("w{i}"), random(&[8, n], i as u64, 1.0)).unwrap();
            let b = net.add_constant(&format!("b{i}"), random(&[n], 10 + i as u64, 1.0)).unwrap();
            let attrs = Attributes::new().with("kiln_activation", "Relu");
            outs.push(layer(&mut net, &format!("mm{i}"), "MatMul", attrs, &[x, w, b]));
        }
        outs.iter().for_each(|&o| net.mark_output(o).unwrap());
        let out = fuse(&net);
        assert_eq!(ops(&out), vec!["MatMul", "Split"]);
        let mm = &out.layers()[0];
        assert_eq!(mm.attrs.string("kiln_activation", String::new()).unwrap(), "Relu");
        assert_eq!(out.tensor(mm.inputs[2].unwrap()).constant().unwrap().shape(), &[10]);
    }

    #[test]
    fn different_inputs_k_or_bias_forms_do_not_fuse() {
        // Different A.
        let mut net = Network::new("t");
        let x = x_input(&mut net);
        let y = sym_input(&mut net, "y", &[Dim::Known(2), Dim::Known(8)]);
        let a = linear(&mut net, "a", x, 8, 4, 1);
        let b = linear(&mut net, "b", y, 8, 4, 2);
        net.mark_output(a).unwrap();
        net.mark_output(b).unwrap();
        assert!(FuseParallelGemms.run(&net).unwrap().is_none());

        // A second reader of one product's output leaves that member without its bias: the two
        // members no longer have the same form.
        let mut net = Network::new("t");
        let x = x_input(&mut net);
        let a = linear(&mut net, "a", x, 8, 4, 1);
        let b = linear(&mut net, "b", x, 8, 4, 2);
        let bm = net.tensor_by_name("b/MatMul_out").unwrap();
        net.mark_output(a).unwrap();
        net.mark_output(b).unwrap();
        net.mark_output(bm).unwrap();
        assert!(FuseParallelGemms.run(&net).unwrap().is_none());

        // A non-constant weight.
        let mut net = Network::new("t");
        let x = x_input(&mut net);
        let w = sym_input(&mut net, "w", &[Dim::Known(8), Dim::Known(4)]);
        let a = linear(&mut net, "a", x, 8, 4, 1);
        let b = layer(&mut net, "b", "MatMul", Attributes::new(), &[x, w]);
        net.mark_output(a).unwrap();
        net.mark_output(b).unwrap();
        assert!(FuseParallelGemms.run(&net).unwrap().is_none());
    }
}
