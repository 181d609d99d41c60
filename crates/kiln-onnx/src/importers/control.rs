//! Importers for control flow where ONNX's forms differ by opset.
//!
//! Scan-8 is batched: every input has a leading batch axis (then the sequence axis), an
//! optional first input `sequence_lens` gives each batch entry's length, and the body runs on
//! one batch entry at a time. Scan-9+ dropped the batch axis. Without per-entry lengths,
//! Scan-8 is exactly a Scan-9 over the batch axis whose body is a Scan-9 over the sequence:
//! the outer Scan slices batch entry b off every input (states included), the inner one runs
//! the original body over that entry's sequence, and the outer one stacks the inner one's
//! final states and scan outputs back along the batch axis.

use super::{ImportError, ImporterFn, NodeImport};
use kiln_ir::{Attribute, Attributes, Dim, Network, TensorId, TensorType, ValueType};
use std::sync::Arc;

pub(super) fn importer(op: &str, opset: i64) -> Option<ImporterFn> {
    match op {
        "Scan" if opset < 9 => Some(scan8),
        _ => None,
    }
}

fn scan8(n: &mut NodeImport) -> Result<(), ImportError> {
    let body = n.attrs.graph("body")?.clone();
    let m = n.attrs.req_int("num_scan_inputs")?;
    let directions = n.attrs.ints_opt("directions")?;
    let Some((&seq_lens, rest)) = n.inputs.split_first() else {
        return Err(ImportError::Invalid("Scan-8 needs at least the sequence_lens slot and one scan input".into()));
    };
    let mut inputs: Vec<TensorId> = Vec::with_capacity(rest.len());
    for (i, id) in rest.iter().enumerate() {
        inputs.push(id.ok_or_else(|| ImportError::Invalid(format!("input {} is missing", i + 1)))?);
    }
    if m <= 0 || m as usize > inputs.len() {
        return Err(ImportError::Invalid(format!("num_scan_inputs must be in [1, {}], got {m}", inputs.len())));
    }
    let num_states = inputs.len() - m as usize;
    if seq_lens.is_some() {
        // Only the case where every batch entry runs the full sequence maps onto Scan-9.
        let lens = n.const_input(0).ok_or_else(|| {
            ImportError::Unsupported("Scan-8 with a run-time sequence_lens input (per-batch lengths)".into())
        })?;
        let full = seq_dim(n.net, inputs[num_states]);
        if full.is_none() || lens.to_i64_vec().iter().any(|&l| Some(l) != full.map(|d| d as i64)) {
            return Err(ImportError::Unsupported(
                "Scan-8 whose sequence_lens differ from the full sequence length".into(),
            ));
        }
    }

    // The per-batch-entry graph: one input per node input, without the batch axis.
    let layer = n.layer_name.clone();
    let mut g = Network::new(format!("{layer}::per_batch"));
    let mut g_inputs = Vec::with_capacity(inputs.len());
    for (i, &id) in inputs.iter().enumerate() {
        let name = format!("{layer}::batch_in{i}");
        let gid = match n.net.tensor(id).ty.as_ref() {
            None => g.add_untyped_input(&name)?,
            Some(ValueType::Tensor(t)) => g.add_input(&name, ValueType::Tensor(drop_batch_axis(t, i)?))?,
            Some(other) => {
                return Err(ImportError::Invalid(format!("input {} must be a tensor, found {other}", i + 1)))
            }
        };
        g_inputs.push(Some(gid));
    }
    // The original body's captures become captures of the per-batch graph, so that they
    // resolve through it to the enclosing graph.
    let mut implicit = Vec::new();
    for cid in body.captured() {
        let info = body.tensor(cid);
        implicit.push(g.add_captured(&info.name, info.ty.clone())?);
    }
    let mut inner = Attributes::new().with("num_scan_inputs", m);
    if let Some(d) = directions {
        inner.set("scan_input_directions", d);
    }
    let out_names: Vec<String> = (0..body.outputs().len()).map(|j| format!("{layer}::batch_out{j}")).collect();
    let out_refs: Vec<&str> = out_names.iter().map(|s| s.as_str()).collect();
    inner.set("body", Attribute::Graph(body));
    let outs = g.add_layer_with_implicit(&format!("{layer}::scan"), "Scan", inner, &g_inputs, &out_refs, implicit)?;
    for id in outs.into_iter().flatten() {
        g.mark_output(id)?;
    }

    let outer =
        Attributes::new().with("num_scan_inputs", inputs.len() as i64).with("body", Attribute::Graph(Arc::new(g)));
    n.emit("Scan", outer, inputs.into_iter().map(Some).collect())
}

/// A Scan-8 input's type for one batch entry.
fn drop_batch_axis(t: &TensorType, i: usize) -> Result<TensorType, ImportError> {
    match &t.shape {
        None => Ok(TensorType::unranked(t.dtype)),
        Some(s) if s.is_empty() => {
            Err(ImportError::Invalid(format!("input {} is a scalar; Scan-8 needs a batch axis", i + 1)))
        }
        Some(s) => Ok(TensorType::new(t.dtype, s[1..].to_vec())),
    }
}

/// The static sequence length of a Scan-8 scan input (its axis 1).
fn seq_dim(net: &Network, id: TensorId) -> Option<usize> {
    match net.tensor(id).ty.as_ref()? {
        ValueType::Tensor(TensorType { shape: Some(s), .. }) => s.get(1).and_then(Dim::known),
        _ => None,
    }
}
