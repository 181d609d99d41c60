//! One execution context on the GPU: its activation arena (the engine's memory plan, in device
//! memory), a stream, cuBLAS/cuDNN handles, pinned staging for inputs and outputs, and — where
//! the engine allows it — the whole run captured once as a CUDA graph and replayed.

use crate::blas::Blas;
use crate::dnn::{ConvPlan, Dnn};
use crate::error::{cuda_err, layer_error, CudaResult};
use crate::kernels::device_dtype;
use crate::lower::Placement;
use crate::memory::{DeviceBuffer, PinnedBuffer};
use crate::program::{convert_back, convert_into, CudaProgram, Func};
use cudarc::driver::{result, sys};
use kiln_engine::{Arg, DeviceSession, EngineError, LayerIo, OutputSlot, Produced, Storage as Place};
use kiln_ir::{infer::InferCtx, DType, Tensor, TensorData, TensorType, Value, ValueType};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

/// The largest run-time value read on the host as a parameter (shapes, axes, pads, scales).
pub(crate) const SMALL_VALUE_ELEMENTS: usize = 4096;

/// cuBLAS's fixed workspace (enough for its Hopper kernels).
const BLAS_WORKSPACE: usize = 32 << 20;

/// A stream, destroyed when dropped.
pub(crate) struct Stream(pub sys::CUstream);
impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: created by the session, destroyed once, after everything using it.
        let _ = unsafe { result::stream::destroy(self.0) };
    }
}

/// Start and end of a run (its GPU time), and the point a caller's stream had reached.
struct Events(sys::CUevent, sys::CUevent, sys::CUevent);
impl Drop for Events {
    fn drop(&mut self) {
        // SAFETY: created by the session, destroyed once.
        unsafe {
            let _ = result::event::destroy(self.0);
            let _ = result::event::destroy(self.1);
            let _ = result::event::destroy(self.2);
        }
    }
}

struct GraphExec(sys::CUgraphExec);
impl Drop for GraphExec {
    fn drop(&mut self) {
        // SAFETY: instantiated by the session, destroyed once.
        let _ = unsafe { result::graph::exec_destroy(self.0) };
    }
}

pub(crate) struct CudaSession {
    pub(crate) p: Arc<CudaProgram>,
    graph_exec: Option<GraphExec>,
    pub(crate) blas: Blas,
    /// Products with fused bias/ReLU/residual epilogues (None: cuBLASLt could not be loaded).
    pub(crate) blas_lt: Option<crate::blas_lt::BlasLt>,
    pub(crate) dnn: Option<Dnn>,
    pub(crate) conv_plans: HashMap<usize, ConvPlan>,
    pub(crate) arena: DeviceBuffer,
    /// Scratch for cuDNN and attention scores; grown between runs, never inside a capture.
    pub(crate) workspace: DeviceBuffer,
    _blas_workspace: DeviceBuffer,
    /// An int the gather kernels set when an index is out of range.
    pub(crate) error_flag: DeviceBuffer,
    staging: PinnedBuffer,
    /// Run-time shape of each tensor on the device.
    pub(crate) shapes: Vec<Option<Vec<usize>>>,
    /// Values on the host: those with no device memory (sequences, values a CPU layer made),
    /// and a mirror of the small integer inputs of this run (shapes, axes, pads).
    host_values: Vec<Option<Value>>,
    /// Device memory of the tensors whose size is only known at run time (`Storage::Heap`),
    /// grown as needed and kept across runs.
    heap_buffers: Vec<Option<DeviceBuffer>>,
    /// Whether a heap tensor's device memory holds its value of this run.
    heap_on_device: Vec<bool>,
    /// This run read a run-time value on the host (a shape, axes, pads) or ran a layer on the
    /// CPU: a captured graph would bake that value in, so the run is never captured.
    uncapturable: std::cell::Cell<bool>,
    /// Input shapes of the previous run, and whether the graph was captured at them.
    last_input_shapes: Option<Vec<Vec<usize>>>,
    /// Capture static runs as a CUDA graph (`ExecutionContext::set_graph_capture`).
    graph_capture: bool,
    /// A run was enqueued and its outputs not yet collected.
    pending: bool,
    events: Events,
    last_ms: Option<f64>,
    pub(crate) stream: sys::CUstream,
    _stream: Stream,
}

