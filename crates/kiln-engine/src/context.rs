//! An execution context: one engine run's activation memory and bindings. Contexts of one
//! engine are independent, so N threads with N contexts run one engine concurrently.

use crate::backend::{Arg, DeviceProgram, DeviceSession, LayerIo, OutputSlot, Produced};
use crate::engine::{AlignedBytes, Elision, Engine, Storage};
use crate::EngineError;
use kiln_ir::{infer::InferCtx, DType, Tensor, TensorType, Value, ValueType};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Receives the time of every layer an [`ExecutionContext`] runs (`kiln bench --profile`,
/// Chrome traces).
pub trait Profiler: Send {
    fn layer_done(&mut self, layer: &str, op: &str, start: Instant, elapsed: Duration);
}

/// Receives every layer's outputs (by tensor name) right after the layer ran.
pub type LayerObserver<'a> = dyn FnMut(&crate::EngineLayer, Vec<(String, Value)>) + 'a;

pub struct ExecutionContext {
    engine: Arc<Engine>,
    arena: AlignedBytes,
    /// Run-time shape of each arena tensor that currently holds a value.
    shapes: Vec<Option<Vec<usize>>>,
    /// Values kept as objects (no arena slot, or too large for it).
    heap: Vec<Option<Value>>,
    /// Per tensor, the last layer reading it; heap values are dropped after it.
    last_use: Vec<usize>,
    profiler: Option<Box<dyn Profiler>>,
    /// The device side of this context (made on first run), for device engines.
    device: Option<Box<dyn DeviceSession>>,
    /// Capture device runs as a graph where legal (on by default).
    graph_capture: bool,
}

impl Engine {
    /// A context with its own activation arena (sized by the memory plan).
    pub fn create_context(self: &Arc<Self>) -> ExecutionContext {
        let n = self.graph.tensors.len();
        let mut last_use = vec![0; n];
        for (li, el) in self.graph.layers.iter().enumerate() {
            for id in el.layer.inputs.iter().flatten().chain(&el.layer.implicit_inputs) {
                last_use[id.0] = li;
            }
        }
        for &o in &self.graph.outputs {
            last_use[o] = usize::MAX;
        }
        ExecutionContext {
            engine: self.clone(),
            arena: AlignedBytes::zeroed(self.graph.arena_bytes),
            shapes: vec![None; n],
            heap: vec![None; n],
            last_use,
            profiler: None,
            device: None,
            graph_capture: true,
        }
    }
}

impl ExecutionContext {
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Bytes of activation memory this context holds.
    pub fn arena_bytes(&self) -> usize {
        self.arena.as_slice().len()
    }

    pub fn set_profiler(&mut self, profiler: Option<Box<dyn Profiler>>) {
        self.profiler = profiler;
    }

    /// Declare the shape the next run's input `name` will have; it must lie within the
    /// engine's optimization profile.
    pub fn set_input_shape(&mut self, name: &str, shape: &[usize]) -> Result<(), EngineError> {
        let id = self.input_id(name)?;
        self.check_shape(name, shape)?;
        self.shapes[id] = Some(shape.to_vec());
        Ok(())
    }

    /// Bind input `name` (copied into the context). Its dtype must match and its shape lie
    /// within the profile (and equal the shape set by `set_input_shape`, if one was).
    pub fn set_input(&mut self, name: &str, value: &Value) -> Result<(), EngineError> {
        let id = self.input_id(name)?;
        let bad = |message: String| EngineError::Input { name: name.to_string(), message };
        let info = &self.engine.graph.tensors[id];
        match (&info.ty, value) {
            (Some(ValueType::Tensor(tt)), Value::Tensor(t)) => {
                if tt.dtype != t.dtype() {
                    return Err(bad(format!("expected dtype {}, got {}", tt.dtype, t.dtype())));
                }
                self.check_shape(name, t.shape())?;
            }
            (Some(ValueType::Tensor(_)), other) => {
                return Err(bad(format!("expected a tensor, got a {}", other.kind_name())))
            }
            _ => {}
        }
        match (self.engine.graph.tensors[id].storage, value) {
            (Storage::Arena { offset, bytes }, Value::Tensor(t)) if t.len() * t.dtype().size() <= bytes => {
                let n = t.len() * t.dtype().size();
                crate::backend::write_le_bytes(t, &mut self.arena.as_mut_slice()[offset..offset + n]);
                self.shapes[id] = Some(t.shape().to_vec());
                self.heap[id] = None;
            }
            _ => {
                self.heap[id] = Some(value.clone());
                self.shapes[id] = None;
            }
        }
        Ok(())
    }

    /// Run the engine on the bound inputs.
    pub fn execute(&mut self) -> Result<(), EngineError> {
        self.run(None)
    }

    /// Run the engine, handing every layer's outputs (copied, by tensor name) to `observe`
    /// right after the layer ran: `kiln compare --per-layer` compares them with the
    /// unoptimized network's values of the same names.
    pub fn execute_observed(&mut self, observe: &mut LayerObserver<'_>) -> Result<(), EngineError> {
        self.run(Some(observe))
    }

    fn run(&mut self, mut observe: Option<&mut LayerObserver<'_>>) -> Result<(), EngineError> {
        for &i in &self.engine.graph.inputs {
            if self.heap[i].is_none() && self.shapes[i].is_none() {
                return Err(EngineError::Input {
                    name: self.engine.graph.tensors[i].name.clone(),
                    message: "not bound (set_input)".into(),
                });
            }
        }
        if let Some(program) = self.engine.device.clone() {
            if observe.is_some() {
                return Err(EngineError::Device {
                    backend: self.engine.backend_name().to_string(),
                    message: "per-layer observation is not available on a device engine; compare outputs instead"
                        .into(),
                });
            }
            self.enqueue_on_device(program.as_ref(), None)?;
            return self.collect_from_device();
        }
        let engine = self.engine.clone();
        for (li, el) in engine.graph.layers.iter().enumerate() {
            let start = Instant::now();
            let elided = match el.elided {
                Some(kind) => self.run_elided(li, kind)?,
                None => false,
            };
            if !elided {
                self.run_layer(li)?;
            }
            if let Some(p) = self.profiler.as_mut() {
                p.layer_done(&el.layer.name, &el.layer.op, start, start.elapsed());
            }
            if let Some(observe) = observe.as_mut() {
                let values = el
                    .layer
                    .outputs
                    .iter()
                    .flatten()
                    .filter_map(|id| Some((engine.graph.tensors[id.0].name.clone(), self.read_value(id.0)?)))
                    .collect();
                observe(el, values);
            }
            self.release_after(li);
        }
        Ok(())
    }

    /// Device engines (CUDA): queue a run on the caller's stream `stream` (a `CUstream`
    /// handle) and return at once; [`ExecutionContext::synchronize`] waits for it and makes the
    /// outputs readable. The run starts after the work already queued on `stream`, and work
    /// queued there afterwards sees its results on the device.
    pub fn enqueue(&mut self, stream: u64) -> Result<(), EngineError> {
        let program = self.engine.device.clone().ok_or_else(|| EngineError::Device {
            backend: self.engine.backend_name().to_string(),
            message: "enqueue needs a device engine (CUDA); use execute".into(),
        })?;
        self.enqueue_on_device(program.as_ref(), Some(stream))
    }

    /// Wait for the run queued by [`ExecutionContext::enqueue`]; its outputs become readable.
    pub fn synchronize(&mut self) -> Result<(), EngineError> {
        if self.device.is_some() {
            self.collect_from_device()?;
        }
        Ok(())
    }

    /// Device engines: the inputs go to the device session, which runs every layer on its own
    /// memory.
    fn enqueue_on_device(&mut self, program: &dyn DeviceProgram, stream: Option<u64>) -> Result<(), EngineError> {
        if self.device.is_none() {
            let mut session = program.create_session()?;
            session.set_graph_capture(self.graph_capture);
            self.device = Some(session);
        }
        let graph = &self.engine.graph;
        let mut values = Vec::with_capacity(graph.inputs.len());
        for &i in &graph.inputs {
            let v = self.read_value(i).ok_or_else(|| EngineError::Input {
                name: graph.tensors[i].name.clone(),
                message: "not bound (set_input)".into(),
            })?;
            values.push((i, v));
        }
        let inputs: Vec<(usize, &Value)> = values.iter().map(|(i, v)| (*i, v)).collect();
        self.device.as_mut().expect("made above").enqueue(&inputs, stream)
    }

    /// The outputs of the queued device run, kept as this context's values.
    fn collect_from_device(&mut self) -> Result<(), EngineError> {
        let start = Instant::now();
        let outputs = self.device.as_mut().expect("a run was queued").collect()?;
        if let Some(p) = self.profiler.as_mut() {
            p.layer_done("(whole engine on the device)", "device", start, start.elapsed());
        }
        for (id, value) in outputs {
            if id < self.heap.len() {
                self.heap[id] = Some(value);
                self.shapes[id] = None;
            }
        }
        Ok(())
    }

    /// Device engines: whether a static run is captured once as a CUDA graph and replayed
    /// after that (on by default; `false` launches every layer on every run).
    pub fn set_graph_capture(&mut self, on: bool) {
        self.graph_capture = on;
        if let Some(d) = self.device.as_mut() {
            d.set_graph_capture(on);
        }
    }

    /// Device time of the last run in milliseconds (device engines; from device events).
    pub fn last_device_ms(&self) -> Option<f64> {
        self.device.as_ref().and_then(|d| d.last_device_ms())
    }

    /// Output `name` of the last run, copied out.
    pub fn output(&self, name: &str) -> Result<Value, EngineError> {
        let g = &self.engine.graph;
        let id = g
            .outputs
            .iter()
            .copied()
            .find(|&o| g.tensors[o].name == name)
            .ok_or_else(|| EngineError::UnknownOutput(name.to_string()))?;
        self.read_value(id).ok_or_else(|| EngineError::Execution {
            layer: name.to_string(),
            op: "output".into(),
            message: "the output has not been computed (run execute first)".into(),
        })
    }

    /// Every output of the last run, by name, in the engine's output order.
    pub fn outputs(&self) -> Result<Vec<(String, Value)>, EngineError> {
        self.engine.output_names().into_iter().map(|n| Ok((n.to_string(), self.output(n)?))).collect()
    }

    fn input_id(&self, name: &str) -> Result<usize, EngineError> {
        let g = &self.engine.graph;
        g.inputs.iter().copied().find(|&i| g.tensors[i].name == name).ok_or_else(|| EngineError::Input {
            name: name.to_string(),
            message: format!("the engine has no such input (inputs: {:?})", self.engine.input_names()),
        })
    }

    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<(), EngineError> {
        match self.engine.graph.profile.get(name) {
            Some(r) if !r.contains(shape) => Err(EngineError::Input {
                name: name.to_string(),
                message: format!(
                    "shape {shape:?} is outside the engine's profile (min {:?}, max {:?}); rebuild with a wider range",
                    r.min, r.max
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The current value of tensor `id` as an object (copied out of the arena).
    fn read_value(&self, id: usize) -> Option<Value> {
        if let Some(v) = &self.heap[id] {
            return Some(v.clone());
        }
        let t = &self.engine.graph.tensors[id];
        match t.storage {
            // A packed weight has no value (its bytes are one kernel's layout).
            Storage::Weight(w) => self.engine.weight_arg(w).value().ok().map(|v| v.into_owned()),
            Storage::Arena { offset, .. } => {
                let shape = self.shapes[id].as_ref()?;
                let dtype = dtype_of(t.ty.as_ref())?;
                let n = shape.iter().product::<usize>() * dtype.size();
                let data =
                    kiln_ir::TensorData::from_le_bytes(dtype, &self.arena.as_slice()[offset..offset + n]).ok()?;
                Tensor::new(shape.clone(), data).ok().map(Value::Tensor)
            }
            Storage::Heap => None,
        }
    }

    fn run_layer(&mut self, li: usize) -> Result<(), EngineError> {
        let engine = self.engine.clone();
        let g = &engine.graph;
        let el = &g.layers[li];
        let layer = &el.layer;
        let fail =
            |message: String| EngineError::Execution { layer: layer.name.clone(), op: layer.op.clone(), message };
        let kernel = engine.kernels[li].as_ref().ok_or_else(|| fail("no kernel was instantiated".into()))?;
        let base = self.arena.as_mut_ptr();
        let arena_len = self.arena.as_slice().len();

        // Output ranges first: inputs overlapping one (in-place layers) are copied out before
        // the output is handed to the kernel, and outputs must not overlap each other.
        let mut out_ranges: Vec<(usize, usize)> = Vec::new();
        for id in layer.outputs.iter().flatten() {
            match g.tensors[id.0].storage {
                Storage::Arena { offset, bytes } => out_ranges.push((offset, offset + bytes)),
                Storage::Weight(_) => {
                    return Err(fail(format!("output '{}' is stored as a weight", g.tensors[id.0].name)))
                }
                Storage::Heap => {}
            }
        }
        for (i, a) in out_ranges.iter().enumerate() {
            if out_ranges[..i].iter().any(|b| overlaps(*a, *b)) {
                return Err(fail("two outputs share memory (corrupt plan)".into()));
            }
        }
        // Input values that need an owned copy (overlapping an output).
        let mut owned: Vec<Option<Value>> = vec![None; layer.inputs.len()];
        for (k, input) in layer.inputs.iter().enumerate() {
            let Some(id) = input else { continue };
            if let (Storage::Arena { offset, .. }, None) = (g.tensors[id.0].storage, &self.heap[id.0]) {
                let n = self
                    .bytes_of(id.0)
                    .ok_or_else(|| fail(format!("input '{}' has no value", g.tensors[id.0].name)))?;
                if out_ranges.iter().any(|r| overlaps(*r, (offset, offset + n))) {
                    owned[k] = Some(self.read_value(id.0).ok_or_else(|| fail("input has no value".into()))?);
                }
            }
        }
        let mut inputs = Vec::with_capacity(layer.inputs.len());
        for (k, input) in layer.inputs.iter().enumerate() {
            let arg = match input {
                None => None,
                Some(id) => Some(match &owned[k] {
                    Some(v) => Arg::Value(v),
                    None => self
                        .arg(id.0, base, arena_len)
                        .ok_or_else(|| fail(format!("input '{}' has not been computed", g.tensors[id.0].name)))?,
                }),
            };
            inputs.push(arg);
        }
        let mut captures = Vec::with_capacity(layer.implicit_inputs.len());
        for id in &layer.implicit_inputs {
            let arg = self
                .arg(id.0, base, arena_len)
                .ok_or_else(|| fail(format!("captured '{}' has not been computed", g.tensors[id.0].name)))?;
            captures.push((g.tensors[id.0].name.as_str(), arg));
        }
        let mut outputs = Vec::with_capacity(layer.outputs.len());
        for id in &layer.outputs {
            outputs.push(id.map(|id| match g.tensors[id.0].storage {
                // SAFETY: the range lies inside the arena (validated at load), overlaps no other
                // output (checked above) and no input handed out as bytes (overlapping inputs
                // were copied into `owned`).
                Storage::Arena { offset, bytes } => {
                    OutputSlot::Arena { bytes: unsafe { std::slice::from_raw_parts_mut(base.add(offset), bytes) } }
                }
                _ => OutputSlot::Heap,
            }));
        }
        let results = (0..layer.outputs.len()).map(|_| None).collect();
        let mut io = LayerIo { inputs, captures, outputs, results };
        kernel.run(&mut io).map_err(fail)?;
        let results = std::mem::take(&mut io.results);
        drop(io);
        for (slot, produced) in layer.outputs.iter().zip(results) {
            let Some(id) = slot else { continue };
            match produced {
                Some(Produced::InSlot(shape)) => {
                    self.shapes[id.0] = Some(shape);
                    self.heap[id.0] = None;
                }
                Some(Produced::Value(v)) => {
                    self.heap[id.0] = Some(v);
                    self.shapes[id.0] = None;
                }
                None => return Err(fail(format!("produced no value for '{}'", g.tensors[id.0].name))),
            }
        }
        Ok(())
    }

    /// A layer the memory plan made free: its output is already in place, only its shape is
    /// new. Returns false when the layer must run after all (an input was kept off-arena).
    fn run_elided(&mut self, li: usize, kind: Elision) -> Result<bool, EngineError> {
        let engine = self.engine.clone();
        let g = &engine.graph;
        let layer = &g.layers[li].layer;
        let data_inputs: &[Option<kiln_ir::TensorId>] = match kind {
            Elision::View => &layer.inputs[..1.min(layer.inputs.len())],
            Elision::Concat => &layer.inputs,
        };
        if data_inputs.iter().flatten().any(|id| self.heap[id.0].is_some() || self.shapes[id.0].is_none()) {
            return Ok(false);
        }
        // The output shape, from the layer's inference rule on the run-time input shapes.
        let mut types = Vec::with_capacity(layer.inputs.len());
        let mut consts: Vec<Option<Value>> = Vec::with_capacity(layer.inputs.len());
        for (k, input) in layer.inputs.iter().enumerate() {
            let Some(id) = input else {
                types.push(None);
                consts.push(None);
                continue;
            };
            let t = &g.tensors[id.0];
            let is_data = k < data_inputs.len() && data_inputs[k].is_some();
            let value = if is_data { None } else { self.read_value(id.0) };
            let ty = match (&self.shapes[id.0], dtype_of(t.ty.as_ref())) {
                (Some(s), Some(d)) => Some(ValueType::Tensor(TensorType::new(d, kiln_ir::known_shape(s)))),
                _ => value.as_ref().and_then(ValueType::of_value),
            };
            types.push(Some(ty));
            consts.push(value);
        }
        let const_refs: Vec<Option<&Tensor>> = consts.iter().map(|v| v.as_ref().and_then(Value::as_tensor)).collect();
        let ctx = InferCtx {
            layer: &layer.name,
            op: &layer.op,
            attrs: &layer.attrs,
            inputs: &types,
            const_inputs: &const_refs,
            num_outputs: layer.outputs.len(),
        };
        let out = kiln_ir::infer::infer_layer(&ctx).map_err(|e| EngineError::Execution {
            layer: layer.name.clone(),
            op: layer.op.clone(),
            message: e.to_string(),
        })?;
        let Some(Some(ValueType::Tensor(TensorType { shape: Some(shape), .. }))) = out.first() else {
            return Ok(false);
        };
        let Some(shape) = kiln_ir::concrete(shape) else { return Ok(false) };
        let Some(out_id) = layer.outputs.first().copied().flatten() else { return Ok(true) };
        if let Storage::Arena { bytes, .. } = g.tensors[out_id.0].storage {
            let n = shape.iter().product::<usize>() * dtype_of(g.tensors[out_id.0].ty.as_ref()).map_or(0, DType::size);
            if n > bytes {
                return Ok(false);
            }
        }
        self.shapes[out_id.0] = Some(shape);
        self.heap[out_id.0] = None;
        Ok(true)
    }

    /// Drop heap values nobody reads any more.
    fn release_after(&mut self, li: usize) {
        let engine = self.engine.clone();
        let layer = &engine.graph.layers[li].layer;
        for id in layer.inputs.iter().flatten().chain(&layer.implicit_inputs) {
            if self.last_use[id.0] == li {
                self.heap[id.0] = None;
            }
        }
    }

    fn bytes_of(&self, id: usize) -> Option<usize> {
        let dtype = dtype_of(self.engine.graph.tensors[id].ty.as_ref())?;
        Some(self.shapes[id].as_ref()?.iter().product::<usize>() * dtype.size())
    }

    /// Tensor `id` as a kernel argument.
    fn arg<'a>(&'a self, id: usize, base: *mut u8, arena_len: usize) -> Option<Arg<'a>> {
        if let Some(v) = &self.heap[id] {
            return Some(Arg::Value(v));
        }
        let t = &self.engine.graph.tensors[id];
        match t.storage {
            Storage::Weight(w) => Some(self.engine.weight_arg(w)),
            Storage::Arena { offset, bytes } => {
                let shape = self.shapes[id].as_deref()?;
                let dtype = dtype_of(t.ty.as_ref())?;
                let n = shape.iter().product::<usize>() * dtype.size();
                if n > bytes || offset + n > arena_len {
                    return None;
                }
                // SAFETY: inside the arena; outputs overlapping this range get no slice at the
                // same time (run_layer copies such inputs first).
                let bytes = unsafe { std::slice::from_raw_parts(base.add(offset) as *const u8, n) };
                Some(Arg::Bytes { dtype, shape, bytes })
            }
            Storage::Heap => None,
        }
    }
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1 && a.0 < a.1 && b.0 < b.1
}

fn dtype_of(ty: Option<&ValueType>) -> Option<DType> {
    match ty {
        Some(ValueType::Tensor(t)) => Some(t.dtype),
        _ => None,
    }
}
