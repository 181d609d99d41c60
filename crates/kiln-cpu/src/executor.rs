//! Runs a network on the CPU, layer by layer, in the network's stored order.

use crate::{kernel, CpuError, KernelCtx};
use kiln_ir::{channels_last, Dim, Layer, Network, TensorId, TensorSource, Value, ValueType};
use std::collections::HashMap;

/// The values of one graph invocation, with a link to the enclosing invocation for captures.
pub(crate) struct Scope<'a> {
    net: &'a Network,
    values: Vec<Option<Value>>,
    /// Values captured from enclosing scopes, borrowed there rather than copied into every
    /// invocation of a subgraph (every Loop/Scan iteration).
    captured: Vec<Option<&'a Value>>,
    outer: Option<&'a Scope<'a>>,
    /// Values of an enclosing graph run by another executor (the engine), by name.
    named: Option<&'a HashMap<String, Value>>,
}

impl Scope<'_> {
    fn lookup_by_name(&self, name: &str) -> Option<&Value> {
        if let Some(id) = self.net.tensor_by_name(name) {
            if let Some(v) = self.values[id.0].as_ref().or(self.captured[id.0]) {
                return Some(v);
            }
        }
        match self.outer {
            Some(o) => o.lookup_by_name(name),
            None => self.named.and_then(|m| m.get(name)),
        }
    }
}

/// Run `net` with inputs given by name; returns the outputs in `net.outputs()` order.
pub fn execute_named(net: &Network, inputs: HashMap<String, Value>) -> Result<Vec<Value>, CpuError> {
    let mut inputs = inputs;
    for name in inputs.keys() {
        match net.tensor_by_name(name) {
            Some(id) if net.inputs().contains(&id) => {}
            _ => return Err(CpuError::UnknownInput(name.clone())),
        }
    }
    let mut positional = Vec::with_capacity(net.inputs().len());
    let mut symbols = HashMap::new();
    for &id in net.inputs() {
        let info = net.tensor(id);
        let v = inputs.remove(&info.name).ok_or_else(|| CpuError::MissingInput(info.name.clone()))?;
        check_input(&info.name, info.ty.as_ref(), &v, &mut symbols)?;
        positional.push(v);
    }
    run_graph(net, positional, None)
}

/// Run `net` with inputs in `net.inputs()` order.
pub fn execute(net: &Network, inputs: Vec<Value>) -> Result<Vec<Value>, CpuError> {
    if inputs.len() != net.inputs().len() {
        return Err(CpuError::BadInput {
            name: net.name.clone(),
            message: format!("expected {} inputs, got {}", net.inputs().len(), inputs.len()),
        });
    }
    let mut symbols = HashMap::new();
    for (&id, v) in net.inputs().iter().zip(&inputs) {
        let info = net.tensor(id);
        check_input(&info.name, info.ty.as_ref(), v, &mut symbols)?;
    }
    run_graph(net, inputs, None)
}

/// Check a bound input against its declared type: dtype, every known dimension, and that a
/// named dimension (`batch`) has one size across all inputs (`symbols` records the first seen).
fn check_input(
    name: &str,
    ty: Option<&ValueType>,
    v: &Value,
    symbols: &mut HashMap<String, (usize, String)>,
) -> Result<(), CpuError> {
    let bad = |message: String| CpuError::BadInput { name: name.to_string(), message };
    match (ty, v) {
        (Some(ValueType::Tensor(tt)), Value::Tensor(t)) => {
            if tt.dtype != t.dtype() {
                return Err(bad(format!("expected dtype {}, got {}", tt.dtype, t.dtype())));
            }
            if let Some(shape) = &tt.shape {
                if shape.len() != t.rank() {
                    return Err(bad(format!(
                        "expected rank {} ({}), got shape {:?}",
                        shape.len(),
                        kiln_ir::format_shape(shape),
                        t.shape()
                    )));
                }
                for (axis, (d, &n)) in shape.iter().zip(t.shape()).enumerate() {
                    match d {
                        Dim::Known(k) if *k != n => {
                            return Err(bad(format!("dimension {axis} must be {k}, got {n} (shape {:?})", t.shape())));
                        }
                        Dim::Symbol(sym) => match symbols.get(sym) {
                            Some((size, first)) if *size != n => {
                                return Err(bad(format!(
                                    "dimension {axis} ('{sym}') is {n}, but input '{first}' set '{sym}' to {size}"
                                )));
                            }
                            Some(_) => {}
                            None => {
                                symbols.insert(sym.clone(), (n, name.to_string()));
                            }
                        },
                        _ => {}
                    }
                }
            }
            Ok(())
        }
        (Some(ValueType::Tensor(_)), other) => Err(bad(format!("expected a tensor, got a {}", other.kind_name()))),
        _ => Ok(()),
    }
}

