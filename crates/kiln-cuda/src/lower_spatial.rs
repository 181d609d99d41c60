//! Placement of the resampling, transposed convolution, pooling and normalization variants: which of them the GPU runs, and with what.

use crate::lower::{all_f32, ints, rank, tensor_dtype};
use kiln_engine::EngineGraph;
use kiln_ir::{spec, Attributes, DType, Layer};

/// Spatial dims the N-D kernels (pool_nd, conv_transpose, grid_sample in spatial.cu) handle.
pub(crate) const MAX_SPATIAL: usize = 6;

/// A spatial op the GPU runs (launch_spatial.rs launches it, kernels/spatial.cu holds its kernels).
#[derive(Clone, Debug)]
pub(crate) enum SpatialOp {
    Resize(ResizeParams),
    /// mode 0 nearest, 1 linear, 2 cubic; padding 0 zeros, 1 border, 2 reflection.
    GridSample {
        mode: i32,
        padding: i32,
        align_corners: bool,
    },
    ConvTranspose(Window),
    DeformConv {
        window: Window,
        offset_groups: i64,
    },
    /// MaxPool (kind 0, optional Indices), AveragePool (1), LpPool (2) of any rank, and
    /// GlobalLpPool (2, the window being the whole plane).
    Pool {
        kind: i32,
        p: f32,
        window: Option<Window>,
        count_include_pad: bool,
        col_major: bool,
    },
    /// Softmax/LogSoftmax over an axis other than the last (or opset < 13's flattened form).
    SoftmaxAxis {
        log: bool,
        coerce_2d: bool,
    },
    /// BatchNormalization; `momentum` in training mode (batch statistics).
    BatchNorm {
        eps: f32,
        momentum: Option<f32>,
    },
    /// Statistics over axes (norm_axes in spatial.cu).
    Norm(NormKind),
    Lrn {
        size: i64,
        alpha: f32,
        beta: f32,
        bias: f32,
    },
    /// CausalConvWithState (its SiLU flag).
    CausalConvState {
        silu: bool,
    },
    /// Col2Im (image_shape and block_shape read at launch; the window's kernel is empty here).
    Col2Im(Window),
    AffineGrid {
        align_corners: bool,
    },
    RoiAlign {
        max_mode: bool,
        half_pixel: bool,
        sampling_ratio: i64,
        spatial_scale: f32,
    },
}

#[derive(Clone, Debug)]
pub(crate) enum NormKind {
    /// InstanceNormalization (groups of one channel) and GroupNormalization.
    Group {
        groups: Option<i64>,
        per_group_params: bool,
        eps: f32,
    },
    Lp {
        p: i64,
        axis: i64,
    },
    MeanVariance {
        axes: Vec<i64>,
    },
}

/// Resize's attributes as the kernel's codes (see resize_axis in spatial.cu).
#[derive(Clone, Debug)]
pub(crate) struct ResizeParams {
    pub mode: i32,
    pub coord: i32,
    pub nearest: i32,
    pub cubic_a: f32,
    pub exclude_outside: bool,
    pub antialias: bool,
    pub extrapolation: f64,
    pub axes: Option<Vec<i64>>,
    /// keep_aspect_ratio_policy: 0 stretch, 1 not_larger, 2 not_smaller.
    pub policy: i32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum AutoPad {
    NotSet,
    Valid,
    SameUpper,
    SameLower,
}

/// A windowed op's attributes (pools, ConvTranspose), resolved against the input shape at run time.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    pub kernel: Vec<i64>,
    pub strides: Vec<i64>,
    pub dilations: Vec<i64>,
    /// [begin.., end..]
    pub pads: Vec<i64>,
    pub auto_pad: AutoPad,
    pub group: i64,
    pub output_padding: Vec<i64>,
    /// ConvTranspose's output_shape (spatial dims).
    pub output_shape: Option<Vec<i64>>,
}

