//! CPU kernels for the recurrent and attention family: Attention, LinearAttention,
//! FlexAttention, RotaryEmbedding, SwiGLU, RNN, GRU and LSTM.

mod attention;
mod common;
mod flex_attention;
mod linear_attention;
mod rnn;
mod rotary;
mod swiglu;

use crate::KernelFn;

pub(crate) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Attention" => attention::attention,
        "RNN" => rnn::rnn,
        "GRU" => rnn::gru,
        "LSTM" => rnn::lstm,
        "RotaryEmbedding" => rotary::rotary_embedding,
        "SwiGLU" => swiglu::swiglu,
        "LinearAttention" => linear_attention::linear_attention,
        "FlexAttention" => flex_attention::flex_attention,
        _ => return None,
    })
}
