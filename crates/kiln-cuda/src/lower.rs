//! Which layers run on the GPU, and as what. Decided from the engine graph alone, the same way
//! at build time (to generate and compile the kernels) and at load time (to find them), so the
//! plan needs to store nothing more than the compiled module.

use crate::kernels::{device_dtype, dtype_code, elementwise, typed};
use kiln_engine::{Elision, EngineGraph, Storage};
use kiln_ir::elementwise_program::{Program, KILN_ELEMENTWISE};
use kiln_ir::{spec, Activation, Attributes, DType, Layer, ValueType};

/// A layer's GPU implementation and the attributes it needs.
#[derive(Clone, Debug)]
pub(crate) enum GpuOp {
    /// cuDNN convolution (2-D; 1-D as 2-D with height 1), then the fused epilogue.
    Conv {
        pads: [i32; 2],
        strides: [i32; 2],
        dilations: [i32; 2],
        group: i32,
        act: Option<Activation>,
    },
    /// cuBLAS product: ONNX Gemm (2-D, transposes, alpha/beta, C) or fused MatMul
    /// ([.., M, K] × [K, N], or equal batch dims), then the fused epilogue.
    Gemm {
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
        is_matmul: bool,
        act: Option<Activation>,
    },
    /// A generated kernel (kernels/elementwise.rs).
    Elementwise {
        program: Program,
    },
    /// LayerNormalization (its optional Mean/InvStdDev outputs too) and RMSNormalization.
    LayerNorm {
        eps: f32,
        rms: bool,
    },
    Softmax,
    Pool {
        is_max: bool,
        kernel: [i32; 2],
        strides: [i32; 2],
        pads: [i32; 2],
        dilations: [i32; 2],
        count_include_pad: bool,
    },
    GlobalPool {
        is_max: bool,
    },
    Gather {
        axis: i64,
    },
    Cast,
    Transpose {
        perm: Vec<usize>,
    },
    Split {
        axis: i64,
    },
    Concat {
        axis: i64,
    },
    /// A reshape-like layer the memory plan did not make free: a plain copy.
    Copy,
    /// A generated kernel with its operand types spelled out (kernels/typed.rs).
    Typed(typed::TypedOp),
    /// Inference-mode Dropout: the input copied, the optional mask filled with true; training
    /// mode with a nonzero ratio is reported as an error, as the CPU kernel does
    /// (launch_dtypes.rs).
    Dropout,
    /// Reduce* (kind codes of `reduce_axes` in library.cu) and ArgMax/ArgMin.
    Reduce {
        kind: i32,
    },
    LogSoftmax,
    /// Broadcast to the output's shape (Expand).
    Expand,
    /// Slice with constant starts/ends/axes/steps.
    Slice,
    /// Constant-mode Pad with constant pads (value and axes).
    Pad,
    Trilu {
        upper: bool,
    },
    /// Range: start + i·delta.
    Range,
    /// ConstantOfShape: the `value` attribute everywhere.
    ConstantOfShape,
    /// Shape (with start/end) and Size: values known from the run's shapes.
    ShapeOf {
        size: bool,
    },
    /// HannWindow (0), HammingWindow (1), BlackmanWindow (2).
    Window {
        kind: i32,
        periodic: bool,
    },
    /// Tile and CenterCropPad: each output element reads one input element through a per-axis map.
    Tile,
    CenterCropPad,
    TopK {
        axis: i64,
        largest: bool,
    },
    /// Compress along an axis (or of the flattened input); the kept count is read on the host.
    Compress {
        axis: Option<i64>,
    },
    /// OneHot along `axis` of the output (depth read on the host).
    OneHot {
        axis: i64,
    },
    /// DFT, forward or inverse, one-sided or full (a direct sum per output element).
    Dft {
        inverse: bool,
        onesided: bool,
    },
    /// Gather/scatter, cumulative and loss ops (lower_index.rs, launch_index.rs, index.cu).
    Index(crate::lower_index::IndexOp),
    /// Resampling, transposed convolution, pooling and normalization variants
    /// (lower_spatial.rs, launch_spatial.rs, spatial.cu).
    Spatial(crate::lower_spatial::SpatialOp),
    /// Attention variants, recurrent layers, Einsum and other product-shaped ops
    /// (lower_sequence.rs, launch_sequence.rs, sequence.cu).
    Sequence(crate::lower_sequence::SequenceOp),
}

