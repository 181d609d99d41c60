//! The interface between the builder/runtime and a device: a backend offers tactics (candidate
//! implementations) per layer and turns the chosen one into an executable kernel. The builder,
//! the plan and the execution context never know which device they drive.

use crate::engine::{EngineGraph, WeightBytes};
use crate::EngineError;
use kiln_ir::{DType, Layer, Tensor, Value, ValueType};
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

/// A device kiln can build for and run on.
pub trait Backend: Send + Sync {
    /// Short name recorded in plans ("cpu", "cuda").
    fn name(&self) -> &'static str;
    /// What a plan built here depends on (CPU model and features, GPU and driver): a plan from
    /// another device is refused.
    fn device(&self) -> String;
    /// Candidate implementations of `layer`, the backend's default first.
    fn tactics(&self, layer: &LayerDesc) -> Vec<Tactic>;
    /// The executable form of `layer` with tactic `tactic`. Device backends return the host
    /// (CPU) form here: it is what their programs fall back to for layers without a device kernel.
    fn instantiate(&self, layer: &LayerDesc, tactic: &str) -> Result<Arc<dyn LayerKernel>, String>;

    /// The precision `tactic` computes `layer` in, where it is not the output's dtype (an fp32
    /// layer run in fp16 on a GPU).
    fn precision(&self, _layer: &LayerDesc, _tactic: &str) -> Option<DType> {
        None
    }

    /// Time `tactic` on the device, in microseconds, where the backend measures it itself (on
    /// device memory, with device events); `None` times the host kernel from `instantiate`.
    fn time_tactic(&self, _layer: &LayerDesc, _tactic: &str) -> Option<Result<f64, String>> {
        None
    }

    /// Whether `layer` of `net` (a Conv, MaxPool or GlobalAveragePool the builder's layout
    /// pass could switch) runs faster channels-last on this backend, with a tactic for it
    /// (kiln_ir::channels_last). Default: keep every layer NCHW.
    fn channels_last(&self, _net: &kiln_ir::Network, _layer: &kiln_ir::Layer) -> bool {
        false
    }

    /// Whether the memory plan may write a concat's inputs straight into its output. A device
    /// that stores float tensors in a narrower type than the plan's (fp16 for fp32) cannot use
    /// the byte offsets of such a placement.
    fn elides_concat(&self) -> bool {
        true
    }

    /// Weight inputs `tactic` wants stored in its own layout (packed for its kernel): (input index, bytes), made at build time and written to the plan in place of the ONNX layout. Empty: every weight as is.
    ///
    /// Called once per layer after its tactic is chosen, on the weights in the ONNX layout. The
    /// builder stores a packed form only for a weight that this one input slot of this one
    /// layer reads (no other layer, slot or subgraph, not a graph output), and the layer must
    /// not be elided; otherwise the weight stays as is and the kernel gets it unpacked.
    /// `instantiate` then sees [`WeightView::packed`] set, and at run time the input arrives as
    /// [`Arg::PackedWeight`]. A plan is untrusted input: a kernel given packed bytes must check
    /// their length itself.
    fn pack_weights(&self, _layer: &LayerDesc, _tactic: &str) -> Result<Vec<(usize, Vec<u8>)>, String> {
        Ok(Vec::new())
    }

    /// Device code for a whole engine, compiled at build time and stored in the plan, so that
    /// loading compiles nothing. Empty for host backends. A device backend also records here
    /// where each layer runs (its tactic) and in which precision.
    fn compile(&self, _graph: &mut EngineGraph) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }

    /// The engine's program for a device with its own memory: weights uploaded, kernels loaded.
    /// `None` (host backends): the execution context runs the per-layer kernels on host memory.
    /// `host_kernels` are `instantiate`'s kernels per layer (`None` for elided layers), for the
    /// layers the device runs on the CPU.
    fn prepare(
        &self,
        _graph: &EngineGraph,
        _weights: &Arc<dyn WeightBytes>,
        _host_kernels: &[Option<Arc<dyn LayerKernel>>],
    ) -> Result<Option<Arc<dyn DeviceProgram>>, String> {
        Ok(None)
    }
}

