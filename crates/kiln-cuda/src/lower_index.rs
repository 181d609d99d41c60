//! Placement of the gather/scatter, cumulative, loss and index-permutation ops: which of them the
//! GPU runs, and with what. Ops that only move elements run on any dtype (by element size);
//! ops that compute run on fp32 graph floats (the engine's storage type on the device), and
//! CumSum/CumProd on int32/int64/f64 too.

use crate::lower::{fp32_layer, tensor_dtype};
use kiln_engine::EngineGraph;
use kiln_ir::{Attributes, DType, Layer};

/// An index op the GPU runs (launch_index.rs launches it, kernels/index.cu holds its kernels).
#[derive(Clone, Debug)]
pub(crate) enum IndexOp {
    /// NegativeLogLikelihoodLoss, or SoftmaxCrossEntropyLoss (`softmax`, with its optional
    /// log_prob output); `reduction` codes of `nll_loss` in index.cu.
    Loss {
        softmax: bool,
        reduction: i32,
        ignore_index: Option<i64>,
    },
    GatherElements {
        axis: i64,
    },
    GatherND {
        batch_dims: usize,
    },
    /// `reduction`: 0 none (any dtype), else the float reduction code of `ScatterReduce`.
    ScatterElements {
        axis: i64,
        reduction: i32,
    },
    ScatterND {
        reduction: i32,
    },
    TensorScatter {
        axis: i64,
        circular: bool,
    },
    /// CumSum / CumProd; the axis is read on the device from input 1 (constant or not).
    CumScan {
        product: bool,
        exclusive: bool,
        reverse: bool,
    },
    Hardmax {
        axis: i64,
        coerce_2d: bool,
    },
    EyeLike {
        k: i64,
    },
    /// DepthToSpace / SpaceToDepth: strided copies (a reshape-transpose-reshape).
    BlockShuffle {
        to_space: bool,
        blocksize: usize,
        crd: bool,
    },
    ReverseSequence {
        batch_axis: usize,
    },
    /// QuantizeLinear / DequantizeLinear to or from 8/16-bit integers, per tensor, per axis or
    /// blocked (`block` > 0), with an fp32 scale.
    Quantize {
        dequantize: bool,
        axis: i64,
        block: usize,
    },
    DynamicQuantize,
    /// MaxUnpool to its natural output shape (no output_shape input).
    MaxUnpool,
}

/// `Some` for the ops of this family: the GPU op, or why the layer stays on the CPU. `None` for
/// every other op.
pub(crate) fn lower(graph: &EngineGraph, layer: &Layer) -> Option<Result<IndexOp, String>> {
    let op = match layer.op.as_str() {
        "NegativeLogLikelihoodLoss" | "SoftmaxCrossEntropyLoss" => loss(graph, layer),
        "GatherElements" => {
            indices(graph, layer, 1).and_then(|()| Ok(IndexOp::GatherElements { axis: layer.attrs.int("axis", 0)? }))
        }
        "GatherND" => indices(graph, layer, 1).and_then(|()| {
            let batch_dims = usize::try_from(layer.attrs.int("batch_dims", 0)?).map_err(|_| "negative batch_dims")?;
            Ok(IndexOp::GatherND { batch_dims })
        }),
        "ScatterElements" => scatter_reduction(graph, layer)
            .and_then(|reduction| Ok(IndexOp::ScatterElements { axis: layer.attrs.int("axis", 0)?, reduction })),
        "ScatterND" => scatter_reduction(graph, layer).map(|reduction| IndexOp::ScatterND { reduction }),
        "TensorScatter" => tensor_scatter(graph, layer),
        "CumSum" | "CumProd" => cum_scan(graph, layer),
        "Hardmax" => fp32_layer(graph, layer).and_then(|()| {
            Ok(IndexOp::Hardmax {
                axis: layer.attrs.int("axis", -1)?,
                coerce_2d: layer.attrs.int(kiln_ir::spec::COERCE_2D_ATTR, 0)? != 0,
            })
        }),
        "EyeLike" => layer.attrs.int("k", 0).map(|k| IndexOp::EyeLike { k }),
        "DepthToSpace" | "SpaceToDepth" => block_shuffle(layer),
        "ReverseSequence" => reverse_sequence(graph, layer),
        "QuantizeLinear" | "DequantizeLinear" => quantize(graph, layer),
        "DynamicQuantizeLinear" => fp32_layer(graph, layer).map(|()| IndexOp::DynamicQuantize),
        "MaxUnpool" => max_unpool(graph, layer),
        _ => return None,
    };
    Some(op)
}

fn input(layer: &Layer, k: usize) -> Option<usize> {
    layer.inputs.get(k).copied().flatten().map(|id| id.0)
}

/// Input `k`, when present, holds int64 or int32 indices.
fn indices(graph: &EngineGraph, layer: &Layer, k: usize) -> Result<(), String> {
    match input(layer, k).and_then(|id| tensor_dtype(graph, id)) {
        None | Some(DType::I64 | DType::I32) => Ok(()),
        Some(other) => Err(format!("{} with {other} indices", layer.op)),
    }
}

fn attr_string(a: &Attributes, name: &str, default: &str) -> Result<String, String> {
    a.string(name, default.into())
}