/// Where a layer runs.
#[derive(Clone, Debug)]
pub(crate) enum Placement {
    Gpu(GpuOp),
    /// On the CPU, with copies to and from the device; the reason is shown by `kiln inspect`.
    Host(String),
    /// Free: the memory plan put its output where it must be.
    Elided,
}

impl Placement {
    pub fn describe(&self) -> String {
        match self {
            Placement::Gpu(_) => "gpu".into(),
            Placement::Host(why) => format!("cpu ({why})"),
            Placement::Elided => "elided".into(),
        }
    }
}

pub(crate) fn tensor_dtype(graph: &EngineGraph, id: usize) -> Option<DType> {
    match &graph.tensors[id].ty {
        Some(ValueType::Tensor(t)) => Some(t.dtype),
        _ => None,
    }
}

pub(crate) fn rank(graph: &EngineGraph, id: usize) -> Option<usize> {
    match &graph.tensors[id].ty {
        Some(ValueType::Tensor(t)) => t.shape.as_ref().map(|s| s.len()),
        _ => None,
    }
}

/// Every float the layer touches is fp32 in the graph (it takes the engine's storage type on the
/// device), its data (input 0) included: the op families whose kernels compute fp32 graphs only.
pub(crate) fn fp32_layer(graph: &EngineGraph, layer: &Layer) -> Result<(), String> {
    let ids = layer.inputs.iter().chain(&layer.outputs).flatten().map(|id| id.0);
    all_f32(graph, ids)?;
    match layer.inputs.first().copied().flatten().and_then(|x| tensor_dtype(graph, x.0)) {
        Some(DType::F32) => Ok(()),
        Some(other) => Err(format!("{} on {other} tensors", layer.op)),
        None => Err("untyped input".into()),
    }
}

/// Element count of tensor `id` where its shape is static.
fn static_numel(graph: &EngineGraph, id: usize) -> Option<usize> {
    match &graph.tensors[id].ty {
        Some(ValueType::Tensor(t)) => kiln_ir::concrete(t.shape.as_deref()?).map(|s| s.iter().product()),
        _ => None,
    }
}

/// Every layer's placement.
pub(crate) fn lower_all(graph: &EngineGraph) -> Vec<Placement> {
    (0..graph.layers.len()).map(|li| lower(graph, li)).collect()
}

pub(crate) fn lower(graph: &EngineGraph, li: usize) -> Placement {
    let el = &graph.layers[li];
    let layer = &el.layer;
    if let Some(kind) = el.elided {
        // A view over device memory costs nothing; one over a host value must run on the host.
        let data_on_device = layer
            .inputs
            .first()
            .copied()
            .flatten()
            .is_some_and(|id| matches!(graph.tensors[id.0].storage, Storage::Arena { .. } | Storage::Weight(_)));
        return match kind {
            Elision::View if data_on_device => Placement::Elided,
            // Only in graphs built for the CPU (the placement census): a GPU build never elides
            // a concat, which then runs as the Concat op.
            Elision::Concat => Placement::Elided,
            Elision::View => Placement::Host("view of a host value".into()),
        };
    }
    // Tensors of any size go to the device (those sized at run time get memory between
    // layers); sequences, optionals and other non-tensor values stay on the host.
    for id in layer.inputs.iter().flatten().chain(layer.outputs.iter().flatten()) {
        match tensor_dtype(graph, id.0) {
            Some(d) if dtype_code(d).is_some() => {}
            Some(d) => return Placement::Host(format!("{d} tensors")),
            None => return Placement::Host("a sequence, optional or untyped value".into()),
        }
    }
    if !layer.implicit_inputs.is_empty() {
        return Placement::Host("control flow".into());
    }
    match gpu_op(graph, layer) {
        Ok(op) => Placement::Gpu(op),
        Err(why) => Placement::Host(why),
    }
}

/// Float tensors of the layer must be fp32 in the graph (they take the engine's storage type
/// on the device); f64 and native f16 graphs run on the host.
pub(crate) fn all_f32(graph: &EngineGraph, ids: impl Iterator<Item = usize>) -> Result<(), String> {
    one_float_type(graph, ids, false).map(|_| ())
}

