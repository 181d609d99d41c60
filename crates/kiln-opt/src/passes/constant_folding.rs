//! Constant folding: a layer whose inputs are all constants is computed now, on the CPU, and
//! replaced by its results. `Shape` and `Size` of a tensor whose static shape is fully known
//! fold too, which is what collapses the Shape → Gather → Unsqueeze → Concat → Reshape
//! sub-graphs exporters emit once input shapes are fixed.

use crate::{Pass, Rebuilder};
use kiln_ir::{concrete, Attribute, IrError, Layer, Network, Tensor, TensorId, Value, ValueType};

pub struct ConstantFolding {
    /// Results larger than this many elements stay computed at run time, so that folding never
    /// turns a cheap op (ConstantOfShape, Expand, Tile) into megabytes of plan.
    pub max_elements: usize,
}

impl Default for ConstantFolding {
    fn default() -> Self {
        ConstantFolding { max_elements: 1 << 20 }
    }
}

impl Pass for ConstantFolding {
    fn name(&self) -> &'static str {
        "constant-folding"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let mut rb = Rebuilder::new(net)?;
        let mut folded = 0;
        for layer in net.layers() {
            match self.fold(&mut rb, layer)? {
                Some(values) => {
                    for (out, value) in layer.outputs.iter().zip(values) {
                        if let Some(out) = out {
                            rb.constant(*out, value)?;
                        }
                    }
                    folded += 1;
                }
                None => rb.copy_layer(layer)?,
            }
        }
        if folded == 0 {
            return Ok(None);
        }
        tracing::debug!(folded, "constant folding");
        Ok(Some(rb.finish()?))
    }
}

impl ConstantFolding {
    /// The layer's outputs if they can be known now.
    fn fold(&self, rb: &mut Rebuilder, layer: &Layer) -> Result<Option<Vec<Tensor>>, IrError> {
        // Layers with subgraphs or outer-scope reads are left alone.
        let has_graph = layer.attrs.iter().any(|(_, a)| matches!(a, Attribute::Graph(_) | Attribute::Graphs(_)));
        if has_graph || !layer.implicit_inputs.is_empty() || layer.outputs.iter().all(Option::is_none) {
            return Ok(None);
        }
        if let Some(t) = static_shape_value(rb.src(), layer) {
            return Ok(Some(vec![t]));
        }
        let mut args: Vec<Option<Value>> = Vec::with_capacity(layer.inputs.len());
        for input in &layer.inputs {
            match input {
                None => args.push(None),
                Some(id) => {
                    let mapped = rb.map(*id)?;
                    match rb.dst().tensor(mapped).constant() {
                        Some(t) => args.push(Some(Value::Tensor(t.clone()))),
                        None => return Ok(None),
                    }
                }
            }
        }
        let refs: Vec<Option<&Value>> = args.iter().map(Option::as_ref).collect();
        // A layer that fails now would fail at run time too: leave it, so the error is
        // reported there, with the caller's inputs.
        let Ok(values) = kiln_cpu::eval_layer(layer, &refs) else { return Ok(None) };
        let mut tensors = Vec::with_capacity(values.len());
        for v in values {
            match v {
                Value::Tensor(t) if t.len() <= self.max_elements => tensors.push(t),
                _ => return Ok(None),
            }
        }
        Ok((tensors.len() >= layer.outputs.len()).then_some(tensors))
    }
}

/// `Shape` / `Size` of a tensor whose dims are all known, as a constant.
fn static_shape_value(net: &Network, layer: &Layer) -> Option<Tensor> {
    if layer.op != "Shape" && layer.op != "Size" {
        return None;
    }
    let x: TensorId = layer.inputs.first().copied().flatten()?;
    let Some(ValueType::Tensor(t)) = &net.tensor(x).ty else { return None };
    let dims = concrete(t.shape.as_ref()?)?;
    if layer.op == "Size" {
        return Some(Tensor::scalar(dims.iter().product::<usize>() as i64));
    }
    let rank = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
    let start = clamp(layer.attrs.int("start", 0).ok()?);
    let end = clamp(layer.attrs.int("end", rank).ok()?);
    let picked: Vec<i64> = dims[start..end.max(start)].iter().map(|&d| d as i64).collect();
    Tensor::from_vec(vec![picked.len()], picked).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_support::*;
    use crate::PassManager;
    use kiln_ir::Attributes;

    #[test]
    fn the_exporters_shape_subgraph_folds_into_a_constant_reshape() {
        // y = Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])) with x: [2, 3, 4]
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[2, 3, 4]);
        let shape = layer(&mut net, "shape", "Shape", Attributes::new(), &[x]);
        let idx = net.add_constant("idx", Tensor::scalar(0i64)).unwrap();
        let dim = layer(&mut net, "gather", "Gather", Attributes::new().with("axis", 0i64), &[shape, idx]);
        let axes = net.add_constant("axes", Tensor::from_vec(vec![1], vec![0i64]).unwrap()).unwrap();
        let dim = layer(&mut net, "unsq", "Unsqueeze", Attributes::new(), &[dim, axes]);
        let rest = net.add_constant("rest", Tensor::from_vec(vec![1], vec![-1i64]).unwrap()).unwrap();
        let target = layer(&mut net, "concat", "Concat", Attributes::new().with("axis", 0i64), &[dim, rest]);
        let y = layer(&mut net, "reshape", "Reshape", Attributes::new(), &[x, target]);
        net.mark_output(y).unwrap();

        let (out, report) = PassManager::simplify().run(net.clone()).unwrap();
        let ops: Vec<&str> = out.layers().iter().map(|l| l.op.as_str()).collect();
        assert_eq!(ops, vec!["Reshape"], "{report:?}");
        let target = out.layers()[0].inputs[1].unwrap();
        assert_eq!(out.tensor(target).constant().unwrap().to_i64_vec(), vec![2, -1]);
        // The reshape's output type is now static.
        assert_eq!(out.tensor(out.outputs()[0]).ty.as_ref().unwrap().to_string(), "f32[2, 12]");
        assert_same_outputs(&net, &out, &[("x", values(&[2, 3, 4], 3.0))]);
    }

    #[test]
    fn large_results_are_not_folded() {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1024]);
        let shape = net.add_constant("shape", Tensor::from_vec(vec![2], vec![2048i64, 1024]).unwrap()).unwrap();
        let big = layer(&mut net, "big", "ConstantOfShape", Attributes::new(), &[shape]);
        let y = layer(&mut net, "y", "Add", Attributes::new(), &[big, x]);
        net.mark_output(y).unwrap();
        assert!(ConstantFolding::default().run(&net).unwrap().is_none());
    }
}
