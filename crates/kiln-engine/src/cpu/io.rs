//! Typed access to a layer invocation for the CPU's native kernels: inputs as `&[f32]` views of
//! arena or weight bytes (no copy), outputs written straight into their arena slot.

use crate::backend::{Arg, LayerIo, OutputSlot, Produced, WeightView};
use kiln_ir::{DType, Tensor, Value};

/// Input `index` as f32 elements and its shape. The slices live as long as the invocation's
/// memory, not the borrow of `io`, so outputs can be written while they are read.
pub(crate) fn f32_input<'a>(io: &LayerIo<'a>, index: usize) -> Result<(&'a [f32], &'a [usize]), String> {
    match io.inputs.get(index) {
        Some(Some(Arg::Bytes { dtype: DType::F32, shape, bytes }))
        | Some(Some(Arg::Weight { dtype: DType::F32, shape, bytes, .. })) => {
            let (shape, bytes): (&'a [usize], &'a [u8]) = (shape, bytes);
            let v = bytemuck::try_cast_slice::<u8, f32>(bytes).map_err(|e| format!("input {index}: {e:?}"))?;
            Ok((v, shape))
        }
        Some(Some(Arg::Value(Value::Tensor(t)))) => {
            let t: &'a Tensor = t;
            Ok((t.as_slice::<f32>().map_err(|e| format!("input {index}: {e}"))?, t.shape()))
        }
        Some(Some(_)) => Err(format!("input {index} is not an f32 tensor")),
        _ => Err(format!("input {index} is missing")),
    }
}

/// Input `index` as its tactic packed it at build time ([`Arg::PackedWeight`]): the packed f32
/// values (length checked by the kernel) and the weight's logical shape.
pub(crate) fn packed_f32_input<'a>(io: &LayerIo<'a>, index: usize) -> Result<(&'a [f32], &'a [usize]), String> {
    match io.inputs.get(index) {
        Some(Some(Arg::PackedWeight { dtype: DType::F32, shape, bytes })) => {
            let (shape, bytes): (&'a [usize], &'a [u8]) = (shape, bytes);
            let v = bytemuck::try_cast_slice::<u8, f32>(bytes).map_err(|e| format!("input {index}: {e:?}"))?;
            Ok((v, shape))
        }
        _ => Err(format!("input {index} is not the packed f32 weight this tactic was built with")),
    }
}

/// The packed-or-plain f32 weight `index`: packed at build time when `owned` is `None`, else
/// `owned` (packed when the kernel was made) with the plain input's shape.
pub(crate) fn weight_panels<'a>(
    io: &LayerIo<'a>,
    index: usize,
    owned: Option<&'a [f32]>,
) -> Result<(&'a [f32], &'a [usize]), String> {
    match owned {
        None => packed_f32_input(io, index),
        Some(p) => Ok((p, f32_input(io, index)?.1)),
    }
}

/// A packing tactic's weight as its kernel keeps it: `None` when the plan stores it packed
/// (then its bytes must be exactly the `len` values packing makes: a plan is untrusted), else
/// `pack` of the ONNX values.
pub(crate) fn own_packed_weight(
    w: &WeightView,
    len: usize,
    pack: impl FnOnce(&[f32]) -> Result<Vec<f32>, String>,
) -> Result<Option<Vec<f32>>, String> {
    if w.packed {
        if w.bytes.len() != len * 4 {
            return Err(format!("packed weight of {} bytes, expected {}", w.bytes.len(), len * 4));
        }
        return Ok(None);
    }
    let values: &[f32] = bytemuck::try_cast_slice(w.bytes).map_err(|e| format!("weight bytes: {e:?}"))?;
    pack(values).map(Some)
}

/// An f32 input's elements and shape.
pub(crate) type F32View<'a> = (&'a [f32], &'a [usize]);

/// Optional input `index` (absent → `None`).
pub(crate) fn opt_f32_input<'a>(io: &LayerIo<'a>, index: usize) -> Result<Option<F32View<'a>>, String> {
    match io.inputs.get(index) {
        Some(Some(_)) => f32_input(io, index).map(Some),
        _ => Ok(None),
    }
}

/// Run `fill` on output `index`'s memory: its arena slot when the result fits there, a fresh
/// buffer otherwise. Every element must be written by `fill`.
pub(crate) fn write_f32_output(
    io: &mut LayerIo,
    index: usize,
    shape: Vec<usize>,
    fill: impl FnOnce(&mut [f32]) -> Result<(), String>,
) -> Result<(), String> {
    let n: usize = shape.iter().product();
    if let Some(Some(OutputSlot::Arena { bytes })) = io.outputs.get_mut(index) {
        if n * 4 <= bytes.len() {
            if let Ok(out) = bytemuck::try_cast_slice_mut::<u8, f32>(&mut bytes[..n * 4]) {
                fill(out)?;
                io.results[index] = Some(Produced::InSlot(shape));
                return Ok(());
            }
        }
    }
    let mut v = vec![0f32; n];
    fill(&mut v)?;
    let t = Tensor::from_vec(shape, v).map_err(|e| e.to_string())?;
    if index < io.results.len() {
        io.results[index] = Some(Produced::Value(Value::Tensor(t)));
    }
    Ok(())
}

/// An output buffer shared by parallel tasks that each write their own disjoint elements (a
/// column block, an attention head, a transform position): rows of those parts interleave, so
/// they cannot be handed out as separate `&mut` slices.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub *mut f32);
// SAFETY: every user writes only elements no other task touches (see each call site).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `offset` past the start (a method, so closures capture the whole wrapper
    /// rather than its raw-pointer field).
    pub fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
