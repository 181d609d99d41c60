//! Layers that generate values rather than read them: Range, ConstantOfShape, Shape and Size.
//! Their parameters (Range's start and delta) are read on the host; their output sizes come
//! from run-time shape inference.

use crate::error::CudaResult;
use crate::kernels::dtype_code;
use crate::launch::{numel, params};
use crate::session::CudaSession;

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

/// `AxisMap8` of values.cu: output coordinate o of axis k reads input coordinate
/// `o % modulus[k] + shift[k]` (zero outside the input).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct AxisMap8 {
    out: [i64; 8],
    modulus: [i64; 8],
    shift: [i64; 8],
    in_dim: [i64; 8],
    in_stride: [i64; 8],
}

impl CudaSession {
    /// HannWindow, HammingWindow, BlackmanWindow (the CPU kernel's formulas, in double).
    pub(crate) fn window(&mut self, li: usize, kind: i32, periodic: bool) -> CudaResult<()> {
        let (n, yp, yt) = self.generated_output(li)?;
        if n == 0 {
            return Ok(());
        }
        // A periodic window is one period of a window of size + 1; a symmetric one spans size - 1.
        let denom = if periodic { n as f64 } else { n as f64 - 1.0 };
        let one_point = (n == 1 && !periodic) as i32;
        let f = self.p.func("window_any")?;
        let grid = self.grid(n as usize);
        self.launch(f, grid, 256, params!(yp, yt, n, kind, denom, one_point))
    }

    /// Tile (coordinates wrap around the input) or CenterCropPad (the input centred in the
    /// output: crop drops the odd element at the end, pad puts the odd padding there).
    pub(crate) fn tile(&mut self, li: usize, center: bool) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let (xs, ys) = (self.shape(x)?, self.shape(y)?);
        let n = numel(&ys);
        if n == 0 {
            return Ok(());
        }
        if xs.len() != ys.len() || xs.len() > 8 {
            return Err(format!("input {xs:?} and output {ys:?} of different or too many dimensions"));
        }
        let mut m = AxisMap8::default();
        let in_strides = crate::kernels::strides(&xs);
        for (k, (&d, &t)) in xs.iter().zip(&ys).enumerate() {
            let (d, t) = (d as i64, t as i64);
            m.out[k] = t;
            m.in_dim[k] = d;
            m.in_stride[k] = in_strides[k];
            if center {
                m.modulus[k] = i64::MAX;
                m.shift[k] = if t <= d { (d - t) / 2 } else { -((t - d) / 2) };
            } else {
                m.modulus[k] = d;
            }
        }
        let size = self.device_dtype(x)?.size();
        let f = self.p.func(&format!("gather_axes_{size}"))?;
        let (xp, yp, n64, rank) = (self.ptr(x)?, self.ptr(y)?, n as i64, xs.len() as i32);
        let grid = self.grid(n);
        self.launch(f, grid, 256, params!(xp, yp, n64, rank, m))
    }

    /// TopK: values (the input's type) and int64 indices, sorted, ties to the lower index.
    pub(crate) fn top_k(&mut self, li: usize, axis: i64, largest: bool) -> CudaResult<()> {
        let x = self.required(li, 0)?;
        let xs = self.shape(x)?;
        let axis = kiln_ir::spec::normalize_axis(axis, xs.len()).map_err(|e| e.to_string())?;
        let k = self.const_ints(li, 1)?.and_then(|v| v.first().copied()).ok_or("TopK without K")?;
        let dim = xs[axis] as i64;
        if k < 0 || k > dim {
            return Err(format!("K = {k} is outside [0, {dim}] (the size of axis {axis})"));
        }
        let inner = numel(&xs[axis + 1..]) as i64;
        let lanes = numel(&xs[..axis]) as i64 * inner;
        if lanes == 0 || k == 0 {
            return Ok(());
        }
        let dtype = self.device_dtype(x)?;
        let xt = dtype_code(dtype).ok_or_else(|| format!("no device type for {dtype}"))?;
        let esize = dtype.size() as i32;
        let slot = |k: usize| -> CudaResult<u64> {
            match self.p.graph.layers[li].layer.outputs.get(k).copied().flatten() {
                Some(id) => self.ptr(id.0),
                None => Ok(0),
            }
        };
        let (xp, vp, ip) = (self.ptr(x)?, slot(0)?, slot(1)?);
        let largest = largest as i32;
        let f = self.p.func("topk_any")?;
        let grid = (lanes as usize).div_ceil(128).max(1) as u32;
        self.launch(f, grid, 128, params!(xp, xt, esize, vp, ip, lanes, dim, inner, k, largest))
    }
}

