//! The network definition: named tensors and layers, built incrementally with type and shape
//! inference at every step (the TensorRT `INetworkDefinition` idea).

use crate::infer::{infer_layer, InferCtx};
use crate::{Attributes, IrError, Tensor, TensorType, ValueType, MAX_RANK};
use serde::{Deserialize, Deserializer, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Index of a tensor in its network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TensorId(pub usize);

/// Index of a layer in its network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LayerId(pub usize);

/// Where a tensor's value comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TensorSource {
    /// Bound by the caller at run time.
    Input,
    /// Weights or another constant known at build time.
    Constant(Tensor),
    /// Output `index` of a layer.
    Layer { layer: LayerId, index: usize },
    /// A value of an enclosing graph that a subgraph (If/Loop/Scan body) reads by name.
    Captured,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    /// `None` when not known before run time (untyped subgraph inputs and what depends on them).
    pub ty: Option<ValueType>,
    pub source: TensorSource,
}

impl TensorInfo {
    pub fn constant(&self) -> Option<&Tensor> {
        match &self.source {
            TensorSource::Constant(t) => Some(t),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    /// Operator name in kiln's op set (ONNX names, with each op's latest-opset semantics).
    pub op: String,
    pub attrs: Attributes,
    /// Positional inputs; `None` is an omitted optional input.
    pub inputs: Vec<Option<TensorId>>,
    /// Positional outputs; `None` is an output nobody asked for.
    pub outputs: Vec<Option<TensorId>>,
    /// Tensors of this network that the layer's subgraphs read from the enclosing scope.
    pub implicit_inputs: Vec<TensorId>,
}

/// A computation graph. Layers are stored in a valid execution order: a layer is only added
/// once all its inputs exist.
///
/// Serialized without its name maps; deserializing rebuilds them and runs [`Network::validate`]
/// on each graph, so ids read from a file are checked before anything indexes with them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NetworkRepr")]
pub struct Network {
    pub name: String,
    tensors: Vec<TensorInfo>,
    layers: Vec<Layer>,
    inputs: Vec<TensorId>,
    outputs: Vec<TensorId>,
    #[serde(skip)]
    tensor_names: HashMap<String, TensorId>,
    #[serde(skip)]
    layer_names: HashMap<String, LayerId>,
}

impl Network {
    pub fn new(name: impl Into<String>) -> Self {
        Network { name: name.into(), ..Default::default() }
    }

    /// Declare a run-time input.
    pub fn add_input(&mut self, name: &str, ty: ValueType) -> Result<TensorId, IrError> {
        check_rank(name, Some(&ty))?;
        let id = self.push_tensor(name, Some(ty), TensorSource::Input)?;
        self.inputs.push(id);
        Ok(id)
    }

    /// Declare an input of unknown type (only subgraphs need this).
    pub fn add_untyped_input(&mut self, name: &str) -> Result<TensorId, IrError> {
        let id = self.push_tensor(name, None, TensorSource::Input)?;
        self.inputs.push(id);
        Ok(id)
    }

    /// Add a constant (weights).
    pub fn add_constant(&mut self, name: &str, value: Tensor) -> Result<TensorId, IrError> {
        let ty = ValueType::Tensor(TensorType::of(&value));
        check_rank(name, Some(&ty))?;
        self.push_tensor(name, Some(ty), TensorSource::Constant(value))
    }

    /// Declare a value read from the enclosing graph (for subgraphs).
    pub fn add_captured(&mut self, name: &str, ty: Option<ValueType>) -> Result<TensorId, IrError> {
        self.push_tensor(name, ty, TensorSource::Captured)
    }

    /// Add a layer; its output types are inferred now, so a bad layer fails here, by name.
    /// `outputs` names the output tensors; an empty name means the output is not wanted.
    pub fn add_layer(
        &mut self,
        name: &str,
        op: &str,
        attrs: Attributes,
        inputs: &[Option<TensorId>],
        outputs: &[&str],
    ) -> Result<Vec<Option<TensorId>>, IrError> {
        self.add_layer_with_implicit(name, op, attrs, inputs, outputs, Vec::new())
    }

    /// [`Network::add_layer`] for layers whose subgraphs read tensors of this network.
    pub fn add_layer_with_implicit(
        &mut self,
        name: &str,
        op: &str,
        attrs: Attributes,
        inputs: &[Option<TensorId>],
        outputs: &[&str],
        implicit_inputs: Vec<TensorId>,
    ) -> Result<Vec<Option<TensorId>>, IrError> {
        if self.layer_names.contains_key(name) {
            return Err(IrError::DuplicateName { kind: "layer", name: name.to_string() });
        }
        for id in inputs.iter().flatten().chain(implicit_inputs.iter()) {
            if id.0 >= self.tensors.len() {
                return Err(IrError::Layer {
                    layer: name.to_string(),
                    op: op.to_string(),
                    message: format!("input tensor id {} does not exist", id.0),
                });
            }
        }
        let input_types: Vec<Option<Option<ValueType>>> =
            inputs.iter().map(|i| i.map(|id| self.tensors[id.0].ty.clone())).collect();
        let const_inputs: Vec<Option<&Tensor>> =
            inputs.iter().map(|i| i.and_then(|id| self.tensors[id.0].constant())).collect();
        let ctx = InferCtx {
            layer: name,
            op,
            attrs: &attrs,
            inputs: &input_types,
            const_inputs: &const_inputs,
            num_outputs: outputs.len(),
        };
        let types = infer_layer(&ctx)?;
        let layer_id = LayerId(self.layers.len());
        let mut out_ids = Vec::with_capacity(outputs.len());
        for (index, (out_name, ty)) in outputs.iter().zip(types).enumerate() {
            if out_name.is_empty() {
                out_ids.push(None);
                continue;
            }
            check_rank(out_name, ty.as_ref())?;
            let id = self.push_tensor(out_name, ty, TensorSource::Layer { layer: layer_id, index })?;
            out_ids.push(Some(id));
        }
        self.layers.push(Layer {
            name: name.to_string(),
            op: op.to_string(),
            attrs,
            inputs: inputs.to_vec(),
            outputs: out_ids.clone(),
            implicit_inputs,
        });
        self.layer_names.insert(name.to_string(), layer_id);
        Ok(out_ids)
    }

    /// Mark a tensor as a network output.
    pub fn mark_output(&mut self, id: TensorId) -> Result<(), IrError> {
        if id.0 >= self.tensors.len() {
            return Err(IrError::Invalid(format!("tensor id {} does not exist", id.0)));
        }
        self.outputs.push(id);
        Ok(())
    }

    /// Refine an output's declared type (ONNX graph outputs carry one) where inference left
    /// it unknown.
    pub fn refine_type(&mut self, id: TensorId, ty: ValueType) {
        let info = &mut self.tensors[id.0];
        if info.ty.is_none() {
            info.ty = Some(ty);
        }
    }

    pub fn tensor(&self, id: TensorId) -> &TensorInfo {
        &self.tensors[id.0]
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_by_name(&self, name: &str) -> Option<TensorId> {
        self.tensor_names.get(name).copied()
    }

    pub fn layer(&self, id: LayerId) -> &Layer {
        &self.layers[id.0]
    }

    pub fn layer_by_name(&self, name: &str) -> Option<&Layer> {
        self.layer_names.get(name).map(|id| &self.layers[id.0])
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn inputs(&self) -> &[TensorId] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorId] {
        &self.outputs
    }

    /// Tensors read from an enclosing scope.
    pub fn captured(&self) -> impl Iterator<Item = TensorId> + '_ {
        self.tensors.iter().enumerate().filter(|(_, t)| t.source == TensorSource::Captured).map(|(i, _)| TensorId(i))
    }

    /// Number of weight elements held as constants, this graph and its subgraphs.
    pub fn parameter_count(&self) -> usize {
        let own: usize = self.tensors.iter().filter_map(|t| t.constant()).map(|t| t.len()).sum();
        let sub: usize = self
            .layers
            .iter()
            .flat_map(|l| l.attrs.iter())
            .map(|(_, a)| match a {
                crate::Attribute::Graph(g) => g.parameter_count(),
                crate::Attribute::Graphs(gs) => gs.iter().map(|g| g.parameter_count()).sum(),
                _ => 0,
            })
            .sum();
        own + sub
    }

    fn push_tensor(&mut self, name: &str, ty: Option<ValueType>, source: TensorSource) -> Result<TensorId, IrError> {
        if self.tensor_names.contains_key(name) {
            return Err(IrError::DuplicateName { kind: "tensor", name: name.to_string() });
        }
        let id = TensorId(self.tensors.len());
        self.tensors.push(TensorInfo { name: name.to_string(), ty, source });
        self.tensor_names.insert(name.to_string(), id);
        Ok(id)
    }
}

#[derive(Deserialize)]
#[serde(rename = "Network")]
struct NetworkRepr {
    name: String,
    tensors: Vec<TensorInfo>,
    layers: Vec<Layer>,
    inputs: Vec<TensorId>,
    outputs: Vec<TensorId>,
}

impl TryFrom<NetworkRepr> for Network {
    type Error = IrError;
    fn try_from(r: NetworkRepr) -> Result<Network, IrError> {
        Network::from_repr(r).inspect_err(record_deserialize_error)
    }
}

impl Network {
    fn from_repr(r: NetworkRepr) -> Result<Network, IrError> {
        let mut net = Network {
            name: r.name,
            tensors: r.tensors,
            layers: r.layers,
            inputs: r.inputs,
            outputs: r.outputs,
            tensor_names: HashMap::new(),
            layer_names: HashMap::new(),
        };
        for (i, t) in net.tensors.iter().enumerate() {
            if net.tensor_names.insert(t.name.clone(), TensorId(i)).is_some() {
                return Err(IrError::DuplicateName { kind: "tensor", name: t.name.clone() });
            }
        }
        for (i, l) in net.layers.iter().enumerate() {
            if net.layer_names.insert(l.name.clone(), LayerId(i)).is_some() {
                return Err(IrError::DuplicateName { kind: "layer", name: l.name.clone() });
            }
        }
        // Subgraphs were validated as they were deserialized.
        net.validate_graph(false)?;
        Ok(net)
    }
}

thread_local! {
    static DESERIALIZE_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The message of the last deserialization error kiln-ir raised on this thread, taken (cleared).
/// Compact formats such as postcard drop the text of such errors and report only that one
/// happened; a loader calls this before decoding (to clear) and after a failure (to say what
/// was wrong).
pub fn take_deserialize_error() -> Option<String> {
    DESERIALIZE_ERROR.with(|e| e.borrow_mut().take())
}

pub(crate) fn record_deserialize_error(e: &impl std::fmt::Display) {
    DESERIALIZE_ERROR.with(|slot| *slot.borrow_mut() = Some(e.to_string()));
}

/// Most subgraphs and sequence/optional types that may nest inside each other when
/// deserializing; deeper input (only a hostile file has it) is refused before it can overflow
/// the stack.
pub(crate) const MAX_SERDE_DEPTH: usize = 32;

thread_local! {
    static SERDE_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// `deserialize_with` for the fields through which kiln-ir types nest (subgraphs, boxed value
/// types): counts the nesting and refuses it past [`MAX_SERDE_DEPTH`].
pub(crate) fn nested<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            SERDE_DEPTH.with(|c| c.set(c.get() - 1));
        }
    }
    let depth = SERDE_DEPTH.with(|c| c.get());
    if depth >= MAX_SERDE_DEPTH {
        let msg = format!("subgraphs and sequence/optional types nest deeper than {MAX_SERDE_DEPTH}");
        record_deserialize_error(&msg);
        return Err(serde::de::Error::custom(msg));
    }
    SERDE_DEPTH.with(|c| c.set(depth + 1));
    let _guard = Guard;
    T::deserialize(d)
}

impl Network {
    /// Check the invariants the builder methods maintain, for a network that did not come
    /// from them (a deserialized plan): every tensor and layer id in range, names unique and
    /// mapped, each layer's outputs pointing back at it, layers in execution order (inputs
    /// defined by earlier layers), constants typed as their value, ranks within [`MAX_RANK`];
    /// subgraphs likewise. Linear in the size of the network.
    pub fn validate(&self) -> Result<(), IrError> {
        self.validate_graph(true)
    }

