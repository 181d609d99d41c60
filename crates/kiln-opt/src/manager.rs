//! The pass manager: runs passes in order, round after round, until none changes the network.

use crate::passes;
use crate::OptError;
use kiln_ir::Network;

/// One graph rewrite.
pub trait Pass {
    fn name(&self) -> &'static str;
    /// The rewritten network, or `None` when there was nothing to do.
    fn run(&self, net: &Network) -> Result<Option<Network>, kiln_ir::IrError>;
}

/// What a run of the manager did: per pass, how often it changed the network.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    pub rounds: usize,
    pub changes: Vec<(&'static str, usize)>,
    pub layers_before: usize,
    pub layers_after: usize,
}

pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
    max_rounds: usize,
}

impl PassManager {
    pub fn new(passes: Vec<Box<dyn Pass>>) -> Self {
        PassManager { passes, max_rounds: 16 }
    }

    /// The simplification passes, in the order they feed each other: folding exposes no-ops and
    /// duplicates, BatchNormalization folds into the Conv before it, and all of them leave dead
    /// layers behind.
    pub fn simplify() -> Self {
        PassManager::new(Self::simplify_passes())
    }

    /// [`PassManager::simplify`] without the fusions that hide per-channel structure (bias and
    /// activation epilogues, residual Adds, element-wise chains): the network the pruning stage
    /// reads (see [`optimize_with`]).
    pub fn before_pruning() -> Self {
        let fusions = ["matmul-add-to-gemm", "fuse-epilogue", "fuse-elementwise-chain"];
        PassManager::new(Self::simplify_passes().into_iter().filter(|p| !fusions.contains(&p.name())).collect())
    }

    fn simplify_passes() -> Vec<Box<dyn Pass>> {
        vec![
            Box::new(passes::constant_folding::ConstantFolding::default()),
            Box::new(passes::fold_shape_subgraphs::FoldShapeSubgraphs),
            Box::new(passes::noop_removal::NoopRemoval),
            Box::new(passes::common_subexpression::CommonSubexpression),
            Box::new(passes::fold_batch_norm::FoldBatchNormIntoConv),
            Box::new(passes::recognize_layer_norm::RecognizeLayerNorm),
            Box::new(passes::recognize_gelu::RecognizeGelu),
            Box::new(passes::recognize_softmax::RecognizeSoftmax),
            Box::new(passes::fuse_parallel_gemms::FuseParallelGemms),
            Box::new(passes::fuse_attention::FuseAttention),
            Box::new(passes::matmul_add_to_gemm::MatMulAddToGemm),
            Box::new(passes::fuse_epilogue::FuseEpilogue),
            Box::new(passes::fuse_elementwise_chain::FuseElementwiseChain),
            Box::new(passes::dead_layers::DeadLayerElimination),
        ]
    }

    /// Run every pass until a whole round changes nothing (or `max_rounds`, against a pair of
    /// passes undoing each other).
    pub fn run(&self, net: Network) -> Result<(Network, PassReport), OptError> {
        let mut report = PassReport { layers_before: net.layers().len(), ..Default::default() };
        report.changes = self.passes.iter().map(|p| (p.name(), 0)).collect();
        let mut net = net;
        for round in 0..self.max_rounds {
            report.rounds = round + 1;
            let mut changed = false;
            for (i, pass) in self.passes.iter().enumerate() {
                let before = net.layers().len();
                if let Some(next) = pass.run(&net).map_err(|source| OptError::Rewrite { pass: pass.name(), source })? {
                    tracing::debug!(pass = pass.name(), round, before, after = next.layers().len(), "rewrote");
                    net = next;
                    report.changes[i].1 += 1;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        report.layers_after = net.layers().len();
        Ok((net, report))
    }
}

/// Simplify a network with the standard passes.
pub fn optimize(net: Network) -> Result<(Network, PassReport), OptError> {
    PassManager::simplify().run(net)
}

/// What [`optimize_with`] does besides the standard passes.
#[derive(Clone, Copy, Debug, Default)]
pub struct OptOptions {
    /// Remove structured zeros (channels, heads, constant values) and what only fed them.
    pub prune: bool,
}

/// [`optimize`], with pruning when asked: the network is simplified up to the fusions
/// ([`PassManager::before_pruning`]), pruned ([`passes::prune::prune`]), then simplified fully.
/// When pruning finds nothing, the result is exactly [`optimize`]'s (the standard passes run on
/// the original network), so a model without structured zeros builds to the same engine with
/// pruning on or off.
pub fn optimize_with(
    net: Network,
    options: OptOptions,
) -> Result<(Network, PassReport, Option<passes::prune::PruneReport>), OptError> {
    if options.prune {
        let (pre, _) = PassManager::before_pruning().run(net.clone())?;
        if let Some((pruned, report)) = passes::prune::prune(&pre)? {
            let layers_before = net.layers().len();
            let (out, mut passes) = PassManager::simplify().run(pruned)?;
            passes.layers_before = layers_before;
            return Ok((out, passes, Some(report)));
        }
    }
    let (out, report) = optimize(net)?;
    Ok((out, report, None))
}