/// Ops whose launches instantiate their kernels (and cuBLAS) for the float type of their
/// tensors, so native f16/bf16 graphs run as themselves (launch_dtypes.rs: typed_for).
fn native_halves(op: &str) -> bool {
    matches!(op, "MatMul" | "Gemm" | "Conv" | "Softmax" | "LogSoftmax" | "Pad")
}

/// The one float dtype of the layer's float tensors (`None`: it has none): fp32, or with
/// `halves` native f16 or bf16; f64 and mixed float types run on the host.
fn one_float_type(
    graph: &EngineGraph,
    ids: impl Iterator<Item = usize>,
    halves: bool,
) -> Result<Option<DType>, String> {
    let mut found = None;
    for id in ids {
        let Some(d) = tensor_dtype(graph, id).filter(|d| d.is_float()) else { continue };
        if !(d == DType::F32 || halves && matches!(d, DType::F16 | DType::BF16)) {
            return Err(format!("{d} floats (this op's GPU kernels compute fp32 graphs)"));
        }
        match found {
            Some(f) if f != d => return Err(format!("mixed {f} and {d} floats")),
            _ => found = Some(d),
        }
    }
    Ok(found)
}

pub(crate) fn ints(attrs: &Attributes, name: &str) -> Result<Option<Vec<i64>>, String> {
    attrs.ints_opt(name).map_err(|e| e.to_string())
}

fn pair(v: &[i64], what: &str) -> Result<[i32; 2], String> {
    match v {
        [a, b] => Ok([*a as i32, *b as i32]),
        _ => Err(format!("{what} of rank {}", v.len())),
    }
}

/// Symmetric pads per spatial axis ([begin.., end..] in ONNX order).
fn symmetric_pads(pads: Option<Vec<i64>>, spatial: usize) -> Result<[i32; 2], String> {
    let pads = pads.unwrap_or_else(|| vec![0; 2 * spatial]);
    if pads.len() != 2 * spatial {
        return Err("pads of the wrong length".into());
    }
    let (begin, end) = pads.split_at(spatial);
    if begin != end {
        return Err("asymmetric padding".into());
    }
    let mut out = [0i32; 2];
    for (k, p) in begin.iter().enumerate() {
        out[k] = *p as i32;
    }
    Ok(out)
}

/// Spatial attribute `name` as (height, width); 1-D layers get height 1 (their width is the
/// one axis), so `kernel_shape [k]` becomes (1, k).
fn spatial(attrs: &Attributes, name: &str, spatial: usize, default: i64) -> Result<[i32; 2], String> {
    let v = ints(attrs, name)?.unwrap_or_else(|| vec![default; spatial]);
    if v.len() != spatial {
        return Err(format!("{name} of the wrong length"));
    }
    Ok(match spatial {
        1 => [default as i32, v[0] as i32],
        _ => [v[0] as i32, v[1] as i32],
    })
}

fn pads_hw(attrs: &Attributes, sp: usize) -> Result<[i32; 2], String> {
    let p = symmetric_pads(ints(attrs, "pads")?, sp)?;
    Ok(if sp == 1 { [0, p[0]] } else { p })
}

fn auto_pad_ok(attrs: &Attributes) -> Result<(), String> {
    match attrs.string("auto_pad", "NOTSET".into()).map_err(|e| e.to_string())?.as_str() {
        "NOTSET" | "VALID" => Ok(()),
        other => Err(format!("auto_pad {other}")),
    }
}

/// A convolution's pads, strides and dilations (as 2-D) and group count.
struct ConvParams {
    pads: [i32; 2],
    strides: [i32; 2],
    dilations: [i32; 2],
    group: i32,
}

fn conv_params(a: &Attributes, sp: usize) -> Result<ConvParams, String> {
    Ok(ConvParams {
        pads: pads_hw(a, sp)?,
        strides: spatial(a, "strides", sp, 1)?,
        dilations: spatial(a, "dilations", sp, 1)?,
        group: a.int("group", 1).map_err(|e| e.to_string())? as i32,
    })
}

