//! Shared machinery of the pattern passes (LayerNorm, GELU, Softmax, attention, parallel GEMMs):
//! who reads what, constants by value, static shapes, and one driver that swaps matched layer
//! groups for their replacement while copying everything else.

use crate::Rebuilder;
use kiln_ir::{
    DType, Dim, Element, IrError, Layer, Network, Shape, Tensor, TensorData, TensorId, TensorSource, ValueType,
};

/// A network with its reader lists, for matching. Dead layers (whose outputs nothing needs,
/// like the shape computations a folding pass just made redundant) do not count as readers:
/// [`apply`] drops them, so they cannot block a fusion in the same round.
pub(crate) struct Graph<'a> {
    pub net: &'a Network,
    /// Per tensor: the live layers reading it (once per read, explicit or implicit).
    readers: Vec<Vec<usize>>,
    /// Per tensor: is it a network output?
    is_output: Vec<bool>,
}

impl<'a> Graph<'a> {
    pub fn new(net: &'a Network) -> Self {
        let live = live_layers(net);
        let mut readers = vec![Vec::new(); net.tensors().len()];
        for (i, layer) in net.layers().iter().enumerate().filter(|(i, _)| live[*i]) {
            for id in layer.inputs.iter().flatten().chain(&layer.implicit_inputs) {
                readers[id.0].push(i);
            }
        }
        let mut is_output = vec![false; net.tensors().len()];
        for id in net.outputs() {
            is_output[id.0] = true;
        }
        Graph { net, readers, is_output }
    }

    pub fn layer(&self, index: usize) -> &'a Layer {
        &self.net.layers()[index]
    }

    /// The layer producing `id` (index and layer), if `op` is its op.
    pub fn producer(&self, id: TensorId, op: &str) -> Option<(usize, &'a Layer)> {
        match self.net.tensor(id).source {
            TensorSource::Layer { layer, .. } if self.net.layer(layer).op == op => {
                Some((layer.0, self.net.layer(layer)))
            }
            _ => None,
        }
    }

    /// The layer producing `id`, whatever its op.
    pub fn producer_any(&self, id: TensorId) -> Option<(usize, &'a Layer)> {
        match self.net.tensor(id).source {
            TensorSource::Layer { layer, .. } => Some((layer.0, self.net.layer(layer))),
            _ => None,
        }
    }

    /// The layers reading `id`.
    pub fn readers(&self, id: TensorId) -> &[usize] {
        &self.readers[id.0]
    }

    pub fn is_output(&self, id: TensorId) -> bool {
        self.is_output[id.0]
    }

    /// Can the layers `covered` be replaced as a group that exposes only `kept` (the tensors
    /// its replacement recreates)? Every other output of a covered layer must be read by covered
    /// layers only, never by the caller.
    pub fn sealed(&self, covered: &[usize], kept: &[TensorId]) -> bool {
        covered.iter().all(|&l| {
            self.layer(l).outputs.iter().flatten().all(|&out| {
                kept.contains(&out) || (!self.is_output(out) && self.readers(out).iter().all(|r| covered.contains(r)))
            })
        })
    }

    /// The constant value of `id`, if it is a constant.
    pub fn constant(&self, id: TensorId) -> Option<&'a Tensor> {
        self.net.tensor(id).constant()
    }

    /// The static shape of `id`, when its rank is known.
    pub fn shape(&self, id: TensorId) -> Option<&'a Shape> {
        match &self.net.tensor(id).ty {
            Some(ValueType::Tensor(t)) => t.shape.as_ref(),
            _ => None,
        }
    }

    /// The element type of `id`, if it is a typed tensor.
    pub fn dtype(&self, id: TensorId) -> Option<kiln_ir::DType> {
        match &self.net.tensor(id).ty {
            Some(ValueType::Tensor(t)) => Some(t.dtype),
            _ => None,
        }
    }

    /// A float constant holding one value (any shape of one element) whose rank does not exceed
    /// `max_rank`, so broadcasting it never changes the other operand's shape.
    pub fn scalar(&self, id: TensorId, max_rank: usize) -> Option<f64> {
        let t = self.constant(id)?;
        (t.len() == 1 && t.rank() <= max_rank && t.dtype().is_float()).then(|| t.to_f64_vec()[0])
    }

    /// For a two-input layer: (the other input, the scalar constant) if one input is a scalar
    /// constant (see [`Graph::scalar`]), trying `commutative` layers both ways. The flag tells
    /// whether the constant was the first input.
    pub fn with_scalar(&self, layer: &Layer, commutative: bool) -> Option<(TensorId, f64, bool)> {
        let (a, b) = two_inputs(layer)?;
        let rank = |id| self.shape(id).map(|s| s.len());
        if let Some(c) = rank(a).and_then(|r| self.scalar(b, r)) {
            return Some((a, c, false));
        }
        if commutative {
            if let Some(c) = rank(b).and_then(|r| self.scalar(a, r)) {
                return Some((b, c, true));
            }
        }
        None
    }
}

