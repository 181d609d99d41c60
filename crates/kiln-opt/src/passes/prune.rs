//! The pruning stage: the passes that remove what structured pruning zeroed (channels, attention
//! heads, provably constant values), run together to a fixpoint with constant folding and
//! dead-layer elimination, and a report of what went (per layer, with parameters and FLOPs
//! before and after).
//!
//! It runs on a network already simplified up to the fusions that hide per-channel structure
//! (see [`crate::optimize_with`]): BatchNormalization folded into its Conv (so a zeroed BN scale
//! is a zeroed filter), Q/K/V projections merged and attention fused (so a head is one slice of
//! one product and one count on one layer), but no epilogues yet (so bias, activation and
//! residual Add are separate layers whose constants are easy to follow).

use crate::cost::{cost, Cost};
use crate::passes::constant_folding::ConstantFolding;
use crate::passes::dead_layers::DeadLayerElimination;
use crate::passes::{prune_channels, prune_heads, prune_values};
use crate::{OptError, Pass};
use kiln_ir::{IrError, Network};
use serde::{Deserialize, Serialize};

/// One count a pruning pass changed on one layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerChange {
    pub layer: String,
    /// "output channels", "input channels", "heads", "folded to a constant", ...
    pub what: String,
    pub before: usize,
    pub after: usize,
}

impl LayerChange {
    pub fn new(layer: &str, what: &str, before: usize, after: usize) -> Self {
        LayerChange { layer: layer.to_string(), what: what.to_string(), before, after }
    }
}

/// What the pruning stage removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Per layer and count: the first `before` and the last `after` over all rounds.
    pub changes: Vec<LayerChange>,
    pub layers_before: usize,
    pub layers_after: usize,
    /// Of the network before and after pruning, at its static shapes (layers whose shapes are
    /// not all known count no FLOPs).
    pub before: Cost,
    pub after: Cost,
}

impl PruneReport {
    fn record(&mut self, changes: Vec<LayerChange>) {
        for c in changes {
            match self.changes.iter_mut().find(|e| e.layer == c.layer && e.what == c.what) {
                Some(e) => e.after = c.after,
                None => self.changes.push(c),
            }
        }
    }
}

/// The pruning passes, each also a [`Pass`] for use in a [`crate::PassManager`].
type Detailed = fn(&Network) -> Result<Option<(Network, Vec<LayerChange>)>, IrError>;

const PASSES: [(&str, Detailed); 3] = [
    ("prune-channels", prune_channels::prune_channels),
    ("prune-heads", prune_heads::prune_heads),
    ("prune-values", prune_values::prune_values),
];

/// Run the pruning passes (with constant folding and dead-layer elimination in between) until
/// none changes anything. `None` when nothing was pruned: the caller keeps its network.
pub fn prune(net: &Network) -> Result<Option<(Network, PruneReport)>, OptError> {
    let mut report = PruneReport { layers_before: net.layers().len(), before: cost(net), ..Default::default() };
    let mut cur: Option<Network> = None;
    for _round in 0..16 {
        let mut changed = false;
        for (name, pass) in PASSES {
            let src = cur.as_ref().unwrap_or(net);
            if let Some((next, changes)) = pass(src).map_err(|source| OptError::Rewrite { pass: name, source })? {
                for c in &changes {
                    tracing::debug!(pass = name, layer = %c.layer, what = %c.what, before = c.before, after = c.after, "pruned");
                }
                report.record(changes);
                cur = Some(next);
                changed = true;
                // Constants the pass exposed fold, and what only fed removed computation goes.
                for tidy in [&ConstantFolding::default() as &dyn Pass, &DeadLayerElimination] {
                    let src = cur.as_ref().expect("set");
                    if let Some(n) = tidy.run(src).map_err(|source| OptError::Rewrite { pass: tidy.name(), source })? {
                        cur = Some(n);
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let Some(out) = cur else { return Ok(None) };
    report.layers_after = out.layers().len();
    report.after = cost(&out);
    tracing::info!(
        layers_changed = report.changes.len(),
        params_before = report.before.params,
        params_after = report.after.params,
        flops_before = report.before.flops,
        flops_after = report.after.flops,
        "pruned structured zeros"
    );
    for c in &report.changes {
        tracing::info!(layer = %c.layer, what = %c.what, before = c.before, after = c.after, "pruned");
    }
    Ok(Some((out, report)))
}

/// Apply per-layer edits (new constant inputs, new attributes) while copying every other live
/// layer: the shape of the head and value pruning rewrites.
pub(crate) struct Edit {
    /// Per input position: `Some(t)` replaces the input by a new constant `t`.
    pub inputs: Vec<Option<kiln_ir::Tensor>>,
    /// Inputs appended after the existing ones (a bias where there was none).
    pub extra: Vec<kiln_ir::Tensor>,
    pub attrs: kiln_ir::Attributes,
}

impl Edit {
    pub fn of(layer: &kiln_ir::Layer) -> Self {
        Edit { inputs: vec![None; layer.inputs.len()], extra: Vec::new(), attrs: layer.attrs.clone() }
    }
}

/// What replaces one layer: edits, or constant values for its outputs.
pub(crate) enum Replace {
    Edit(Edit),
    Constant(Vec<kiln_ir::Tensor>),
}

pub(crate) fn apply_edits(net: &Network, mut edits: Vec<Option<Replace>>) -> Result<Network, IrError> {
    use crate::passes::pattern::{fresh_name, live_layers};
    let live = live_layers(net);
    let mut rb = crate::Rebuilder::new(net)?;
    for (i, layer) in net.layers().iter().enumerate() {
        if !live[i] {
            continue;
        }
        match edits[i].take() {
            None => rb.copy_layer(layer)?,
            Some(Replace::Constant(values)) => {
                for (out, v) in layer.outputs.iter().zip(values) {
                    if let Some(out) = out {
                        rb.constant(*out, v)?;
                    }
                }
            }
            Some(Replace::Edit(e)) => {
                // Replaced inputs are not mapped: the old constants must not be copied.
                let mut inputs = Vec::with_capacity(layer.inputs.len());
                for (k, (&old, t)) in layer.inputs.iter().zip(e.inputs).enumerate() {
                    inputs.push(match t {
                        Some(t) => {
                            let name = fresh_name(&rb, &format!("{}::pruned_{k}", layer.name));
                            Some(rb.constant_named(&name, t)?)
                        }
                        None => old.map(|id| rb.map(id)).transpose()?,
                    });
                }
                for (k, t) in e.extra.into_iter().enumerate() {
                    let name = fresh_name(&rb, &format!("{}::pruned_extra_{k}", layer.name));
                    inputs.push(Some(rb.constant_named(&name, t)?));
                }
                rb.add_layer(&layer.name, &layer.op, e.attrs, &inputs, &layer.outputs)?;
            }
        }
    }
    rb.finish()
}
