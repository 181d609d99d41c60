//! Launching the gather/scatter, cumulative, loss and index-permutation ops (lower_index.rs,
//! kernels/index.cu). Shapes are checked here as the CPU kernels check them (a mismatch is the
//! layer's error); indices read from data are checked on the device (the error flag).

use crate::error::CudaResult;
use crate::kernels::{dtype_code, strides};
use crate::launch::{numel, params, Str8};
use crate::lower_index::IndexOp;
use crate::program::Func;
use crate::session::CudaSession;
use kiln_ir::spec::normalize_axis;
use kiln_ir::DType;

/// Up to 8 values as the kernels' `Str8`.
fn str8(values: impl IntoIterator<Item = i64>) -> CudaResult<Str8> {
    let mut s = Str8::default();
    for (k, v) in values.into_iter().enumerate() {
        *s.0.get_mut(k).ok_or("more than 8 dimensions")? = v;
    }
    Ok(s)
}

fn dims(shape: &[usize]) -> CudaResult<Str8> {
    str8(shape.iter().map(|&d| d as i64))
}

/// The message of the error flag the index kernels set (`INDEX_ERROR` in index.cu).
pub(crate) const INDEX_ERROR_MESSAGE: &str =
    "an index read from data was out of range (Gather, GatherElements/ND, a scatter, a loss target, CumSum axis or sequence length)";

impl CudaSession {
    pub(crate) fn launch_index(&mut self, li: usize, op: &IndexOp) -> CudaResult<()> {
        match *op {
            IndexOp::Loss { softmax, reduction, ignore_index } => self.loss(li, softmax, reduction, ignore_index),
            IndexOp::GatherElements { axis } => self.gather_elements(li, axis),
            IndexOp::GatherND { batch_dims } => self.gather_nd(li, batch_dims),
            IndexOp::ScatterElements { axis, reduction } => self.scatter_elements(li, axis, reduction),
            IndexOp::ScatterND { reduction } => self.scatter_nd(li, reduction),
            IndexOp::TensorScatter { axis, circular } => self.tensor_scatter(li, axis, circular),
            IndexOp::CumScan { product, exclusive, reverse } => self.cum_scan(li, product, exclusive, reverse),
            IndexOp::Hardmax { axis, coerce_2d } => self.hardmax(li, axis, coerce_2d),
            IndexOp::EyeLike { k } => {
                let y = self.output(li, 0)?;
                let ys = self.shape(y)?;
                let [rows, cols] = ys[..] else { return Err(format!("EyeLike output of shape {ys:?}")) };
                let yt = dtype_code(self.device_dtype(y)?).ok_or("unsupported EyeLike type")?;
                if rows * cols == 0 {
                    return Ok(());
                }
                let f = self.p.func("eye_like")?;
                let (yp, rows, cols) = (self.ptr(y)?, rows as i64, cols as i64);
                let grid = self.grid((rows * cols) as usize);
                self.launch(f, grid, 256, params!(yp, yt, rows, cols, k))
            }
            IndexOp::BlockShuffle { to_space, blocksize, crd } => self.block_shuffle(li, to_space, blocksize, crd),
            IndexOp::ReverseSequence { batch_axis } => self.reverse_sequence(li, batch_axis),
            IndexOp::Quantize { dequantize, axis, block } => self.quantize(li, dequantize, axis, block),
            IndexOp::MaxUnpool => self.max_unpool(li),
            IndexOp::DynamicQuantize => {
                let (x, y, scale, zp) =
                    (self.required(li, 0)?, self.output(li, 0)?, self.output(li, 1)?, self.output(li, 2)?);
                let f = self.p.typed("dynamic_quantize_linear")?;
                let (xp, yp, sp, zpp) = (self.ptr(x)?, self.ptr(y)?, self.ptr(scale)?, self.ptr(zp)?);
                let n = numel(&self.shape(x)?) as i64;
                self.launch(f, 1, 256, params!(xp, yp, sp, zpp, n))
            }
        }
    }