impl CudaSession {
    /// DFT along `axis` (input 2, default -2) of [..., signal, 1 or 2] lines, `dft_length`
    /// (input 1) samples; the output shape came from run-time inference.
    pub(crate) fn dft(&mut self, li: usize, inverse: bool, onesided: bool) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let (xs, ys) = (self.shape(x)?, self.shape(y)?);
        let rank = xs.len();
        if rank < 2 || ys.len() != rank {
            return Err(format!("DFT input {xs:?} and output {ys:?}"));
        }
        let axis = self.const_ints(li, 2)?.and_then(|v| v.first().copied()).unwrap_or(-2);
        let axis = kiln_ir::spec::normalize_axis(axis, rank).map_err(|e| e.to_string())?;
        if axis == rank - 1 {
            return Err("axis must not be the last (real/imaginary) dimension".into());
        }
        let n_in = xs[axis] as i64;
        let length = match self.const_ints(li, 1)?.and_then(|v| v.first().copied()) {
            Some(l) if l >= 1 => l,
            Some(l) => return Err(format!("dft_length must be positive, got {l}")),
            None if inverse && onesided => 2 * (n_in - 1).max(0),
            None => n_in,
        };
        let (c, c_out) = (xs[rank - 1] as i32, ys[rank - 1] as i32);
        let (outer, inner, n_out) = (numel(&xs[..axis]) as i64, numel(&xs[axis + 1..rank - 1]) as i64, ys[axis] as i64);
        let total = outer * inner * n_out;
        if total == 0 || length == 0 {
            return Ok(());
        }
        let code = |id: usize| -> CudaResult<i32> {
            let d = self.device_dtype(id)?;
            dtype_code(d).ok_or_else(|| format!("no device type for {d}"))
        };
        let (xt, yt) = (code(x)?, code(y)?);
        let (xp, yp) = (self.ptr(x)?, self.ptr(y)?);
        let (inv, herm) = (inverse as i32, (inverse && onesided) as i32);
        let f = self.p.func("dft_naive")?;
        let grid = self.grid(total as usize);
        self.launch(f, grid, 256, params!(xp, xt, yp, yt, outer, inner, c, n_in, length, n_out, c_out, inv, herm))
    }
}

impl CudaSession {
    /// Compress: the elements (or slices along `axis`) whose condition is true, in order.
    pub(crate) fn compress(&mut self, li: usize, axis: Option<i64>) -> CudaResult<()> {
        let (x, c, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let xs = self.shape(x)?;
        let (outer, dim, inner) = match axis {
            None => (1, numel(&xs), 1),
            Some(a) => {
                let a = kiln_ir::spec::normalize_axis(a, xs.len()).map_err(|e| e.to_string())?;
                (numel(&xs[..a]), xs[a], numel(&xs[a + 1..]))
            }
        };
        // The condition was read for shape inference; picks beyond the axis are an error (as
        // on the CPU), checked here so that the kernel never reads past the input.
        let cond = self.param(li, 1)?.ok_or("Compress without a condition")?.to_i64_vec();
        if let Some(last) = cond.iter().rposition(|&v| v != 0) {
            if last >= dim {
                return Err(format!("condition selects index {last}, beyond the dimension {dim}"));
            }
        }
        let kept = cond.iter().filter(|&&v| v != 0).count() as i64;
        if outer * inner == 0 || kept == 0 {
            return Ok(());
        }
        let size = self.device_dtype(x)?.size();
        let f = self.p.func(&format!("compress_{size}"))?;
        let (xp, yp, cp) = (self.ptr(x)?, self.ptr(y)?, self.ptr(c)?);
        let (cond_len, outer, dim, inner) = (cond.len() as i64, outer as i64, dim as i64, inner as i64);
        let grid = self.grid((outer * inner) as usize);
        self.launch(f, grid, 256, params!(xp, yp, cp, cond_len, outer, dim, inner, kept))
    }
}

impl CudaSession {
    /// OneHot: indices (any numeric type, truncated; negative ones count from the end) to rows
    /// of off/on values along `axis` of the output, whose shape run-time inference gave.
    pub(crate) fn one_hot(&mut self, li: usize, axis: i64) -> CudaResult<()> {
        let (idx, values, y) = (self.required(li, 0)?, self.required(li, 2)?, self.output(li, 0)?);
        let ys = self.shape(y)?;
        let r = ys.len() as i64;
        let axis = if axis < 0 { axis + r } else { axis };
        if !(0..r).contains(&axis) {
            return Err(format!("axis {axis} is out of range for an output of rank {r}"));
        }
        let axis = axis as usize;
        if numel(&self.shape(values)?) != 2 {
            return Err("values must hold [off_value, on_value]".into());
        }
        let (outer, depth, inner) = (numel(&ys[..axis]) as i64, ys[axis] as i64, numel(&ys[axis + 1..]) as i64);
        let total = outer * depth * inner;
        if total == 0 {
            return Ok(());
        }
        let it = {
            let d = self.device_dtype(idx)?;
            dtype_code(d).ok_or_else(|| format!("no device type for {d}"))?
        };
        let esize = self.device_dtype(values)?.size() as i32;
        let (ip, vp, yp) = (self.ptr(idx)?, self.ptr(values)?, self.ptr(y)?);
        let f = self.p.func("one_hot_any")?;
        let grid = self.grid(total as usize);
        self.launch(f, grid, 256, params!(ip, it, vp, esize, yp, outer, depth, inner))
    }
}
