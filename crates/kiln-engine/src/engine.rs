//! The built engine: optimized layers with their tactics, the weights, the memory plan and the
//! input profile. Immutable and shared (`Send + Sync`); each [`ExecutionContext`] runs it with
//! its own activation memory.
//!
//! [`ExecutionContext`]: crate::ExecutionContext

use crate::backend::{Arg, Backend, DeviceProgram, LayerDesc, LayerKernel, WeightView};
use crate::config::ShapeRange;
use crate::memory_plan::ARENA_ALIGN;
use crate::EngineError;
use kiln_ir::{DType, Layer, Value, ValueType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Everything about an engine except the weight bytes: what the plan file's metadata holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EngineGraph {
    pub name: String,
    pub tensors: Vec<EngineTensor>,
    pub layers: Vec<EngineLayer>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    /// Shape range of every tensor input (fixed ranges for static inputs).
    pub profile: BTreeMap<String, ShapeRange>,
    pub weights: Vec<WeightMeta>,
    pub arena_bytes: usize,
    /// The largest total of activation bytes alive at one time (the arena's lower bound).
    pub peak_live_bytes: usize,
    /// Facts about the build, for `kiln inspect`.
    pub build: BuildSummary,
    /// The backend's compiled device code (CUDA: the kernels' module), loaded as is.
    pub device_code: Vec<u8>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BuildSummary {
    pub opt_level: u8,
    pub source_layers: usize,
    pub config_hash: u64,
    pub allow_fp16: bool,
    pub allow_bf16: bool,
    pub allow_tf32: bool,
    pub workspace_bytes: usize,
    /// Whether the pruning stage was enabled.
    pub prune: bool,
    /// What pruning removed (`None`: off, opt level 0, or nothing to remove).
    pub pruned: Option<kiln_opt::PruneReport>,
    /// Parameters and FLOPs of the engine's network at the profile's opt shapes.
    pub cost: kiln_opt::cost::Cost,
}

impl BuildSummary {
    pub fn precisions(&self) -> crate::backend::Precisions {
        crate::backend::Precisions { fp16: self.allow_fp16, bf16: self.allow_bf16, tf32: self.allow_tf32 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EngineTensor {
    pub name: String,
    pub ty: Option<ValueType>,
    pub storage: Storage,
}

/// Where a tensor lives while the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Storage {
    /// A range of the context's activation arena (sized for the profile's max shapes).
    Arena { offset: usize, bytes: usize },
    /// Weight `index` of the engine.
    Weight(usize),
    /// Kept as an object: sequences, optionals, tensors whose size depends on data.
    Heap,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EngineLayer {
    /// The layer; its tensor ids index [`EngineGraph::tensors`].
    pub layer: Layer,
    pub tactic: String,
    /// The precision the layer computes in.
    pub precision: DType,
    /// The memory plan made this layer free: its output already is where it must be.
    pub elided: Option<Elision>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Elision {
    /// A reshape-like view: the output is the input's memory under another shape.
    View,
    /// A concat whose inputs were written straight into their slices of its output.
    Concat,
}

/// Type, shape and place of one weight in the weight store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WeightMeta {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte offset in the weight store (a multiple of 64) and length.
    pub offset: usize,
    pub bytes: usize,
    /// The tactic whose [`Backend::pack_weights`] made these bytes: they are that kernel's own
    /// layout (`bytes` need not be numel·size), and the original ONNX-layout bytes are not
    /// stored. `None`: the ONNX layout.
    #[serde(default)]
    pub packed_for: Option<String>,
}

/// The bytes all weights live in: the mapped plan file, or memory the builder filled.
pub trait WeightBytes: Send + Sync {
    fn bytes(&self) -> &[u8];
}

/// Builder-made weight memory, 64-byte aligned like a mapped plan's weight section.
pub(crate) struct AlignedBytes {
    blocks: Vec<Block>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; ARENA_ALIGN]);

impl AlignedBytes {
    /// No bytes (a buffer to grow later).
    pub(crate) const fn empty() -> Self {
        AlignedBytes { blocks: Vec::new(), len: 0 }
    }

    pub(crate) fn zeroed(len: usize) -> Self {
        AlignedBytes { blocks: vec![Block([0; ARENA_ALIGN]); len.div_ceil(ARENA_ALIGN)], len }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `blocks` is `len.div_ceil(64)` blocks of 64 initialized bytes, contiguous.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), self.len) }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.blocks.as_mut_ptr().cast::<u8>()
    }
}

impl WeightBytes for AlignedBytes {
    fn bytes(&self) -> &[u8] {
        self.as_slice()
    }
}

/// An optimized network ready to run, on one backend.
pub struct Engine {
    pub(crate) graph: EngineGraph,
    pub(crate) weight_bytes: Arc<dyn WeightBytes>,
    /// Object form of each weight, made on first use by a kernel that needs one.
    pub(crate) weight_values: Vec<OnceLock<Value>>,
    /// Per layer: its kernel (`None` for elided layers).
    pub(crate) kernels: Vec<Option<Arc<dyn LayerKernel>>>,
    pub(crate) backend: Arc<dyn Backend>,
    /// The device program, for backends with their own memory (CUDA).
    pub(crate) device: Option<Arc<dyn DeviceProgram>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("name", &self.graph.name).field("layers", &self.graph.layers.len()).finish()
    }
}