/// The geometry of Conv layer `layer` at input shape `x` and weight shape `w` (for timing its
/// tactics at the profile's opt shapes); `None` where the GPU does not run it.
pub(crate) fn conv_shape(layer: &Layer, x: &[usize], w: &[usize]) -> Option<crate::dnn::ConvShape> {
    let a = &layer.attrs;
    if auto_pad_ok(a).is_err() || x.len() != w.len() {
        return None;
    }
    let sp = x.len().checked_sub(2).filter(|s| (1..=2).contains(s))?;
    let ConvParams { pads, strides, dilations, group } = conv_params(a, sp).ok()?;
    let four = |s: &[usize]| if s.len() == 3 { [s[0], s[1], 1, s[2]] } else { [s[0], s[1], s[2], s[3]] };
    let (x4, w4) = (four(x), four(w));
    let out = |k: usize| -> Option<usize> {
        let span = dilations[k] as usize * (w4[2 + k] - 1) + 1;
        let padded = x4[2 + k] + 2 * pads[k] as usize;
        Some(padded.checked_sub(span)? / strides[k].max(1) as usize + 1)
    };
    let y = [x4[0], w4[0], out(0)?, out(1)?];
    Some(crate::dnn::ConvShape { x: x4, w: w4, y, pads, strides, dilations, group })
}