/// Reduced precisions the builder's configuration allows (fp32 always is).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Precisions {
    pub fp16: bool,
    pub bf16: bool,
    /// fp32 matrix products on tensor cores with 10-bit mantissas.
    pub tf32: bool,
}

/// A whole engine on a device with its own memory (CUDA): shared by every execution context.
pub trait DeviceProgram: Send + Sync {
    /// One context's device state: its activation arena, stream and staging buffers.
    fn create_session(&self) -> Result<Box<dyn DeviceSession>, EngineError>;
    /// Per layer, where it runs and why, for `kiln inspect` ("gpu", "cpu (no GPU kernel for …)").
    fn placements(&self) -> Vec<String>;
}

/// One execution context's run on a device.
pub trait DeviceSession: Send {
    /// Queue a run of the engine: `inputs` are (graph tensor id, value) for every engine input.
    /// With `stream` (a CUDA stream handle) the run starts after the work queued there so far,
    /// and work queued there later waits for it; the call returns once the run is queued.
    fn enqueue(&mut self, inputs: &[(usize, &Value)], stream: Option<u64>) -> Result<(), EngineError>;
    /// Wait for the queued run; returns (graph tensor id, value) for every engine output.
    fn collect(&mut self) -> Result<Vec<(usize, Value)>, EngineError>;
    /// Device time of the last run (from device events), in milliseconds.
    fn last_device_ms(&self) -> Option<f64> {
        None
    }
    /// Whether runs may be captured once as a device graph and replayed (where legal).
    fn set_graph_capture(&mut self, _on: bool) {}
}

/// What a backend sees of a layer when it offers and instantiates tactics.
pub struct LayerDesc<'a> {
    pub layer: &'a Layer,
    /// Input types at the profile's opt shapes (where known).
    pub input_types: Vec<Option<ValueType>>,
    /// Inputs that are weights: their bytes as the engine holds them (mapped from a plan or
    /// laid out by the builder), so a tactic can read or repack them without copying.
    pub weights: Vec<Option<WeightView<'a>>>,
    /// Reduced precisions the build may use for this layer.
    pub precisions: Precisions,
}

/// A weight's type, shape and little-endian bytes.
#[derive(Clone, Copy, Debug)]
pub struct WeightView<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
    /// `bytes` are the form [`Backend::pack_weights`] made for this layer's tactic, not the
    /// ONNX layout: `dtype` and `shape` stay the logical ones, and `bytes.len()` may differ
    /// from numel·size. `false`: the ONNX layout (a kernel that wants another packs it itself,
    /// as during tactic timing or for a weight the builder could not store packed).
    pub packed: bool,
}

/// One candidate implementation.
#[derive(Clone, Debug, PartialEq)]
pub struct Tactic {
    pub name: String,
    /// Scratch memory it needs at the opt shapes; tactics above the workspace limit are skipped.
    pub workspace_bytes: usize,
}

impl Tactic {
    pub fn new(name: &str) -> Self {
        Tactic { name: name.to_string(), workspace_bytes: 0 }
    }
}

/// A layer ready to run with a chosen tactic. Shared by every execution context of an engine.
pub trait LayerKernel: Send + Sync {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String>;
}