/// Per layer: does anything need its outputs (a network output, through live layers)?
pub(crate) fn live_layers(net: &Network) -> Vec<bool> {
    let mut needed = vec![false; net.tensors().len()];
    for id in net.outputs() {
        needed[id.0] = true;
    }
    let mut live = vec![false; net.layers().len()];
    for (i, layer) in net.layers().iter().enumerate().rev() {
        if layer.outputs.iter().flatten().any(|o| needed[o.0]) {
            live[i] = true;
            for id in layer.inputs.iter().flatten().chain(&layer.implicit_inputs) {
                needed[id.0] = true;
            }
        }
    }
    live
}

/// The two inputs of a binary layer.
pub(crate) fn two_inputs(layer: &Layer) -> Option<(TensorId, TensorId)> {
    match layer.inputs.as_slice() {
        [Some(a), Some(b)] => Some((*a, *b)),
        _ => None,
    }
}

/// The single output of a layer (other outputs absent).
pub(crate) fn only_output(layer: &Layer) -> Option<TensorId> {
    match layer.outputs.as_slice() {
        [Some(o)] => Some(*o),
        [Some(o), rest @ ..] if rest.iter().all(Option::is_none) => Some(*o),
        _ => None,
    }
}

/// `a ≈ b` within a relative tolerance (constants exporters write in f32).
pub(crate) fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(f64::MIN_POSITIVE)
}

/// Two static dims that are certainly equal at run time: the same number, or the same symbol.
pub(crate) fn same_dim(a: &Dim, b: &Dim) -> bool {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => x == y,
        (Dim::Symbol(x), Dim::Symbol(y)) => x == y,
        _ => false,
    }
}

/// The constant axes of a Reduce* layer (input 1, or the `axes` attribute of older opsets),
/// normalized against `rank` and sorted; `None` when they are not constant, or when the layer
/// does not keep the reduced dims.
pub(crate) fn reduce_axes(g: &Graph, layer: &Layer, rank: usize) -> Option<Vec<usize>> {
    if layer.attrs.int("keepdims", 1).ok()? != 1 {
        return None;
    }
    let axes: Vec<i64> = match layer.inputs.get(1).copied().flatten() {
        Some(id) => g.constant(id)?.to_i64_vec(),
        None => layer.attrs.ints("axes", Vec::new()).ok()?,
    };
    if axes.is_empty() {
        // All axes (unless noop_with_empty_axes, which makes it an identity).
        return (layer.attrs.int("noop_with_empty_axes", 0).ok()? == 0).then(|| (0..rank).collect());
    }
    let mut out: Vec<usize> =
        axes.iter().map(|&a| kiln_ir::spec::normalize_axis(a, rank).ok()).collect::<Option<Vec<_>>>()?;
    out.sort_unstable();
    out.dedup();
    (out.len() == axes.len()).then_some(out)
}

/// A float tensor of `dtype` holding `values` (computed in f64).
pub(crate) fn float_tensor(dtype: DType, shape: Vec<usize>, values: &[f64]) -> Option<Tensor> {
    fn conv<T: Element>(v: &[f64]) -> TensorData {
        T::into_data(v.iter().map(|&x| T::from_f64(x)).collect())
    }
    let data = match dtype {
        DType::F32 => conv::<f32>(values),
        DType::F64 => conv::<f64>(values),
        DType::F16 => conv::<kiln_ir::f16>(values),
        DType::BF16 => conv::<kiln_ir::bf16>(values),
        _ => return None,
    };
    Tensor::new(shape, data).ok()
}

/// The fused-nodes attribute of a layer replacing `covered` (layer indices, any order).
pub(crate) fn fused_attr(net: &Network, covered: &[usize]) -> kiln_ir::Attribute {
    let mut sorted = covered.to_vec();
    sorted.sort_unstable();
    kiln_ir::Attribute::Strings(kiln_ir::spec::merged_fused_nodes(sorted.iter().map(|&i| &net.layers()[i])))
}

/// One matched group of layers and what replaces it.
pub(crate) struct Rewrite {
    /// Every layer the group replaces.
    pub covered: Vec<usize>,
    /// Where in the layer order the replacement goes (a covered layer's index): the last
    /// covered layer for single-output patterns; the first for groups whose outputs are read
    /// between their layers (parallel GEMMs).
    pub at: usize,
    /// Adds the replacement to the copy.
    pub emit: Emit,
}

/// What adds a rewrite's replacement to the copy.
pub(crate) type Emit = Box<dyn FnOnce(&mut Rebuilder) -> Result<(), IrError>>;

