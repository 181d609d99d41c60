//! The network definition: named tensors and layers, built incrementally with type and shape
//! inference at every step (the TensorRT `INetworkDefinition` idea).

use crate::infer::{infer_layer, InferCtx};
use crate::{Attributes, IrError, Tensor, TensorType, ValueType, MAX_RANK};
use std::collections::HashMap;

/// Index of a tensor in its network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

/// Index of a layer in its network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerId(pub usize);

/// Where a tensor's value comes from.
#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
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
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Network {
    pub name: String,
    tensors: Vec<TensorInfo>,
    layers: Vec<Layer>,
    inputs: Vec<TensorId>,
    outputs: Vec<TensorId>,
    tensor_names: HashMap<String, TensorId>,
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

fn check_rank(name: &str, ty: Option<&ValueType>) -> Result<(), IrError> {
    if let Some(ValueType::Tensor(TensorType { shape: Some(s), .. })) = ty {
        if s.len() > MAX_RANK {
            return Err(IrError::RankTooLarge { tensor: name.to_string(), rank: s.len(), max: MAX_RANK });
        }
    }
    Ok(())
}
