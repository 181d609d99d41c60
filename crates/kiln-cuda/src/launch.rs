//! Each GPU op of a layer as kernel launches on the session's stream: shapes come from the
//! session (computed for this run), memory from the arena and the weights.

use crate::dnn::ConvShape;
use crate::error::CudaResult;
use crate::kernels::{activation_code, dtype_code, elementwise, strides, Dims8, MAX_RANK};
use crate::lower::GpuOp;
use crate::session::CudaSession;
use crate::tuning;
use std::ffi::c_void;

/// Kernel parameters: each a pointer to a live local of the kernel parameter's type.
macro_rules! params {
    ($($x:expr),* $(,)?) => { &mut [$( (&$x) as *const _ as *mut std::ffi::c_void ),*] };
}
pub(crate) use params;

/// A 1×1 convolution as products: per image n, Y_n[K, H·W] = W[K, C] · X_n[C, H·W].
pub(crate) fn pointwise_gemm(
    blas: &crate::blas::Blas,
    storage: crate::kernels::Storage,
    tf32: bool,
    shape: &ConvShape,
    (x, w, y): (u64, u64, u64),
) -> CudaResult<()> {
    let (n, c, hw, k) = (shape.x[0], shape.x[1], shape.x[2] * shape.x[3], shape.w[0]);
    blas.gemm(
        storage,
        tf32,
        (k, hw, c),
        1.0,
        (w, c, false, 0),
        (x, hw, false, (c * hw) as i64),
        (y, hw, (k * hw) as i64),
        n,
    )
}

/// `Str8` of library.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Str8(pub(crate) [i64; MAX_RANK]);

pub(crate) fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

impl CudaSession {
    pub(crate) fn input(&self, li: usize, k: usize) -> Option<usize> {
        self.p.graph.layers[li].layer.inputs.get(k).copied().flatten().map(|id| id.0)
    }

    pub(crate) fn output(&self, li: usize, k: usize) -> CudaResult<usize> {
        self.p.graph.layers[li].layer.outputs.get(k).copied().flatten().map(|id| id.0).ok_or("missing output".into())
    }

    pub(crate) fn required(&self, li: usize, k: usize) -> CudaResult<usize> {
        self.input(li, k).ok_or_else(|| format!("input {k} is missing"))
    }

    /// Whether the GPU op handles this run's shapes; where not (broadcast MatMul batches) the
    /// layer runs on the CPU.
    pub(crate) fn handles_shapes(&self, li: usize, op: &GpuOp) -> CudaResult<bool> {
        Ok(match op {
            GpuOp::Gemm { is_matmul: true, .. } => {
                let (a, b) = (self.shape(self.required(li, 0)?)?, self.shape(self.required(li, 1)?)?);
                b.len() == 2 || (a.len() == b.len() && a[..a.len() - 2] == b[..b.len() - 2])
            }
            GpuOp::LayerNorm { .. } => {
                let (rows, cols) = self.norm_rows(li)?;
                let total = rows * cols;
                let fits = |k: usize| -> CudaResult<bool> {
                    Ok(match self.input(li, k) {
                        Some(t) => {
                            let n = numel(&self.shape(t)?);
                            n == cols || n == total
                        }
                        None => true,
                    })
                };
                fits(1)? && fits(2)?
            }
            _ => true,
        })
    }

