//! Placement of the attention variants, recurrent layers, Einsum and other product-shaped ops: which of them the GPU runs, and with what.

use crate::lower::{fp32_layer, rank, tensor_dtype};
use kiln_engine::EngineGraph;
use kiln_ir::{spec, DType, Layer};

/// A sequence op the GPU runs (launch_sequence.rs launches it, kernels/sequence.cu holds its kernels).
#[derive(Clone, Debug)]
pub(crate) enum SequenceOp {
    /// ONNX Attention in full: cuBLAS products around `attention_softmax` (sequence.cu).
    Attention(AttentionAttrs),
    /// RotaryEmbedding (`rotary_embedding` in sequence.cu); `heads` for 3-D input (0: 4-D).
    Rotary { heads: usize, rot: usize, interleaved: bool },
    /// Einsum (einsum.rs plans it at run-time shapes, `einsum` in sequence.cu runs it).
    Einsum { equation: String },
    /// MatMul with a 1-D operand or batch dims that broadcast (lower.rs's Gemm takes the rest).
    BroadcastMatMul,
    /// MatMulInteger and QLinearMatMul (`quant_matmul` in sequence.cu), exact in integers.
    QuantMatMul { qlinear: bool },
    /// ConvInteger and QLinearConv (`quant_conv` in sequence.cu), exact in integers.
    QuantConv { qlinear: bool },
    /// LinearAttention (`linear_attention` in sequence.cu).
    LinearAttention { q_heads: usize, kv_heads: usize, gating: bool, delta: bool, scale: f32 },
    /// RNN, GRU and LSTM (`recurrent` in sequence.cu).
    Recurrent(RecurrentAttrs),
}

/// The attributes of a recurrent layer, resolved (activations with their alpha/beta).
#[derive(Clone, Debug)]
pub(crate) struct RecurrentAttrs {
    /// 0 RNN, 1 GRU, 2 LSTM.
    pub cell: i32,
    pub linear_before_reset: bool,
    pub input_forget: bool,
    pub layout: i32,
    pub dirs: usize,
    pub reverse: bool,
    pub clip: f32,
    /// Activation codes of `rnn_act` per direction (f, g, h: 3 slots each) and their alpha/beta.
    pub acts: [(i32, f32, f32); 6],
    pub hidden_size: Option<usize>,
}

/// The attributes of an Attention layer the launch needs (validated here, so the launch only
/// checks shapes).
#[derive(Clone, Debug)]
pub(crate) struct AttentionAttrs {
    /// Head counts of 3-D (packed) inputs; 4-D inputs carry them in their shapes.
    pub q_heads: usize,
    pub kv_heads: usize,
    pub scale: Option<f32>,
    pub causal: bool,
    pub softcap: f32,
    /// Which stage qk_matmul_output receives (0..=3).
    pub qk_mode: i32,
    /// Sliding window (-1: unbounded).
    pub left: i64,
    pub right: i64,
    /// A mask's last dim of 1 repeats over every key (kiln's fused form) instead of padding.
    pub mask_broadcast: bool,
}

/// `Some` for the ops of this family: the GPU op, or why the layer stays on the CPU. `None` for
/// every other op.
pub(crate) fn lower(graph: &EngineGraph, layer: &Layer) -> Option<Result<SequenceOp, String>> {
    match layer.op.as_str() {
        "Attention" => Some(attention(graph, layer).map(SequenceOp::Attention)),
        "RotaryEmbedding" => Some(rotary(graph, layer)),
        "Einsum" => Some(einsum(graph, layer)),
        "MatMul" => broadcast_matmul(graph, layer),
        "MatMulInteger" | "QLinearMatMul" => Some(quant_matmul(graph, layer)),
        "ConvInteger" | "QLinearConv" => Some(quant_matmul(graph, layer)),
        "LinearAttention" => Some(linear_attention(graph, layer)),
        "FlexAttention" => Some(flex_attention(graph, layer).map(SequenceOp::Attention)),
        "RNN" | "GRU" | "LSTM" => Some(recurrent(graph, layer).map(SequenceOp::Recurrent)),
        _ => None,
    }
}

