//! What the benchmarks share: concrete input shapes and valid random inputs for a model.

use kiln::ir::TensorData;
use kiln::{Network, Tensor, Value, ValueType};
use std::collections::HashMap;

/// Concrete shapes for each input: symbolic dims become batch 1 / sequence 128.
pub fn shapes(net: &Network) -> Vec<(String, Vec<usize>)> {
    net.inputs()
        .iter()
        .filter_map(|&id| {
            let info = net.tensor(id);
            let Some(ValueType::Tensor(t)) = &info.ty else { return None };
            let dims = t.shape.as_ref()?;
            let shape =
                dims.iter().enumerate().map(|(axis, d)| d.known().unwrap_or(if axis == 0 { 1 } else { 128 })).collect();
            Some((info.name.clone(), shape))
        })
        .collect()
}

/// Random inputs that are valid for the model: token ids within BERT's vocabulary, an
/// attention mask of ones, token types 0/1, floats in [-1, 1).
pub fn random_inputs(net: &Network) -> HashMap<String, Value> {
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    shapes(net)
        .into_iter()
        .map(|(name, shape)| {
            let dtype = net
                .tensor(net.tensor_by_name(&name).expect("input"))
                .ty
                .as_ref()
                .and_then(|t| t.as_tensor())
                .map(|t| t.dtype);
            let n: usize = shape.iter().product();
            let data = match dtype {
                Some(kiln::DType::I64) => {
                    let modulus = match name.as_str() {
                        "input_ids" => 30000,
                        "attention_mask" => 1,
                        _ => 2,
                    };
                    let v = (0..n).map(|_| if modulus == 1 { 1 } else { (next() % modulus) as i64 }).collect();
                    TensorData::I64(v)
                }
                _ => TensorData::F32((0..n).map(|_| (next() % 2000) as f32 / 1000.0 - 1.0).collect()),
            };
            (name, Value::Tensor(Tensor::new(shape, data).expect("shape")))
        })
        .collect()
}
