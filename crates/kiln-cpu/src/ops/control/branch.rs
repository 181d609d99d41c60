//! If: run one of two subgraphs, chosen at run time.

use super::tensors::bool_scalar;
use crate::KernelCtx;
use kiln_ir::Value;

pub(super) fn if_op(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let cond = inputs.first().copied().flatten().ok_or("required input 0 (cond) is missing")?;
    let branch = if bool_scalar(cond, "cond")? { "then_branch" } else { "else_branch" };
    let graph = ctx.attrs.graph(branch)?;
    let outputs = ctx.run_subgraph(graph, Vec::new()).map_err(|e| format!("{branch}: {e}"))?;
    if outputs.len() != ctx.num_outputs {
        return Err(format!("{branch} produced {} outputs, the node has {}", outputs.len(), ctx.num_outputs));
    }
    Ok(outputs)
}