pub(crate) fn run_graph<'a>(
    net: &'a Network,
    inputs: Vec<Value>,
    outer: Option<&'a Scope<'a>>,
) -> Result<Vec<Value>, CpuError> {
    let mut scope = Scope {
        net,
        values: vec![None; net.tensors().len()],
        captured: vec![None; net.tensors().len()],
        outer,
        named: None,
    };
    for (&id, v) in net.inputs().iter().zip(inputs) {
        scope.values[id.0] = Some(v);
    }
    // Last reader of each tensor, so that intermediate values are freed as soon as possible.
    let mut last_use: Vec<usize> = vec![usize::MAX; net.tensors().len()];
    for (li, layer) in net.layers().iter().enumerate() {
        for id in layer.inputs.iter().flatten().chain(&layer.implicit_inputs) {
            last_use[id.0] = li;
        }
    }
    for id in net.outputs() {
        last_use[id.0] = usize::MAX;
    }
    for (idx, info) in net.tensors().iter().enumerate() {
        match &info.source {
            TensorSource::Constant(t) => scope.values[idx] = Some(Value::Tensor(t.clone())),
            TensorSource::Captured => {
                let v = outer
                    .and_then(|o| o.lookup_by_name(&info.name))
                    .ok_or_else(|| CpuError::UnboundCapture(info.name.clone()))?;
                scope.captured[idx] = Some(v);
            }
            _ => {}
        }
    }
    for (li, layer) in net.layers().iter().enumerate() {
        let outputs = {
            let mut args = Vec::with_capacity(layer.inputs.len());
            for input in &layer.inputs {
                match input {
                    None => args.push(None),
                    Some(id) => args.push(Some(
                        scope.values[id.0]
                            .as_ref()
                            .or(scope.captured[id.0])
                            .ok_or_else(|| CpuError::NotComputed(net.tensor(*id).name.clone()))?,
                    )),
                }
            }
            tracing::trace!(layer = %layer.name, op = %layer.op, "run");
            invoke(layer, &args, &scope)?
        };
        for (slot, value) in layer.outputs.iter().zip(outputs.into_iter().map(Some).chain(std::iter::repeat(None))) {
            if let Some(id) = slot {
                let value = value.ok_or_else(|| CpuError::Layer {
                    layer: layer.name.clone(),
                    op: layer.op.clone(),
                    message: format!("kernel produced no value for output '{}'", net.tensor(*id).name),
                })?;
                scope.values[id.0] = Some(value);
            }
        }
        for id in layer.inputs.iter().flatten().chain(&layer.implicit_inputs) {
            if last_use[id.0] == li {
                scope.values[id.0] = None;
            }
        }
    }
    // Move the outputs out of the scope; only a tensor listed twice as an output is copied.
    let outs = net.outputs();
    let mut results = Vec::with_capacity(outs.len());
    for (k, &TensorId(i)) in outs.iter().enumerate() {
        let v = if outs[k + 1..].contains(&TensorId(i)) { scope.values[i].clone() } else { scope.values[i].take() };
        let v = v.or_else(|| scope.captured[i].cloned());
        results.push(v.ok_or_else(|| CpuError::NotComputed(net.tensors()[i].name.clone()))?);
    }
    Ok(results)
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Evaluate one layer outside any network (constant folding at build time). Layers with
/// subgraphs can be evaluated too, as long as the subgraphs capture nothing.
pub fn eval_layer(layer: &Layer, inputs: &[Option<&Value>]) -> Result<Vec<Value>, CpuError> {
    eval_layer_with_captures(layer, inputs, &HashMap::new())
}

/// Evaluate one layer whose subgraphs read values of an enclosing graph (`captures`, by name).
pub fn eval_layer_with_captures(
    layer: &Layer,
    inputs: &[Option<&Value>],
    captures: &HashMap<String, Value>,
) -> Result<Vec<Value>, CpuError> {
    let empty = Network::new("");
    let scope = Scope { net: &empty, values: Vec::new(), captured: Vec::new(), outer: None, named: Some(captures) };
    invoke(layer, inputs, &scope)
}

/// Run a layer's kernel. A kernel bug must not take the caller's process down: a panic becomes
/// an error that names the layer.
fn invoke(layer: &Layer, args: &[Option<&Value>], scope: &Scope) -> Result<Vec<Value>, CpuError> {
    let kernel =
        kernel(&layer.op).ok_or_else(|| CpuError::NoKernel { layer: layer.name.clone(), op: layer.op.clone() })?;
    let ctx =
        KernelCtx { layer: &layer.name, op: &layer.op, attrs: &layer.attrs, num_outputs: layer.outputs.len(), scope };
    let run = |args: &[Option<&Value>]| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kernel(&ctx, args)))
            .unwrap_or_else(|p| Err(format!("internal error in the {} kernel: {}", layer.op, panic_message(&p))))
    };
    let result = if channels_last::is_marked(&layer.attrs) { channels_last_eval(layer, args, run) } else { run(args) };
    result.map_err(|message| CpuError::Layer { layer: layer.name.clone(), op: layer.op.clone(), message })
}

/// A channels-last layer (kiln_ir::channels_last) through the ONNX kernel: its NHWC images
/// permuted to NCHW, the output permuted back.
fn channels_last_eval(
    layer: &Layer,
    args: &[Option<&Value>],
    run: impl Fn(&[Option<&Value>]) -> Result<Vec<Value>, String>,
) -> Result<Vec<Value>, String> {
    let images =
        channels_last::image_inputs(&layer.op).ok_or_else(|| format!("{} has no channels-last form", layer.op))?;
    let mut owned: Vec<Option<Value>> = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        owned.push(match (a, images.contains(&i)) {
            (Some(Value::Tensor(t)), true) => Some(Value::Tensor(
                channels_last::permute_tensor(t, &channels_last::TO_NCHW).map_err(|e| e.to_string())?,
            )),
            _ => None,
        });
    }
    let args: Vec<Option<&Value>> = owned.iter().zip(args).map(|(o, a)| o.as_ref().or(*a)).collect();
    run(&args)?
        .into_iter()
        .map(|v| match v {
            Value::Tensor(t) => {
                channels_last::permute_tensor(&t, &channels_last::TO_NHWC).map(Value::Tensor).map_err(|e| e.to_string())
            }
            other => Ok(other),
        })
        .collect()
}
