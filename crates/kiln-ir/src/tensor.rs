//! Dense tensors with an owned, typed buffer: weights, constants and run-time values.

use crate::{DType, IrError};
use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt::Debug;

/// A typed element buffer. One variant per [`DType`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F64(Vec<f64>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
}

/// Runs `$body` with `$v` bound to the typed `Vec` inside a [`TensorData`] (by reference or
/// value, as the scrutinee is). The body is usually a call to a function generic over
/// [`Element`], so one generic kernel serves every dtype.
#[macro_export]
macro_rules! dispatch {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::F32($v) => $body,
            $crate::TensorData::F16($v) => $body,
            $crate::TensorData::BF16($v) => $body,
            $crate::TensorData::F64($v) => $body,
            $crate::TensorData::I8($v) => $body,
            $crate::TensorData::U8($v) => $body,
            $crate::TensorData::I16($v) => $body,
            $crate::TensorData::U16($v) => $body,
            $crate::TensorData::I32($v) => $body,
            $crate::TensorData::U32($v) => $body,
            $crate::TensorData::I64($v) => $body,
            $crate::TensorData::U64($v) => $body,
            $crate::TensorData::Bool($v) => $body,
        }
    };
}

/// Like [`dispatch!`], but wraps the body's `Vec<T>` result back into `TensorData` of the
/// same variant (the body must return a `Vec` of the same element type).
#[macro_export]
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::F32($v) => $crate::TensorData::F32($body),
            $crate::TensorData::F16($v) => $crate::TensorData::F16($body),
            $crate::TensorData::BF16($v) => $crate::TensorData::BF16($body),
            $crate::TensorData::F64($v) => $crate::TensorData::F64($body),
            $crate::TensorData::I8($v) => $crate::TensorData::I8($body),
            $crate::TensorData::U8($v) => $crate::TensorData::U8($body),
            $crate::TensorData::I16($v) => $crate::TensorData::I16($body),
            $crate::TensorData::U16($v) => $crate::TensorData::U16($body),
            $crate::TensorData::I32($v) => $crate::TensorData::I32($body),
            $crate::TensorData::U32($v) => $crate::TensorData::U32($body),
            $crate::TensorData::I64($v) => $crate::TensorData::I64($body),
            $crate::TensorData::U64($v) => $crate::TensorData::U64($body),
            $crate::TensorData::Bool($v) => $crate::TensorData::Bool($body),
        }
    };
}

/// A scalar type a tensor can hold.
pub trait Element: Copy + Default + Debug + PartialEq + PartialOrd + Send + Sync + 'static {
    const DTYPE: DType;
    fn slice(data: &TensorData) -> Option<&Vec<Self>>;
    fn slice_mut(data: &mut TensorData) -> Option<&mut Vec<Self>>;
    fn into_data(v: Vec<Self>) -> TensorData;
    /// Value as f64 (exact for floats and for integers up to 2^53).
    fn to_f64(self) -> f64;
    /// Conversion with Rust `as` semantics: floats truncate toward zero and saturate.
    fn from_f64(v: f64) -> Self;
    /// Exact integer value (floats truncate, bools are 0/1).
    fn to_i64(self) -> i64;
    /// Integer conversion that wraps like a C/numpy cast between integer types.
    fn from_i64(v: i64) -> Self;
    fn to_le_bytes_into(self, out: &mut Vec<u8>);
    fn from_le_slice(b: &[u8]) -> Self;
}