// SAFETY: a session is used by one thread at a time (its context); the raw handles it holds are
// valid from any thread that binds the CUDA context, which every entry point does.
unsafe impl Send for CudaSession {}

impl CudaSession {
    pub(crate) fn new(p: Arc<CudaProgram>) -> CudaResult<CudaSession> {
        let device = p.device.clone();
        device.bind()?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(cuda_err("creating a CUDA stream"))?;
        let stream_guard = Stream(stream);
        let blas_ws = DeviceBuffer::new(&device, BLAS_WORKSPACE)?;
        let blas = Blas::new(stream, blas_ws.ptr(), blas_ws.len())?;
        // cuBLAS and cuBLASLt share the workspace: both run in order on the one stream.
        let blas_lt = crate::blas_lt::BlasLt::new(stream, blas_ws.ptr(), blas_ws.len());
        let needs_dnn = p.placements.iter().any(|pl| matches!(pl, Placement::Gpu(crate::lower::GpuOp::Conv { .. })));
        let dnn = if needs_dnn { Some(Dnn::new(stream)?) } else { None };
        let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
        let event = || result::event::create(flags).map_err(cuda_err("creating an event"));
        let events = Events(event()?, event()?, event()?);
        let n = p.graph.tensors.len();
        Ok(CudaSession {
            arena: DeviceBuffer::new(&device, p.graph.arena_bytes)?,
            workspace: DeviceBuffer::new(&device, 1 << 20)?,
            _blas_workspace: blas_ws,
            error_flag: DeviceBuffer::new(&device, 4)?,
            staging: PinnedBuffer::new(&device, 1 << 20)?,
            shapes: vec![None; n],
            host_values: vec![None; n],
            heap_buffers: (0..n).map(|_| None).collect(),
            heap_on_device: vec![false; n],
            uncapturable: std::cell::Cell::new(false),
            last_input_shapes: None,
            pending: false,
            graph_capture: graph_enabled(),
            graph_exec: None,
            blas,
            blas_lt,
            dnn,
            conv_plans: HashMap::new(),
            events,
            last_ms: None,
            p,
            stream,
            _stream: stream_guard,
        })
    }

    /// Device address of tensor `id` (arena slot, weight, or run-time sized buffer).
    pub(crate) fn ptr(&self, id: usize) -> CudaResult<u64> {
        match self.p.graph.tensors[id].storage {
            Place::Arena { offset, .. } => Ok(self.arena.ptr() + offset as u64),
            Place::Weight(w) => Ok(self.p.weight_ptrs[w]),
            Place::Heap => match &self.heap_buffers[id] {
                Some(b) if self.heap_on_device[id] => Ok(b.ptr()),
                _ => Err(format!("tensor '{}' is not on the device", self.p.graph.tensors[id].name)),
            },
        }
    }

    /// Bytes tensor `id` takes on the device at `shape`.
    fn device_bytes(&self, id: usize, shape: &[usize]) -> CudaResult<usize> {
        let n = kiln_ir::checked_numel(shape).map_err(|e| e.to_string())?;
        n.checked_mul(self.device_dtype(id)?.size()).ok_or_else(|| format!("{shape:?} overflows"))
    }

    /// Device memory for heap tensor `id` at `shape` (this run's value will be written there).
    fn place_on_device(&mut self, id: usize, shape: &[usize]) -> CudaResult<()> {
        let bytes = self.device_bytes(id, shape)?;
        if self.heap_buffers[id].as_ref().is_none_or(|b| b.len() < bytes) {
            // Work queued earlier may still use the old buffer: freeing must wait for it.
            self.sync()?;
            self.heap_buffers[id] = Some(DeviceBuffer::new(&self.p.device, bytes)?);
        }
        self.heap_on_device[id] = true;
        self.host_values[id] = None;
        self.shapes[id] = Some(shape.to_vec());
        Ok(())
    }