fn input(layer: &Layer, k: usize) -> Option<usize> {
    layer.inputs.get(k).copied().flatten().map(|id| id.0)
}

fn attention(graph: &EngineGraph, layer: &Layer) -> Result<AttentionAttrs, String> {
    fp32_layer(graph, layer)?;
    let a = &layer.attrs;
    let (q_heads, kv_heads) = match input(layer, 0).and_then(|q| rank(graph, q)) {
        Some(3) => {
            let q = a.int("q_num_heads", 0)?;
            let kv = a.int("kv_num_heads", 0)?;
            if q <= 0 || kv <= 0 || q % kv != 0 {
                return Err("3-D attention without head counts (q a multiple of kv)".into());
            }
            (q as usize, kv as usize)
        }
        Some(4) => (0, 0),
        _ => return Err("attention inputs of rank other than 3 or 4".into()),
    };
    if let Some(m) = input(layer, 3) {
        if !matches!(tensor_dtype(graph, m), Some(DType::F32 | DType::Bool)) {
            return Err("a mask neither float nor boolean".into());
        }
    }
    if input(layer, 4).is_some() != input(layer, 5).is_some() {
        return Err("past_key without past_value".into());
    }
    let qk_mode = a.int("qk_matmul_output_mode", 0)?;
    if !(0..=3).contains(&qk_mode) {
        return Err(format!("qk_matmul_output_mode {qk_mode}"));
    }
    let (left, right) = (a.int("left_window_size", -1)?, a.int("right_window_size", -1)?);
    if left < -1 || right < -1 {
        return Err("negative window sizes".into());
    }
    Ok(AttentionAttrs {
        q_heads,
        kv_heads,
        scale: a.float_opt("scale")?,
        causal: a.int("is_causal", 0)? != 0,
        softcap: a.float("softcap", 0.0)?,
        qk_mode: qk_mode as i32,
        left,
        right,
        mask_broadcast: a.int(spec::ATTENTION_MASK_BROADCAST_ATTR, 0)? != 0,
    })
}

fn rotary(graph: &EngineGraph, layer: &Layer) -> Result<SequenceOp, String> {
    fp32_layer(graph, layer)?;
    let a = &layer.attrs;
    let heads = match input(layer, 0).and_then(|x| rank(graph, x)) {
        Some(3) => match a.int("num_heads", 0)? {
            h if h > 0 => h as usize,
            _ => return Err("3-D RotaryEmbedding without num_heads".into()),
        },
        Some(4) => 0,
        _ => return Err("RotaryEmbedding of rank other than 3 or 4".into()),
    };
    if input(layer, 3).is_some_and(|p| tensor_dtype(graph, p) != Some(DType::I64)) {
        return Err("position ids other than int64".into());
    }
    let rot = a.int("rotary_embedding_dim", 0)?;
    if rot < 0 || rot % 2 != 0 {
        return Err(format!("rotary_embedding_dim {rot}"));
    }
    Ok(SequenceOp::Rotary { heads, rot: rot as usize, interleaved: a.int("interleaved", 0)? != 0 })
}

fn einsum(graph: &EngineGraph, layer: &Layer) -> Result<SequenceOp, String> {
    // f64 graphs keep f64 on the device; the kernel sums in f64 (einsum_f64).
    let mut ids = layer.inputs.iter().chain(&layer.outputs).flatten();
    if !ids.all(|id| tensor_dtype(graph, id.0) == Some(DType::F64)) {
        fp32_layer(graph, layer)?;
    }
    let equation = layer.attrs.string_opt("equation")?.ok_or("Einsum without an equation")?;
    if !crate::einsum::fits(&equation, layer.inputs.len()) || layer.inputs.iter().any(Option::is_none) {
        return Err(format!("Einsum of {} operands", layer.inputs.len()));
    }
    Ok(SequenceOp::Einsum { equation })
}