fn loss(graph: &EngineGraph, layer: &Layer) -> Result<IndexOp, String> {
    fp32_layer(graph, layer)?;
    indices(graph, layer, 1)?;
    let reduction = match attr_string(&layer.attrs, "reduction", "mean")?.as_str() {
        "none" => 0,
        "sum" => 1,
        "mean" => 2,
        other => return Err(format!("reduction {other}")),
    };
    Ok(IndexOp::Loss {
        softmax: layer.op == "SoftmaxCrossEntropyLoss",
        reduction,
        ignore_index: layer.attrs.int_opt("ignore_index")?,
    })
}

/// The scatter reduction code; reductions compute on fp32 graph floats only (replacing moves
/// elements of any dtype).
fn scatter_reduction(graph: &EngineGraph, layer: &Layer) -> Result<i32, String> {
    indices(graph, layer, 1)?;
    let code = match attr_string(&layer.attrs, "reduction", "none")?.as_str() {
        "none" => return Ok(0),
        "add" => 1,
        "mul" => 2,
        "max" => 3,
        "min" => 4,
        other => return Err(format!("reduction {other}")),
    };
    fp32_layer(graph, layer).map_err(|_| format!("{} reductions on non-fp32 tensors", layer.op))?;
    Ok(code)
}

fn tensor_scatter(graph: &EngineGraph, layer: &Layer) -> Result<IndexOp, String> {
    indices(graph, layer, 2)?;
    let circular = match attr_string(&layer.attrs, "mode", "linear")?.as_str() {
        "linear" => false,
        "circular" => true,
        other => return Err(format!("mode {other}")),
    };
    Ok(IndexOp::TensorScatter { axis: layer.attrs.int("axis", -2)?, circular })
}

fn cum_scan(graph: &EngineGraph, layer: &Layer) -> Result<IndexOp, String> {
    indices(graph, layer, 1)?;
    // Integers and f64 keep their type (the kernels accumulate as the reference does).
    match input(layer, 0).and_then(|x| tensor_dtype(graph, x)) {
        Some(DType::I32 | DType::I64 | DType::F64) => {}
        _ => fp32_layer(graph, layer)?,
    }
    Ok(IndexOp::CumScan {
        product: layer.op == "CumProd",
        exclusive: layer.attrs.int("exclusive", 0)? != 0,
        reverse: layer.attrs.int("reverse", 0)? != 0,
    })
}

fn block_shuffle(layer: &Layer) -> Result<IndexOp, String> {
    let blocksize = layer.attrs.req_int("blocksize")?;
    let blocksize = usize::try_from(blocksize).ok().filter(|&b| b > 0).ok_or("a non-positive blocksize")?;
    let crd = match attr_string(&layer.attrs, "mode", "DCR")?.as_str() {
        "DCR" => false,
        "CRD" => true,
        other => return Err(format!("mode {other}")),
    };
    Ok(IndexOp::BlockShuffle { to_space: layer.op == "DepthToSpace", blocksize, crd })
}

fn reverse_sequence(graph: &EngineGraph, layer: &Layer) -> Result<IndexOp, String> {
    indices(graph, layer, 1)?;
    let a = &layer.attrs;
    match (a.int("batch_axis", 1)?, a.int("time_axis", 0)?) {
        (0, 1) => Ok(IndexOp::ReverseSequence { batch_axis: 0 }),
        (1, 0) => Ok(IndexOp::ReverseSequence { batch_axis: 1 }),
        (b, t) => Err(format!("batch_axis {b} and time_axis {t}")),
    }
}

fn quantize(graph: &EngineGraph, layer: &Layer) -> Result<IndexOp, String> {
    let dequantize = layer.op == "DequantizeLinear";
    let dtype = |k: usize| input(layer, k).and_then(|id| tensor_dtype(graph, id));
    let out = layer.outputs.first().copied().flatten().and_then(|id| tensor_dtype(graph, id.0));
    let quantized = |d: Option<DType>| matches!(d, Some(DType::I8 | DType::U8 | DType::I16 | DType::U16));
    if dtype(1) != Some(DType::F32) {
        return Err(format!("{} with a non-fp32 scale", layer.op));
    }
    let (x, q) = if dequantize { (out, dtype(0)) } else { (dtype(0), out) };
    let x_ok = matches!(x, Some(DType::F32)) || (!dequantize && x == Some(DType::I32));
    let q_ok = quantized(q) || (dequantize && q == Some(DType::I32));
    if !x_ok || !q_ok || dtype(2).is_some_and(|z| Some(z) != q) {
        return Err(format!("{} between {x:?} and {q:?}", layer.op));
    }
    if !dequantize && !matches!(layer.attrs.int("precision", 0)?, 0 | 1) {
        return Err("a precision other than fp32".into());
    }
    let block = usize::try_from(layer.attrs.int("block_size", 0)?).map_err(|_| "a negative block_size")?;
    Ok(IndexOp::Quantize { dequantize, axis: layer.attrs.int("axis", 1)?, block })
}

fn max_unpool(graph: &EngineGraph, layer: &Layer) -> Result<IndexOp, String> {
    fp32_layer(graph, layer)?;
    if input(layer, 1).and_then(|i| tensor_dtype(graph, i)) != Some(DType::I64) {
        return Err("MaxUnpool indices other than int64".into());
    }
    if input(layer, 2).is_some() {
        return Err("MaxUnpool with an output_shape".into());
    }
    Ok(IndexOp::MaxUnpool)
}