    /// Before a GPU layer reads them, heap inputs a CPU layer made are copied to the device.
    fn heap_inputs_to_device(&mut self, li: usize) -> CudaResult<()> {
        let p = self.p.clone();
        for id in p.graph.layers[li].layer.inputs.iter().flatten() {
            if !matches!(p.graph.tensors[id.0].storage, Place::Heap) || self.heap_on_device[id.0] {
                continue;
            }
            let Some(Value::Tensor(t)) = self.host_values[id.0].clone() else {
                return Err(format!("'{}' is not a tensor computed before its use", p.graph.tensors[id.0].name));
            };
            self.place_on_device(id.0, t.shape())?;
            self.host_values[id.0] = Some(Value::Tensor(t.clone()));
            let dst = self.converted(&t);
            let ptr = self.ptr(id.0)?;
            // SAFETY: the buffer holds the converted bytes (place_on_device sized it).
            unsafe { result::memcpy_htod_sync(ptr, &dst) }.map_err(cuda_err("copying to the GPU"))?;
        }
        Ok(())
    }

    /// `t` as the device stores it (fp32 in the storage type).
    fn converted(&self, t: &Tensor) -> Vec<u8> {
        let src = t.data().to_le_bytes();
        let mut dst = vec![0u8; t.len() * device_dtype(t.dtype(), self.p.storage).size()];
        convert_into(&src, t.dtype(), self.p.storage, &mut dst);
        dst
    }

    /// The value of tensor `id` on the host, where it is small enough to be a parameter (a
    /// shape, axes, pads, a scalar): weights from the plan, run-time values copied from the
    /// device. A run that reads a run-time value is not captured.
    pub(crate) fn small_value(&self, id: usize) -> CudaResult<Option<Tensor>> {
        if let Place::Weight(w) = self.p.graph.tensors[id].storage {
            return Ok(self.p.small_weights[w].clone());
        }
        self.uncapturable.set(true);
        match self.host_values[id].as_ref() {
            Some(Value::Tensor(t)) => return Ok(Some(t.clone())),
            Some(_) => return Ok(None),
            None => {}
        }
        let shape = self.shape(id)?;
        if kiln_ir::checked_numel(&shape).map_err(|e| e.to_string())? > SMALL_VALUE_ELEMENTS {
            return Ok(None);
        }
        match self.download(id)? {
            Value::Tensor(t) => Ok(Some(t)),
            _ => Ok(None),
        }
    }

    /// Run-time shape of tensor `id`.
    pub(crate) fn shape(&self, id: usize) -> CudaResult<Vec<usize>> {
        match self.p.graph.tensors[id].storage {
            Place::Weight(w) => Ok(self.p.graph.weights[w].shape.clone()),
            _ => self.shapes[id]
                .clone()
                .ok_or_else(|| format!("tensor '{}' has not been computed", self.p.graph.tensors[id].name)),
        }
    }

    pub(crate) fn graph_dtype(&self, id: usize) -> CudaResult<DType> {
        match &self.p.graph.tensors[id].ty {
            Some(ValueType::Tensor(t)) => Ok(t.dtype),
            _ => Err(format!("tensor '{}' has no tensor type", self.p.graph.tensors[id].name)),
        }
    }

    /// The dtype tensor `id` has on the device.
    pub(crate) fn device_dtype(&self, id: usize) -> CudaResult<DType> {
        Ok(device_dtype(self.graph_dtype(id)?, self.p.storage))
    }

    pub(crate) fn launch(&self, f: Func, grid: u32, block: u32, params: &mut [*mut c_void]) -> CudaResult<()> {
        // SAFETY: `f` comes from the loaded module, `params` point at live values of the
        // kernel's parameter types (the callers keep them to the types in library.cu).
        unsafe { result::launch_kernel(f.0, (grid.max(1), 1, 1), (block, 1, 1), 0, self.stream, params) }
            .map_err(cuda_err("launching a kernel"))
    }

    /// Blocks for a grid-stride kernel over `n` elements.
    pub(crate) fn grid(&self, n: usize) -> u32 {
        (n.div_ceil(256)).min(self.p.device.multiprocessors.max(1) as usize * 16).max(1) as u32
    }

    /// Grow the scratch buffer to at least `bytes` (between runs only: the first run at a shape
    /// is never captured).
    pub(crate) fn ensure_workspace(&mut self, bytes: usize) -> CudaResult<()> {
        if self.workspace.len() < bytes {
            self.sync()?;
            self.workspace = DeviceBuffer::new(&self.p.device, bytes.next_power_of_two())?;
        }
        Ok(())
    }

