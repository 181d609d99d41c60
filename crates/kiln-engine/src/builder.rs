//! The builder: Network + BuilderConfig → Engine. Resolves the shape profile, specializes and
//! optimizes the graph, lays out the weights, picks a tactic per layer (timed, with a cache),
//! plans activation memory, and stores the weights that a chosen tactic packs in its own layout.

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
            let backend = self.backend.as_ref();
            let net = match kiln_opt::passes::channels_last::to_channels_last(&net, |n, l| backend.channels_last(n, l))
                .map_err(|source| kiln_opt::OptError::Rewrite { pass: "channels-last", source })?
            {
                Some(switched) => {
                    tracing::info!(layers = switched.layers().len(), "layout: image layers switched to NHWC");
                    // Channels-last expand → depthwise → project runs become one layer, which
                    // the backend can run band by band with the wide tensors kept in cache.
                    use kiln_opt::Pass;
                    let fusion = kiln_opt::passes::fuse_inverted_bottleneck::FuseInvertedBottleneck;
                    match fusion
                        .run(&switched)
                        .map_err(|source| kiln_opt::OptError::Rewrite { pass: fusion.name(), source })?
                    {
                        Some(fused) => fused,
                        None => switched,
                    }
                }
                None => net,
            };
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
        for layer in net.layers() {
            let bytes = weight_bytes.as_slice();
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
        // The networks hold their own copy of every weight: gone before packed copies are made.
        drop((net, at_opt, at_max));
        let weight_bytes = pack_weights(self.backend.as_ref(), &mut graph, weight_bytes, &opt_types)?;
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
                    packed_for: None,
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

/// The weights the chosen tactics want in their own layout ([`Backend::pack_weights`]), stored
/// so: each packed weight's bytes replace its ONNX-layout ones and the buffer is laid out again
/// (64-byte aligned offsets, as [`lay_out_weights`]), the unpacked bytes dropped. A weight is
/// stored packed only for the one input slot of the one running layer that reads it (see
/// [`sole_readers`](crate::engine::sole_readers)); others stay as they are.
fn pack_weights(
    backend: &dyn Backend,
    graph: &mut EngineGraph,
    weights: AlignedBytes,
    types: &[Option<ValueType>],
) -> Result<AlignedBytes, EngineError> {
    let readers = crate::engine::sole_readers(graph);
    // Per weight: the packed bytes and the layer whose tactic made them.
    let mut packs: Vec<Option<(Vec<u8>, usize)>> = vec![None; graph.weights.len()];
    for (li, el) in graph.layers.iter().enumerate() {
        if el.elided.is_some() {
            continue;
        }
        let layer_error =
            |message: String| EngineError::Layer { layer: el.layer.name.clone(), op: el.layer.op.clone(), message };
        let desc = crate::engine::layer_desc(
            graph,
            weights.as_slice(),
            &el.layer,
            |i| types.get(i).cloned().flatten(),
            graph.build.precisions(),
        );
        let packed = backend
            .pack_weights(&desc, &el.tactic)
            .map_err(|e| layer_error(format!("packing weights for tactic '{}': {e}", el.tactic)))?;
        for (k, bytes) in packed {
            let w = match el.layer.inputs.get(k).copied().flatten().map(|id| graph.tensors[id.0].storage) {
                Some(Storage::Weight(w)) => w,
                _ => {
                    return Err(layer_error(format!("tactic '{}' packed input {k}, which is not a weight", el.tactic)))
                }
            };
            if readers[w] != Some((li, k)) {
                tracing::debug!(
                    layer = %el.layer.name,
                    weight = %graph.weights[w].name,
                    tactic = %el.tactic,
                    "weight kept unpacked: another input, layer or subgraph reads it, or it is a graph output"
                );
                continue;
            }
            if packs[w].is_some() {
                return Err(layer_error(format!("tactic '{}' packed input {k} twice", el.tactic)));
            }
            packs[w] = Some((bytes, li));
        }
    }
    if packs.iter().all(Option::is_none) {
        return Ok(weights);
    }

    let mut offsets = Vec::with_capacity(packs.len());
    let mut total = 0usize;
    for (m, p) in graph.weights.iter().zip(&packs) {
        offsets.push(total);
        let len = p.as_ref().map_or(m.bytes, |(b, _)| b.len());
        total = total.checked_add(align_up(len)).ok_or_else(|| {
            let el = &graph.layers[p.as_ref().map_or(0, |&(_, l)| l)];
            EngineError::Layer {
                layer: el.layer.name.clone(),
                op: el.layer.op.clone(),
                message: "packed weights overflow the address space".into(),
            }
        })?;
    }
    let mut buf = AlignedBytes::zeroed(total);
    let out = buf.as_mut_slice();
    let old = weights.as_slice();
    let (mut count, mut packed_bytes) = (0usize, 0usize);
    for ((m, p), offset) in graph.weights.iter_mut().zip(packs).zip(offsets) {
        match p {
            Some((bytes, li)) => {
                let tactic = graph.layers[li].tactic.clone();
                out[offset..offset + bytes.len()].copy_from_slice(&bytes);
                tracing::debug!(weight = %m.name, tactic = %tactic, from = m.bytes, to = bytes.len(), "weight stored packed");
                count += 1;
                packed_bytes += bytes.len();
                m.bytes = bytes.len();
                m.packed_for = Some(tactic);
            }
            None => out[offset..offset + m.bytes].copy_from_slice(&old[m.offset..m.offset + m.bytes]),
        }
        m.offset = offset;
    }
    tracing::info!(weights = count, bytes = packed_bytes, total, "weights stored packed for their tactics");
    Ok(buf)
}