impl Window {
    /// `kernel` is the pool's kernel_shape or ConvTranspose's W spatial dims (known at run time:
    /// empty here, filled by the launch).
    fn from_attrs(a: &Attributes, nsp: usize, kernel: Vec<i64>) -> Result<Window, String> {
        let per_axis = |name: &str, len: usize, default: i64| -> Result<Vec<i64>, String> {
            let v = ints(a, name)?.unwrap_or_else(|| vec![default; len]);
            if v.len() != len {
                return Err(format!("{name} of the wrong length"));
            }
            Ok(v)
        };
        let strides = per_axis("strides", nsp, 1)?;
        let dilations = per_axis("dilations", nsp, 1)?;
        let pads = per_axis("pads", 2 * nsp, 0)?;
        if strides.iter().chain(&dilations).any(|&v| v < 1) || pads.iter().any(|&v| v < 0) {
            return Err("non-positive strides or dilations, or negative pads".into());
        }
        let auto_pad = match a.string("auto_pad", "NOTSET".into()).map_err(|e| e.to_string())?.as_str() {
            "NOTSET" => AutoPad::NotSet,
            "VALID" => AutoPad::Valid,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            other => return Err(format!("auto_pad {other}")),
        };
        let output_shape = match ints(a, "output_shape")? {
            Some(os) if os.len() == nsp => Some(os),
            Some(os) if os.len() == nsp + 2 => Some(os[2..].to_vec()),
            Some(_) => return Err("output_shape of the wrong length".into()),
            None => None,
        };
        Ok(Window {
            kernel,
            strides,
            dilations,
            pads,
            auto_pad,
            group: a.int("group", 1).map_err(|e| e.to_string())?,
            output_padding: per_axis("output_padding", nsp, 0)?,
            output_shape,
        })
    }