impl Engine {
    /// Assemble an engine: check the graph against the weight bytes (a plan file is untrusted
    /// input) and instantiate every layer's kernel.
    pub(crate) fn assemble(
        graph: EngineGraph,
        weight_bytes: Arc<dyn WeightBytes>,
        backend: Arc<dyn Backend>,
        source: &str,
    ) -> Result<Engine, EngineError> {
        validate(&graph, weight_bytes.bytes().len(), source)?;
        let weight_values = graph.weights.iter().map(|_| OnceLock::new()).collect();
        let mut kernels = Vec::with_capacity(graph.layers.len());
        for el in &graph.layers {
            if el.elided.is_some() {
                kernels.push(None);
                continue;
            }
            let desc = layer_desc(&graph, weight_bytes.bytes(), &el.layer, |_| None, graph.build.precisions());
            let kernel = backend.instantiate(&desc, &el.tactic).map_err(|message| EngineError::Layer {
                layer: el.layer.name.clone(),
                op: el.layer.op.clone(),
                message,
            })?;
            kernels.push(Some(kernel));
        }
        let device = backend
            .prepare(&graph, &weight_bytes, &kernels)
            .map_err(|message| EngineError::Device { backend: backend.name().to_string(), message })?;
        Ok(Engine { graph, weight_bytes, weight_values, kernels, backend, device })
    }

    /// Write the engine as a plan file.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<(), EngineError> {
        crate::plan_io::save(self, path.as_ref())
    }

    /// Load a plan file for `backend`: refused when it is corrupt, truncated, of another format
    /// version, or built for another backend or device. Weights are mapped, not copied.
    pub fn load(path: impl AsRef<std::path::Path>, backend: Arc<dyn Backend>) -> Result<Engine, EngineError> {
        crate::plan_io::load(path.as_ref(), backend)
    }

    pub fn graph(&self) -> &EngineGraph {
        &self.graph
    }

    pub fn name(&self) -> &str {
        &self.graph.name
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Per layer, where the device program runs it (`None` for host backends).
    pub fn device_placements(&self) -> Option<Vec<String>> {
        self.device.as_ref().map(|d| d.placements())
    }

    /// Input names in binding order.
    pub fn input_names(&self) -> Vec<&str> {
        self.graph.inputs.iter().map(|&i| self.graph.tensors[i].name.as_str()).collect()
    }

    pub fn output_names(&self) -> Vec<&str> {
        self.graph.outputs.iter().map(|&i| self.graph.tensors[i].name.as_str()).collect()
    }

    /// Declared type of a tensor by name.
    pub fn tensor_type(&self, name: &str) -> Option<&ValueType> {
        self.graph.tensors.iter().find(|t| t.name == name).and_then(|t| t.ty.as_ref())
    }

    pub fn weight_bytes_total(&self) -> usize {
        self.graph.weights.iter().map(|w| w.bytes).sum()
    }

    /// Weight `index` as a kernel argument: [`Arg::PackedWeight`] when it is stored packed.
    pub(crate) fn weight_arg(&self, index: usize) -> Arg<'_> {
        let view = weight_view(&self.graph, self.weight_bytes.bytes(), index);
        if view.packed {
            Arg::PackedWeight { dtype: view.dtype, shape: view.shape, bytes: view.bytes }
        } else {
            Arg::Weight { dtype: view.dtype, shape: view.shape, bytes: view.bytes, value: &self.weight_values[index] }
        }
    }
}

pub(crate) fn weight_view<'a>(graph: &'a EngineGraph, bytes: &'a [u8], index: usize) -> WeightView<'a> {
    let w = &graph.weights[index];
    WeightView {
        dtype: w.dtype,
        shape: &w.shape,
        bytes: &bytes[w.offset..w.offset + w.bytes],
        packed: w.packed_for.is_some(),
    }
}

/// Per weight of `graph`: the one (layer, input slot) that reads it, where exactly one input
/// slot of one layer does (no other slot, layer or subgraph capture) and it is not a graph
/// output; `None` otherwise. Only such a weight may be stored packed for its reader's tactic,
/// so that no other kernel ever sees the packed bytes. Ids out of range are ignored
/// ([`validate`] refuses them).
pub(crate) fn sole_readers(graph: &EngineGraph) -> Vec<Option<(usize, usize)>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Uses {
        None,
        One(usize, usize),
        Many,
    }
    let mut uses = vec![Uses::None; graph.weights.len()];
    let weight_of = |t: usize| match graph.tensors.get(t).map(|t| t.storage) {
        Some(Storage::Weight(w)) if w < graph.weights.len() => Some(w),
        _ => None,
    };
    let mut add = |t: usize, at: Uses| {
        if let Some(w) = weight_of(t) {
            uses[w] = if uses[w] == Uses::None { at } else { Uses::Many };
        }
    };
    for (li, el) in graph.layers.iter().enumerate() {
        for (k, id) in el.layer.inputs.iter().enumerate() {
            if let Some(id) = id {
                add(id.0, Uses::One(li, k));
            }
        }
        for id in &el.layer.implicit_inputs {
            add(id.0, Uses::Many);
        }
    }
    for &o in &graph.outputs {
        add(o, Uses::Many);
    }
    uses.into_iter()
        .map(|u| match u {
            Uses::One(l, k) => Some((l, k)),
            _ => None,
        })
        .collect()
}