/// A kernel's view of one input.
pub enum Arg<'a> {
    /// A dense tensor in raw little-endian bytes (arena memory).
    Bytes { dtype: DType, shape: &'a [usize], bytes: &'a [u8] },
    /// A weight: its bytes (mapped from the plan), and the engine's shared object form of it,
    /// made on first use by a kernel that wants one.
    Weight { dtype: DType, shape: &'a [usize], bytes: &'a [u8], value: &'a OnceLock<Value> },
    /// A weight stored packed for this layer's tactic ([`Backend::pack_weights`]): `bytes` are
    /// the tactic's own layout (mapped from the plan); `dtype` and `shape` are the logical ones.
    /// Only the kernel whose tactic packed it knows the layout: [`Arg::value`] refuses it.
    PackedWeight { dtype: DType, shape: &'a [usize], bytes: &'a [u8] },
    /// A value held as an object: sequences, optionals, results too large for their slot.
    Value(&'a Value),
}

impl Arg<'_> {
    /// The input as a value: borrowed where one exists, decoded from the bytes otherwise.
    pub fn value(&self) -> Result<Cow<'_, Value>, String> {
        match self {
            Arg::Value(v) => Ok(Cow::Borrowed(*v)),
            Arg::Bytes { dtype, shape, bytes } => Ok(Cow::Owned(decode(*dtype, shape, bytes)?)),
            Arg::Weight { dtype, shape, bytes, value } => {
                if value.get().is_none() {
                    let _ = value.set(decode(*dtype, shape, bytes)?);
                }
                Ok(Cow::Borrowed(value.get().expect("set above")))
            }
            Arg::PackedWeight { dtype, shape, .. } => Err(format!(
                "a weight ({dtype} {shape:?}) is stored packed for its layer's tactic; only that tactic's kernel can read it"
            )),
        }
    }

    pub fn shape(&self) -> Option<&[usize]> {
        match self {
            Arg::Bytes { shape, .. } | Arg::Weight { shape, .. } | Arg::PackedWeight { shape, .. } => Some(shape),
            Arg::Value(Value::Tensor(t)) => Some(t.shape()),
            Arg::Value(_) => None,
        }
    }
}

fn decode(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Value, String> {
    let data = kiln_ir::TensorData::from_le_bytes(dtype, bytes).map_err(|e| e.to_string())?;
    Tensor::new(shape.to_vec(), data).map(Value::Tensor).map_err(|e| e.to_string())
}

/// Where a kernel's outputs go.
pub enum OutputSlot<'a> {
    /// A planned arena range: results that fit are written here.
    Arena { bytes: &'a mut [u8] },
    /// No planned memory (sequences, data-dependent sizes): the value is kept as an object.
    Heap,
}

/// A layer invocation: its inputs, and where its outputs go. After `run`, every wanted output
/// has a result: bytes written into its slot (with a shape), or a value.
pub struct LayerIo<'a> {
    pub inputs: Vec<Option<Arg<'a>>>,
    /// Values of this graph that the layer's subgraphs read by name.
    pub captures: Vec<(&'a str, Arg<'a>)>,
    pub outputs: Vec<Option<OutputSlot<'a>>>,
    pub results: Vec<Option<Produced>>,
}

/// What a kernel produced for one output.
#[derive(Debug, PartialEq)]
pub enum Produced {
    /// Written into the arena slot, with this shape.
    InSlot(Vec<usize>),
    /// Kept as an object (no slot, or it did not fit the slot).
    Value(Value),
}

impl LayerIo<'_> {
    /// Store output `index` from a computed value: copied into its arena slot when it is a
    /// tensor that fits, kept as an object otherwise.
    pub fn set_output_value(&mut self, index: usize, value: Value) {
        let Some(Some(slot)) = self.outputs.get_mut(index) else { return };
        let produced = match (slot, &value) {
            (OutputSlot::Arena { bytes }, Value::Tensor(t)) => {
                let n = t.len() * t.dtype().size();
                if n <= bytes.len() {
                    write_le_bytes(t, &mut bytes[..n]);
                    Produced::InSlot(t.shape().to_vec())
                } else {
                    tracing::debug!(index, needed = n, planned = bytes.len(), "output larger than its arena slot");
                    Produced::Value(value)
                }
            }
            _ => Produced::Value(value),
        };
        self.results[index] = Some(produced);
    }
}

/// A tensor's elements as little-endian bytes into `out` (exactly `len * size` bytes).
pub fn write_le_bytes(t: &Tensor, out: &mut [u8]) {
    out.copy_from_slice(&crate::bytes::le_bytes(t.data()));
}
