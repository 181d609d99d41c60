//! Value-level folding of what pruning makes provably constant:
//!
//! - `Mul(x, 0)` with an all-zero constant (x is assumed finite, as every other fold here and in
//!   the channel pass assumes of activations) → zeros;
//! - `Relu(x)` of a provably non-positive x → zeros (sign rules below);
//! - Conv / MatMul / Gemm whose weights are all zero → the bias (after the fused activation),
//!   broadcast to the output shape.
//!
//! The layer's outputs become constants (when their shape is static and at most
//! [`MAX_ELEMENTS`]); constant folding carries them on and dead-layer elimination removes the
//! producers nothing else reads.
//!
//! Sign rules (non-positive ≤ 0, non-negative ≥ 0): a constant by its values; Relu, Abs,
//! Sigmoid, Exp, Softplus and Sqrt are non-negative; Neg flips; Clip with max ≤ 0 is
//! non-positive; Mul of opposite signs is non-positive, of equal signs non-negative; Add of two
//! non-positives is non-positive; Min with a non-positive operand is non-positive.

use crate::passes::pattern::{float_tensor, live_layers};
use crate::passes::prune::{apply_edits, LayerChange, Replace};
use crate::Pass;
use kiln_ir::{Activation, Dim, IrError, Layer, Network, TensorId, TensorSource, ValueType};

/// Largest output that becomes a constant (a bigger one stays computed).
pub const MAX_ELEMENTS: usize = 1 << 22;

pub struct PruneValues;

