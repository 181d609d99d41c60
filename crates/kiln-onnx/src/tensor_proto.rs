//! TensorProto / SequenceProto / OptionalProto → kiln values, with every size checked before
//! memory is taken and external data read only from inside the model's directory.

use crate::proto::{tensor_proto, OptionalProto, SequenceProto, TensorProto};
use crate::OnnxError;
use kiln_ir::{bf16, checked_numel, f16, DType, Tensor, TensorData, Value};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Decode a tensor. `base_dir` is the model's directory, needed for external data.
pub fn tensor_from_proto(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, OnnxError> {
    let name = t.name.clone().unwrap_or_default();
    let err = |message: String| OnnxError::Tensor { tensor: name.clone(), message };
    let code = t.data_type.unwrap_or(0);
    let dtype = DType::from_onnx_code(code).map_err(|n| err(format!("data type {n} is not supported by kiln")))?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(err(format!("negative dimension {d} in dims {:?}", t.dims)));
        }
        shape.push(usize::try_from(d).map_err(|_| err(format!("dimension {d} is too large")))?);
    }
    if shape.len() > kiln_ir::MAX_RANK {
        return Err(err(format!("rank {} exceeds kiln's limit of {}", shape.len(), kiln_ir::MAX_RANK)));
    }
    let numel = checked_numel(&shape).map_err(|e| err(e.to_string()))?;
    let data = if t.data_location == Some(tensor_proto::DataLocation::External as i32) {
        let bytes = read_external(t, &name, base_dir, numel * dtype.size())?;
        TensorData::from_le_bytes(dtype, &bytes).map_err(|e| err(e.to_string()))?
    } else if let Some(raw) = &t.raw_data {
        if raw.len() != numel * dtype.size() {
            return Err(err(format!(
                "raw_data has {} bytes but dims {:?} of {dtype} need {}",
                raw.len(),
                t.dims,
                numel * dtype.size()
            )));
        }
        TensorData::from_le_bytes(dtype, raw).map_err(|e| err(e.to_string()))?
    } else {
        typed_fields(t, dtype).map_err(&err)?
    };
    if data.len() != numel {
        return Err(err(format!("has {} values but dims {:?} need {numel}", data.len(), t.dims)));
    }
    Tensor::new(shape, data).map_err(|e| err(e.to_string()))
}

/// Data stored in the typed repeated fields (`float_data`, `int32_data`, ...).
fn typed_fields(t: &TensorProto, dtype: DType) -> Result<TensorData, String> {
    let i32s = &t.int32_data;
    Ok(match dtype {
        DType::F32 => TensorData::F32(t.float_data.clone()),
        DType::F64 => TensorData::F64(t.double_data.clone()),
        DType::I64 => TensorData::I64(t.int64_data.clone()),
        DType::U64 => TensorData::U64(t.uint64_data.clone()),
        DType::U32 => TensorData::U32(t.uint64_data.iter().map(|&v| v as u32).collect()),
        DType::I32 => TensorData::I32(i32s.clone()),
        DType::I16 => TensorData::I16(i32s.iter().map(|&v| v as i16).collect()),
        DType::U16 => TensorData::U16(i32s.iter().map(|&v| v as u16).collect()),
        DType::I8 => TensorData::I8(i32s.iter().map(|&v| v as i8).collect()),
        DType::U8 => TensorData::U8(i32s.iter().map(|&v| v as u8).collect()),
        DType::Bool => TensorData::Bool(i32s.iter().map(|&v| v != 0).collect()),
        DType::F16 => TensorData::F16(i32s.iter().map(|&v| f16::from_bits(v as u16)).collect()),
        DType::BF16 => TensorData::BF16(i32s.iter().map(|&v| bf16::from_bits(v as u16)).collect()),
    })
}

fn read_external(t: &TensorProto, name: &str, base_dir: Option<&Path>, expected: usize) -> Result<Vec<u8>, OnnxError> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        let value = kv.value.clone().unwrap_or_default();
        let bad = |what: &str| OnnxError::Tensor {
            tensor: name.to_string(),
            message: format!("external_data {what} '{value}' is not a non-negative integer"),
        };
        match kv.key.as_deref() {
            Some("location") => location = Some(value.clone()),
            Some("offset") => offset = value.parse().map_err(|_| bad("offset"))?,
            Some("length") => length = Some(value.parse::<u64>().map_err(|_| bad("length"))?),
            _ => {}
        }
    }
    let location = location.ok_or_else(|| OnnxError::Tensor {
        tensor: name.to_string(),
        message: "external data without a 'location'".into(),
    })?;
    let ext =
        |message: String| OnnxError::ExternalData { tensor: name.to_string(), location: location.clone(), message };
    let base = base_dir.ok_or_else(|| ext("external data needs the model's directory (load from a file)".into()))?;
    let base = base.canonicalize().map_err(|e| ext(format!("model directory: {e}")))?;
    let rel = Path::new(&location);
    if rel.is_absolute() {
        return Err(ext("absolute paths are refused: data must lie inside the model's directory".into()));
    }
    let path = base.join(rel).canonicalize().map_err(|e| ext(e.to_string()))?;
    if !path.starts_with(&base) {
        return Err(ext(format!(
            "resolves to {} outside the model's directory {}; refused",
            path.display(),
            base.display()
        )));
    }
    if let Some(len) = length {
        if len as usize != expected {
            return Err(ext(format!("length {len} does not match the {expected} bytes the dims need")));
        }
    }
    let mut file = std::fs::File::open(&path).map_err(|e| ext(e.to_string()))?;
    let file_len = file.metadata().map_err(|e| ext(e.to_string()))?.len();
    if offset.checked_add(expected as u64).is_none_or(|end| end > file_len) {
        return Err(ext(format!("needs {expected} bytes at offset {offset}, but the file has {file_len} bytes")));
    }
    file.seek(SeekFrom::Start(offset)).map_err(|e| ext(e.to_string()))?;
    let mut buf = vec![0u8; expected];
    file.read_exact(&mut buf).map_err(|e| ext(e.to_string()))?;
    Ok(buf)
}

/// Decode a SequenceProto of tensors.
pub fn sequence_from_proto(s: &SequenceProto) -> Result<Value, OnnxError> {
    let name = s.name.clone().unwrap_or_default();
    if !s.sequence_values.is_empty() || !s.map_values.is_empty() || !s.optional_values.is_empty() {
        return Err(OnnxError::Tensor {
            tensor: name,
            message: "sequences of sequences, maps or optionals are not supported".into(),
        });
    }
    let items = s.tensor_values.iter().map(|t| tensor_from_proto(t, None)).collect::<Result<_, _>>()?;
    Ok(Value::Sequence(items))
}

/// Decode an OptionalProto.
pub fn optional_from_proto(o: &OptionalProto) -> Result<Value, OnnxError> {
    if let Some(t) = &o.tensor_value {
        return Ok(Value::Optional(Some(Box::new(Value::Tensor(tensor_from_proto(t, None)?)))));
    }
    if let Some(s) = &o.sequence_value {
        return Ok(Value::Optional(Some(Box::new(sequence_from_proto(s)?))));
    }
    Ok(Value::Optional(None))
}