    pub(crate) fn launch_op(&mut self, li: usize, op: &GpuOp) -> CudaResult<()> {
        match op {
            GpuOp::Conv { pads, strides, dilations, group, act } => {
                self.conv(li, *pads, *strides, *dilations, *group, *act)
            }
            GpuOp::Gemm { trans_a, trans_b, alpha, beta, is_matmul, act } => {
                self.gemm(li, *trans_a, *trans_b, *alpha, *beta, *is_matmul, *act)
            }
            GpuOp::Elementwise { program } => self.elementwise(li, program.num_inputs),
            GpuOp::LayerNorm { eps, rms } => self.layer_norm(li, *eps, *rms),
            GpuOp::Trilu { upper } => {
                let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
                let xs = self.shape(x)?;
                let n = numel(&xs);
                if n == 0 {
                    return Ok(());
                }
                let k = self.const_ints(li, 1)?.and_then(|v| v.first().copied()).unwrap_or(0);
                let (rows, cols) = (xs[xs.len() - 2] as i64, xs[xs.len() - 1] as i64);
                let f = self.p.func(&format!("trilu_{}", self.device_dtype(x)?.size()))?;
                let (xp, yp, n64, up) = (self.ptr(x)?, self.ptr(y)?, n as i64, *upper as i32);
                let grid = self.grid(n);
                self.launch(f, grid, 256, params!(xp, yp, n64, rows, cols, k, up))
            }
            GpuOp::Pad => self.pad(li),
            GpuOp::Range => self.range(li),
            GpuOp::ConstantOfShape => self.constant_of_shape(li),
            GpuOp::ShapeOf { size } => self.shape_of(li, *size),
            GpuOp::Window { kind, periodic } => self.window(li, *kind, *periodic),
            GpuOp::Tile => self.tile(li, false),
            GpuOp::CenterCropPad => self.tile(li, true),
            GpuOp::TopK { axis, largest } => self.top_k(li, *axis, *largest),
            GpuOp::Dft { inverse, onesided } => self.dft(li, *inverse, *onesided),
            GpuOp::Compress { axis } => self.compress(li, *axis),
            GpuOp::OneHot { axis } => self.one_hot(li, *axis),
            GpuOp::Index(op) => self.launch_index(li, op),
            GpuOp::Spatial(op) => self.launch_spatial(li, op),
            GpuOp::Sequence(op) => self.launch_sequence(li, op),
            GpuOp::Softmax => {
                let Some((xp, yp, rows, cols)) = self.last_axis_rows(li)? else { return Ok(()) };
                let f = self.typed_for("softmax_rows", self.required(li, 0)?)?;
                let (scale, mask, one, zero) = (1.0f32, 0u64, 1i64, 0i64);
                self.launch(f, rows, 256, params!(xp, yp, cols, scale, mask, one, one, zero, zero, zero, zero))
            }
            GpuOp::Pool { is_max, kernel, strides, pads, dilations, count_include_pad } => {
                let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
                let (xs, ys) = (self.shape(x)?, self.shape(y)?);
                let n = numel(&ys);
                if n == 0 {
                    return Ok(());
                }
                let f = self.p.typed("pool2d")?;
                let (xp, yp) = (self.ptr(x)?, self.ptr(y)?);
                let (nc, h, w, oh, ow) =
                    ((xs[0] * xs[1]) as i64, xs[2] as i64, xs[3] as i64, ys[2] as i64, ys[3] as i64);
                let (im, cip) = (*is_max as i32, *count_include_pad as i32);
                let grid = self.grid(n);
                self.launch(
                    f,
                    grid,
                    256,
                    params!(
                        xp,
                        yp,
                        nc,
                        h,
                        w,
                        oh,
                        ow,
                        kernel[0],
                        kernel[1],
                        strides[0],
                        strides[1],
                        pads[0],
                        pads[1],
                        dilations[0],
                        dilations[1],
                        im,
                        cip
                    ),
                )
            }
            GpuOp::GlobalPool { is_max } => {
                let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
                let xs = self.shape(x)?;
                let rows = xs.iter().take(2).product::<usize>();
                let inner = numel(&xs[2.min(xs.len())..]) as i64;
                if rows == 0 {
                    return Ok(());
                }
                let f = self.p.typed("global_pool")?;
                let (xp, yp, im) = (self.ptr(x)?, self.ptr(y)?, *is_max as i32);
                self.launch(f, rows as u32, 256, params!(xp, yp, inner, im))
            }
            GpuOp::Gather { axis } => self.gather(li, *axis),
            GpuOp::Cast => {
                let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
                let n = numel(&self.shape(x)?) as i64;
                let xt = dtype_code(self.device_dtype(x)?).ok_or("unsupported cast source")?;
                let yt = dtype_code(self.device_dtype(y)?).ok_or("unsupported cast target")?;
                if n == 0 {
                    return Ok(());
                }
                let f = self.p.func("cast_any")?;
                let (xp, yp) = (self.ptr(x)?, self.ptr(y)?);
                let grid = self.grid(n as usize);
                self.launch(f, grid, 256, params!(xp, xt, yp, yt, n))
            }
            GpuOp::Transpose { perm } => {
                let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
                let (xs, ys) = (self.shape(x)?, self.shape(y)?);
                let xst = strides(&xs);
                let src: Vec<i64> = perm.iter().map(|&p| xst.get(p).copied().unwrap_or(0)).collect();
                self.copy_block(x, 0, y, 0, &ys, &src, &strides(&ys))
            }
            GpuOp::Split { axis } => {
                let x = self.required(li, 0)?;
                let xs = self.shape(x)?;
                let axis = kiln_ir::spec::normalize_axis(*axis, xs.len()).map_err(|e| e.to_string())?;
                let xst = strides(&xs);
                let mut start = 0usize;
                let outs: Vec<usize> = self.p.graph.layers[li].layer.outputs.iter().flatten().map(|id| id.0).collect();
                for y in outs {
                    let ys = self.shape(y)?;
                    self.copy_block(x, start as i64 * xst[axis], y, 0, &ys, &xst, &strides(&ys))?;
                    start += ys[axis];
                }
                Ok(())
            }
            GpuOp::Concat { axis } => {
                let y = self.output(li, 0)?;
                let ys = self.shape(y)?;
                let axis = kiln_ir::spec::normalize_axis(*axis, ys.len()).map_err(|e| e.to_string())?;
                let yst = strides(&ys);
                let mut start = 0usize;
                let ins: Vec<usize> = self.p.graph.layers[li].layer.inputs.iter().flatten().map(|id| id.0).collect();
                for x in ins {
                    let xs = self.shape(x)?;
                    self.copy_block(x, 0, y, start as i64 * yst[axis], &xs, &strides(&xs), &yst)?;
                    start += xs[axis];
                }
                Ok(())
            }
            GpuOp::Copy => {
                let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
                let (xp, yp) = (self.ptr(x)?, self.ptr(y)?);
                let bytes = numel(&self.shape(x)?) * self.device_dtype(x)?.size();
                if xp == yp || bytes == 0 {
                    return Ok(());
                }
                // SAFETY: both slots hold `bytes` (shapes checked against the slots).
                unsafe { cudarc::driver::result::memcpy_dtod_async(yp, xp, bytes, self.stream) }
                    .map_err(|e| format!("device copy: {e:?}"))
            }
            GpuOp::Typed(_) => self.typed_elementwise(li),
            GpuOp::Dropout => self.dropout(li),
            GpuOp::Reduce { kind } => self.reduce(li, *kind),
            GpuOp::LogSoftmax => {
                let Some((xp, yp, rows, cols)) = self.last_axis_rows(li)? else { return Ok(()) };
                let f = self.typed_for("log_softmax_rows", self.required(li, 0)?)?;
                self.launch(f, rows, 256, params!(xp, yp, cols))
            }
            GpuOp::Expand => {
                let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
                let (xs, ys) = (self.shape(x)?, self.shape(y)?);
                let st = strides(&xs);
                let off = ys.len() - xs.len();
                let mut src = vec![0i64; ys.len()];
                for (j, d) in xs.iter().enumerate() {
                    src[off + j] = if *d == 1 { 0 } else { st[j] };
                }
                self.copy_block(x, 0, y, 0, &ys, &src, &strides(&ys))
            }
            GpuOp::Slice => self.slice(li),
        }
    }