impl Pass for PruneValues {
    fn name(&self) -> &'static str {
        "prune-values"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        Ok(prune_values(net)?.map(|(n, _)| n))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Sign {
    NonPositive,
    NonNegative,
}

fn flip(s: Sign) -> Sign {
    match s {
        Sign::NonPositive => Sign::NonNegative,
        Sign::NonNegative => Sign::NonPositive,
    }
}

/// What is provably known of the sign of every element of `t` (looking `depth` producers back).
fn sign(net: &Network, t: TensorId, depth: usize) -> Option<Sign> {
    let info = net.tensor(t);
    if let Some(c) = info.constant() {
        if !c.dtype().is_float() {
            return None;
        }
        let v = c.to_f64_vec();
        return if v.iter().all(|&x| x <= 0.0) {
            Some(Sign::NonPositive)
        } else if v.iter().all(|&x| x >= 0.0) {
            Some(Sign::NonNegative)
        } else {
            None
        };
    }
    let TensorSource::Layer { layer, .. } = info.source else { return None };
    if depth == 0 {
        return None;
    }
    let l = net.layer(layer);
    let input = |i: usize| l.inputs.get(i).copied().flatten();
    let sub = |i: usize| input(i).and_then(|x| sign(net, x, depth - 1));
    match l.op.as_str() {
        "Relu" | "Abs" | "Sigmoid" | "Exp" | "Softplus" | "Sqrt" => Some(Sign::NonNegative),
        "Neg" => sub(0).map(flip),
        "Identity" | "MaxPool" | "GlobalMaxPool" | "AveragePool" | "GlobalAveragePool" | "Flatten" | "Reshape"
        | "Transpose" => sub(0),
        "Clip" => {
            let bound = |i: usize| input(i).and_then(|x| net.tensor(x).constant()).map(|c| c.to_f64_vec());
            match bound(2) {
                Some(v) if v.iter().all(|&x| x <= 0.0) => Some(Sign::NonPositive),
                _ => match bound(1) {
                    Some(v) if v.iter().all(|&x| x >= 0.0) => Some(Sign::NonNegative),
                    _ => None,
                },
            }
        }
        "Mul" => match (sub(0)?, sub(1)?) {
            (a, b) if a == b => Some(Sign::NonNegative),
            _ => Some(Sign::NonPositive),
        },
        "Add" => match (sub(0)?, sub(1)?) {
            (a, b) if a == b => Some(a),
            _ => None,
        },
        "Min" => (0..l.inputs.len()).any(|i| sub(i) == Some(Sign::NonPositive)).then_some(Sign::NonPositive),
        "Max" => (0..l.inputs.len()).any(|i| sub(i) == Some(Sign::NonNegative)).then_some(Sign::NonNegative),
        _ => None,
    }
}

/// The static shape of a float tensor and its dtype.
fn static_shape(net: &Network, t: TensorId) -> Option<(Vec<usize>, kiln_ir::DType)> {
    let Some(ValueType::Tensor(tt)) = &net.tensor(t).ty else { return None };
    let shape = tt.shape.as_ref()?.iter().map(Dim::known).collect::<Option<Vec<_>>>()?;
    tt.dtype.is_float().then_some((shape, tt.dtype))
}

/// The constant a layer provably computes, if one of the rules applies.
fn constant_output(net: &Network, layer: &Layer) -> Option<kiln_ir::Tensor> {
    let out = layer.outputs.first().copied().flatten()?;
    if layer.outputs.iter().skip(1).any(Option::is_some) {
        return None;
    }
    let (shape, dtype) = static_shape(net, out)?;
    let n: usize = shape.iter().product();
    if n > MAX_ELEMENTS || net.outputs().contains(&out) {
        return None;
    }
    let const_in = |i: usize| layer.inputs.get(i).copied().flatten().and_then(|id| net.tensor(id).constant());
    let zeros = || float_tensor(dtype, shape.clone(), &vec![0.0; n]);
    match layer.op.as_str() {
        "Mul" if layer.inputs.len() == 2 => {
            let zero =
                |i| const_in(i).is_some_and(|c| c.dtype().is_float() && c.to_f64_vec().iter().all(|&x| x == 0.0));
            // Both operands constant is constant folding's job.
            (zero(0) != zero(1) && (const_in(0).is_none() || const_in(1).is_none())).then(zeros)?
        }
        "Relu" => (const_in(0).is_none() && sign(net, layer.inputs[0]?, 8) == Some(Sign::NonPositive)).then(zeros)?,
        "Conv" | "MatMul" | "Gemm" => {
            if const_in(0).is_some() || layer.inputs.len() > 3 {
                return None;
            }
            let w = const_in(1)?;
            if !w.dtype().is_float() || w.is_empty() || w.to_f64_vec().iter().any(|&x| x != 0.0) {
                return None;
            }
            let act = Activation::from_attrs(&layer.attrs).ok()?;
            // The bias runs along the output's channel axis: dim 1 of a Conv, the last dim of a
            // MatMul / Gemm (a Gemm's C may be [M, N]: broadcast it right-aligned).
            let axis = if layer.op == "Conv" { 1 } else { shape.len().checked_sub(1)? };
            let beta = if layer.op == "Gemm" { layer.attrs.float("beta", 1.0).ok()? as f64 } else { 1.0 };
            let bias: Vec<f64> = match layer.inputs.get(2).copied().flatten() {
                None => vec![0.0],
                Some(id) => net.tensor(id).constant()?.to_f64_vec().iter().map(|&b| b * beta).collect(),
            };
            let bias_shape = match layer.inputs.get(2).copied().flatten() {
                None => vec![],
                Some(id) => net.tensor(id).constant()?.shape().to_vec(),
            };
            let strides = kiln_ir::strides_of(&shape);
            let values: Vec<f64> = (0..n)
                .map(|i| {
                    let b = match bias_shape.as_slice() {
                        [] => bias[0],
                        [len] if *len == 1 => bias[0],
                        [_] => bias[(i / strides[axis]) % shape[axis]],
                        [r, c] => {
                            // Gemm C of [M, N] (or broadcastable): row i / N, column i % N.
                            let (row, col) = (i / shape[1], i % shape[1]);
                            bias[(if *r == 1 { 0 } else { row }) * c + if *c == 1 { 0 } else { col }]
                        }
                        _ => return f64::NAN,
                    };
                    act.map_or(b, |a| a.apply_f64(b))
                })
                .collect();
            if values.iter().any(|v| !v.is_finite()) {
                return None;
            }
            float_tensor(dtype, shape.clone(), &values)
        }
        _ => None,
    }
}

/// Replace every provably constant layer output by its value.
pub(crate) fn prune_values(net: &Network) -> Result<Option<(Network, Vec<LayerChange>)>, IrError> {
    let live = live_layers(net);
    let mut edits: Vec<Option<Replace>> = (0..net.layers().len()).map(|_| None).collect();
    let mut changes = Vec::new();
    for (i, layer) in net.layers().iter().enumerate() {
        if !live[i] {
            continue;
        }
        if let Some(c) = constant_output(net, layer) {
            changes.push(LayerChange::new(&layer.name, "folded to a constant", 1, 0));
            edits[i] = Some(Replace::Constant(vec![c]));
        }
    }
    if changes.is_empty() {
        return Ok(None);
    }
    Ok(Some((apply_edits(net, edits)?, changes)))
}

#[cfg(test)]
mod tests;