    fn sync(&self) -> CudaResult<()> {
        // SAFETY: the session's stream.
        unsafe { result::stream::synchronize(self.stream) }.map_err(cuda_err("waiting for the GPU"))
    }

    fn ensure_staging(&mut self, bytes: usize) -> CudaResult<()> {
        if self.staging.len() < bytes {
            self.sync()?;
            self.staging = PinnedBuffer::new(&self.p.device, bytes.next_power_of_two())?;
        }
        Ok(())
    }

    /// Output shapes of layer `li` from its input shapes (the same inference the builder ran).
    /// Where they depend on input values (a Reshape target, Reduce axes given at run time, a
    /// Range's bounds), the layer's small inputs are read on the host and inference runs again.
    fn infer(&self, li: usize) -> CudaResult<Vec<Option<Vec<usize>>>> {
        let out = self.infer_with(li, false)?;
        if out.iter().all(Option::is_some) {
            return Ok(out);
        }
        self.infer_with(li, true)
    }

    fn infer_with(&self, li: usize, read_values: bool) -> CudaResult<Vec<Option<Vec<usize>>>> {
        let g = &self.p.graph;
        let layer = &g.layers[li].layer;
        let mut types = Vec::with_capacity(layer.inputs.len());
        let mut owned: Vec<Option<Tensor>> = Vec::with_capacity(layer.inputs.len());
        for input in &layer.inputs {
            let Some(id) = input else {
                types.push(None);
                owned.push(None);
                continue;
            };
            let dtype = self.graph_dtype(id.0)?;
            let shape = self.shape(id.0)?;
            types.push(Some(Some(ValueType::Tensor(TensorType::new(dtype, kiln_ir::known_shape(&shape))))));
            let is_weight = matches!(g.tensors[id.0].storage, Place::Weight(_));
            owned.push(if is_weight || read_values { self.small_value(id.0)? } else { None });
        }
        let consts: Vec<Option<&Tensor>> = owned.iter().map(Option::as_ref).collect();
        let ctx = InferCtx {
            layer: &layer.name,
            op: &layer.op,
            attrs: &layer.attrs,
            inputs: &types,
            const_inputs: &consts,
            num_outputs: layer.outputs.len(),
        };
        let out = kiln_ir::infer::infer_layer(&ctx).map_err(|e| e.to_string())?;
        Ok(out
            .into_iter()
            .map(|t| match t {
                Some(ValueType::Tensor(TensorType { shape: Some(s), .. })) => kiln_ir::concrete(&s),
                _ => None,
            })
            .collect())
    }

    fn run_layers(&mut self) -> Result<(), EngineError> {
        let p = self.p.clone();
        let mut profile = LayerProfile::new(p.placements.len());
        for (li, placement) in p.placements.iter().enumerate() {
            if let Some(prof) = profile.as_mut() {
                prof.mark(li, self.stream);
            }
            let layer = &p.graph.layers[li].layer;
            match placement {
                Placement::Elided | Placement::Gpu(_) => {
                    let shapes = self.infer(li).map_err(|m| layer_error(layer, m))?;
                    for (slot, shape) in layer.outputs.iter().zip(shapes) {
                        if let Some(id) = slot {
                            let shape = shape.ok_or_else(|| {
                                layer_error(layer, "output shape not known from the input shapes".into())
                            })?;
                            self.check_fits(id.0, &shape).map_err(|m| layer_error(layer, m))?;
                            if matches!(p.graph.tensors[id.0].storage, Place::Heap) {
                                self.place_on_device(id.0, &shape).map_err(|m| layer_error(layer, m))?;
                            }
                            self.shapes[id.0] = Some(shape);
                        }
                    }
                    if let Placement::Gpu(op) = placement {
                        self.heap_inputs_to_device(li).map_err(|m| layer_error(layer, m))?;
                        if self.handles_shapes(li, op).map_err(|m| layer_error(layer, m))? {
                            self.launch_op(li, op).map_err(|m| layer_error(layer, m))?;
                        } else {
                            self.uncapturable.set(true);
                            self.run_host(li)?;
                        }
                    }
                }
                Placement::Host(_) => {
                    self.uncapturable.set(true);
                    self.run_host(li)?
                }
            }
        }
        if let Some(prof) = profile {
            prof.report(&p, self.stream);
        }
        Ok(())
    }