macro_rules! impl_int_element {
    ($t:ty, $variant:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn slice(data: &TensorData) -> Option<&Vec<Self>> {
                match data {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(data: &mut TensorData) -> Option<&mut Vec<Self>> {
                match data {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn into_data(v: Vec<Self>) -> TensorData {
                TensorData::$variant(v)
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_i64(self) -> i64 {
                self as i64
            }
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn to_le_bytes_into(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn from_le_slice(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("caller passes size_of bytes"))
            }
        }
    };
}
impl_int_element!(i8, I8);
impl_int_element!(u8, U8);
impl_int_element!(i16, I16);
impl_int_element!(u16, U16);
impl_int_element!(i32, I32);
impl_int_element!(u32, U32);
impl_int_element!(i64, I64);
impl_int_element!(u64, U64);

macro_rules! impl_float_element {
    ($t:ty, $variant:ident, $to:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn slice(data: &TensorData) -> Option<&Vec<Self>> {
                match data {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(data: &mut TensorData) -> Option<&mut Vec<Self>> {
                match data {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn into_data(v: Vec<Self>) -> TensorData {
                TensorData::$variant(v)
            }
            fn to_f64(self) -> f64 {
                let f: fn($t) -> f64 = $to;
                f(self)
            }
            fn from_f64(v: f64) -> Self {
                let f: fn(f64) -> $t = $from;
                f(v)
            }
            fn to_i64(self) -> i64 {
                self.to_f64() as i64
            }
            fn from_i64(v: i64) -> Self {
                Self::from_f64(v as f64)
            }
            fn to_le_bytes_into(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn from_le_slice(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("caller passes size_of bytes"))
            }
        }
    };
}
impl_float_element!(f32, F32, |x| x as f64, |x| x as f32);
impl_float_element!(f64, F64, |x| x, |x| x);
impl_float_element!(f16, F16, |x| x.to_f64(), f16::from_f64);
impl_float_element!(bf16, BF16, |x| x.to_f64(), bf16::from_f64);

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn slice(data: &TensorData) -> Option<&Vec<Self>> {
        match data {
            TensorData::Bool(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(data: &mut TensorData) -> Option<&mut Vec<Self>> {
        match data {
            TensorData::Bool(v) => Some(v),
            _ => None,
        }
    }
    fn into_data(v: Vec<Self>) -> TensorData {
        TensorData::Bool(v)
    }
    fn to_f64(self) -> f64 {
        self as u8 as f64
    }
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_i64(v: i64) -> Self {
        v != 0
    }
    fn to_le_bytes_into(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
    fn from_le_slice(b: &[u8]) -> Self {
        b[0] != 0
    }
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        dispatch!(self, v => elem_dtype(v))
    }

    pub fn len(&self) -> usize {
        dispatch!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` default (zero/false) elements of `dtype`.
    pub fn zeros(dtype: DType, n: usize) -> TensorData {
        match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            DType::F16 => TensorData::F16(vec![f16::ZERO; n]),
            DType::BF16 => TensorData::BF16(vec![bf16::ZERO; n]),
            DType::F64 => TensorData::F64(vec![0.0; n]),
            DType::I8 => TensorData::I8(vec![0; n]),
            DType::U8 => TensorData::U8(vec![0; n]),
            DType::I16 => TensorData::I16(vec![0; n]),
            DType::U16 => TensorData::U16(vec![0; n]),
            DType::I32 => TensorData::I32(vec![0; n]),
            DType::U32 => TensorData::U32(vec![0; n]),
            DType::I64 => TensorData::I64(vec![0; n]),
            DType::U64 => TensorData::U64(vec![0; n]),
            DType::Bool => TensorData::Bool(vec![false; n]),
        }
    }

    /// Decode little-endian bytes (ONNX `raw_data`, .npy bodies). The byte count must be a
    /// whole number of elements.
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Result<TensorData, IrError> {
        let size = dtype.size();
        if !bytes.len().is_multiple_of(size) {
            return Err(IrError::DataLength {
                what: format!("{} bytes of {dtype}", bytes.len()),
                expected: bytes.len() / size * size,
                got: bytes.len(),
            });
        }
        fn decode<T: Element>(bytes: &[u8]) -> TensorData {
            T::into_data(bytes.chunks_exact(std::mem::size_of::<T>()).map(T::from_le_slice).collect())
        }
        Ok(match dtype {
            DType::F32 => decode::<f32>(bytes),
            DType::F16 => decode::<f16>(bytes),
            DType::BF16 => decode::<bf16>(bytes),
            DType::F64 => decode::<f64>(bytes),
            DType::I8 => decode::<i8>(bytes),
            DType::U8 => decode::<u8>(bytes),
            DType::I16 => decode::<i16>(bytes),
            DType::U16 => decode::<u16>(bytes),
            DType::I32 => decode::<i32>(bytes),
            DType::U32 => decode::<u32>(bytes),
            DType::I64 => decode::<i64>(bytes),
            DType::U64 => decode::<u64>(bytes),
            DType::Bool => decode::<bool>(bytes),
        })
    }

    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * self.dtype().size());
        dispatch!(self, v => v.iter().for_each(|x| x.to_le_bytes_into(&mut out)));
        out
    }

    /// Every element converted to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        dispatch!(self, v => v.iter().map(|x| x.to_f64()).collect())
    }

    /// Every element converted to i64 (floats truncate).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        dispatch!(self, v => v.iter().map(|x| x.to_i64()).collect())
    }

    /// Gather elements by index into a new buffer of the same dtype.
    pub fn gather(&self, indices: &[usize]) -> TensorData {
        map_data!(self, v => indices.iter().map(|&i| v[i]).collect())
    }
}

fn elem_dtype<T: Element>(_: &[T]) -> DType {
    T::DTYPE
}

/// A dense row-major tensor. Serialized as its shape and [`TensorData`]; deserializing checks
/// that the element count matches the shape (through [`Tensor::new`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TensorRepr")]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// Largest element count kiln will allocate for one tensor (2^34); bigger requests from a model
/// or an input are refused instead of aborting on allocation.
pub const MAX_ELEMENTS: usize = 1 << 34;

/// Element count of `shape`, refusing overflow and anything above [`MAX_ELEMENTS`].
pub fn checked_numel(shape: &[usize]) -> Result<usize, IrError> {
    let mut n: usize = 1;
    for &d in shape {
        n = n.checked_mul(d).ok_or_else(|| IrError::TooLarge(format!("shape {shape:?}")))?;
    }
    if n > MAX_ELEMENTS {
        return Err(IrError::TooLarge(format!("shape {shape:?} has {n} elements (limit {MAX_ELEMENTS})")));
    }
    Ok(n)
}

impl Tensor {
    /// A tensor from a shape and a buffer whose length must match.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor, IrError> {
        let n = checked_numel(&shape)?;
        if n != data.len() {
            return Err(IrError::DataLength {
                what: format!("tensor of shape {shape:?}"),
                expected: n,
                got: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    pub fn from_vec<T: Element>(shape: Vec<usize>, v: Vec<T>) -> Result<Tensor, IrError> {
        Tensor::new(shape, T::into_data(v))
    }

    pub fn scalar<T: Element>(v: T) -> Tensor {
        Tensor { shape: vec![], data: T::into_data(vec![v]) }
    }

    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Result<Tensor, IrError> {
        let n = checked_numel(&shape)?;
        Ok(Tensor { shape, data: TensorData::zeros(dtype, n) })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut TensorData {
        &mut self.data
    }

    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// Same data, new shape (element count must match).
    pub fn reshape(self, shape: Vec<usize>) -> Result<Tensor, IrError> {
        Tensor::new(shape, self.data)
    }

    /// The elements as `&[T]`, or a dtype error.
    pub fn as_slice<T: Element>(&self) -> Result<&[T], IrError> {
        T::slice(&self.data)
            .map(|v| v.as_slice())
            .ok_or(IrError::DTypeMismatch { expected: T::DTYPE, got: self.dtype() })
    }

    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T], IrError> {
        let got = self.dtype();
        T::slice_mut(&mut self.data).map(|v| v.as_mut_slice()).ok_or(IrError::DTypeMismatch { expected: T::DTYPE, got })
    }

    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.data.to_f64_vec()
    }

    pub fn to_i64_vec(&self) -> Vec<i64> {
        self.data.to_i64_vec()
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        strides_of(&self.shape)
    }
}

/// Row-major strides in elements for `shape`.
pub fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

// serde. `TensorData` travels as its dtype and little-endian bytes (compact, and the bytes borrow
// from the input where the format allows); `Tensor` as its shape and data, re-checked on the way
// in, so a hostile file gets an error rather than a tensor whose shape lies about its data.

#[derive(Deserialize)]
#[serde(rename = "Tensor")]
struct TensorRepr {
    shape: Vec<usize>,
    data: TensorData,
}

impl TryFrom<TensorRepr> for Tensor {
    type Error = IrError;
    fn try_from(r: TensorRepr) -> Result<Tensor, IrError> {
        Tensor::new(r.shape, r.data).inspect_err(crate::network::record_deserialize_error)
    }
}

/// Serializes a byte slice as bytes (not as a sequence of numbers).
struct LeBytes<'a>(&'a [u8]);

impl Serialize for LeBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl Serialize for TensorData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("TensorData", 2)?;
        st.serialize_field("dtype", &self.dtype())?;
        st.serialize_field("bytes", &LeBytes(&self.to_le_bytes()))?;
        st.end()
    }
}

#[derive(Deserialize)]
#[serde(rename = "TensorData")]
struct TensorDataRepr<'a> {
    dtype: DType,
    #[serde(borrow)]
    bytes: ByteCow<'a>,
}

impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TensorData, D::Error> {
        let r = TensorDataRepr::deserialize(d)?;
        TensorData::from_le_bytes(r.dtype, &r.bytes.0)
            .inspect_err(crate::network::record_deserialize_error)
            .map_err(serde::de::Error::custom)
    }
}

/// Bytes borrowed from the input when the format can, owned otherwise; accepts a byte string or
/// a sequence of numbers (self-describing text formats).
struct ByteCow<'a>(Cow<'a, [u8]>);

impl<'de: 'a, 'a> Deserialize<'de> for ByteCow<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteCow<'a>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ByteCow<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("tensor bytes")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(ByteCow(Cow::Borrowed(v)))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(ByteCow(Cow::Owned(v.to_vec())))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(ByteCow(Cow::Owned(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The length hint comes from the input: trust it only up to a small capacity.
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(ByteCow(Cow::Owned(v)))
            }
        }
        d.deserialize_bytes(V)
    }
}
