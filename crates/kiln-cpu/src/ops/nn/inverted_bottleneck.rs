//! KilnInvertedBottleneck (kiln_ir::inverted_bottleneck) as its three Convs: the NHWC image
//! permuted to NCHW once, each stage through the Conv kernel with its own attributes, the
//! result permuted back. The reference the engine's fused kernel is checked against.

use super::conv::conv;
use crate::KernelCtx;
use kiln_ir::channels_last::{self, permute_tensor, TO_NCHW, TO_NHWC};
use kiln_ir::inverted_bottleneck::{stage_attrs, Stage, RESIDUAL, X};
use kiln_ir::Value;

pub(super) fn inverted_bottleneck(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let nchw = |i: usize| -> Result<Option<Value>, String> {
        match inputs.get(i).copied().flatten() {
            None => Ok(None),
            Some(v) => {
                let t = v.as_tensor().ok_or_else(|| format!("input {i} must be a tensor"))?;
                Ok(Some(Value::Tensor(permute_tensor(t, &TO_NCHW).map_err(|e| format!("input {i}: {e}"))?)))
            }
        }
    };
    let mut x = nchw(X)?.ok_or("the image input X is missing")?;
    let residual = nchw(RESIDUAL)?;
    for stage in Stage::ALL {
        let (wi, bi) = (stage.weight_input(), stage.bias_input());
        let Some(w) = inputs.get(wi).copied().flatten() else {
            if stage == Stage::Expand {
                continue;
            }
            return Err(format!("the {} stage's weight (input {wi}) is missing", stage.name()));
        };
        let mut attrs = stage_attrs(ctx.attrs, stage);
        attrs.remove(channels_last::ATTR);
        let stage_ctx = KernelCtx { attrs: &attrs, num_outputs: 1, ..*ctx };
        let r = if stage == Stage::Project { residual.as_ref() } else { None };
        let args = [Some(&x), Some(w), inputs.get(bi).copied().flatten(), r];
        let out = conv(&stage_ctx, &args).map_err(|e| format!("{} stage: {e}", stage.name()))?;
        x = out.into_iter().next().ok_or("the Conv kernel gave no output")?;
    }
    let t = x.as_tensor().ok_or("the Conv kernel gave no tensor")?;
    Ok(vec![Value::Tensor(permute_tensor(t, &TO_NHWC).map_err(|e| e.to_string())?)])
}