    /// The kernels' `is_i32` flag of an index tensor: 1 for int32, 0 for int64.
    fn index_flag(&self, id: usize) -> CudaResult<i32> {
        match self.device_dtype(id)? {
            DType::I64 => Ok(0),
            DType::I32 => Ok(1),
            other => Err(format!("indices of type {other}")),
        }
    }

    /// The entry point of a kernel that moves elements of tensor `id`'s dtype (`NAME_<bytes>`).
    fn by_size(&self, name: &str, id: usize) -> CudaResult<Func> {
        self.p.func(&format!("{name}_{}", self.device_dtype(id)?.size()))
    }

    /// Output `y` as a copy of input `x` (what the scatters write into).
    fn copy_whole(&self, x: usize, y: usize) -> CudaResult<()> {
        let n = numel(&self.shape(x)?);
        if self.ptr(x)? == self.ptr(y)? {
            return Ok(());
        }
        self.copy_block(x, 0, y, 0, &[n], &[1], &[1])
    }

    /// NegativeLogLikelihoodLoss / SoftmaxCrossEntropyLoss (`nll_loss` in index.cu): one thread
    /// per (n, d) element; the reduced forms in one block.
    fn loss(&mut self, li: usize, softmax: bool, reduction: i32, ignore: Option<i64>) -> CudaResult<()> {
        let (x, t, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (xs, ts) = (self.shape(x)?, self.shape(t)?);
        if xs.len() < 2 {
            return Err(format!("loss input of shape {xs:?} (must be [N, C, ...])"));
        }
        let (n, c, d) = (xs[0], xs[1], numel(&xs[2..]));
        let want: Vec<usize> = [&xs[..1], &xs[2..]].concat();
        if ts != want {
            return Err(format!("target shape {ts:?} must be {want:?} for input shape {xs:?}"));
        }
        let weight = match self.input(li, 2) {
            Some(w) => {
                let ws = self.shape(w)?;
                if ws != [c] {
                    return Err(format!("weight must have shape [{c}], got {ws:?}"));
                }
                self.ptr(w)?
            }
            None => 0,
        };
        let log_prob = match self.p.graph.layers[li].layer.outputs.get(1).copied().flatten() {
            Some(id) if softmax => self.ptr(id.0)?,
            _ => 0,
        };
        if reduction == 0 && n * d == 0 {
            return Ok(());
        }
        let f = self.p.typed("nll_loss")?;
        let grid = if reduction == 0 { self.grid(n * d) } else { 1 };
        let (xp, tp, t_i32, yp) = (self.ptr(x)?, self.ptr(t)?, self.index_flag(t)?, self.ptr(y)?);
        let (n, c, d, sm) = (n as i64, c as i64, d as i64, softmax as i32);
        let (has_ignore, ignore, err) = (ignore.is_some() as i32, ignore.unwrap_or(0), self.error_flag.ptr());
        self.launch(
            f,
            grid,
            256,
            params!(xp, tp, t_i32, weight, yp, log_prob, n, c, d, sm, reduction, has_ignore, ignore, err),
        )
    }

    /// GatherElements/ScatterElements shapes: the normalized axis; indices of data's rank, no
    /// larger than data off the axis.
    fn elements_axis(&self, axis: i64, ds: &[usize], is: &[usize]) -> CudaResult<usize> {
        let axis = normalize_axis(axis, ds.len()).map_err(|e| e.to_string())?;
        if is.len() != ds.len() || is.iter().zip(ds).enumerate().any(|(a, (i, d))| a != axis && i > d) {
            return Err(format!("indices shape {is:?} does not fit data shape {ds:?}"));
        }
        Ok(axis)
    }

    fn gather_elements(&mut self, li: usize, axis: i64) -> CudaResult<()> {
        let (d, i, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (ds, is) = (self.shape(d)?, self.shape(i)?);
        let axis = self.elements_axis(axis, &ds, &is)?;
        let n = numel(&is);
        if n == 0 {
            return Ok(());
        }
        let f = self.by_size("gather_elements", d)?;
        let (ishape, dstride) = (dims(&is)?, str8(strides(&ds))?);
        let (dp, ip, flag, yp, err) =
            (self.ptr(d)?, self.ptr(i)?, self.index_flag(i)?, self.ptr(y)?, self.error_flag.ptr());
        let (n64, rank, axis_i, axis_len) = (n as i64, ds.len() as i32, axis as i32, ds[axis] as i64);
        let grid = self.grid(n);
        self.launch(f, grid, 256, params!(dp, ip, flag, yp, n64, rank, ishape, dstride, axis_i, axis_len, err))
    }

    fn gather_nd(&mut self, li: usize, b: usize) -> CudaResult<()> {
        let (d, i, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (ds, is) = (self.shape(d)?, self.shape(i)?);
        if is.is_empty() || b >= is.len() || b >= ds.len() || ds[..b] != is[..b] {
            return Err(format!("indices shape {is:?} does not fit data shape {ds:?} with batch_dims {b}"));
        }
        let k = is[is.len() - 1];
        if b + k > ds.len() {
            return Err(format!("index tuples of length {k} exceed data rank {} minus batch_dims {b}", ds.len()));
        }
        let block = numel(&ds[b + k..]);
        let n = numel(&is[..is.len() - 1]) * block;
        if n == 0 {
            return Ok(());
        }
        let f = self.by_size("gather_nd", d)?;
        let (dshape, dstride) = (dims(&ds)?, str8(strides(&ds))?);
        let (dp, ip, flag, yp, err) =
            (self.ptr(d)?, self.ptr(i)?, self.index_flag(i)?, self.ptr(y)?, self.error_flag.ptr());
        let (n64, block, k) = (n as i64, block as i64, k as i32);
        let (per_batch, batch_size, b) = (numel(&is[b..is.len() - 1]) as i64, numel(&ds[b..]) as i64, b as i32);
        let grid = self.grid(n);
        self.launch(
            f,
            grid,
            256,
            params!(dp, ip, flag, yp, n64, block, k, per_batch, batch_size, b, dshape, dstride, err),
        )
    }

    /// The kernel of a scatter: element moves (`NAME_<bytes>`) or a float reduction.
    fn scatter_kernel(&self, name: &str, data: usize, reduction: i32) -> CudaResult<Func> {
        if reduction == 0 {
            self.by_size(name, data)
        } else {
            self.p.typed(&format!("{name}_reduce"))
        }
    }

    fn scatter_elements(&mut self, li: usize, axis: i64, red: i32) -> CudaResult<()> {
        let (d, i, u, y) = (self.required(li, 0)?, self.required(li, 1)?, self.required(li, 2)?, self.output(li, 0)?);
        let (ds, is, us) = (self.shape(d)?, self.shape(i)?, self.shape(u)?);
        if us != is {
            return Err(format!("updates shape {us:?} differs from indices shape {is:?}"));
        }
        let axis = self.elements_axis(axis, &ds, &is)?;
        self.copy_whole(d, y)?;
        let lines = numel(&is).checked_div(is[axis]).unwrap_or(0);
        if lines == 0 {
            return Ok(());
        }
        let f = self.scatter_kernel("scatter_elements", d, red)?;
        let (ishape, dstride) = (dims(&is)?, str8(strides(&ds))?);
        let (yp, ip, flag, up, err) =
            (self.ptr(y)?, self.ptr(i)?, self.index_flag(i)?, self.ptr(u)?, self.error_flag.ptr());
        let (lines64, rank, axis_i, axis_len) = (lines as i64, ds.len() as i32, axis as i32, ds[axis] as i64);
        let grid = self.grid(lines);
        self.launch(f, grid, 256, params!(yp, ip, flag, up, lines64, rank, ishape, dstride, axis_i, axis_len, err, red))
    }

    fn scatter_nd(&mut self, li: usize, red: i32) -> CudaResult<()> {
        let (d, i, u, y) = (self.required(li, 0)?, self.required(li, 1)?, self.required(li, 2)?, self.output(li, 0)?);
        let (ds, is, us) = (self.shape(d)?, self.shape(i)?, self.shape(u)?);
        let k = *is.last().ok_or("indices must have rank at least 1")?;
        if k > ds.len() {
            return Err(format!("index tuples of length {k} exceed the data rank {}", ds.len()));
        }
        let want: Vec<usize> = [&is[..is.len() - 1], &ds[k..]].concat();
        if us != want {
            return Err(format!("updates shape {us:?} must be {want:?}"));
        }
        self.copy_whole(d, y)?;
        let (tuples, block) = (numel(&is[..is.len() - 1]), numel(&ds[k..]));
        if tuples * block == 0 {
            return Ok(());
        }
        let f = self.scatter_kernel("scatter_nd", d, red)?;
        let (dshape, dstride) = (dims(&ds)?, str8(strides(&ds))?);
        let (yp, ip, flag, up, err) =
            (self.ptr(y)?, self.ptr(i)?, self.index_flag(i)?, self.ptr(u)?, self.error_flag.ptr());
        let (tuples, k, block64) = (tuples as i64, k as i32, block as i64);
        let grid = self.grid(block);
        self.launch(f, grid, 256, params!(yp, ip, flag, up, tuples, k, block64, dshape, dstride, err, red))
    }

    fn tensor_scatter(&mut self, li: usize, axis: i64, circular: bool) -> CudaResult<()> {
        let (past, upd, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (ps, us) = (self.shape(past)?, self.shape(upd)?);
        let r = ps.len();
        if r < 2 {
            return Err(format!("past_cache must have rank at least 2, got shape {ps:?}"));
        }
        let axis = normalize_axis(axis, r).map_err(|e| e.to_string())?;
        let fits =
            axis != 0 && us.len() == r && (0..r).all(|a| if a == axis { us[a] <= ps[a] } else { us[a] == ps[a] });
        if !fits {
            return Err(format!("update shape {us:?} does not fit past_cache shape {ps:?} on axis {axis}"));
        }
        let (writes, w_i32) = match self.input(li, 2) {
            Some(w) => {
                if numel(&self.shape(w)?) != ps[0] {
                    return Err(format!("write_indices must have {} entries", ps[0]));
                }
                (self.ptr(w)?, self.index_flag(w)?)
            }
            None => (0, 0),
        };
        self.copy_whole(past, y)?;
        let (prefix, seq, inner) = (numel(&ps[..axis]), us[axis], numel(&ps[axis + 1..]));
        let n = prefix * seq * inner;
        if n == 0 {
            return Ok(());
        }
        let f = self.by_size("tensor_scatter", past)?;
        let (yp, up, err) = (self.ptr(y)?, self.ptr(upd)?, self.error_flag.ptr());
        let (n64, seq, max_len, inner) = (n as i64, seq as i64, ps[axis] as i64, inner as i64);
        let (per_batch, circ) = ((prefix / ps[0]).max(1) as i64, circular as i32);
        let grid = self.grid(n);
        self.launch(f, grid, 256, params!(yp, up, writes, w_i32, n64, seq, max_len, inner, per_batch, circ, err))
    }

    fn cum_scan(&mut self, li: usize, product: bool, exclusive: bool, reverse: bool) -> CudaResult<()> {
        let (x, a, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let xs = self.shape(x)?;
        if xs.is_empty() {
            return Err("CumSum/CumProd need an input of rank >= 1".into());
        }
        let axis_shape = self.shape(a)?;
        if numel(&axis_shape) != 1 || axis_shape.len() > 1 {
            return Err(format!("the axis must be a single integer, got shape {axis_shape:?}"));
        }
        if numel(&xs) == 0 {
            return Ok(());
        }
        let f = match self.device_dtype(x)? {
            DType::I32 => self.p.func("cum_scan_i32")?,
            DType::I64 => self.p.func("cum_scan_i64")?,
            DType::F64 => self.p.func("cum_scan_f64")?,
            _ => self.p.typed("cum_scan")?,
        };
        let (xp, yp, ap, a_i32, err) =
            (self.ptr(x)?, self.ptr(y)?, self.ptr(a)?, self.index_flag(a)?, self.error_flag.ptr());
        let (rank, shape) = (xs.len() as i32, dims(&xs)?);
        let (pr, ex, rev) = (product as i32, exclusive as i32, reverse as i32);
        let grid = self.grid(numel(&xs));
        self.launch(f, grid, 256, params!(xp, yp, ap, a_i32, rank, shape, pr, ex, rev, err))
    }

    fn hardmax(&mut self, li: usize, axis: i64, coerce_2d: bool) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let xs = self.shape(x)?;
        let (outer, n, inner) = if xs.is_empty() {
            (1, 1, 1)
        } else {
            let axis = normalize_axis(axis, xs.len()).map_err(|e| e.to_string())?;
            if coerce_2d {
                (numel(&xs[..axis]), numel(&xs[axis..]), 1)
            } else {
                (numel(&xs[..axis]), xs[axis], numel(&xs[axis + 1..]))
            }
        };
        if outer * n * inner == 0 {
            return Ok(());
        }
        let f = self.p.typed("hardmax")?;
        let (xp, yp) = (self.ptr(x)?, self.ptr(y)?);
        let grid = self.grid(outer * inner);
        let (outer, n, inner) = (outer as i64, n as i64, inner as i64);
        self.launch(f, grid, 256, params!(xp, yp, outer, n, inner))
    }

    /// DepthToSpace / SpaceToDepth as one strided copy: x viewed as 6-D, permuted into y.
    fn block_shuffle(&mut self, li: usize, to_space: bool, b: usize, crd: bool) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let xs = self.shape(x)?;
        let [n, c, h, w] = xs[..] else { return Err(format!("input must be 4-D, got shape {xs:?}")) };
        let (view, perm): ([usize; 6], [usize; 6]) = if to_space {
            if c % (b * b) != 0 {
                return Err(format!("channels {c} are not divisible by blocksize² ({b}²)"));
            }
            let c2 = c / (b * b);
            if crd {
                ([n, c2, b, b, h, w], [0, 1, 4, 2, 5, 3])
            } else {
                ([n, b, b, c2, h, w], [0, 3, 4, 1, 5, 2])
            }
        } else {
            if h % b != 0 || w % b != 0 {
                return Err(format!("spatial dims {h}x{w} are not divisible by blocksize {b}"));
            }
            let view = [n, c, h / b, b, w / b, b];
            (view, if crd { [0, 1, 3, 5, 2, 4] } else { [0, 3, 5, 1, 2, 4] })
        };
        let vst = strides(&view);
        let shape: Vec<usize> = perm.iter().map(|&p| view[p]).collect();
        let src: Vec<i64> = perm.iter().map(|&p| vst[p]).collect();
        self.copy_block(x, 0, y, 0, &shape, &src, &strides(&shape))
    }

    fn reverse_sequence(&mut self, li: usize, batch_axis: usize) -> CudaResult<()> {
        let (x, lens, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let xs = self.shape(x)?;
        if xs.len() < 2 {
            return Err(format!("input must have rank at least 2, got shape {xs:?}"));
        }
        let time_axis = 1 - batch_axis;
        let (batch, time) = (xs[batch_axis], xs[time_axis]);
        if numel(&self.shape(lens)?) != batch {
            return Err(format!("sequence_lens must have {batch} entries"));
        }
        let n = numel(&xs);
        if n == 0 {
            return Ok(());
        }
        let st = strides(&xs);
        let f = self.by_size("reverse_sequence", x)?;
        let (xp, lp, flag, yp, err) =
            (self.ptr(x)?, self.ptr(lens)?, self.index_flag(lens)?, self.ptr(y)?, self.error_flag.ptr());
        let (n64, batch, b_stride, time, t_stride) =
            (n as i64, batch as i64, st[batch_axis], time as i64, st[time_axis]);
        let grid = self.grid(n);
        self.launch(f, grid, 256, params!(xp, lp, flag, yp, n64, batch, b_stride, time, t_stride, err))
    }

    /// QuantizeLinear / DequantizeLinear: which scale each element takes (`quant_param_index` in
    /// index.cu), checked as the CPU kernel checks it.
    fn quantize(&mut self, li: usize, dequantize: bool, axis: i64, block: usize) -> CudaResult<()> {
        let (x, s, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (xs, ss) = (self.shape(x)?, self.shape(s)?);
        let zp = self.input(li, 2);
        if let Some(z) = zp {
            if self.shape(z)? != ss {
                return Err(format!("zero point shape {:?} differs from scale shape {ss:?}", self.shape(z)?));
            }
        }
        let (mut mode, mut inner, mut dim, mut blocks) = (0i32, 1usize, 1usize, 1usize);
        if !(numel(&ss) == 1 && (block == 0 || ss.len() <= 1)) {
            let axis = normalize_axis(axis, xs.len()).map_err(|e| e.to_string())?;
            (inner, dim) = (numel(&xs[axis + 1..]), xs[axis]);
            if block == 0 {
                if ss != [dim] {
                    return Err(format!("per-axis scale must be 1-D of length {dim}, got {ss:?}"));
                }
                mode = 1;
            } else {
                blocks = dim.div_ceil(block);
                let mut want = xs.clone();
                want[axis] = blocks;
                if ss != want {
                    return Err(format!("blocked scale must have shape {want:?}, got {ss:?}"));
                }
                mode = 2;
            }
        }
        let n = numel(&xs);
        if n == 0 {
            return Ok(());
        }
        let code =
            |id: usize| -> CudaResult<i32> { dtype_code(self.device_dtype(id)?).ok_or("unsupported type".into()) };
        let (xt, yt) = (code(x)?, code(y)?);
        let (zpp, zt) = match zp {
            Some(z) => (self.ptr(z)?, code(z)?),
            None => (0, 0),
        };
        let (lo, hi): (f64, f64) = match self.device_dtype(y)? {
            DType::I8 => (-128.0, 127.0),
            DType::U8 => (0.0, 255.0),
            DType::I16 => (-32768.0, 32767.0),
            DType::U16 => (0.0, 65535.0),
            _ => (0.0, 0.0),
        };
        let f = self.p.typed(if dequantize { "dequantize_linear" } else { "quantize_linear" })?;
        let (xp, sp, yp, n64) = (self.ptr(x)?, self.ptr(s)?, self.ptr(y)?, n as i64);
        let (inner, dim, block, blocks) = (inner as i64, dim as i64, block.max(1) as i64, blocks as i64);
        let grid = self.grid(n);
        self.launch(f, grid, 256, params!(xp, xt, sp, zpp, zt, yp, yt, n64, mode, inner, dim, block, blocks, lo, hi))
    }

    /// MaxUnpool: y zeroed, then each element of x written at its index (the last of equal
    /// indices wins, through an owner array in the workspace).
    fn max_unpool(&mut self, li: usize) -> CudaResult<()> {
        let (x, ind, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (xs, is) = (self.shape(x)?, self.shape(ind)?);
        if xs != is {
            return Err(format!("indices shape {is:?} differs from X's shape {xs:?}"));
        }
        let (n, total) = (numel(&xs), numel(&self.shape(y)?));
        let esize = self.device_dtype(y)?.size();
        let yp = self.ptr(y)?;
        if total > 0 {
            // SAFETY: the output slot holds total elements.
            unsafe { cudarc::driver::result::memset_d8_async(yp, 0, total * esize, self.stream) }
                .map_err(|e| format!("{e:?}"))?;
        }
        if n == 0 {
            return Ok(());
        }
        self.ensure_workspace(total.max(1) * 8)?;
        let owner = self.workspace.ptr();
        // SAFETY: the workspace holds at least total * 8 bytes.
        unsafe { cudarc::driver::result::memset_d8_async(owner, 0, total * 8, self.stream) }
            .map_err(|e| format!("{e:?}"))?;
        let (xp, ip, err, n64, total64) = (self.ptr(x)?, self.ptr(ind)?, self.error_flag.ptr(), n as i64, total as i64);
        let grid = self.grid(n);
        let claim = self.p.func("max_unpool_claim")?;
        self.launch(claim, grid, 256, params!(ip, n64, total64, owner, err))?;
        let write = self.by_size("max_unpool_write", x)?;
        self.launch(write, grid, 256, params!(xp, ip, yp, n64, total64, owner))
    }
}