    /// A shape must fit its arena slot (the plan sized it for the profile's max shapes).
    fn check_fits(&self, id: usize, shape: &[usize]) -> CudaResult<()> {
        if let Place::Arena { bytes, .. } = self.p.graph.tensors[id].storage {
            let n = kiln_ir::checked_numel(shape).map_err(|e| e.to_string())? * self.device_dtype(id)?.size();
            if n > bytes {
                return Err(format!(
                    "'{}' of shape {shape:?} needs {n} bytes, its slot has {bytes}",
                    self.p.graph.tensors[id].name
                ));
            }
        }
        Ok(())
    }

    /// Tensor `id` copied to the host as a value of its graph dtype.
    fn download(&self, id: usize) -> CudaResult<Value> {
        let g = &self.p.graph;
        match g.tensors[id].storage {
            Place::Heap if self.heap_on_device[id] => {
                let shape = self.shape(id)?;
                let dtype = self.graph_dtype(id)?;
                let mut buf = vec![0u8; self.device_bytes(id, &shape)?];
                self.sync()?;
                // SAFETY: the buffer holds the tensor at this shape (place_on_device sized it).
                unsafe { result::memcpy_dtoh_sync(&mut buf, self.ptr(id)?) }
                    .map_err(cuda_err("copying from the GPU"))?;
                value_of(dtype, &shape, &convert_back(&buf, dtype, self.p.storage))
            }
            Place::Heap => self.host_values[id].clone().ok_or_else(|| format!("'{}' has no value", g.tensors[id].name)),
            Place::Weight(w) => {
                let m = &g.weights[w];
                let bytes = &self.p.host_weights.bytes()[m.offset..m.offset + m.bytes];
                value_of(m.dtype, &m.shape, bytes)
            }
            Place::Arena { offset, .. } => {
                let shape = self.shape(id)?;
                let dtype = self.graph_dtype(id)?;
                let n = kiln_ir::checked_numel(&shape).map_err(|e| e.to_string())? * self.device_dtype(id)?.size();
                let mut buf = vec![0u8; n];
                self.sync()?;
                // SAFETY: the slot holds n bytes (checked against its size when computed).
                unsafe { result::memcpy_dtoh_sync(&mut buf, self.arena.ptr() + offset as u64) }
                    .map_err(cuda_err("copying from the GPU"))?;
                value_of(dtype, &shape, &convert_back(&buf, dtype, self.p.storage))
            }
        }
    }

    /// Store a value computed on the host into tensor `id` (its arena slot, or the host heap).
    fn upload(&mut self, id: usize, value: Value) -> CudaResult<()> {
        let g = &self.p.graph;
        match (g.tensors[id].storage, &value) {
            (Place::Arena { offset, .. }, Value::Tensor(t)) => {
                self.check_fits(id, t.shape())?;
                let dst = self.converted(t);
                // SAFETY: the slot holds the bytes (check_fits).
                unsafe { result::memcpy_htod_sync(self.arena.ptr() + offset as u64, &dst) }
                    .map_err(cuda_err("copying to the GPU"))?;
                self.shapes[id] = Some(t.shape().to_vec());
                Ok(())
            }
            (Place::Arena { .. }, _) => Err(format!("'{}' must be a tensor", g.tensors[id].name)),
            _ => {
                if let Value::Tensor(t) = &value {
                    self.shapes[id] = Some(t.shape().to_vec());
                }
                self.heap_on_device[id] = false;
                self.host_values[id] = Some(value);
                Ok(())
            }
        }
    }

