//! The importer table: (domain, op type, opset) → a function that adds the node to the network.
//!
//! Most ops map one-to-one onto kiln's op set (ONNX names, latest-opset semantics) and use the
//! pass-through importer. Ops whose inputs or attributes changed between opsets get their own
//! importer in the family file, which rewrites old forms into the current one (e.g. Split's
//! `split` attribute → input), so backends only see one form.

mod constant;
mod control;
mod elementwise;
mod movement;
mod nn;
mod reduce_norm;
mod rnn_attention;
mod signal_image;

use kiln_ir::{Attributes, IrError, Network, Tensor, TensorId};

/// Why a node could not be imported.
#[derive(Debug)]
pub enum ImportError {
    /// The node uses a form kiln does not support (the reason says which).
    Unsupported(String),
    /// The node is malformed.
    Invalid(String),
    Ir(IrError),
}

impl From<IrError> for ImportError {
    fn from(e: IrError) -> Self {
        ImportError::Ir(e)
    }
}

impl From<String> for ImportError {
    fn from(e: String) -> Self {
        ImportError::Invalid(e)
    }
}

pub type ImporterFn = fn(&mut NodeImport) -> Result<(), ImportError>;

/// One node being imported.
pub struct NodeImport<'a> {
    /// The node's name as shown in errors.
    pub node: &'a str,
    /// Unique layer name for the layer that produces the node's outputs.
    pub layer_name: String,
    pub op: &'a str,
    /// Opset version of the node's domain.
    pub opset: i64,
    pub attrs: Attributes,
    pub inputs: Vec<Option<TensorId>>,
    /// Output names; "" = not wanted.
    pub outputs: Vec<String>,
    /// Tensors the node's subgraphs capture.
    pub implicit: Vec<TensorId>,
    pub net: &'a mut Network,
}

impl NodeImport<'_> {
    /// Add the node as one layer of op `op` with the given attributes and inputs, writing the
    /// node's outputs.
    pub fn emit(&mut self, op: &str, attrs: Attributes, inputs: Vec<Option<TensorId>>) -> Result<(), ImportError> {
        let outs: Vec<&str> = self.outputs.iter().map(|s| s.as_str()).collect();
        self.net.add_layer_with_implicit(
            &self.layer_name,
            op,
            attrs,
            &inputs,
            &outs,
            std::mem::take(&mut self.implicit),
        )?;
        Ok(())
    }

    /// Add the node unchanged.
    pub fn pass_through(&mut self) -> Result<(), ImportError> {
        let attrs = std::mem::take(&mut self.attrs);
        let inputs = self.inputs.clone();
        let op = self.op.to_string();
        self.emit(&op, attrs, inputs)
    }

    /// Add a constant tensor named after this node (for inputs synthesized from attributes).
    pub fn constant(&mut self, suffix: &str, t: Tensor) -> Result<TensorId, ImportError> {
        let mut name = format!("{}::{suffix}", self.layer_name);
        let mut k = 1;
        while self.net.tensor_by_name(&name).is_some() {
            name = format!("{}::{suffix}_{k}", self.layer_name);
            k += 1;
        }
        Ok(self.net.add_constant(&name, t)?)
    }

    /// Add a helper layer before the node's main layer; returns its outputs.
    pub fn aux_layer(
        &mut self,
        suffix: &str,
        op: &str,
        attrs: Attributes,
        inputs: &[Option<TensorId>],
        num_outputs: usize,
    ) -> Result<Vec<TensorId>, ImportError> {
        let layer = format!("{}::{suffix}", self.layer_name);
        let names: Vec<String> = (0..num_outputs).map(|i| format!("{layer}:{i}")).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let outs = self.net.add_layer(&layer, op, attrs, inputs, &refs)?;
        Ok(outs.into_iter().flatten().collect())
    }

    /// The constant value of input `i`, if it has one.
    pub fn const_input(&self, i: usize) -> Option<&Tensor> {
        self.inputs.get(i).copied().flatten().and_then(|id| self.net.tensor(id).constant())
    }

    /// Ensure there are at least `n` input slots (appending omitted ones).
    pub fn pad_inputs(&mut self, n: usize) {
        while self.inputs.len() < n {
            self.inputs.push(None);
        }
    }
}

/// The importer for a node, or why there is none.
pub fn importer_for(domain: &str, op: &str, opset: i64) -> Result<ImporterFn, Option<String>> {
    match domain {
        // FlexAttention lives in the preview domain; it is otherwise an ordinary op.
        "" | "ai.onnx.preview" => {}
        "ai.onnx.ml" => return Err(Some("the ai.onnx.ml domain is out of kiln's scope".into())),
        "ai.onnx.preview.training" => return Err(Some("training ops are out of kiln's scope".into())),
        other => return Err(Some(format!("unknown domain '{other}'"))),
    }
    if let Some(reason) = out_of_scope(op) {
        return Err(Some(reason.into()));
    }
    let special = constant::importer(op, opset)
        .or_else(|| elementwise::importer(op, opset))
        .or_else(|| movement::importer(op, opset))
        .or_else(|| reduce_norm::importer(op, opset))
        .or_else(|| nn::importer(op, opset))
        .or_else(|| signal_image::importer(op, opset))
        .or_else(|| rnn_attention::importer(op, opset))
        .or_else(|| control::importer(op, opset));
    if let Some(f) = special {
        return Ok(f);
    }
    if kiln_ir::infer::is_supported(op) {
        return Ok(|n| n.pass_through());
    }
    Err(None)
}

fn out_of_scope(op: &str) -> Option<&'static str> {
    match op {
        "Bernoulli" | "RandomNormal" | "RandomNormalLike" | "RandomUniform" | "RandomUniformLike" | "Multinomial" => {
            Some("random generators are out of kiln's scope (outputs would not be reproducible)")
        }
        "StringNormalizer" | "StringConcat" | "StringSplit" | "RegexFullMatch" | "TfIdfVectorizer" => {
            Some("string ops are out of kiln's scope")
        }
        "ImageDecoder" => Some("image decoding is out of kiln's scope"),
        _ => None,
    }
}
