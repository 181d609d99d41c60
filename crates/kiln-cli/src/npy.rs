//! .npy files ↔ kiln tensors. npyz parses and writes the headers; bodies are little-endian
//! element records. bfloat16 is stored as raw 2-byte records (descr `<V2`), as numpy with
//! ml_dtypes writes it.

use anyhow::{bail, Context, Result};
use kiln::ir::{checked_numel, TensorData};
use kiln::{DType, Tensor};
use npyz::{DType as NpyDType, TypeStr, WriterBuilder};
use std::io::{Read, Write};
use std::path::Path;

pub fn read_npy(path: &Path) -> Result<Tensor> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file))
        .with_context(|| format!("{}: not a .npy file", path.display()))?;
    let descr = match npy.dtype() {
        NpyDType::Plain(ts) => ts.to_string(),
        other => bail!("{}: structured dtype {other:?} is not supported", path.display()),
    };
    let dtype = dtype_of_descr(&descr).with_context(|| format!("{}: dtype '{descr}'", path.display()))?;
    if npy.order() == npyz::Order::Fortran {
        bail!("{}: Fortran-ordered arrays are not supported; save with np.ascontiguousarray", path.display());
    }
    let shape: Vec<usize> =
        npy.shape().iter().map(|&d| usize::try_from(d).context("dimension too large")).collect::<Result<_>>()?;
    let numel = checked_numel(&shape).with_context(|| format!("{}", path.display()))?;
    let mut bytes = Vec::new();
    let expected = (numel * dtype.size()) as u64;
    npy.into_inner().take(expected).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != expected {
        bail!(
            "{}: truncated: {} data bytes, shape {:?} of {dtype} needs {expected}",
            path.display(),
            bytes.len(),
            shape
        );
    }
    Ok(Tensor::new(shape, TensorData::from_le_bytes(dtype, &bytes)?)?)
}

pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    let descr: TypeStr = descr_of_dtype(t.dtype()).parse().expect("descr strings are valid");
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let mut buf = Vec::new();
    npyz::WriteOptions::new_header_only()
        .dtype(NpyDType::Plain(descr))
        .shape(&shape)
        .writer(&mut buf)
        .write_header_only()?;
    buf.extend_from_slice(&t.data().to_le_bytes());
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&buf)?;
    Ok(())
}

fn dtype_of_descr(descr: &str) -> Result<DType> {
    Ok(match descr {
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        "<f2" => DType::F16,
        "<V2" | "|V2" => DType::BF16,
        "|i1" | "<i1" => DType::I8,
        "|u1" | "<u1" => DType::U8,
        "<i2" => DType::I16,
        "<u2" => DType::U16,
        "<i4" => DType::I32,
        "<u4" => DType::U32,
        "<i8" => DType::I64,
        "<u8" => DType::U64,
        "|b1" => DType::Bool,
        other if other.starts_with('>') => bail!("big-endian data is not supported"),
        _ => bail!("not a dtype kiln supports"),
    })
}

fn descr_of_dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::BF16 => "<V2",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::I16 => "<i2",
        DType::U16 => "<u2",
        DType::I32 => "<i4",
        DType::U32 => "<u4",
        DType::I64 => "<i8",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_round_trips() {
        let dir = std::env::temp_dir().join(format!("kiln-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for dtype in DType::ALL {
            let data = TensorData::from_le_bytes(
                dtype,
                &(0..6 * dtype.size())
                    .map(|i| (i * 37 % 251) as u8 % if dtype == DType::Bool { 2 } else { 251 })
                    .collect::<Vec<u8>>(),
            )
            .unwrap();
            let t = Tensor::new(vec![2, 3], data).unwrap();
            let p = dir.join(format!("{dtype}.npy"));
            write_npy(&p, &t).unwrap();
            let back = read_npy(&p).unwrap();
            assert_eq!(back.dtype(), dtype);
            assert_eq!(back.shape(), &[2, 3]);
            assert_eq!(back.data().to_le_bytes(), t.data().to_le_bytes(), "{dtype}");
        }
    }
}