impl Rewrite {
    /// Replace `covered` by one layer `op` (named `name`, placed at `at`) reading `x` and
    /// writing `out`; `attrs` gain the fused-nodes list.
    pub(crate) fn single_op(
        net: &Network,
        covered: Vec<usize>,
        at: usize,
        (name, op, mut attrs): (String, &'static str, kiln_ir::Attributes),
        x: kiln_ir::TensorId,
        out: kiln_ir::TensorId,
    ) -> Rewrite {
        attrs.set(kiln_ir::spec::FUSED_NODES_ATTR, fused_attr(net, &covered));
        Rewrite {
            covered,
            at,
            emit: Box::new(move |rb| {
                let x = rb.map(x)?;
                rb.add_layer(&name, op, attrs, &[Some(x)], &[Some(out)])?;
                Ok(())
            }),
        }
    }
}

/// Apply non-overlapping rewrites (the first one found wins a conflict; the pass manager
/// comes back for the others) and copy every other live layer. Rewrites of dead layers are
/// ignored.
pub(crate) fn apply(net: &Network, rewrites: Vec<Rewrite>) -> Result<Option<Network>, IrError> {
    let live = live_layers(net);
    let mut claimed = vec![false; net.layers().len()];
    let mut at: Vec<Option<Emit>> = (0..net.layers().len()).map(|_| None).collect();
    let mut any = false;
    for rw in rewrites {
        if !live[rw.at] || rw.covered.iter().any(|&l| claimed[l]) || !rw.covered.contains(&rw.at) {
            continue;
        }
        for &l in &rw.covered {
            claimed[l] = true;
        }
        at[rw.at] = Some(rw.emit);
        any = true;
    }
    if !any {
        return Ok(None);
    }
    let mut rb = Rebuilder::new(net)?;
    for (i, layer) in net.layers().iter().enumerate() {
        if let Some(emit) = at[i].take() {
            emit(&mut rb)?;
        } else if live[i] && !claimed[i] {
            rb.copy_layer(layer)?;
        }
    }
    Ok(Some(rb.finish()?))
}

/// A name for a new tensor that neither the source network nor the copy uses yet.
pub(crate) fn fresh_name(rb: &Rebuilder, base: &str) -> String {
    let taken = |n: &str| rb.src().tensor_by_name(n).is_some() || rb.dst().tensor_by_name(n).is_some();
    if !taken(base) {
        return base.to_string();
    }
    (1..).map(|i| format!("{base}_{i}")).find(|n| !taken(n)).expect("some suffix is free")
}

/// A layer name that neither network uses yet.
pub(crate) fn fresh_layer_name(rb: &Rebuilder, base: &str) -> String {
    let taken = |n: &str| rb.src().layer_by_name(n).is_some() || rb.dst().layer_by_name(n).is_some();
    if !taken(base) {
        return base.to_string();
    }
    (1..).map(|i| format!("{base}_{i}")).find(|n| !taken(n)).expect("some suffix is free")
}

#[cfg(test)]
pub(crate) mod testing {
    //! Fused-vs-unfused comparison on random inputs.
    use kiln_ir::{DType, Dim, Network, Tensor, Value, ValueType};
    use std::collections::HashMap;

    /// Deterministic pseudo-random values in [-scale, scale), never exactly zero.
    pub fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let v = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = ((s >> 40) as f32 + 0.5) / (1u64 << 24) as f32;
                (2.0 * u - 1.0) * scale
            })
            .collect();
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    pub fn sym_input(net: &mut Network, name: &str, dims: &[Dim]) -> kiln_ir::TensorId {
        net.add_input(name, ValueType::tensor(DType::F32, dims.to_vec())).unwrap()
    }

    /// Run both networks on the inputs; every output element must agree within `rel` relative error
    /// (measured against the element, plus 1 % of the output's largest magnitude for values near 0).
    pub fn assert_close(a: &Network, b: &Network, inputs: &[(&str, Tensor)], rel: f64) {
        let bind = || -> HashMap<String, Value> {
            inputs.iter().map(|(n, t)| (n.to_string(), Value::Tensor(t.clone()))).collect()
        };
        let ra = kiln_cpu::execute_named(a, bind()).unwrap();
        let rb = kiln_cpu::execute_named(b, bind()).unwrap();
        let names = |n: &Network| n.outputs().iter().map(|&id| n.tensor(id).name.clone()).collect::<Vec<_>>();
        assert_eq!(names(a), names(b), "output names");
        for ((va, vb), na) in ra.iter().zip(&rb).zip(names(a)) {
            let (ta, tb) = (va.as_tensor().unwrap(), vb.as_tensor().unwrap());
            assert_eq!(ta.shape(), tb.shape(), "{na}");
            let (xa, xb) = (ta.to_f64_vec(), tb.to_f64_vec());
            let norm = xa.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
            for (i, (x, y)) in xa.iter().zip(&xb).enumerate() {
                assert!((x - y).abs() <= rel * (x.abs() + 1e-2 * norm), "{na}[{i}]: {x} vs {y}");
            }
        }
    }

    pub fn ops(net: &Network) -> Vec<&str> {
        net.layers().iter().map(|l| l.op.as_str()).collect()
    }
}