    fn validate_graph(&self, subgraphs: bool) -> Result<(), IrError> {
        let bad = |msg: String| IrError::Invalid(format!("network '{}': {msg}", self.name));
        let n_tensors = self.tensors.len();
        let n_layers = self.layers.len();
        if self.tensor_names.len() != n_tensors || self.layer_names.len() != n_layers {
            return Err(bad("name maps do not match the tensors and layers".into()));
        }
        let mut is_input = vec![false; n_tensors];
        for &id in &self.inputs {
            if id.0 >= n_tensors {
                return Err(bad(format!("input tensor id {} out of range ({n_tensors} tensors)", id.0)));
            }
            if self.tensors[id.0].source != TensorSource::Input || std::mem::replace(&mut is_input[id.0], true) {
                return Err(bad(format!("input '{}' is not a distinct input tensor", self.tensors[id.0].name)));
            }
        }
        for (i, t) in self.tensors.iter().enumerate() {
            if self.tensor_names.get(&t.name) != Some(&TensorId(i)) {
                return Err(bad(format!("tensor '{}' is not mapped to its id {i}", t.name)));
            }
            check_rank(&t.name, t.ty.as_ref())?;
            match &t.source {
                TensorSource::Input if !is_input[i] => {
                    return Err(bad(format!("tensor '{}' is an input missing from the input list", t.name)))
                }
                TensorSource::Constant(c) if t.ty != Some(ValueType::Tensor(TensorType::of(c))) => {
                    return Err(bad(format!("constant '{}' is typed unlike its value", t.name)))
                }
                TensorSource::Layer { layer, index } => {
                    let out = self.layers.get(layer.0).and_then(|l| l.outputs.get(*index));
                    if out != Some(&Some(TensorId(i))) {
                        return Err(bad(format!(
                            "tensor '{}' claims to be output {index} of layer {} which does not produce it",
                            t.name, layer.0
                        )));
                    }
                }
                _ => {}
            }
        }
        for (li, l) in self.layers.iter().enumerate() {
            if self.layer_names.get(&l.name) != Some(&LayerId(li)) {
                return Err(bad(format!("layer '{}' is not mapped to its id {li}", l.name)));
            }
            for &id in l.inputs.iter().flatten().chain(&l.implicit_inputs) {
                let Some(t) = self.tensors.get(id.0) else {
                    return Err(bad(format!("layer '{}': input tensor id {} out of range", l.name, id.0)));
                };
                if let TensorSource::Layer { layer, .. } = t.source {
                    if layer.0 >= li {
                        return Err(bad(format!(
                            "layer '{}' reads '{}' before layer {} produces it",
                            l.name, t.name, layer.0
                        )));
                    }
                }
            }
            for (index, id) in l.outputs.iter().enumerate() {
                let Some(id) = id else { continue };
                let ok = self
                    .tensors
                    .get(id.0)
                    .is_some_and(|t| t.source == TensorSource::Layer { layer: LayerId(li), index });
                if !ok {
                    return Err(bad(format!("layer '{}': output {index} (tensor id {}) is not its own", l.name, id.0)));
                }
            }
            if subgraphs {
                for (_, a) in l.attrs.iter() {
                    match a {
                        crate::Attribute::Graph(g) => g.validate()?,
                        crate::Attribute::Graphs(gs) => gs.iter().try_for_each(|g| g.validate())?,
                        _ => {}
                    }
                }
            }
        }
        for &id in &self.outputs {
            if id.0 >= n_tensors {
                return Err(bad(format!("output tensor id {} out of range ({n_tensors} tensors)", id.0)));
            }
        }
        Ok(())
    }
}

fn check_rank(name: &str, ty: Option<&ValueType>) -> Result<(), IrError> {
    if let Some(ValueType::Tensor(TensorType { shape: Some(s), .. })) = ty {
        if s.len() > MAX_RANK {
            return Err(IrError::RankTooLarge { tensor: name.to_string(), rank: s.len(), max: MAX_RANK });
        }
    }
    Ok(())
}