    /// A layer without a GPU kernel: its inputs copied to the host, the CPU kernel, its outputs
    /// copied back.
    fn run_host(&mut self, li: usize) -> Result<(), EngineError> {
        let p = self.p.clone();
        let layer = &p.graph.layers[li].layer;
        let fail = |m: String| layer_error(layer, m);
        let kernel = p.host_kernels[li].clone().ok_or_else(|| fail("no CPU kernel for a host layer".into()))?;
        let mut owned: Vec<Option<Value>> = Vec::with_capacity(layer.inputs.len());
        for input in &layer.inputs {
            owned.push(match input {
                Some(id) if !matches!(p.graph.tensors[id.0].storage, Place::Weight(_)) => {
                    Some(self.download(id.0).map_err(fail)?)
                }
                _ => None,
            });
        }
        let captured: Vec<Value> =
            layer.implicit_inputs.iter().map(|id| self.download(id.0)).collect::<Result<_, _>>().map_err(fail)?;
        let weight_arg = |w: usize| {
            let m = &p.graph.weights[w];
            Arg::Weight {
                dtype: m.dtype,
                shape: &m.shape,
                bytes: &p.host_weights.bytes()[m.offset..m.offset + m.bytes],
                value: &p.weight_values[w],
            }
        };
        let inputs = layer
            .inputs
            .iter()
            .zip(&owned)
            .map(|(input, v)| match (input, v) {
                (Some(id), None) => match p.graph.tensors[id.0].storage {
                    Place::Weight(w) => Some(weight_arg(w)),
                    _ => None,
                },
                (_, Some(v)) => Some(Arg::Value(v)),
                (None, None) => None,
            })
            .collect();
        let captures = layer
            .implicit_inputs
            .iter()
            .zip(&captured)
            .map(|(id, v)| (p.graph.tensors[id.0].name.as_str(), Arg::Value(v)))
            .collect();
        let outputs = layer.outputs.iter().map(|o| o.map(|_| OutputSlot::Heap)).collect();
        let results = layer.outputs.iter().map(|_| None).collect();
        let mut io = LayerIo { inputs, captures, outputs, results };
        kernel.run(&mut io).map_err(fail)?;
        let results = std::mem::take(&mut io.results);
        drop(io);
        for (slot, produced) in layer.outputs.iter().zip(results) {
            let Some(id) = slot else { continue };
            match produced {
                Some(Produced::Value(v)) => self.upload(id.0, v).map_err(fail)?,
                Some(Produced::InSlot(_)) => return Err(fail("a host kernel wrote into an arena slot".into())),
                None => return Err(fail(format!("produced no value for '{}'", p.graph.tensors[id.0].name))),
            }
        }
        Ok(())
    }

    fn run_captured_or_direct(&mut self, input_shapes: &[Vec<usize>]) -> Result<(), EngineError> {
        let same_shapes = self.last_input_shapes.as_deref() == Some(input_shapes);
        if !same_shapes {
            self.graph_exec = None;
        }
        if let Some(exec) = &self.graph_exec {
            // SAFETY: an instantiated graph of this session's stream and memory.
            return unsafe { result::graph::launch(exec.0, self.stream) }
                .map_err(|e| crate::error::device_error(format!("replaying the CUDA graph: {e:?}")));
        }
        // The first run at a shape plans every convolution and sizes the scratch memory; the
        // second, at the same shapes, is captured and replayed from then on. Both happen one
        // context at a time: cuDNN's algorithm search allocates and synchronizes while it
        // measures, which raced with other contexts' setup (seen as
        // CUDNN_STATUS_EXECUTION_FAILED with four threads on the H100).
        static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let profiling = std::env::var("KILN_CUDA_PROFILE").is_ok_and(|v| v == "1");
        let capture =
            self.p.graph_capturable && same_shapes && !self.uncapturable.get() && self.graph_capture && !profiling;
        let _setup = (!same_shapes || capture).then(|| SETUP.lock().unwrap_or_else(|e| e.into_inner()));
        if !capture {
            self.uncapturable.set(false);
            return self.run_layers();
        }
        // SAFETY: the session's stream; nothing else records on it while capturing.
        unsafe {
            result::stream::begin_capture(self.stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        }
        .map_err(|e| crate::error::device_error(format!("starting a CUDA graph capture: {e:?}")))?;
        let ran = self.run_layers();
        // SAFETY: ends the capture begun above.
        let graph = unsafe { result::stream::end_capture(self.stream) };
        ran?;
        let graph = graph.map_err(|e| crate::error::device_error(format!("capturing the CUDA graph: {e:?}")))?;
        // SAFETY: a captured graph, destroyed after instantiation.
        let exec = unsafe {
            let exec = result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0));
            let _ = result::graph::destroy(graph);
            exec
        }
        .map_err(|e| crate::error::device_error(format!("instantiating the CUDA graph: {e:?}")))?;
        tracing::debug!("engine captured as a CUDA graph");
        let exec = GraphExec(exec);
        // SAFETY: as above.
        unsafe { result::graph::launch(exec.0, self.stream) }
            .map_err(|e| crate::error::device_error(format!("launching the CUDA graph: {e:?}")))?;
        self.graph_exec = Some(exec);
        Ok(())
    }
}

