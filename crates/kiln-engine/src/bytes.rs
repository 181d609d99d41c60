//! Tensor elements as raw little-endian bytes, without a per-element loop on little-endian
//! machines: the arena and the plan's weights hold tensors in that form.

use kiln_ir::{Element, TensorData};
use std::borrow::Cow;

/// The elements of `data` as little-endian bytes; borrowed where the machine is little-endian.
pub fn le_bytes(data: &TensorData) -> Cow<'_, [u8]> {
    kiln_ir::dispatch!(data, v => slice_bytes(v))
}

#[cfg(target_endian = "little")]
fn slice_bytes<T: Element>(v: &[T]) -> Cow<'_, [u8]> {
    // SAFETY: every kiln element type (integers, floats, f16/bf16, bool) is plain data without
    // padding, so its memory is `size_of_val(v)` initialized bytes; the borrow keeps `v` alive.
    Cow::Borrowed(unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) })
}

#[cfg(not(target_endian = "little"))]
fn slice_bytes<T: Element>(v: &[T]) -> Cow<'_, [u8]> {
    let mut out = Vec::with_capacity(std::mem::size_of_val(v));
    v.iter().for_each(|x| x.to_le_bytes_into(&mut out));
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_every_dtype() {
        let samples = [
            TensorData::F32(vec![1.5, -2.25]),
            TensorData::I64(vec![-3, 1 << 40]),
            TensorData::Bool(vec![true, false, true]),
            TensorData::F16(vec![half::f16::from_f32(0.5)]),
            TensorData::U8(vec![7, 255]),
        ];
        for data in samples {
            let bytes = le_bytes(&data);
            assert_eq!(bytes.as_ref(), data.to_le_bytes().as_slice());
            assert_eq!(TensorData::from_le_bytes(data.dtype(), &bytes).unwrap(), data);
        }
    }
}
