//! Static type and shape inference, one rule per op, looked up by op name.
//!
//! Rules live in one file per op family. A rule sees the input types (and the values of
//! constant inputs, so `Reshape` to a constant shape gets a static shape) and returns one type
//! per output. Shapes may be partly unknown (`Dim::Unknown`, or `shape: None`); dtypes are
//! always inferred. If any input's type is itself unknown, outputs are unknown and the rule is
//! not asked.

mod control;
mod elementwise;
pub mod helpers;
mod movement;
mod nn;
mod reduce_norm;
mod rnn_attention;
mod signal_image;

use crate::{Attributes, IrError, Tensor, ValueType};

/// What a rule sees of the layer being added.
pub struct InferCtx<'a> {
    pub layer: &'a str,
    pub op: &'a str,
    pub attrs: &'a Attributes,
    /// Per input: `None` = omitted optional input; `Some(None)` = present, type unknown.
    pub inputs: &'a [Option<Option<ValueType>>],
    /// Per input: the value, where it is a constant.
    pub const_inputs: &'a [Option<&'a Tensor>],
    pub num_outputs: usize,
}

/// A rule returns one type per output (it may return fewer; the rest are unknown).
pub type InferFn = fn(&Known) -> Result<Vec<ValueType>, String>;

/// The inference context once every present input's type is known.
pub struct Known<'a> {
    pub op: &'a str,
    pub attrs: &'a Attributes,
    /// Per input: `None` = omitted optional input.
    pub inputs: Vec<Option<&'a ValueType>>,
    pub const_inputs: &'a [Option<&'a Tensor>],
    pub num_outputs: usize,
}

/// The inference rule for `op`, or `None` if kiln does not know the op.
pub fn rule(op: &str) -> Option<InferFn> {
    elementwise::rule(op)
        .or_else(|| movement::rule(op))
        .or_else(|| reduce_norm::rule(op))
        .or_else(|| nn::rule(op))
        .or_else(|| signal_image::rule(op))
        .or_else(|| rnn_attention::rule(op))
        .or_else(|| control::rule(op))
}

/// Is `op` part of kiln's op set?
pub fn is_supported(op: &str) -> bool {
    rule(op).is_some()
}

pub fn infer_layer(ctx: &InferCtx) -> Result<Vec<Option<ValueType>>, IrError> {
    let rule =
        rule(ctx.op).ok_or_else(|| IrError::UnsupportedOp { layer: ctx.layer.to_string(), op: ctx.op.to_string() })?;
    let mut inputs = Vec::with_capacity(ctx.inputs.len());
    for i in ctx.inputs {
        match i {
            None => inputs.push(None),
            Some(Some(t)) => inputs.push(Some(t)),
            Some(None) => return Ok(vec![None; ctx.num_outputs]),
        }
    }
    let fail = |message: String| IrError::Layer { layer: ctx.layer.to_string(), op: ctx.op.to_string(), message };
    // A channels-last layer: the ONNX rule on its NCHW view, the output permuted back.
    let channels_last = crate::channels_last::is_marked(ctx.attrs);
    let mut nchw: Vec<Option<ValueType>> = Vec::new();
    if channels_last {
        let images = crate::channels_last::image_inputs(ctx.op)
            .ok_or_else(|| fail(format!("{} has no channels-last form", ctx.op)))?;
        if ctx.num_outputs != 1 {
            return Err(fail("a channels-last layer has exactly one output".into()));
        }
        for (i, t) in inputs.iter().enumerate() {
            let Some(t) = t else {
                nchw.push(None);
                continue;
            };
            if !images.contains(&i) {
                nchw.push(Some((*t).clone()));
                continue;
            }
            if t.as_tensor().and_then(|t| t.rank()).is_some_and(|r| r != 4) {
                return Err(fail(format!("channels-last input {i} must be 4-D")));
            }
            nchw.push(Some(crate::channels_last::permute_type(t, &crate::channels_last::TO_NCHW)));
        }
        inputs = nchw.iter().map(Option::as_ref).collect();
    }
    let known =
        Known { op: ctx.op, attrs: ctx.attrs, inputs, const_inputs: ctx.const_inputs, num_outputs: ctx.num_outputs };
    let mut types = rule(&known).map_err(fail)?;
    if channels_last {
        for t in types.iter_mut() {
            *t = crate::channels_last::permute_type(t, &crate::channels_last::TO_NHWC);
        }
    }
    let mut out: Vec<Option<ValueType>> = types.into_iter().map(Some).collect();
    out.resize(ctx.num_outputs, None);
    Ok(out)
}