/// `KILN_CUDA_PROFILE=1`: GPU time per layer from events around each one (no graph capture),
/// summed by op and placement and printed to stderr after each run — where the time goes.
struct LayerProfile {
    events: Vec<sys::CUevent>,
}

impl LayerProfile {
    fn new(layers: usize) -> Option<LayerProfile> {
        if std::env::var("KILN_CUDA_PROFILE").map_or(true, |v| v != "1") {
            return None;
        }
        let events = (0..=layers)
            .map(|_| result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(LayerProfile { events })
    }

    fn mark(&self, li: usize, stream: sys::CUstream) {
        // SAFETY: an event of this profile on the session's stream.
        let _ = unsafe { result::event::record(self.events[li], stream) };
    }

    fn report(self, p: &CudaProgram, stream: sys::CUstream) {
        let n = self.events.len() - 1;
        self.mark(n, stream);
        // SAFETY: the stream and events are live.
        let _ = unsafe { result::stream::synchronize(stream) };
        let mut by_op: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
        for li in 0..n {
            // SAFETY: both events were recorded and the stream has finished.
            let ms = unsafe { result::event::elapsed(self.events[li], self.events[li + 1]) }.unwrap_or(0.0) as f64;
            let key = format!("{} [{}]", p.graph.layers[li].layer.op, p.placements[li].describe());
            let e = by_op.entry(key).or_default();
            e.0 += ms;
            e.1 += 1;
        }
        let mut rows: Vec<_> = by_op.into_iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        let total: f64 = rows.iter().map(|r| r.1 .0).sum();
        eprintln!("GPU time by op (ms, {total:.3} total):");
        for (op, (ms, count)) in rows {
            eprintln!("  {ms:8.3}  {count:4}×  {op}");
        }
        for e in self.events {
            // SAFETY: created in `new`, destroyed once.
            let _ = unsafe { result::event::destroy(e) };
        }
    }
}

/// `KILN_CUDA_GRAPH=0` turns graph capture off for every context (`kiln bench --no-cuda-graph`
/// turns it off for its own).
fn graph_enabled() -> bool {
    std::env::var("KILN_CUDA_GRAPH").map_or(true, |v| v != "0")
}

fn value_of(dtype: DType, shape: &[usize], bytes: &[u8]) -> CudaResult<Value> {
    let data = TensorData::from_le_bytes(dtype, bytes).map_err(|e| e.to_string())?;
    Tensor::new(shape.to_vec(), data).map(Value::Tensor).map_err(|e| e.to_string())
}

impl DeviceSession for CudaSession {
    fn enqueue(&mut self, inputs: &[(usize, &Value)], stream: Option<u64>) -> Result<(), EngineError> {
        let dev = |m: String| crate::error::device_error(m);
        self.p.device.bind().map_err(dev)?;
        // The staging memory of a run still in flight is reused below.
        if self.pending {
            self.sync().map_err(dev)?;
        }
        let p = self.p.clone();
        // On a caller's stream: this run starts after the work already queued there.
        let caller = stream.map(|s| s as sys::CUstream);
        if let Some(s) = caller {
            // SAFETY: the caller's stream (their responsibility to keep alive) and our event.
            unsafe {
                result::event::record(self.events.2, s).map_err(|e| dev(format!("{e:?}")))?;
                result::stream::wait_event(self.stream, self.events.2, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT)
                    .map_err(|e| dev(format!("{e:?}")))?;
            }
        }
        // Inputs: converted into the storage type in pinned memory, then copied to their slots.
        let mut input_shapes = Vec::with_capacity(inputs.len());
        let mut staged: Vec<(u64, usize, usize)> = Vec::new(); // (device address, staging offset, bytes)
        let mut blobs: Vec<Vec<u8>> = Vec::new();
        self.heap_on_device.iter_mut().for_each(|d| *d = false);
        self.host_values.iter_mut().for_each(|v| *v = None);
        for &(id, value) in inputs {
            match (p.graph.tensors[id].storage, value) {
                (Place::Arena { offset, .. }, Value::Tensor(t)) => {
                    self.check_fits(id, t.shape()).map_err(dev)?;
                    let dst = self.converted(t);
                    input_shapes.push(t.shape().to_vec());
                    self.shapes[id] = Some(t.shape().to_vec());
                    staged.push((self.arena.ptr() + offset as u64, 0, dst.len()));
                    blobs.push(dst);
                    // Small integer inputs may be shapes, axes or pads: kept on the host too.
                    if !t.dtype().is_float() && t.len() <= SMALL_VALUE_ELEMENTS {
                        self.host_values[id] = Some(value.clone());
                    }
                }
                _ => {
                    input_shapes.push(match value {
                        Value::Tensor(t) => t.shape().to_vec(),
                        _ => Vec::new(),
                    });
                    if let Value::Tensor(t) = value {
                        self.shapes[id] = Some(t.shape().to_vec());
                    }
                    self.host_values[id] = Some(value.clone());
                }
            }
        }
        let total: usize = blobs.iter().map(|b| b.len().div_ceil(64) * 64).sum();
        self.ensure_staging(total).map_err(dev)?;
        let mut pos = 0;
        for (entry, blob) in staged.iter_mut().zip(&blobs) {
            self.staging.as_mut_slice()[pos..pos + blob.len()].copy_from_slice(blob);
            entry.1 = pos;
            pos += blob.len().div_ceil(64) * 64;
        }
        for &(addr, off, n) in &staged {
            let src = &self.staging.as_mut_slice()[off..off + n];
            // SAFETY: pinned source that outlives the copy (the run synchronizes before the
            // staging buffer is touched again); the slot holds n bytes (check_fits).
            unsafe { result::memcpy_htod_async(addr, src, self.stream) }.map_err(|e| dev(format!("{e:?}")))?;
        }
        // SAFETY: a 4-byte device int.
        unsafe { result::memset_d8_async(self.error_flag.ptr(), 0, 4, self.stream) }
            .map_err(|e| dev(format!("{e:?}")))?;
        // SAFETY: the session's events and stream.
        unsafe { result::event::record(self.events.0, self.stream) }.map_err(|e| dev(format!("{e:?}")))?;
        self.run_captured_or_direct(&input_shapes)?;
        // SAFETY: as above.
        unsafe { result::event::record(self.events.1, self.stream) }.map_err(|e| dev(format!("{e:?}")))?;
        self.last_input_shapes = Some(input_shapes);
        if let Some(s) = caller {
            // SAFETY: as above; the caller's stream continues once the run is done.
            unsafe { result::stream::wait_event(s, self.events.1, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT) }
                .map_err(|e| dev(format!("{e:?}")))?;
        }
        self.pending = true;
        Ok(())
    }

