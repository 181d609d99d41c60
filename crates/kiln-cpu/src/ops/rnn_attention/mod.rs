//! CPU kernels for the recurrent and attention family: Attention, LinearAttention,
//! FlexAttention, RotaryEmbedding, SwiGLU, RNN, GRU and LSTM.

mod attention;
mod common;
mod rnn;

use crate::KernelFn;

pub(crate) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Attention" => attention::attention,
        "RNN" => rnn::rnn,
        "GRU" => rnn::gru,
        "LSTM" => rnn::lstm,
        _ => return None,
    })
}
