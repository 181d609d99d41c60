//! Layers that generate values rather than read them: Range, ConstantOfShape, Shape and Size.
//! Their parameters (Range's start and delta) are read on the host; their output sizes come
//! from run-time shape inference.

use crate::error::CudaResult;
use crate::kernels::dtype_code;
use crate::launch::numel;
use crate::session::CudaSession;
use std::ffi::c_void;

/// `Values8` of library.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Values8 {
    v: [i64; 8],
}

impl CudaSession {
    /// Output 0's element count, device address and type code (as stored on the device).
    fn generated_output(&self, li: usize) -> CudaResult<(i64, u64, i32)> {
        let y = self.output(li, 0)?;
        let dtype = self.device_dtype(y)?;
        let code = dtype_code(dtype).ok_or_else(|| format!("no device type for {dtype}"))?;
        Ok((numel(&self.shape(y)?) as i64, self.ptr(y)?, code))
    }

    pub(crate) fn range(&mut self, li: usize) -> CudaResult<()> {
        let (n, yp, yt) = self.generated_output(li)?;
        if n == 0 {
            return Ok(());
        }
        let start = self.param(li, 0)?.ok_or("Range without start")?;
        let delta = self.param(li, 2)?.ok_or("Range without delta")?;
        let is_int = start.dtype().is_int() as i32;
        let first = |t: &kiln_ir::Tensor| (t.to_i64_vec().first().copied(), t.to_f64_vec().first().copied());
        let ((Some(istart), Some(fstart)), (Some(idelta), Some(fdelta))) = (first(&start), first(&delta)) else {
            return Err("Range start and delta must be scalars".into());
        };
        let f = self.p.func("range_any")?;
        let grid = self.grid(n as usize);
        self.launch(f, grid, 256, params!(yp, yt, n, is_int, istart, idelta, fstart, fdelta))
    }

    pub(crate) fn constant_of_shape(&mut self, li: usize) -> CudaResult<()> {
        let (n, yp, yt) = self.generated_output(li)?;
        if n == 0 {
            return Ok(());
        }
        let value = self.p.graph.layers[li].layer.attrs.tensor_opt("value").map_err(|e| e.to_string())?;
        let (is_int, iv, fv) = match value {
            Some(v) if v.len() != 1 => return Err("ConstantOfShape's value must hold one element".into()),
            Some(v) => (v.dtype().is_int() as i32, v.to_i64_vec()[0], v.to_f64_vec()[0]),
            None => (0, 0, 0.0),
        };
        let f = self.p.func("fill_any")?;
        let grid = self.grid(n as usize);
        self.launch(f, grid, 256, params!(yp, yt, n, is_int, iv, fv))
    }

    /// Shape (its start/end slice of the input's dims) or Size (the element count).
    pub(crate) fn shape_of(&mut self, li: usize, size: bool) -> CudaResult<()> {
        let dims = self.shape(self.required(li, 0)?)?;
        let values: Vec<i64> = if size {
            vec![numel(&dims) as i64]
        } else {
            let attrs = &self.p.graph.layers[li].layer.attrs;
            let r = dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clamp(attrs.int("start", 0).map_err(|e| e.to_string())?);
            let end = clamp(attrs.int("end", r).map_err(|e| e.to_string())?);
            dims[start..end.max(start)].iter().map(|&d| d as i64).collect()
        };
        if values.is_empty() {
            return Ok(());
        }
        let mut vals = Values8::default();
        if values.len() > vals.v.len() {
            return Err(format!("a shape of rank {} (at most {} on the GPU)", values.len(), vals.v.len()));
        }
        vals.v[..values.len()].copy_from_slice(&values);
        let (_, yp, _) = self.generated_output(li)?;
        let n = values.len() as i64;
        let f = self.p.func("write_values_i64")?;
        self.launch(f, 1, 32, params!(yp, n, vals))
    }
}
