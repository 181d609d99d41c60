//! `KilnInvertedBottleneck`: MobileNet's inverted residual block as one channels-last layer.
//!
//! ```text
//! y = project(depthwise(expand(x))) [+ residual]
//! ```
//!
//! Each stage is a channels-last Conv (kiln_ir::channels_last) exactly as the graph had it:
//! `expand` a 1×1 convolution widening the channels (absent in blocks without one),
//! `depthwise` a depthwise convolution (one group per channel), `project` a 1×1 convolution
//! narrowing them again, with the block's residual as its fused input. The layer computes what
//! the three Convs compute; fused, a backend can run the block band of rows by band of rows so
//! that the wide intermediate tensors (six times the block's channels) never leave the cache.
//!
//! Inputs: `[X, W_expand?, B_expand?, W_depthwise, B_depthwise?, W_project, B_project?,
//! residual?]`, X, the residual and the output NHWC. Each stage keeps its Conv's attributes
//! (pads, strides, the fused activation, ...) under the stage's prefix (`expand.pads`).

use crate::Attributes;

/// The op name.
pub const OP: &str = "KilnInvertedBottleneck";
/// The block's image input (NHWC).
pub const X: usize = 0;
/// The project stage's residual input (NHWC, the output's shape).
pub const RESIDUAL: usize = 7;
/// Number of input slots.
pub const INPUTS: usize = 8;

/// One of the block's convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Expand,
    Depthwise,
    Project,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Expand, Stage::Depthwise, Stage::Project];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Expand => "expand",
            Stage::Depthwise => "depthwise",
            Stage::Project => "project",
        }
    }

    /// The input slot of the stage's weight; its bias is the next slot.
    pub fn weight_input(self) -> usize {
        match self {
            Stage::Expand => 1,
            Stage::Depthwise => 3,
            Stage::Project => 5,
        }
    }

    pub fn bias_input(self) -> usize {
        self.weight_input() + 1
    }

    fn prefix(self) -> String {
        format!("{}.", self.name())
    }
}

/// The Conv attributes of `stage` (the layer's attributes under the stage's prefix).
pub fn stage_attrs(attrs: &Attributes, stage: Stage) -> Attributes {
    let prefix = stage.prefix();
    Attributes(
        attrs.iter().filter_map(|(k, v)| k.strip_prefix(prefix.as_str()).map(|k| (k.to_string(), v.clone()))).collect(),
    )
}

/// Store a Conv's attributes as `stage`'s.
pub fn set_stage_attrs(attrs: &mut Attributes, stage: Stage, conv: &Attributes) {
    let prefix = stage.prefix();
    for (k, v) in conv.iter() {
        attrs.set(&format!("{prefix}{k}"), v.clone());
    }
}