/// A plain MatMul (two inputs, nothing fused) whose operand ranks the fused Gemm path refuses:
/// a 1-D operand, or batch dims of different ranks. `None` for every other MatMul.
fn broadcast_matmul(graph: &EngineGraph, layer: &Layer) -> Option<Result<SequenceOp, String>> {
    let (ra, rb) = (rank(graph, input(layer, 0)?)?, rank(graph, input(layer, 1)?)?);
    let gemm_takes = ra >= 2 && (rb == 2 || rb == ra);
    let plain = layer.inputs.len() == 2 && kiln_ir::Activation::from_attrs(&layer.attrs).is_ok_and(|a| a.is_none());
    if gemm_takes || !plain {
        return None;
    }
    Some(fp32_layer(graph, layer).map(|()| SequenceOp::BroadcastMatMul))
}

/// Quantized products (MatMulInteger, QLinearMatMul) and convolutions (ConvInteger,
/// QLinearConv): 8-bit operands (and zero points of their type), an int32 output or an 8-bit
/// one with float scales of one type (QLinear*).
fn quant_matmul(graph: &EngineGraph, layer: &Layer) -> Result<SequenceOp, String> {
    let qlinear = layer.op.starts_with("QLinear");
    let dtype = |k: usize| input(layer, k).and_then(|t| tensor_dtype(graph, t));
    let eight_bit = |d: Option<DType>| matches!(d, Some(DType::I8 | DType::U8));
    let (a, b) = if qlinear { (0, 3) } else { (0, 1) };
    let out = layer.outputs.first().copied().flatten().and_then(|t| tensor_dtype(graph, t.0));
    if !eight_bit(dtype(a)) || !eight_bit(dtype(b)) {
        return Err(format!("{} of other than 8-bit operands", layer.op));
    }
    if qlinear {
        let scales = [dtype(1), dtype(4), dtype(6)];
        if !eight_bit(out) || !scales.iter().all(|d| d.is_some_and(DType::is_float) && *d == scales[0]) {
            return Err("QLinearMatMul scales of mixed or non-float types".into());
        }
    } else if out != Some(DType::I32) {
        return Err(format!("{} with a non-int32 output", layer.op));
    }
    if layer.op == "ConvInteger" || layer.op == "QLinearConv" {
        if input(layer, 8).is_some_and(|b| tensor_dtype(graph, b) != Some(DType::I32)) {
            return Err("QLinearConv with a non-int32 bias".into());
        }
        return Ok(SequenceOp::QuantConv { qlinear });
    }
    Ok(SequenceOp::QuantMatMul { qlinear })
}

fn linear_attention(graph: &EngineGraph, layer: &Layer) -> Result<SequenceOp, String> {
    fp32_layer(graph, layer)?;
    let a = &layer.attrs;
    let (gating, delta) = match a.string("update_rule", "gated_delta".into())?.as_str() {
        "linear" => (false, false),
        "gated" => (true, false),
        "delta" => (false, true),
        "gated_delta" => (true, true),
        other => return Err(format!("update_rule {other}")),
    };
    if gating != input(layer, 4).is_some() || delta != input(layer, 5).is_some() {
        return Err("decay or beta inputs not matching the update rule".into());
    }
    let (q, kv) = (a.int("q_num_heads", 0)?, a.int("kv_num_heads", 0)?);
    if q <= 0 || kv <= 0 || q % kv != 0 {
        return Err("head counts (q a positive multiple of kv)".into());
    }
    if [0, 1, 2].iter().any(|&k| input(layer, k).and_then(|t| rank(graph, t)) != Some(3)) {
        return Err("LinearAttention inputs of rank other than 3".into());
    }
    let scale = a.float("scale", 0.0)?;
    Ok(SequenceOp::LinearAttention { q_heads: q as usize, kv_heads: kv as usize, gating, delta, scale })
}