    fn collect(&mut self) -> Result<Vec<(usize, Value)>, EngineError> {
        let dev = |m: String| crate::error::device_error(m);
        let p = self.p.clone();
        self.p.device.bind().map_err(dev)?;
        self.sync().map_err(dev)?;
        self.pending = false;
        // SAFETY: both events were recorded on the stream, which has finished.
        self.last_ms = unsafe { result::event::elapsed(self.events.0, self.events.1) }.ok().map(|ms| ms as f64);
        let mut flag = [0u8; 4];
        // SAFETY: a 4-byte device int.
        unsafe { result::memcpy_dtoh_sync(&mut flag, self.error_flag.ptr()) }.map_err(|e| dev(format!("{e:?}")))?;
        match i32::from_le_bytes(flag) {
            0 => {}
            crate::launch_dtypes::DROPOUT_REFUSED => {
                return Err(dev("Dropout in training mode with a nonzero ratio (or a ratio outside [0, 1))".into()))
            }
            _ => return Err(dev(crate::launch_index::INDEX_ERROR_MESSAGE.into())),
        }
        let mut outputs = Vec::with_capacity(p.graph.outputs.len());
        for &o in &p.graph.outputs {
            outputs.push((o, self.download(o).map_err(dev)?));
        }
        Ok(outputs)
    }

    fn last_device_ms(&self) -> Option<f64> {
        self.last_ms
    }

    fn set_graph_capture(&mut self, on: bool) {
        self.graph_capture = on && graph_enabled();
        if !self.graph_capture {
            self.graph_exec = None;
        }
    }
}