    /// A row-wise op over the last axis (softmax forms): input and output addresses, rows (one
    /// block each) and columns; `None` for an empty tensor.
    fn last_axis_rows(&self, li: usize) -> CudaResult<Option<(u64, u64, u32, i64)>> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let shape = self.shape(x)?;
        let cols = *shape.last().unwrap_or(&1);
        let rows = numel(&shape) / cols.max(1);
        if rows == 0 || cols == 0 {
            return Ok(None);
        }
        let rows = u32::try_from(rows).map_err(|_| format!("{rows} rows exceed one launch"))?;
        Ok(Some((self.ptr(x)?, self.ptr(y)?, rows, cols as i64)))
    }

    /// A small parameter input (axes, starts, pads, a scalar) of layer `li`, read on the host:
    /// a constant of the plan or a value of this run.
    pub(crate) fn param(&self, li: usize, k: usize) -> CudaResult<Option<kiln_ir::Tensor>> {
        let Some(id) = self.input(li, k) else { return Ok(None) };
        match self.small_value(id)? {
            Some(t) => Ok(Some(t)),
            None => Err(format!("input {k} is too large to be a parameter")),
        }
    }

    /// A small parameter input as integers.
    pub(crate) fn const_ints(&self, li: usize, k: usize) -> CudaResult<Option<Vec<i64>>> {
        Ok(self.param(li, k)?.map(|t| t.to_i64_vec()))
    }

    fn slice(&mut self, li: usize) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let (xs, ys) = (self.shape(x)?, self.shape(y)?);
        let starts = self.const_ints(li, 1)?.ok_or("Slice without starts")?;
        let ends = self.const_ints(li, 2)?.ok_or("Slice without ends")?;
        let axes = self.const_ints(li, 3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = self.const_ints(li, 4)?.unwrap_or_else(|| vec![1; starts.len()]);
        let xst = strides(&xs);
        let mut offset = 0i64;
        let mut src = xst.clone();
        for (k, &a) in axes.iter().enumerate() {
            let ax = kiln_ir::spec::normalize_axis(a, xs.len()).map_err(|e| e.to_string())?;
            let (first, step, _) = kiln_ir::spec::slice_axis(starts[k], ends[k], steps[k], xs[ax])?;
            offset += first * xst[ax];
            src[ax] = step * xst[ax];
        }
        self.copy_block(x, offset, y, 0, &ys, &src, &strides(&ys))
    }

    fn typed_elementwise(&mut self, li: usize) -> CudaResult<()> {
        let y = self.output(li, 0)?;
        let ys = self.shape(y)?;
        let n = numel(&ys);
        if n == 0 {
            return Ok(());
        }
        if ys.len() > MAX_RANK {
            return Err("more than 8 dimensions".into());
        }
        let f = self.p.func(&crate::kernels::typed::kernel_name(li))?;
        let inputs: Vec<usize> = self.p.graph.layers[li].layer.inputs.iter().flatten().map(|id| id.0).collect();
        self.broadcast_launch(f, y, &ys, &inputs)
    }

    /// Launch a generated kernel `(y, n, rank, shape, full, a0, t0, ...)` over `inputs`
    /// broadcast to `ys`.
    fn broadcast_launch(&self, f: crate::program::Func, y: usize, ys: &[usize], inputs: &[usize]) -> CudaResult<()> {
        let n = numel(ys);
        let mut shape = Str8::default();
        for (k, d) in ys.iter().enumerate() {
            shape.0[k] = *d as i64;
        }
        let mut full = 0u32;
        let mut ptrs = Vec::with_capacity(inputs.len());
        let mut strs = Vec::with_capacity(inputs.len());
        for (k, &x) in inputs.iter().enumerate() {
            let xs = self.shape(x)?;
            if xs == ys {
                full |= 1 << k;
            }
            let st = strides(&xs);
            let mut t = Str8::default();
            let off = ys.len().checked_sub(xs.len()).ok_or("an input of higher rank than the output")?;
            for (j, d) in xs.iter().enumerate() {
                t.0[off + j] = if *d == 1 { 0 } else { st[j] };
            }
            ptrs.push(self.ptr(x)?);
            strs.push(t);
        }
        let (yp, n64, rank) = (self.ptr(y)?, n as i64, ys.len() as i32);
        let mut params: Vec<*mut c_void> = vec![
            (&yp) as *const _ as *mut c_void,
            (&n64) as *const _ as *mut c_void,
            (&rank) as *const _ as *mut c_void,
            (&shape) as *const _ as *mut c_void,
            (&full) as *const _ as *mut c_void,
        ];
        for k in 0..inputs.len() {
            params.push((&ptrs[k]) as *const _ as *mut c_void);
            params.push((&strs[k]) as *const _ as *mut c_void);
        }
        let grid = self.grid(n);
        self.launch(f, grid, 256, &mut params)
    }

    fn reduce(&mut self, li: usize, kind: i32) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let xs = self.shape(x)?;
        let attrs = &self.p.graph.layers[li].layer.attrs;
        let arg = kind >= 10;
        let reduced: Vec<bool> = if arg {
            let axis = attrs.int("axis", 0)?;
            let ax = kiln_ir::spec::normalize_axis(axis, xs.len())?;
            (0..xs.len()).map(|k| k == ax).collect()
        } else {
            // kiln's layers have the latest opset's semantics: axes are input 1 (the importer
            // moves older opsets' attribute there).
            let axes = self.const_ints(li, 1)?.unwrap_or_default();
            let noop = attrs.int("noop_with_empty_axes", 0)? != 0;
            kiln_ir::spec::reduction_mask(&axes, xs.len(), noop)?
        };
        let select_last = if arg { attrs.int("select_last_index", 0)? as i32 } else { 0 };
        let xst = strides(&xs);
        let (mut kept_shape, mut kept_stride, mut red_shape, mut red_stride) =
            (Str8::default(), Str8::default(), Str8::default(), Str8::default());
        let (mut kr, mut rr) = (0usize, 0usize);
        for (k, &d) in xs.iter().enumerate() {
            if reduced[k] {
                red_shape.0[rr] = d as i64;
                red_stride.0[rr] = xst[k];
                rr += 1;
            } else {
                kept_shape.0[kr] = d as i64;
                kept_stride.0[kr] = xst[k];
                kr += 1;
            }
        }
        let n_out = numel(&self.shape(y)?) as i64;
        let n_red: i64 = red_shape.0[..rr].iter().product();
        if n_out == 0 {
            return Ok(());
        }
        let f = self.typed_for("reduce_axes", x)?;
        let (xp, yp, kr, rr) = (self.ptr(x)?, self.ptr(y)?, kr as i32, rr as i32);
        let grid = self.grid(n_out as usize);
        self.launch(
            f,
            grid,
            256,
            params!(xp, yp, n_out, kr, kept_shape, kept_stride, rr, red_shape, red_stride, n_red, kind, select_last),
        )
    }

    /// Copy a block of shape `shape` from tensor `x` (element offset `x_off`, strides
    /// `src`) to tensor `y` (offset `y_off`, strides `dst`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_block(
        &self,
        x: usize,
        x_off: i64,
        y: usize,
        y_off: i64,
        shape: &[usize],
        src: &[i64],
        dst: &[i64],
    ) -> CudaResult<()> {
        let esize = self.device_dtype(x)?.size();
        let (xp, yp) = (self.ptr(x)? + (x_off as u64) * esize as u64, self.ptr(y)? + (y_off as u64) * esize as u64);
        self.copy_strided(esize, xp, yp, shape, src, dst)
    }

    /// Copy a block of shape `shape` of `esize`-byte elements from address `xp` (strides `src`)
    /// to address `yp` (strides `dst`).
    pub(crate) fn copy_strided(
        &self,
        esize: usize,
        xp: u64,
        yp: u64,
        shape: &[usize],
        src: &[i64],
        dst: &[i64],
    ) -> CudaResult<()> {
        let n = numel(shape);
        if n == 0 {
            return Ok(());
        }
        if shape.len() > MAX_RANK {
            return Err("more than 8 dimensions".into());
        }
        let f = self.p.func(&format!("copy_strided_{esize}"))?;
        let mut d = Dims8::default();
        for k in 0..shape.len() {
            d.shape[k] = shape[k] as i64;
            d.src_stride[k] = src[k];
            d.dst_stride[k] = dst[k];
        }
        let (n64, rank) = (n as i64, shape.len() as i32);
        let grid = self.grid(n);
        self.launch(f, grid, 256, params!(xp, yp, n64, rank, d))
    }

    /// y = act(y + bias + residual) over an output of `n` elements, where anything is fused.
    #[allow(clippy::too_many_arguments)]
    fn epilogue(
        &self,
        storage: crate::kernels::Storage,
        y: u64,
        n: usize,
        beta: f32,
        bias: Option<(u64, i32, i64, i64)>,
        residual: Option<u64>,
        act: Option<kiln_ir::Activation>,
    ) -> CudaResult<()> {
        if bias.is_none() && residual.is_none() && act.is_none() || n == 0 {
            return Ok(());
        }
        let f = self.p.func(&format!("epilogue_{}", storage.suffix()))?;
        let (bp, mode, cols, inner) = bias.unwrap_or((0, 0, 1, 1));
        let res = residual.unwrap_or(0);
        let (code, p0, p1) = activation_code(act);
        let (n64, alpha) = (n as i64, 1.0f32);
        let grid = self.grid(n);
        self.launch(f, grid, 256, params!(y, n64, alpha, beta, bp, mode, cols, inner, res, code, p0, p1))
    }

    fn conv(
        &mut self,
        li: usize,
        pads: [i32; 2],
        strides: [i32; 2],
        dilations: [i32; 2],
        group: i32,
        act: Option<kiln_ir::Activation>,
    ) -> CudaResult<()> {
        let (x, w, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (xs, ws, ys) = (self.shape(x)?, self.shape(w)?, self.shape(y)?);
        let four = |s: &[usize]| -> [usize; 4] {
            match s {
                [a, b, c] => [*a, *b, 1, *c],
                [a, b, c, d] => [*a, *b, *c, *d],
                _ => [0; 4],
            }
        };
        let shape = ConvShape { x: four(&xs), w: four(&ws), y: four(&ys), pads, strides, dilations, group };
        if numel(&ys) == 0 {
            return Ok(());
        }
        let (xp, wp, yp) = (self.ptr(x)?, self.ptr(w)?, self.ptr(y)?);
        let stale = self.conv_plans.get(&li).is_none_or(|p| p.input_shape != shape.x.to_vec());
        if stale {
            let (storage, tf32) = (self.float_storage(x)?, self.p.tf32);
            let dnn = self.dnn.as_ref().ok_or("cuDNN is not loaded")?;
            let tactic = self.p.graph.layers[li].tactic.as_str();
            let mut plan = match tuning::tactic_algo(tactic) {
                // The builder timed the tactics: its algorithm, at any batch of the profile.
                // (At a batch where cuDNN refuses it, its own search decides.)
                Some(algo) => dnn
                    .plan_with(storage, tf32, &shape, algo)
                    .or_else(|_| dnn.plan(storage, tf32, &shape, self.p.graph.build.workspace_bytes))?,
                // Untimed (opt level 1) or a product: cuDNN's own search, on this first run
                // at the shape (never inside a capture).
                None => dnn.plan(storage, tf32, &shape, self.p.graph.build.workspace_bytes)?,
            };
            plan.use_gemm = tactic == tuning::POINTWISE_GEMM_TACTIC && shape.is_pointwise();
            self.ensure_workspace(plan.workspace_bytes)?;
            self.conv_plans.insert(li, plan);
        }
        let residual = self.input(li, 3).map(|r| self.ptr(r)).transpose()?;
        let plan = &self.conv_plans[&li];
        if plan.use_gemm {
            pointwise_gemm(&self.blas, self.float_storage(x)?, self.p.tf32, &shape, (xp, wp, yp))?;
        } else {
            self.dnn.as_ref().ok_or("cuDNN is not loaded")?.forward(plan, xp, wp, yp, self.workspace.ptr())?;
        }
        let bias = match self.input(li, 2) {
            Some(b) => Some((self.ptr(b)?, 2, shape.y[1] as i64, (shape.y[2] * shape.y[3]) as i64)),
            None => None,
        };
        self.epilogue(self.float_storage(x)?, yp, numel(&ys), 1.0, bias, residual, act)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        li: usize,
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
        is_matmul: bool,
        act: Option<kiln_ir::Activation>,
    ) -> CudaResult<()> {
        let (a, b, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (as_, bs, ys) = (self.shape(a)?, self.shape(b)?, self.shape(y)?);
        let (ap, bp, yp) = (self.ptr(a)?, self.ptr(b)?, self.ptr(y)?);
        let (m, k, n, batch, sa, sb, sc);
        if is_matmul {
            let r = as_.len();
            k = as_[r - 1];
            n = bs[bs.len() - 1];
            if bs.len() == 2 {
                m = numel(&as_[..r - 1]);
                batch = 1;
                (sa, sb, sc) = (0, 0, 0);
            } else {
                m = as_[r - 2];
                batch = numel(&as_[..r - 2]);
                (sa, sb, sc) = ((m * k) as i64, (k * n) as i64, (m * n) as i64);
            }
        } else {
            m = if trans_a { as_[1] } else { as_[0] };
            k = if trans_a { as_[0] } else { as_[1] };
            n = if trans_b { bs[0] } else { bs[1] };
            batch = 1;
            (sa, sb, sc) = (0, 0, 0);
        }
        if m * n == 0 {
            return Ok(());
        }
        if k == 0 {
            // An empty sum: the product is zero (cuBLAS would leave C untouched).
            let bytes = numel(&ys) * self.device_dtype(y)?.size();
            // SAFETY: the output slot holds `bytes`.
            unsafe { cudarc::driver::result::memset_d8_async(yp, 0, bytes, self.stream) }
                .map_err(|e| format!("{e:?}"))?;
        } else {
            let lda = *as_.last().unwrap_or(&1);
            let ldb = *bs.last().unwrap_or(&1);
            if batch == 1 && self.gemm_fused(li, (m, n, k), (trans_a, trans_b), (lda, ldb), alpha, beta, act)? {
                return Ok(());
            }
            self.blas.gemm(
                self.float_storage(y)?,
                self.p.tf32,
                (m, n, k),
                alpha,
                (ap, lda, trans_a, sa),
                (bp, ldb, trans_b, sb),
                (yp, n, sc),
                batch,
            )?;
        }
        let bias = match self.input(li, 2) {
            None => None,
            Some(c) => {
                let cs = self.shape(c)?;
                let total = numel(&ys);
                let mode = if numel(&cs) == 1 {
                    4
                } else if numel(&cs) == n && cs.last() == Some(&n) {
                    1
                } else if numel(&cs) == total {
                    3
                } else if !is_matmul && cs.len() == 2 && cs[0] == m && cs[1] == 1 {
                    5
                } else {
                    return Err(format!("bias of shape {cs:?} for an output of {ys:?}"));
                };
                Some((self.ptr(c)?, mode, n as i64, 1))
            }
        };
        let residual = self.input(li, 3).map(|r| self.ptr(r)).transpose()?;
        self.epilogue(self.float_storage(y)?, yp, numel(&ys), if is_matmul { 1.0 } else { beta }, bias, residual, act)
    }

    /// One product through cuBLASLt with its epilogue fused, where the epilogue is a bias per
    /// column (scaled by 1), a residual and ReLU or nothing; `Ok(false)` where it is not (the
    /// caller runs cuBLAS and the epilogue kernel).
    #[allow(clippy::too_many_arguments)]
    fn gemm_fused(
        &mut self,
        li: usize,
        mnk: (usize, usize, usize),
        (trans_a, trans_b): (bool, bool),
        (lda, ldb): (usize, usize),
        alpha: f32,
        beta: f32,
        act: Option<kiln_ir::Activation>,
    ) -> CudaResult<bool> {
        if self.blas_lt.is_none() || !matches!(act, None | Some(kiln_ir::Activation::Relu)) {
            return Ok(false);
        }
        let n = mnk.1;
        let bias = match self.input(li, 2) {
            None => 0,
            Some(c) => {
                let cs = self.shape(c)?;
                if beta != 1.0 || numel(&cs) != n || cs.last() != Some(&n) {
                    return Ok(false);
                }
                self.ptr(c)?
            }
        };
        let residual = match self.input(li, 3) {
            None => 0,
            Some(r) => self.ptr(r)?,
        };
        let (a, b, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let shape = crate::blas_lt::LtShape {
            storage: self.p.storage,
            tf32: self.p.tf32,
            mnk,
            trans_a,
            trans_b,
            ld: (lda, ldb, n),
            bias: bias != 0,
            relu: act.is_some(),
            residual: residual != 0,
        };
        let (ap, bp, yp) = (self.ptr(a)?, self.ptr(b)?, self.ptr(y)?);
        let lt = self.blas_lt.as_mut().expect("checked above");
        lt.matmul(shape, alpha, ap, bp, bias, residual, yp)
    }

    fn elementwise(&mut self, li: usize, num_inputs: usize) -> CudaResult<()> {
        let y = self.output(li, 0)?;
        let ys = self.shape(y)?;
        if numel(&ys) == 0 {
            return Ok(());
        }
        if ys.len() > MAX_RANK {
            return Err("more than 8 dimensions".into());
        }
        let f = self.p.func(&format!("{}_{}", elementwise::kernel_name(li), self.p.storage.suffix()))?;
        let inputs = (0..num_inputs).map(|k| self.required(li, k)).collect::<CudaResult<Vec<_>>>()?;
        self.broadcast_launch(f, y, &ys, &inputs)
    }

    /// The normalized trailing axes of a LayerNormalization/RMSNormalization: (rows, cols).
    fn norm_rows(&self, li: usize) -> CudaResult<(usize, usize)> {
        let xs = self.shape(self.required(li, 0)?)?;
        let axis = self.p.graph.layers[li].layer.attrs.int("axis", -1)?;
        let axis = kiln_ir::spec::normalize_axis(axis, xs.len())?;
        Ok((numel(&xs[..axis]), numel(&xs[axis..])))
    }

    fn layer_norm(&mut self, li: usize, eps: f32, rms: bool) -> CudaResult<()> {
        let (x, g, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (rows, cols) = self.norm_rows(li)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let gamma_full = (numel(&self.shape(g)?) != cols) as i32;
        let (beta, beta_full) = match self.input(li, 2).filter(|_| !rms) {
            Some(b) => (self.ptr(b)?, (numel(&self.shape(b)?) != cols) as i32),
            None => (0, 0),
        };
        let stat = |k: usize| -> CudaResult<u64> {
            match self.p.graph.layers[li].layer.outputs.get(k).copied().flatten() {
                Some(id) => self.ptr(id.0),
                None => Ok(0),
            }
        };
        let (mean_out, inv_out) = (stat(1)?, stat(2)?);
        let f = self.p.typed("layer_norm")?;
        let (xp, gp, yp, cols64, rms) = (self.ptr(x)?, self.ptr(g)?, self.ptr(y)?, cols as i64, rms as i32);
        self.launch(
            f,
            rows as u32,
            256,
            params!(xp, gp, beta, yp, cols64, eps, gamma_full, beta_full, mean_out, inv_out, rms),
        )
    }

    /// Constant-mode Pad: the output filled with the value, the input copied into its interior
    /// (negative pads crop).
    fn pad(&mut self, li: usize) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let (xs, ys) = (self.shape(x)?, self.shape(y)?);
        let pads = self.const_ints(li, 1)?.ok_or("Pad without pads")?;
        // The value, exact for integer tensors (any element type: the fill and copy move bytes).
        let value = self.param(li, 2)?;
        let iv = value.as_ref().and_then(|t| t.to_i64_vec().first().copied()).unwrap_or(0);
        let fv = value.as_ref().and_then(|t| t.to_f64_vec().first().copied()).unwrap_or(0.0);
        let dtype = self.device_dtype(y)?;
        let (yt, is_int) =
            (dtype_code(dtype).ok_or_else(|| format!("no device type for {dtype}"))?, dtype.is_int() as i32);
        let rank = xs.len();
        let axes: Vec<usize> = match self.const_ints(li, 3)? {
            Some(a) => a.iter().map(|&v| kiln_ir::spec::normalize_axis(v, rank)).collect::<Result<_, _>>()?,
            None => (0..rank).collect(),
        };
        let n = numel(&ys);
        if n == 0 {
            return Ok(());
        }
        let f = self.p.func("fill_any")?;
        let (yp, n64) = (self.ptr(y)?, n as i64);
        let grid = self.grid(n);
        self.launch(f, grid, 256, params!(yp, yt, n64, is_int, iv, fv))?;
        // The kept block: per axis, where it starts in x (crop) and in y (pad).
        let (xst, yst) = (strides(&xs), strides(&ys));
        let (mut x_off, mut y_off) = (0i64, 0i64);
        let mut block = xs.clone();
        for (k, &ax) in axes.iter().enumerate() {
            let (begin, end) = (pads[k], pads[k + axes.len()]);
            let crop_begin = (-begin).max(0) as usize;
            let crop_end = (-end).max(0) as usize;
            block[ax] = xs[ax].saturating_sub(crop_begin + crop_end);
            x_off += crop_begin as i64 * xst[ax];
            y_off += begin.max(0) * yst[ax];
        }
        self.copy_block(x, x_off, y, y_off, &block, &xst, &yst)
    }

    fn gather(&mut self, li: usize, axis: i64) -> CudaResult<()> {
        let (d, i, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (ds, is) = (self.shape(d)?, self.shape(i)?);
        let axis = kiln_ir::spec::normalize_axis(axis, ds.len()).map_err(|e| e.to_string())?;
        let esize = self.device_dtype(d)?.size();
        let outer = numel(&ds[..axis]) as i64;
        let axis_len = ds[axis] as i64;
        let inner_bytes = (numel(&ds[axis + 1..]) * esize) as i64;
        let nidx = numel(&is) as i64;
        let idx_is_i32 = match self.device_dtype(i)? {
            kiln_ir::DType::I64 => 0i32,
            kiln_ir::DType::I32 => 1,
            other => return Err(format!("Gather indices of type {other}")),
        };
        let total = (outer * nidx * inner_bytes) as usize;
        if total == 0 {
            return Ok(());
        }
        let (dp, ip, yp, err) = (self.ptr(d)?, self.ptr(i)?, self.ptr(y)?, self.error_flag.ptr());
        let words = inner_bytes % 4 == 0 && dp % 4 == 0 && yp % 4 == 0;
        let (f, inner, n) = if words {
            (self.p.func("gather_words")?, inner_bytes / 4, total / 4)
        } else {
            (self.p.func("gather_bytes")?, inner_bytes, total)
        };
        let grid = self.grid(n);
        self.launch(f, grid, 256, params!(dp, ip, idx_is_i32, yp, outer, nidx, axis_len, inner, err))
    }
}