/// What a backend sees of `layer`: input types from `types` (opt shapes at build time) or the
/// declared ones, weights as views of the weight bytes.
pub(crate) fn layer_desc<'a>(
    graph: &'a EngineGraph,
    weight_bytes: &'a [u8],
    layer: &'a Layer,
    types: impl Fn(usize) -> Option<ValueType>,
    precisions: crate::backend::Precisions,
) -> LayerDesc<'a> {
    let input_types =
        layer.inputs.iter().map(|i| i.and_then(|id| types(id.0).or_else(|| graph.tensors[id.0].ty.clone()))).collect();
    let weights = layer
        .inputs
        .iter()
        .map(|i| match i.map(|id| graph.tensors[id.0].storage) {
            Some(Storage::Weight(w)) => Some(weight_view(graph, weight_bytes, w)),
            _ => None,
        })
        .collect();
    LayerDesc { layer, input_types, weights, precisions }
}

/// Every index and range of a graph checked, so that running it cannot index out of bounds:
/// a plan file is user input.
fn validate(graph: &EngineGraph, weight_len: usize, source: &str) -> Result<(), EngineError> {
    let bad =
        |message: String| EngineError::Plan(crate::plan::PlanError::Corrupt { path: source.to_string(), message });
    let nt = graph.tensors.len();
    for (i, w) in graph.weights.iter().enumerate() {
        let elems = kiln_ir::checked_numel(&w.shape).map_err(|e| bad(format!("weight {i}: {e}")))?;
        let end = w.offset.checked_add(w.bytes);
        // A packed weight is in its tactic's own layout, of any length.
        let size_ok = w.packed_for.is_some() || elems.checked_mul(w.dtype.size()) == Some(w.bytes);
        if end.is_none_or(|e| e > weight_len) || !size_ok || w.offset % ARENA_ALIGN != 0 {
            return Err(bad(format!("weight {i} ('{}') has an invalid range or size", w.name)));
        }
    }
    for t in &graph.tensors {
        match t.storage {
            Storage::Arena { offset, bytes } => {
                if offset.checked_add(bytes).is_none_or(|e| e > graph.arena_bytes) {
                    return Err(bad(format!("tensor '{}' lies outside the arena", t.name)));
                }
                // Concat inputs sit at any element boundary inside the concat output; kernels
                // may view the bytes as elements, so each tensor must be element-aligned.
                let size = match &t.ty {
                    Some(ValueType::Tensor(tt)) => tt.dtype.size(),
                    _ => 1,
                };
                if offset % size != 0 {
                    return Err(bad(format!("tensor '{}' is not aligned to its element size", t.name)));
                }
            }
            Storage::Weight(w) if w >= graph.weights.len() => {
                return Err(bad(format!("tensor '{}' names weight {w}, which does not exist", t.name)));
            }
            _ => {}
        }
    }
    for el in &graph.layers {
        let l = &el.layer;
        if l.inputs.iter().flatten().chain(l.outputs.iter().flatten()).chain(&l.implicit_inputs).any(|id| id.0 >= nt) {
            return Err(bad(format!("layer '{}' names a tensor that does not exist", l.name)));
        }
    }
    if graph.inputs.iter().chain(&graph.outputs).any(|&i| i >= nt) {
        return Err(bad("an input or output names a tensor that does not exist".into()));
    }
    // A packed weight reaches only the kernel of the tactic that packed it: one input slot of
    // one running layer, whose tactic it names.
    let readers = sole_readers(graph);
    for (i, w) in graph.weights.iter().enumerate() {
        let Some(tactic) = &w.packed_for else { continue };
        let packer = readers[i].map(|(l, _)| &graph.layers[l]).filter(|el| el.elided.is_none());
        if packer.is_none_or(|el| el.tactic != *tactic) {
            return Err(bad(format!(
                "weight {i} ('{}') is stored packed for tactic '{tactic}', but is not read by exactly one layer running that tactic",
                w.name
            )));
        }
    }
    // Arenas come from the plan; refuse absurd sizes rather than abort on allocation.
    const MAX_ARENA: usize = 1 << 40;
    if graph.arena_bytes > MAX_ARENA {
        return Err(bad(format!("arena of {} bytes", graph.arena_bytes)));
    }
    Ok(())
}