/// FlexAttention without score_mod/prob_mod subgraphs is Attention on 4-D inputs with no mask
/// (its scores are finite, so Attention's fully-masked-row guard never differs from its NaN).
fn flex_attention(graph: &EngineGraph, layer: &Layer) -> Result<AttentionAttrs, String> {
    fp32_layer(graph, layer)?;
    let a = &layer.attrs;
    if a.contains("score_mod") || a.contains("prob_mod") {
        return Err("FlexAttention with score_mod or prob_mod subgraphs".into());
    }
    if a.int_opt("softmax_precision")?.is_some_and(|p| p != 1) {
        return Err("FlexAttention with a softmax precision other than float".into());
    }
    if [0, 1, 2].iter().any(|&k| input(layer, k).and_then(|t| rank(graph, t)) != Some(4)) || layer.inputs.len() > 3 {
        return Err("FlexAttention inputs other than 4-D Q, K, V".into());
    }
    Ok(AttentionAttrs {
        q_heads: 0,
        kv_heads: 0,
        scale: a.float_opt("scale")?,
        causal: false,
        softcap: 0.0,
        qk_mode: 0,
        left: -1,
        right: -1,
        mask_broadcast: false,
    })
}

fn recurrent(graph: &EngineGraph, layer: &Layer) -> Result<RecurrentAttrs, String> {
    fp32_layer(graph, layer)?;
    let a = &layer.attrs;
    let (cell, defaults): (i32, &[&str]) = match layer.op.as_str() {
        "RNN" => (0, &["Tanh"]),
        "GRU" => (1, &["Sigmoid", "Tanh"]),
        _ => (2, &["Sigmoid", "Tanh", "Tanh"]),
    };
    let layout = a.int("layout", 0)?;
    if layout != 0 && layout != 1 {
        return Err(format!("layout {layout}"));
    }
    let direction = a.string("direction", "forward".into())?;
    let dirs = match direction.as_str() {
        "forward" | "reverse" => 1,
        "bidirectional" => 2,
        other => return Err(format!("direction {other}")),
    };
    // `n` activations per direction; a list of just `n` serves both; alpha/beta are consumed
    // in order by the functions that take them (the reference kernel's parse).
    let n = defaults.len();
    let names: Vec<String> = match a.strings_opt("activations")? {
        Some(v) if v.len() == n * dirs => v,
        Some(v) if v.len() == n => v.iter().cycle().take(n * dirs).cloned().collect(),
        Some(v) => return Err(format!("{} activations", v.len())),
        None => defaults.iter().cycle().take(n * dirs).map(|s| s.to_string()).collect(),
    };
    let mut alphas = a.floats("activation_alpha", Vec::new())?.into_iter();
    let mut betas = a.floats("activation_beta", Vec::new())?.into_iter();
    let mut acts = [(1, 0.0, 0.0); 6];
    for (j, name) in names.iter().enumerate() {
        let mut alpha = |d: f32| alphas.next().unwrap_or(d);
        let act = match name.to_ascii_lowercase().as_str() {
            "relu" => (0, 0.0, 0.0),
            "tanh" => (1, 0.0, 0.0),
            "sigmoid" => (2, 0.0, 0.0),
            "affine" => (3, alpha(1.0), betas.next().unwrap_or(0.0)),
            "leakyrelu" => (4, alpha(0.01), 0.0),
            "thresholdedrelu" => (5, alpha(1.0), 0.0),
            "scaledtanh" => (6, alpha(1.0), betas.next().unwrap_or(1.0)),
            "hardsigmoid" => (7, alpha(0.2), betas.next().unwrap_or(0.5)),
            "elu" => (8, alpha(1.0), 0.0),
            "softsign" => (9, 0.0, 0.0),
            "softplus" => (10, 0.0, 0.0),
            other => return Err(format!("activation {other}")),
        };
        acts[(j / n) * 3 + j % n] = act;
    }
    let clip = match a.float_opt("clip")? {
        Some(c) if c.is_nan() || c <= 0.0 => return Err(format!("clip {c}")),
        c => c.unwrap_or(0.0),
    };
    Ok(RecurrentAttrs {
        cell,
        linear_before_reset: a.int("linear_before_reset", 0)? != 0,
        input_forget: a.int("input_forget", 0)? != 0,
        layout: layout as i32,
        dirs,
        reverse: direction == "reverse",
        clip,
        acts,
        hidden_size: a.int_opt("hidden_size")?.map(|h| h as usize),
    })
}
