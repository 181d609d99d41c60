//! The builder: Network + BuilderConfig → Engine. Resolves the shape profile, specializes and
//! optimizes the graph, lays out the weights, picks a tactic per layer (timed, with a cache),
//! and plans activation memory.

use crate::backend::{Backend, Tactic};
use crate::config::BuilderConfig;
use crate::engine::{AlignedBytes, BuildSummary, EngineGraph, EngineLayer, EngineTensor, Storage, WeightMeta};
use crate::memory_plan::align_up;
use crate::specialize::{resolve_profile, specialize, Pick};
use crate::tactics::TacticSelector;
use crate::{Engine, EngineError};
use kiln_ir::{Network, TensorSource, TensorType, ValueType};
use std::sync::Arc;

/// Builds engines for one backend.
pub struct Builder {
    backend: Arc<dyn Backend>,
}

impl Builder {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Builder { backend }
    }

    /// A CPU builder.
    pub fn cpu() -> Self {
        Builder::new(Arc::new(crate::cpu::CpuBackend))
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn build(&self, network: &Network, config: &BuilderConfig) -> Result<Engine, EngineError> {
        let profile = resolve_profile(network, &config.profile.inputs)?;
        let source_layers = network.layers().len();
        let (net, pruned) = if config.opt_level == 0 {
            (network.clone(), None)
        } else {
            let fixed = specialize(network, &profile, Pick::Fixed)?;
            let options = kiln_opt::OptOptions { prune: config.prune };
            let (net, report, pruned) = kiln_opt::optimize_with(fixed, options)?;
            tracing::info!(
                before = source_layers,
                after = net.layers().len(),
                rounds = report.rounds,
                "graph optimized"
            );
            (net, pruned)
        };
        // Concrete types at the opt shapes (tactic timing) and the max shapes (memory).
        let at_opt = specialize(&net, &profile, Pick::Opt)?;
        let at_max = specialize(&net, &profile, Pick::Max)?;
        let cost = kiln_opt::cost::cost(&at_opt);
        let concrete_type = |at: &Network, name: &str| -> Option<TensorType> {
            let ty = at.tensor(at.tensor_by_name(name)?).ty.clone()?;
            match ty {
                ValueType::Tensor(t) if t.shape.as_deref().and_then(kiln_ir::concrete).is_some() => Some(t),
                _ => None,
            }
        };

        let (weights, weight_bytes, mut tensors) = lay_out_weights(&net)?;
        let mut graph = EngineGraph {
            name: net.name.clone(),
            tensors: std::mem::take(&mut tensors),
            layers: Vec::with_capacity(net.layers().len()),
            inputs: net.inputs().iter().map(|id| id.0).collect(),
            outputs: net.outputs().iter().map(|id| id.0).collect(),
            profile: profile.clone(),
            weights,
            arena_bytes: 0,
            peak_live_bytes: 0,
            device_code: Vec::new(),
            build: BuildSummary {
                opt_level: config.opt_level,
                source_layers,
                config_hash: config.hash(),
                allow_fp16: config.allow_fp16,
                allow_bf16: config.allow_bf16,
                allow_tf32: config.allow_tf32,
                workspace_bytes: config.workspace_bytes,
                prune: config.prune,
                pruned,
                cost,
            },
        };

        // Tactics.
        let opt_types: Vec<Option<ValueType>> = net
            .tensors()
            .iter()
            .map(|t| concrete_type(&at_opt, &t.name).map(ValueType::Tensor).or_else(|| t.ty.clone()))
            .collect();
        let mut selector = TacticSelector::new(self.backend.as_ref(), config)?;
        let bytes = weight_bytes.as_slice();
        for layer in net.layers() {
            let desc = crate::engine::layer_desc(&graph, bytes, layer, |i| opt_types[i].clone(), config.precisions());
            let candidates: Vec<Tactic> = self.backend.tactics(&desc);
            let chosen = selector.choose(&desc, candidates)?;
            let precision = self.backend.precision(&desc, &chosen).unwrap_or_else(|| {
                layer
                    .outputs
                    .iter()
                    .flatten()
                    .find_map(|id| match &net.tensor(*id).ty {
                        Some(ValueType::Tensor(t)) => Some(t.dtype),
                        _ => None,
                    })
                    .unwrap_or(kiln_ir::DType::F32)
            });
            graph.layers.push(EngineLayer { layer: layer.clone(), tactic: chosen, precision, elided: None });
        }
        selector.finish()?;

        // Memory.
        let max_bytes: Vec<Option<usize>> = net
            .tensors()
            .iter()
            .map(|t| {
                let tt = concrete_type(&at_max, &t.name)?;
                let n = kiln_ir::checked_numel(&kiln_ir::concrete(tt.shape.as_deref()?)?).ok()?;
                n.checked_mul(tt.dtype.size())
            })
            .collect();
        crate::memory_assign::assign(&net, &mut graph, &max_bytes, self.backend.elides_concat());
        tracing::info!(
            arena = graph.arena_bytes,
            peak_live = graph.peak_live_bytes,
            weights = graph.weights.iter().map(|w| w.bytes).sum::<usize>(),
            "memory planned"
        );
        graph.device_code = self
            .backend
            .compile(&mut graph)
            .map_err(|message| EngineError::Device { backend: self.backend.name().to_string(), message })?;
        Engine::assemble(graph, Arc::new(weight_bytes), self.backend.clone(), "<memory>")
    }
}

/// Every constant of `net` becomes a weight at a 64-byte aligned offset of one buffer (the
/// layout a plan file maps); every other tensor starts as a heap tensor.
fn lay_out_weights(net: &Network) -> Result<(Vec<WeightMeta>, AlignedBytes, Vec<EngineTensor>), EngineError> {
    let mut metas = Vec::new();
    let mut tensors = Vec::with_capacity(net.tensors().len());
    let mut total = 0usize;
    for info in net.tensors() {
        let storage = match &info.source {
            TensorSource::Constant(t) => {
                let bytes = t.len() * t.dtype().size();
                metas.push(WeightMeta {
                    name: info.name.clone(),
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                    offset: total,
                    bytes,
                });
                total += align_up(bytes);
                Storage::Weight(metas.len() - 1)
            }
            _ => Storage::Heap,
        };
        tensors.push(EngineTensor { name: info.name.clone(), ty: info.ty.clone(), storage });
    }
    let mut buf = AlignedBytes::zeroed(total);
    let out = buf.as_mut_slice();
    for (info, t) in net.tensors().iter().zip(&tensors) {
        if let (TensorSource::Constant(c), Storage::Weight(w)) = (&info.source, t.storage) {
            let m = &metas[w];
            out[m.offset..m.offset + m.bytes].copy_from_slice(&crate::bytes::le_bytes(c.data()));
        }
    }
    Ok((metas, buf, tensors))
}
