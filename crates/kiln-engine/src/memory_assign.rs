//! From a network to arena requests: which tensors get arena memory, for how long, and which
//! may share it — reshape-like views share their input's memory, element-wise layers write
//! over an input that dies with them, and a concat's inputs are written straight into their
//! slices of its output (the concat itself then costs nothing). The placement itself is
//! [`crate::memory_plan::plan`].

use crate::engine::{Elision, EngineGraph, Storage};
use crate::memory_plan::{plan, Placement, Request};
use kiln_ir::{Network, TensorSource, ValueType};

/// Ops whose output is their first input under another shape.
const VIEW_OPS: &[&str] = &["Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"];

/// Element-wise ops whose output may overwrite an input of the same size that dies with them.
const IN_PLACE_OPS: &[&str] = &[
    "Relu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Sqrt",
    "Neg",
    "Abs",
    "Erf",
    "Reciprocal",
    "Clip",
    "LeakyRelu",
    "HardSigmoid",
    "HardSwish",
    "Gelu",
    "Softplus",
    "Elu",
    "Selu",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "KilnElementwise",
];

/// Decide every activation's storage and the elided layers, and record the arena size.
/// `max_bytes[t]` is tensor t's size at the profile's largest shapes, where static.
/// `elide_concat`: whether concat inputs may be written into their slices of the output (the
/// backend stores tensors at the plan's byte offsets).
pub fn assign(net: &Network, graph: &mut EngineGraph, max_bytes: &[Option<usize>], elide_concat: bool) {
    let nl = net.layers().len();
    let nt = net.tensors().len();
    let is_output: Vec<bool> = {
        let mut v = vec![false; nt];
        net.outputs().iter().for_each(|o| v[o.0] = true);
        v
    };
    // Lifetimes: first write and last read, in layer steps.
    let mut first = vec![0usize; nt];
    let mut last = vec![0usize; nt];
    let mut readers = vec![0usize; nt];
    for (li, layer) in net.layers().iter().enumerate() {
        for id in layer.outputs.iter().flatten() {
            first[id.0] = li;
            last[id.0] = li;
        }
    }
    for (li, layer) in net.layers().iter().enumerate() {
        for id in layer.inputs.iter().flatten().chain(&layer.implicit_inputs) {
            last[id.0] = last[id.0].max(li);
            readers[id.0] += 1;
        }
    }
    // Outputs are read after the run; inputs stay bound across runs (a context may execute
    // again without binding them anew), so neither may be overwritten.
    for (t, out) in is_output.iter().enumerate() {
        if *out || matches!(net.tensors()[t].source, TensorSource::Input) {
            last[t] = nl;
        }
    }
    // Which tensors get arena memory: inputs and layer outputs that are tensors of static
    // size at the max shapes.
    let eligible = |t: usize| -> bool {
        matches!(net.tensors()[t].source, TensorSource::Input | TensorSource::Layer { .. })
            && matches!(net.tensors()[t].ty, Some(ValueType::Tensor(_)))
            && max_bytes[t].is_some()
    };
    let mut request_of = vec![None::<usize>; nt];
    let mut requests: Vec<Request> = Vec::new();
    let mut owner = Vec::new(); // request → tensor
    for t in 0..nt {
        if eligible(t) {
            request_of[t] = Some(requests.len());
            requests.push(Request {
                bytes: max_bytes[t].unwrap_or(0),
                first: first[t],
                last: last[t],
                placement: Placement::Own,
            });
            owner.push(t);
        }
    }
    let mut shared = vec![false; nt]; // already placed inside another tensor or hosting one
                                      // Union of requests into buffers: each request's root and each root's last read.
    let mut root: Vec<usize> = (0..requests.len()).collect();
    let mut buffer_last: Vec<usize> = requests.iter().map(|r| r.last).collect();
    let mut elided: Vec<Option<Elision>> = vec![None; nl];
    let static_shape = |t: usize| {
        net.tensors()[t].ty.as_ref().and_then(|ty| ty.as_tensor()?.shape.as_deref().and_then(kiln_ir::concrete))
    };

    // Concat inputs written into the output, where each input is a contiguous slice of it
    // (everything before the axis is 1) and all shapes are static.
    for (li, layer) in net.layers().iter().enumerate() {
        if layer.op != "Concat" || !elide_concat {
            continue;
        }
        let Some(out) = layer.outputs.first().copied().flatten() else { continue };
        let Some(out_req) = request_of[out.0] else { continue };
        let Some(out_shape) = static_shape(out.0) else { continue };
        let Ok(axis) = layer.attrs.int("axis", 0) else { continue };
        let Ok(axis) = kiln_ir::spec::normalize_axis(axis, out_shape.len()) else { continue };
        if out_shape[..axis].iter().product::<usize>() != 1 || shared[out.0] {
            continue;
        }
        let ins: Vec<usize> = layer.inputs.iter().flatten().map(|id| id.0).collect();
        let unique = ins.iter().enumerate().all(|(i, t)| !ins[..i].contains(t));
        let ok = unique
            && ins.iter().all(|&t| {
                matches!(net.tensors()[t].source, TensorSource::Layer { .. })
                    && request_of[t].is_some()
                    && !shared[t]
                    && !is_output[t]
                    && static_shape(t).is_some()
            });
        if !ok {
            continue;
        }
        let mut offset = 0;
        for &t in &ins {
            let r = request_of[t].expect("checked");
            requests[r].placement = Placement::Within { of: out_req, offset };
            offset += requests[r].bytes;
            root[r] = out_req;
            buffer_last[out_req] = buffer_last[out_req].max(buffer_last[r]);
            shared[t] = true;
        }
        shared[out.0] = true;
        elided[li] = Some(Elision::Concat);
    }

    // Views and in-place element-wise layers, in execution order so chains compose.
    for (li, layer) in net.layers().iter().enumerate() {
        let (Some(Some(input)), Some(Some(out))) = (layer.inputs.first(), layer.outputs.first()) else { continue };
        let (Some(in_req), Some(out_req)) = (request_of[input.0], request_of[out.0]) else { continue };
        if shared[out.0] || requests[in_req].bytes < requests[out_req].bytes {
            continue;
        }
        let view = VIEW_OPS.contains(&layer.op.as_str()) && layer.outputs.len() == 1;
        let dtype_same = net.tensors()[input.0].ty.as_ref().and_then(|t| t.as_tensor()).map(|t| t.dtype)
            == net.tensors()[out.0].ty.as_ref().and_then(|t| t.as_tensor()).map(|t| t.dtype);
        // In place: the input dies here (its whole buffer, views included), same size.
        let in_place = IN_PLACE_OPS.contains(&layer.op.as_str())
            && dtype_same
            && requests[in_req].bytes == requests[out_req].bytes
            && buffer_last[root[in_req]] == li
            && !is_output[input.0]
            && !matches!(net.tensors()[input.0].source, TensorSource::Input);
        if view || in_place {
            requests[out_req].placement = Placement::Within { of: in_req, offset: 0 };
            let r = root[in_req];
            root[out_req] = r;
            buffer_last[r] = buffer_last[r].max(buffer_last[out_req]);
            shared[out.0] = true;
            shared[input.0] = true;
            if view {
                elided[li] = Some(Elision::View);
            }
        }
    }

    let memory = plan(&requests);
    for (r, &t) in owner.iter().enumerate() {
        graph.tensors[t].storage = Storage::Arena { offset: memory.offsets[r], bytes: requests[r].bytes };
    }
    for (li, e) in elided.into_iter().enumerate() {
        graph.layers[li].elided = e;
    }
    graph.arena_bytes = memory.arena_bytes;
    graph.peak_live_bytes = memory.peak_live_bytes;
}