fn gpu_op(graph: &EngineGraph, layer: &Layer) -> Result<GpuOp, String> {
    let a = &layer.attrs;
    let inputs: Vec<usize> = layer.inputs.iter().flatten().map(|id| id.0).collect();
    let outputs: Vec<usize> = layer.outputs.iter().flatten().map(|id| id.0).collect();
    let input = |k: usize| layer.inputs.get(k).copied().flatten().map(|id| id.0);
    let only_first_output = || -> Result<(), String> {
        if layer.outputs.iter().skip(1).any(Option::is_some) {
            Err("optional outputs".into())
        } else {
            Ok(())
        }
    };
    // Layers computing on floats: their data (input 0) is fp32 in the graph, as is every other
    // float tensor they touch (integer inputs are indices, shapes or pads).
    let float_layer = || {
        let float = one_float_type(graph, inputs.iter().chain(&outputs).copied(), native_halves(&layer.op))?;
        match input(0).and_then(|x| tensor_dtype(graph, x)) {
            Some(d) if Some(d) == float => Ok(()),
            Some(other) => Err(format!("{} on {other} tensors", layer.op)),
            None => Err("untyped input".to_string()),
        }
    };
    let act = || Activation::from_attrs(a).map_err(|e| e.to_string());
    let x_rank = input(0).and_then(|x| rank(graph, x));
    if let Some(op) = crate::lower_index::lower(graph, layer) {
        return op.map(GpuOp::Index);
    }
    if let Some(op) = crate::lower_spatial::lower(graph, layer) {
        return op.map(GpuOp::Spatial);
    }
    if let Some(op) = crate::lower_sequence::lower(graph, layer) {
        return op.map(GpuOp::Sequence);
    }
    match layer.op.as_str() {
        "Conv" => {
            float_layer()?;
            auto_pad_ok(a)?;
            let sp = match x_rank {
                Some(3) => 1,
                Some(4) => 2,
                _ => return Err("convolutions of rank other than 1-D or 2-D".into()),
            };
            let ConvParams { pads, strides, dilations, group } = conv_params(a, sp)?;
            Ok(GpuOp::Conv { pads, strides, dilations, group, act: act()? })
        }
        "Gemm" => {
            float_layer()?;
            if x_rank != Some(2) {
                return Err("Gemm of rank other than 2".into());
            }
            Ok(GpuOp::Gemm {
                trans_a: a.int("transA", 0).map_err(|e| e.to_string())? != 0,
                trans_b: a.int("transB", 0).map_err(|e| e.to_string())? != 0,
                alpha: a.float("alpha", 1.0).map_err(|e| e.to_string())?,
                beta: a.float("beta", 1.0).map_err(|e| e.to_string())?,
                is_matmul: false,
                act: act()?,
            })
        }
        "MatMul" => {
            float_layer()?;
            let (Some(ra), Some(rb)) = (x_rank, input(1).and_then(|b| rank(graph, b))) else {
                return Err("MatMul of unknown rank".into());
            };
            if ra < 2 || !(rb == 2 || rb == ra) {
                return Err("MatMul with 1-D or broadcast batch operands".into());
            }
            Ok(GpuOp::Gemm { trans_a: false, trans_b: false, alpha: 1.0, beta: 1.0, is_matmul: true, act: act()? })
        }
        op if op == KILN_ELEMENTWISE => {
            float_layer()?;
            let program = Program::from_attrs(a, inputs.len()).map_err(|e| e.to_string())?;
            Ok(GpuOp::Elementwise { program })
        }
        "LayerNormalization" | "RMSNormalization" => {
            float_layer()?;
            Ok(GpuOp::LayerNorm {
                eps: a.float("epsilon", 1e-5).map_err(|e| e.to_string())?,
                rms: layer.op == "RMSNormalization",
            })
        }
        // Moves elements of any dtype (kernels by element size).
        "Trilu" => Ok(GpuOp::Trilu { upper: a.int("upper", 1).map_err(|e| e.to_string())? != 0 }),
        "Pad" => {
            // Any element type: the fill is typed by code and the copy moves bytes.
            if a.string("mode", "constant".into()).map_err(|e| e.to_string())? != "constant" {
                return Err("Pad modes other than constant".into());
            }
            Ok(GpuOp::Pad)
        }
        "Softmax" => {
            float_layer()?;
            let r = x_rank.ok_or("unknown rank")?;
            let axis = a.int("axis", -1).map_err(|e| e.to_string())?;
            if spec::normalize_axis(axis, r).map_err(|e| e.to_string())? != r - 1 {
                return Err("softmax over an axis other than the last".into());
            }
            Ok(GpuOp::Softmax)
        }
        "MaxPool" | "AveragePool" => {
            float_layer()?;
            only_first_output()?;
            auto_pad_ok(a)?;
            if x_rank != Some(4) {
                return Err("pooling of rank other than 2-D".into());
            }
            let is_max = layer.op == "MaxPool";
            let ceil = a.int("ceil_mode", 0).map_err(|e| e.to_string())? != 0;
            let count_include_pad = a.int("count_include_pad", 0).map_err(|e| e.to_string())? != 0;
            if ceil && !is_max && count_include_pad {
                return Err("ceil_mode with count_include_pad".into());
            }
            let kernel = ints(a, "kernel_shape")?.ok_or("no kernel_shape")?;
            Ok(GpuOp::Pool {
                is_max,
                kernel: pair(&kernel, "kernel_shape")?,
                strides: spatial(a, "strides", 2, 1)?,
                pads: symmetric_pads(ints(a, "pads")?, 2)?,
                dilations: spatial(a, "dilations", 2, 1)?,
                count_include_pad,
            })
        }
        "GlobalAveragePool" | "GlobalMaxPool" => {
            float_layer()?;
            Ok(GpuOp::GlobalPool { is_max: layer.op == "GlobalMaxPool" })
        }
        "Gather" => {
            all_f32(graph, inputs.iter().chain(&outputs).copied())?;
            Ok(GpuOp::Gather { axis: a.int("axis", 0).map_err(|e| e.to_string())? })
        }
        "Cast" => Ok(GpuOp::Cast),
        "Transpose" => {
            let r = x_rank.ok_or("unknown rank")?;
            let perm = match ints(a, "perm")? {
                Some(p) => p.iter().map(|&v| v as usize).collect(),
                None => (0..r).rev().collect(),
            };
            if r > crate::kernels::MAX_RANK {
                return Err("more than 8 dimensions".into());
            }
            Ok(GpuOp::Transpose { perm })
        }
        "Split" => Ok(GpuOp::Split { axis: a.int("axis", 0).map_err(|e| e.to_string())? }),
        "Concat" => Ok(GpuOp::Concat { axis: a.int("axis", 0).map_err(|e| e.to_string())? }),
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity" => Ok(GpuOp::Copy),
        "CastLike" => Ok(GpuOp::Cast),
        "LogSoftmax" => {
            float_layer()?;
            let r = x_rank.ok_or("unknown rank")?;
            let axis = a.int("axis", -1).map_err(|e| e.to_string())?;
            if spec::normalize_axis(axis, r).map_err(|e| e.to_string())? != r - 1 || a.contains(spec::COERCE_2D_ATTR) {
                return Err("log-softmax over an axis other than the last".into());
            }
            Ok(GpuOp::LogSoftmax)
        }
        "Range" => Ok(GpuOp::Range),
        "ConstantOfShape" => Ok(GpuOp::ConstantOfShape),
        "Shape" | "Size" => Ok(GpuOp::ShapeOf { size: layer.op == "Size" }),
        "HannWindow" | "HammingWindow" | "BlackmanWindow" => Ok(GpuOp::Window {
            kind: match layer.op.as_str() {
                "HannWindow" => 0,
                "HammingWindow" => 1,
                _ => 2,
            },
            periodic: a.int("periodic", 1).map_err(|e| e.to_string())? != 0,
        }),
        "Compress" => {
            // The kept count is read on the host: only conditions small enough to be read.
            let small = input(1)
                .and_then(|c| static_numel(graph, c))
                .is_some_and(|n| n <= crate::session::SMALL_VALUE_ELEMENTS);
            if !small {
                return Err("a condition of unknown or large size".into());
            }
            Ok(GpuOp::Compress { axis: a.int_opt("axis").map_err(|e| e.to_string())? })
        }
        "OneHot" => Ok(GpuOp::OneHot { axis: a.int("axis", -1).map_err(|e| e.to_string())? }),
        "DFT" => Ok(GpuOp::Dft {
            inverse: a.int("inverse", 0).map_err(|e| e.to_string())? != 0,
            onesided: a.int("onesided", 0).map_err(|e| e.to_string())? != 0,
        }),
        "Tile" | "CenterCropPad" | "TopK" => {
            if !x_rank.is_some_and(|r| (1..=crate::kernels::MAX_RANK).contains(&r)) {
                return Err(format!("{} of unknown rank or above 8 dimensions", layer.op));
            }
            Ok(match layer.op.as_str() {
                "Tile" => GpuOp::Tile,
                "CenterCropPad" => GpuOp::CenterCropPad,
                _ => GpuOp::TopK {
                    axis: a.int("axis", -1).map_err(|e| e.to_string())?,
                    largest: a.int("largest", 1).map_err(|e| e.to_string())? != 0,
                },
            })
        }
        "Expand" => Ok(GpuOp::Expand),
        "Slice" => Ok(GpuOp::Slice),
        op @ ("ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceSumSquare"
        | "ReduceL1" | "ReduceL2" | "ReduceLogSumExp" | "ReduceLogSum" | "ArgMax" | "ArgMin") => {
            let kind = match op {
                "ReduceSum" => 0,
                "ReduceMean" => 1,
                "ReduceMax" => 2,
                "ReduceMin" => 3,
                "ReduceProd" => 4,
                "ReduceSumSquare" => 5,
                "ReduceL1" => 6,
                "ReduceL2" => 7,
                "ReduceLogSumExp" => 8,
                "ReduceLogSum" => 9,
                "ArgMax" => 10,
                _ => 11,
            };
            // Any float type the library instantiates (fp32, native f16/bf16); the output is
            // of the input's type (ArgMax/ArgMin: int64).
            if one_float_type(graph, inputs[..1].iter().chain(&outputs).copied(), true)?.is_none() {
                return Err(format!("{op} over non-float tensors"));
            }
            Ok(GpuOp::Reduce { kind })
        }
        other => {
            // fp32 element-wise ops: the float programs (they take the engine's storage type).
            if inputs.iter().chain(&outputs).all(|&t| tensor_dtype(graph, t) == Some(DType::F32)) {
                if let Some(program) = elementwise::single_op_program(other, a, inputs.len()) {
                    return Ok(GpuOp::Elementwise { program });
                }
            }
            let dtypes: Vec<Option<DType>> =
                layer.inputs.iter().map(|i| i.and_then(|id| tensor_dtype(graph, id.0))).collect();
            if let Some(op) = typed::plan(other, a, &dtypes)? {
                only_first_output()?;
                if outputs.first().and_then(|&o| tensor_dtype(graph, o)) != Some(op.out) {
                    return Err(format!("{other} with an output of another dtype"));
                }
                return Ok(GpuOp::Typed(op));
            }
            match other {
                // A reinterpretation of the bytes: a copy where both sides have one element size
                // on the device (not an fp32 tensor stored in 16 bits).
                "BitCast" => {
                    let storage = crate::kernels::Storage::for_precisions(graph.build.precisions());
                    let size = |t: Option<&usize>| {
                        t.and_then(|&t| tensor_dtype(graph, t)).map(|d| device_dtype(d, storage).size())
                    };
                    if size(inputs.first()).is_none() || size(inputs.first()) != size(outputs.first()) {
                        return Err("BitCast between element sizes that differ on the device".into());
                    }
                    Ok(GpuOp::Copy)
                }
                "Dropout" => Ok(GpuOp::Dropout),
                _ => Err(format!("no GPU kernel for {other}")),
            }
        }
    }
}