    /// A pool's padding at input spatial dims `input`: (begin, end) per axis.
    pub fn pool_pads(&self, input: &[usize]) -> (Vec<i64>, Vec<i64>) {
        let nsp = input.len();
        let mut begin = vec![0; nsp];
        let mut end = vec![0; nsp];
        for i in 0..nsp {
            let (n, s) = (input[i] as i64, self.strides[i]);
            let dk = (self.kernel[i] - 1) * self.dilations[i] + 1;
            match self.auto_pad {
                AutoPad::SameUpper | AutoPad::SameLower => {
                    let out = (n + s - 1) / s;
                    let total = ((out - 1) * s + dk - n).max(0);
                    let small = total / 2;
                    (begin[i], end[i]) = if self.auto_pad == AutoPad::SameUpper {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                }
                AutoPad::Valid => {}
                AutoPad::NotSet => (begin[i], end[i]) = (self.pads[i], self.pads[i + nsp]),
            }
        }
        (begin, end)
    }

    /// ConvTranspose's begin padding (negative where output_shape asks for more than the
    /// natural size) and output size per spatial axis, as the CPU kernel resolves them.
    pub fn transpose_geometry(&self, input: &[usize]) -> (Vec<i64>, Vec<i64>) {
        let nsp = input.len();
        let (mut begin, mut out) = (vec![0; nsp], vec![0; nsp]);
        let same = matches!(self.auto_pad, AutoPad::SameUpper | AutoPad::SameLower);
        for i in 0..nsp {
            let (n, s) = (input[i] as i64, self.strides[i]);
            let dk = (self.kernel[i] - 1) * self.dilations[i] + 1;
            let full = s.saturating_mul(n - 1).saturating_add(self.output_padding[i] + dk);
            (begin[i], out[i]) = if self.output_shape.is_some() || same {
                let o = self.output_shape.as_ref().map_or(n.saturating_mul(s), |os| os[i]);
                let total = full.saturating_sub(o);
                let half = total.div_euclid(2);
                (if self.auto_pad == AutoPad::SameUpper { half } else { total - half }, o)
            } else if self.auto_pad == AutoPad::Valid {
                (0, full)
            } else {
                (self.pads[i], full - self.pads[i] - self.pads[i + nsp])
            };
        }
        (begin, out)
    }
}

fn err(e: impl ToString) -> String {
    e.to_string()
}

/// `Some` for the ops of this family: the GPU op, or why the layer stays on the CPU. `None` for
/// every other op (and for the forms lower.rs's own arms run: 2-D pools, last-axis softmax).
pub(crate) fn lower(graph: &EngineGraph, layer: &Layer) -> Option<Result<SpatialOp, String>> {
    let a = &layer.attrs;
    let input = |k: usize| layer.inputs.get(k).copied().flatten().map(|id| id.0);
    let x_rank = input(0).and_then(|x| rank(graph, x));
    let x_f32 = input(0).and_then(|x| tensor_dtype(graph, x)) == Some(DType::F32);
    let extra_outputs = layer.outputs.iter().skip(1).any(Option::is_some);
    let op = layer.op.as_str();
    // lower.rs's arms keep what they run, and give their reasons for other dtypes.
    let x_int8 = matches!(input(0).and_then(|x| tensor_dtype(graph, x)), Some(DType::U8 | DType::I8));
    match op {
        "MaxPool" if x_int8 => return Some(lower_known(graph, layer, x_rank, extra_outputs)),
        "MaxPool" | "AveragePool" if !x_f32 || pool2d_runs(a, x_rank, extra_outputs, op == "AveragePool") => {
            return None
        }
        "Softmax" | "LogSoftmax" => {
            let r = x_rank?;
            let axis = spec::normalize_axis(a.int("axis", -1).ok()?, r).ok()?;
            if !x_f32 || r == 0 || (axis == r - 1 && (op == "Softmax" || !a.contains(spec::COERCE_2D_ATTR))) {
                return None;
            }
        }
        _ => {}
    }
    let known = matches!(
        op,
        "Resize"
            | "GridSample"
            | "ConvTranspose"
            | "DeformConv"
            | "MaxPool"
            | "AveragePool"
            | "LpPool"
            | "GlobalLpPool"
            | "Softmax"
            | "LogSoftmax"
            | "BatchNormalization"
            | "InstanceNormalization"
            | "GroupNormalization"
            | "LpNormalization"
            | "MeanVarianceNormalization"
            | "LRN"
            | "RoiAlign"
            | "CausalConvWithState"
            | "Col2Im"
            | "AffineGrid"
    );
    if !known {
        return None;
    }
    Some(lower_known(graph, layer, x_rank, extra_outputs))
}

/// Whether lower.rs's 2-D pool (pool2d in library.cu) runs this MaxPool/AveragePool.
fn pool2d_runs(a: &Attributes, x_rank: Option<usize>, extra_outputs: bool, is_avg: bool) -> bool {
    let auto_pad = a.string("auto_pad", "NOTSET".into()).unwrap_or_default();
    let symmetric = match ints(a, "pads") {
        Ok(Some(p)) => p.len() == 4 && p[..2] == p[2..],
        Ok(None) => true,
        Err(_) => false,
    };
    let ceil = a.int("ceil_mode", 0).unwrap_or(0) != 0;
    let cip = a.int("count_include_pad", 0).unwrap_or(0) != 0;
    x_rank == Some(4)
        && matches!(auto_pad.as_str(), "NOTSET" | "VALID")
        && symmetric
        && !extra_outputs
        && !(ceil && is_avg && cip)
}

fn lower_known(
    graph: &EngineGraph,
    layer: &Layer,
    x_rank: Option<usize>,
    extra_outputs: bool,
) -> Result<SpatialOp, String> {
    let a = &layer.attrs;
    let op = layer.op.as_str();
    let input = |k: usize| layer.inputs.get(k).copied().flatten().map(|id| id.0);
    // Float data: fp32 in the graph (the engine's storage type on the device), as every other
    // float tensor the layer touches; integer inputs are sizes or indices.
    // (MaxPool also takes 8-bit integers: their max is exact in fp32 registers.)
    let ids = layer.inputs.iter().chain(&layer.outputs).flatten().map(|id| id.0);
    all_f32(graph, ids)?;
    let x_dtype = input(0).and_then(|x| tensor_dtype(graph, x));
    if !(x_dtype == Some(DType::F32) || (op == "MaxPool" && matches!(x_dtype, Some(DType::U8 | DType::I8)))) {
        return Err(format!("{op} on non-fp32 tensors"));
    }
    let r = x_rank.ok_or("unknown rank")?;
    let only_first_output = || if extra_outputs { Err("optional outputs".to_string()) } else { Ok(()) };
    let spatial_rank = || -> Result<usize, String> {
        match r.checked_sub(2) {
            Some(s) if (1..=MAX_SPATIAL).contains(&s) => Ok(s),
            _ => Err(format!("{op} of rank {r}")),
        }
    };
    let int = |name: &str, default: i64| a.int(name, default).map_err(err);
    let float = |name: &str, default: f32| a.float(name, default).map_err(err);
    let string = |name: &str, default: &str| a.string(name, default.into()).map_err(err);
    match op {
        "Resize" => {
            only_first_output()?;
            // roi/scales/sizes are read on the host at launch (constants or run-time values).
            let code = |name: &str, default: &str, names: &[&[&str]]| -> Result<i32, String> {
                let v = string(name, default)?;
                names.iter().position(|alts| alts.contains(&v.as_str())).map(|p| p as i32).ok_or(format!("{name} {v}"))
            };
            Ok(SpatialOp::Resize(ResizeParams {
                mode: code(
                    "mode",
                    "nearest",
                    &[&["nearest"], &["linear", "bilinear", "trilinear"], &["cubic", "bicubic"]],
                )?,
                coord: code(
                    "coordinate_transformation_mode",
                    "half_pixel",
                    &[
                        &["half_pixel"],
                        &["half_pixel_symmetric"],
                        &["pytorch_half_pixel"],
                        &["align_corners"],
                        &["asymmetric"],
                        &["tf_crop_and_resize"],
                        &["tf_half_pixel_for_nn"],
                    ],
                )?,
                nearest: code(
                    "nearest_mode",
                    "round_prefer_floor",
                    &[&["round_prefer_floor"], &["round_prefer_ceil"], &["floor"], &["ceil"]],
                )?,
                cubic_a: float("cubic_coeff_a", -0.75)?,
                exclude_outside: int("exclude_outside", 0)? != 0,
                antialias: int("antialias", 0)? != 0,
                extrapolation: float("extrapolation_value", 0.0)? as f64,
                axes: ints(a, "axes")?,
                policy: code(
                    "keep_aspect_ratio_policy",
                    "stretch",
                    &[&["stretch"], &["not_larger"], &["not_smaller"]],
                )?,
            }))
        }
        "GridSample" => {
            spatial_rank()?;
            let mode = match string("mode", "linear")?.as_str() {
                "nearest" => 0,
                "linear" | "bilinear" => 1,
                "cubic" | "bicubic" => 2,
                other => return Err(format!("mode {other}")),
            };
            let padding = match string("padding_mode", "zeros")?.as_str() {
                "zeros" => 0,
                "border" => 1,
                "reflection" => 2,
                other => return Err(format!("padding_mode {other}")),
            };
            Ok(SpatialOp::GridSample { mode, padding, align_corners: int("align_corners", 0)? != 0 })
        }
        "ConvTranspose" => {
            let nsp = spatial_rank()?;
            let window = Window::from_attrs(a, nsp, Vec::new())?;
            if window.group < 1 {
                return Err("group < 1".into());
            }
            Ok(SpatialOp::ConvTranspose(window))
        }
        "DeformConv" => {
            let nsp = spatial_rank()?;
            let window = Window::from_attrs(a, nsp, Vec::new())?;
            let offset_groups = int("offset_group", 1)?;
            if window.group < 1 || offset_groups < 1 {
                return Err("group or offset_group < 1".into());
            }
            Ok(SpatialOp::DeformConv { window, offset_groups })
        }
        "MaxPool" | "AveragePool" | "LpPool" => {
            let nsp = spatial_rank()?;
            let kernel = ints(a, "kernel_shape")?.ok_or("no kernel_shape")?;
            if kernel.len() != nsp || kernel.iter().any(|&k| k < 1) {
                return Err("kernel_shape does not match the input".into());
            }
            let is_max = op == "MaxPool";
            if !is_max {
                only_first_output()?;
            }
            let col_major = match int("storage_order", 0)? {
                0 => false,
                1 => true,
                _ => return Err("storage_order".into()),
            };
            let p = int("p", 2)?;
            if p < 1 {
                return Err("p < 1".into());
            }
            Ok(SpatialOp::Pool {
                kind: match op {
                    "MaxPool" => 0,
                    "AveragePool" => 1,
                    _ => 2,
                },
                p: p as f32,
                window: Some(Window::from_attrs(a, nsp, kernel)?),
                count_include_pad: int("count_include_pad", 0)? != 0,
                col_major,
            })
        }
        "CausalConvWithState" => {
            if r != 3 {
                return Err(format!("{op} of rank {r}"));
            }
            let silu = match string("activation", "none")?.as_str() {
                "none" => false,
                "silu" | "swish" => true,
                other => return Err(format!("activation {other}")),
            };
            Ok(SpatialOp::CausalConvState { silu })
        }
        "GlobalLpPool" => {
            spatial_rank()?;
            let p = int("p", 2)?;
            if p < 1 {
                return Err("p < 1".into());
            }
            Ok(SpatialOp::Pool { kind: 2, p: p as f32, window: None, count_include_pad: false, col_major: false })
        }
        "Softmax" | "LogSoftmax" => {
            Ok(SpatialOp::SoftmaxAxis { log: op == "LogSoftmax", coerce_2d: int(spec::COERCE_2D_ATTR, 0)? != 0 })
        }
        "BatchNormalization" => {
            if r < 2 {
                return Err(format!("{op} of rank {r}"));
            }
            let training = int("training_mode", 0)? != 0;
            if !training {
                only_first_output()?;
            }
            Ok(SpatialOp::BatchNorm {
                eps: float("epsilon", 1e-5)?,
                momentum: if training { Some(float("momentum", 0.9)?) } else { None },
            })
        }
        "InstanceNormalization" | "GroupNormalization" => {
            if r < 2 {
                return Err(format!("{op} of rank {r}"));
            }
            let groups = if op == "GroupNormalization" {
                let g = a.req_int("num_groups").map_err(err)?;
                if g < 1 {
                    return Err("num_groups < 1".into());
                }
                Some(g)
            } else {
                None
            };
            Ok(SpatialOp::Norm(NormKind::Group {
                groups,
                per_group_params: int(spec::PER_GROUP_SCALE_ATTR, 0)? != 0,
                eps: float("epsilon", 1e-5)?,
            }))
        }
        "LpNormalization" => {
            let p = int("p", 2)?;
            if !(p == 1 || p == 2) || r == 0 {
                return Err(format!("p {p} or rank {r}"));
            }
            Ok(SpatialOp::Norm(NormKind::Lp { p, axis: int("axis", -1)? }))
        }
        "MeanVarianceNormalization" => {
            let axes = a.ints("axes", vec![0, 2, 3]).map_err(err)?;
            Ok(SpatialOp::Norm(NormKind::MeanVariance { axes }))
        }
        "LRN" => {
            if r < 2 {
                return Err(format!("{op} of rank {r}"));
            }
            let size = a.req_int("size").map_err(err)?;
            if size < 1 {
                return Err("size < 1".into());
            }
            Ok(SpatialOp::Lrn {
                size,
                alpha: float("alpha", 1e-4)?,
                beta: float("beta", 0.75)?,
                bias: float("bias", 1.0)?,
            })
        }
        "Col2Im" | "AffineGrid" => {
            // image_shape/block_shape, size: read on the host at launch.
            let out_rank =
                layer.outputs.first().copied().flatten().and_then(|y| rank(graph, y.0)).ok_or("unknown rank")?;
            if op == "AffineGrid" {
                if r != 3 || !(4..=5).contains(&out_rank) {
                    return Err(format!("{op} of rank {r}"));
                }
                return Ok(SpatialOp::AffineGrid { align_corners: int("align_corners", 0)? != 0 });
            }
            match (r, out_rank.checked_sub(2)) {
                (3, Some(nsp)) if (1..=MAX_SPATIAL).contains(&nsp) => {
                    Ok(SpatialOp::Col2Im(Window::from_attrs(a, nsp, Vec::new())?))
                }
                _ => Err(format!("{op} of rank {r}")),
            }
        }
        "RoiAlign" => {
            if r != 4 {
                return Err(format!("{op} of rank {r}"));
            }
            if !input(2).and_then(|b| tensor_dtype(graph, b)).is_some_and(|d| matches!(d, DType::I64 | DType::I32)) {
                return Err("batch_indices other than int64 or int32".into());
            }
            let sampling_ratio = int("sampling_ratio", 0)?;
            if sampling_ratio < 0 {
                return Err("negative sampling_ratio".into());
            }
            Ok(SpatialOp::RoiAlign {
                max_mode: match string("mode", "avg")?.as_str() {
                    "avg" => false,
                    "max" => true,
                    other => return Err(format!("mode {other}")),
                },
                half_pixel: match string("coordinate_transformation_mode", "half_pixel")?.as_str() {
                    "half_pixel" => true,
                    "output_half_pixel" => false,
                    other => return Err(format!("coordinate_transformation_mode {other}")),
                },
                sampling_ratio,
                spatial_scale: float("spatial_scale", 1.0)?,
            })
        }
        other => Err(format!("no GPU kernel for {other}")),
    }
}
