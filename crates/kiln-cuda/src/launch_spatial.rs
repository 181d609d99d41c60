//! Launching the resampling, transposed convolution, pooling and normalization variants (lower_spatial.rs).

use crate::error::CudaResult;
use crate::kernels::{strides, MAX_RANK};
use crate::launch::{numel, params, Str8};
use crate::lower_spatial::{NormKind, ResizeParams, SpatialOp, Window};
use crate::session::CudaSession;
use kiln_ir::spec::normalize_axis;

/// `Str8` of library.cu from up to 8 values.
fn str8<T: Copy + TryInto<i64>>(v: &[T]) -> CudaResult<Str8> {
    if v.len() > MAX_RANK {
        return Err(format!("{} dimensions exceed the kernels' {MAX_RANK}", v.len()));
    }
    let mut out = Str8::default();
    for (o, &d) in out.0.iter_mut().zip(v) {
        *o = d.try_into().map_err(|_| "a dimension exceeds 64 bits".to_string())?;
    }
    Ok(out)
}

/// Python's `math.isclose` with its default tolerance (the reference skips axes it finds
/// unchanged this way).
fn is_close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// The shape as (kept shape, kept strides) and (reduced shape, reduced strides) for norm_axes.
type AxesSplit = ((Vec<i64>, Vec<i64>), (Vec<i64>, Vec<i64>));

/// Split `shape`'s axes into kept and reduced ones (row-major strides).
fn split_axes(shape: &[usize], reduced: &[bool]) -> AxesSplit {
    let st = strides(shape);
    let (mut kept, mut red) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for (k, &d) in shape.iter().enumerate() {
        let part = if reduced[k] { &mut red } else { &mut kept };
        part.0.push(d as i64);
        part.1.push(st[k]);
    }
    (kept, red)
}

impl CudaSession {
    pub(crate) fn launch_spatial(&mut self, li: usize, op: &SpatialOp) -> CudaResult<()> {
        match op {
            SpatialOp::Resize(p) => self.resize(li, p),
            SpatialOp::GridSample { mode, padding, align_corners } => {
                self.grid_sample(li, *mode, *padding, *align_corners as i32)
            }
            SpatialOp::ConvTranspose(w) => self.conv_transpose(li, w),
            SpatialOp::DeformConv { window, offset_groups } => self.deform_conv(li, window, *offset_groups),
            SpatialOp::Pool { kind, p, window, count_include_pad, col_major } => {
                self.pool_nd(li, *kind, *p, window.as_ref(), *count_include_pad as i32, *col_major as i32)
            }
            SpatialOp::SoftmaxAxis { log, coerce_2d } => {
                let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
                let xs = self.shape(x)?;
                let axis = self.p.graph.layers[li].layer.attrs.int("axis", -1)?;
                let axis = normalize_axis(axis, xs.len())?;
                let (outer, n, inner) = if *coerce_2d {
                    (numel(&xs[..axis]), numel(&xs[axis..]), 1)
                } else {
                    (numel(&xs[..axis]), xs[axis], numel(&xs[axis + 1..]))
                };
                if outer * n * inner == 0 {
                    return Ok(());
                }
                let f = self.p.typed("softmax_axis")?;
                let (xp, yp, log) = (self.ptr(x)?, self.ptr(y)?, *log as i32);
                let (outer, n, inner) = (outer as i64, n as i64, inner as i64);
                let grid = self.grid((outer * inner) as usize);
                self.launch(f, grid, 256, params!(xp, yp, outer, n, inner, log))
            }
            SpatialOp::BatchNorm { eps, momentum } => self.batch_norm(li, *eps, *momentum),
            SpatialOp::Norm(kind) => self.norm(li, kind),
            SpatialOp::Col2Im(window) => self.col2im(li, window),
            SpatialOp::CausalConvState { silu } => self.causal_conv_state(li, *silu as i32),
            SpatialOp::AffineGrid { align_corners } => {
                let (theta, y) = (self.required(li, 0)?, self.output(li, 0)?);
                let (ts, ys) = (self.shape(theta)?, self.shape(y)?);
                let r = ys.len() - 2;
                if ts != [ys[0], r, r + 1] || ys[ys.len() - 1] != r {
                    return Err(format!("theta {ts:?} does not match the grid {ys:?}"));
                }
                if numel(&ys) == 0 {
                    return Ok(());
                }
                let f = self.p.typed("affine_grid")?;
                let (tp, yp, n, r32) = (self.ptr(theta)?, self.ptr(y)?, ys[0] as i64, r as i32);
                let (size, align) = (str8(&ys[1..=r])?, *align_corners as i32);
                let grid = self.grid(numel(&ys));
                self.launch(f, grid, 256, params!(tp, yp, n, r32, size, align))
            }
            SpatialOp::RoiAlign { max_mode, half_pixel, sampling_ratio, spatial_scale } => {
                self.roi_align(li, *max_mode as i32, *half_pixel as i32, *sampling_ratio, *spatial_scale as f64)
            }
            SpatialOp::Lrn { size, alpha, beta, bias } => {
                let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
                let xs = self.shape(x)?;
                let n = numel(&xs);
                if n == 0 {
                    return Ok(());
                }
                let f = self.p.typed("lrn")?;
                let (xp, yp, n64) = (self.ptr(x)?, self.ptr(y)?, n as i64);
                let (c, spatial) = (xs[1] as i64, numel(&xs[2..]) as i64);
                let grid = self.grid(n);
                self.launch(f, grid, 256, params!(xp, yp, n64, c, spatial, *size, *alpha, *beta, *bias))
            }
        }
    }

    /// A small input the launch needs as numbers (Resize's roi, scales, sizes), read on the
    /// host; `None` where absent or empty (opset 11's placeholders).
    fn small_values(&self, li: usize, k: usize) -> CudaResult<Option<Vec<f64>>> {
        Ok(self.param(li, k)?.map(|t| t.to_f64_vec()).filter(|v| !v.is_empty()))
    }

    /// Resize as one separable pass per resized axis (the reference's order and f64
    /// intermediates, in the workspace), the last pass writing the output.
    fn resize(&mut self, li: usize, p: &ResizeParams) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let (xs, ys) = (self.shape(x)?, self.shape(y)?);
        let rank = xs.len();
        if ys.len() != rank {
            return Err(format!("output rank {} for an input of rank {rank}", ys.len()));
        }
        let axes: Vec<usize> = match &p.axes {
            Some(a) => a.iter().map(|&v| normalize_axis(v, rank)).collect::<Result<_, _>>()?,
            None => (0..rank).collect(),
        };
        let roi = self.small_values(li, 1)?;
        let mut factors = vec![1.0f64; rank];
        match (self.small_values(li, 2)?, self.small_values(li, 3)?) {
            (Some(s), None) if s.len() == axes.len() => {
                for (i, &d) in axes.iter().enumerate() {
                    factors[d] = s[i];
                }
            }
            (None, Some(z)) if z.len() == axes.len() => {
                for (i, &d) in axes.iter().enumerate() {
                    factors[d] = z[i] / xs[d] as f64;
                }
                if p.policy != 0 && !axes.is_empty() {
                    let it = axes.iter().map(|&d| factors[d]);
                    let scale = if p.policy == 1 {
                        it.fold(f64::INFINITY, f64::min)
                    } else {
                        it.fold(f64::NEG_INFINITY, f64::max)
                    };
                    axes.iter().for_each(|&d| factors[d] = scale);
                }
            }
            _ => return Err("Resize needs one of scales and sizes, with one value per axis".into()),
        }
        // roi per axis (start, end), the identity on axes it does not list.
        let mut roi_full = vec![(0.0f64, 1.0f64); rank];
        if let Some(r) = &roi {
            if r.len() != 2 * axes.len() {
                return Err(format!("roi has {} values, expected {}", r.len(), 2 * axes.len()));
            }
            for (i, &d) in axes.iter().enumerate() {
                roi_full[d] = (r[i], r[axes.len() + i]);
            }
        } else if p.coord == 5 {
            return Err("coordinate_transformation_mode 'tf_crop_and_resize' needs the roi input".into());
        }
        let mut steps = Vec::new();
        for &axis in &axes {
            let (in_w, out_w, scale) = (xs[axis], ys[axis], factors[axis]);
            let (rs, re) = roi_full[axis];
            let trivial_roi = roi.is_none() || (is_close(rs, 0.0) && is_close(re, 1.0));
            if is_close(scale, 1.0) && out_w == in_w && trivial_roi {
                continue;
            }
            if in_w == 0 && out_w > 0 {
                return Err(format!("cannot resize axis {axis} of size 0 to size {out_w}"));
            }
            steps.push((axis, scale, rs, re));
        }
        for (d, (&i, &o)) in xs.iter().zip(&ys).enumerate() {
            if i != o && !steps.iter().any(|s| s.0 == d) {
                return Err(format!("axis {d} changes size ({i} to {o}) without being resized"));
            }
        }
        if numel(&ys) == 0 {
            return Ok(());
        }
        let (xp, yp) = (self.ptr(x)?, self.ptr(y)?);
        if steps.is_empty() {
            let bytes = numel(&xs) * self.device_dtype(x)?.size();
            // SAFETY: both slots hold `bytes` (the shapes are equal and checked against the slots).
            return unsafe { cudarc::driver::result::memcpy_dtod_async(yp, xp, bytes, self.stream) }
                .map_err(|e| format!("device copy: {e:?}"));
        }
        // f64 intermediates, ping-ponging between the two halves of the workspace.
        let mut shape = xs.clone();
        let mut largest = 0usize;
        for &(axis, ..) in &steps[..steps.len() - 1] {
            shape[axis] = ys[axis];
            largest = largest.max(numel(&shape));
        }
        let half = (largest * 8) as u64;
        self.ensure_workspace(2 * largest * 8)?;
        let ws = self.workspace.ptr();
        let f = self.p.typed("resize_axis")?;
        let (mut src, mut src_f64) = (xp, 0i32);
        let mut shape = xs.clone();
        let (mode, coord, nearest, cubic_a) = (p.mode, p.coord, p.nearest, p.cubic_a);
        let (exclude, antialias, fill) = (p.exclude_outside as i32, p.antialias as i32, p.extrapolation);
        for (j, &(axis, scale, rs, re)) in steps.iter().enumerate() {
            let last = j + 1 == steps.len();
            let (dst, dst_f64) = if last { (yp, 0i32) } else { (ws + (j as u64 % 2) * half, 1i32) };
            let outer = numel(&shape[..axis]) as i64;
            let inner = numel(&shape[axis + 1..]) as i64;
            let (in_w, out_w) = (shape[axis] as i64, ys[axis] as i64);
            let grid = self.grid((outer * out_w * inner) as usize);
            self.launch(
                f,
                grid,
                256,
                params!(
                    src, src_f64, dst, dst_f64, outer, in_w, out_w, inner, mode, coord, nearest, cubic_a, exclude,
                    antialias, scale, rs, re, fill
                ),
            )?;
            shape[axis] = ys[axis];
            (src, src_f64) = (dst, dst_f64);
        }
        Ok(())
    }

    fn causal_conv_state(&mut self, li: usize, silu: i32) -> CudaResult<()> {
        let (x, w, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (xs, wsh) = (self.shape(x)?, self.shape(w)?);
        let (b, c, l) = (xs[0], xs[1], xs[2]);
        let k = wsh.get(2).copied().unwrap_or(0);
        if wsh.len() != 3 || wsh[0] != c || wsh[1] != 1 || k == 0 {
            return Err(format!("weight must have shape [{c}, 1, k>=1], got {wsh:?}"));
        }
        let bias = match self.input(li, 2) {
            Some(t) if self.shape(t)? != [c] => return Err(format!("bias must have shape [{c}]")),
            Some(t) => self.ptr(t)?,
            None => 0,
        };
        let past = match self.input(li, 3) {
            Some(t) if self.shape(t)? != [b, c, k - 1] => {
                return Err(format!("past_state must be [{b}, {c}, {}]", k - 1))
            }
            Some(t) => self.ptr(t)?,
            None => 0,
        };
        let state = match self.p.graph.layers[li].layer.outputs.get(1).copied().flatten() {
            Some(id) if k > 1 => self.ptr(id.0)?,
            _ => 0,
        };
        let total = b * c * l + if state != 0 { b * c * (k - 1) } else { 0 };
        if total == 0 {
            return Ok(());
        }
        let f = self.p.typed("causal_conv_state")?;
        let (xp, wp, yp) = (self.ptr(x)?, self.ptr(w)?, self.ptr(y)?);
        let (nbc, c64, l64, k64) = ((b * c) as i64, c as i64, l as i64, k as i64);
        let grid = self.grid(total);
        self.launch(f, grid, 256, params!(xp, wp, bias, past, yp, state, nbc, c64, l64, k64, silu))
    }

    /// Col2Im: ConvTranspose's geometry with the block-position grid as its input.
    fn col2im(&mut self, li: usize, window: &Window) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let (xs, ys) = (self.shape(x)?, self.shape(y)?);
        let as_dims = |v: Option<Vec<f64>>, what: &str| -> CudaResult<Vec<i64>> {
            v.map(|v| v.iter().map(|&d| d as i64).collect()).ok_or_else(|| format!("Col2Im without {what}"))
        };
        let image = as_dims(self.small_values(li, 1)?, "image_shape")?;
        let block = as_dims(self.small_values(li, 2)?, "block_shape")?;
        let nsp = image.len();
        let mut window = window.clone();
        window.kernel = block.clone();
        if block.len() != nsp || nsp != window.strides.len() || ys.len() != nsp + 2 || xs.len() != 3 {
            return Err(format!("image_shape {image:?} and block_shape {block:?} for input {xs:?}"));
        }
        // The block positions per axis: the pool formula over the padded image.
        let (begin, _) = window.pool_pads(&ys[2..]);
        let mut grid = Vec::with_capacity(nsp);
        for i in 0..nsp {
            let dk = (block[i] - 1) * window.dilations[i] + 1;
            let span = image[i] + window.pads[i] + window.pads[i + nsp] - dk;
            if span < 0 || image[i] != ys[2 + i] as i64 {
                return Err(format!("block {block:?} does not fit image {image:?}"));
            }
            grid.push(span / window.strides[i] + 1);
        }
        let ks: i64 = block.iter().product();
        let (n, c) = (ys[0] as i64, ys[1] as i64);
        if xs[0] as i64 != n || xs[1] as i64 != c * ks || xs[2] as i64 != grid.iter().product::<i64>() {
            return Err(format!("input {xs:?} does not match block_shape {block:?} and {grid:?} block positions"));
        }
        if numel(&ys) == 0 {
            return Ok(());
        }
        let f = self.p.typed("col2im")?;
        let (xp, yp, r) = (self.ptr(x)?, self.ptr(y)?, nsp as i32);
        let (g8, i8_, b8) = (str8(&grid)?, str8(&image)?, str8(&block)?);
        let (st, dil, pb) = (str8(&window.strides)?, str8(&window.dilations)?, str8(&begin)?);
        let launch_grid = self.grid(numel(&ys));
        self.launch(f, launch_grid, 256, params!(xp, yp, n, c, r, g8, i8_, b8, st, dil, pb))
    }

    fn roi_align(
        &mut self,
        li: usize,
        max_mode: i32,
        half_pixel: i32,
        sampling_ratio: i64,
        spatial_scale: f64,
    ) -> CudaResult<()> {
        let (x, rois, batch, y) =
            (self.required(li, 0)?, self.required(li, 1)?, self.required(li, 2)?, self.output(li, 0)?);
        let (xs, rs, bs, ys) = (self.shape(x)?, self.shape(rois)?, self.shape(batch)?, self.shape(y)?);
        let num_rois = rs.first().copied().unwrap_or(0);
        if rs.len() != 2 || rs[1] != 4 || bs != [num_rois] || ys.len() != 4 || ys[0] != num_rois || ys[1] != xs[1] {
            return Err(format!("rois {rs:?}, batch_indices {bs:?} and output {ys:?} do not match X {xs:?}"));
        }
        if numel(&ys) == 0 {
            return Ok(());
        }
        if xs[2] * xs[3] == 0 {
            return Err(format!("X {xs:?} has an empty spatial dimension"));
        }
        let batch_i32 = (self.device_dtype(batch)? == kiln_ir::DType::I32) as i32;
        let f = self.p.typed("roi_align")?;
        let (xp, rp, bp, yp, err) =
            (self.ptr(x)?, self.ptr(rois)?, self.ptr(batch)?, self.ptr(y)?, self.error_flag.ptr());
        let [n, c, h, w] = [xs[0] as i64, xs[1] as i64, xs[2] as i64, xs[3] as i64];
        let (nr, oh, ow) = (num_rois as i64, ys[2] as i64, ys[3] as i64);
        let grid = self.grid(numel(&ys));
        self.launch(
            f,
            grid,
            256,
            params!(
                xp,
                rp,
                bp,
                batch_i32,
                yp,
                n,
                c,
                h,
                w,
                nr,
                oh,
                ow,
                sampling_ratio,
                spatial_scale,
                half_pixel,
                max_mode,
                err
            ),
        )
    }

    fn grid_sample(&mut self, li: usize, mode: i32, padding: i32, align_corners: i32) -> CudaResult<()> {
        let (x, g, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (xs, gs) = (self.shape(x)?, self.shape(g)?);
        let rank = xs.len();
        let r = rank - 2;
        if gs.len() != rank || gs[rank - 1] != r || gs[0] != xs[0] {
            return Err(format!("grid {gs:?} must be [N, out spatial..., {r}] for X {xs:?}"));
        }
        let points = numel(&gs[1..rank - 1]);
        let total = xs[0] * xs[1] * points;
        if total == 0 {
            return Ok(());
        }
        if numel(&xs[2..]) == 0 {
            return Err(format!("cannot sample from X {xs:?}: a spatial dimension is 0"));
        }
        let f = self.p.typed("grid_sample")?;
        let (xp, gp, yp) = (self.ptr(x)?, self.ptr(g)?, self.ptr(y)?);
        let (n, c, r32, dims, points) = (xs[0] as i64, xs[1] as i64, r as i32, str8(&xs[2..])?, points as i64);
        let grid = self.grid(total);
        self.launch(f, grid, 256, params!(xp, gp, yp, n, c, r32, dims, points, mode, padding, align_corners))
    }

    fn conv_transpose(&mut self, li: usize, window: &Window) -> CudaResult<()> {
        let (x, w, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (xs, wsh, ys) = (self.shape(x)?, self.shape(w)?, self.shape(y)?);
        let nsp = xs.len() - 2;
        let group = window.group as usize;
        if wsh.len() != xs.len() || wsh[0] != xs[1] || xs[1] % group != 0 {
            return Err(format!("X {xs:?} and W {wsh:?} do not match group {group}"));
        }
        let m = wsh[1] * group;
        let mut window = window.clone();
        window.kernel = wsh[2..].iter().map(|&k| k as i64).collect();
        let (pad_begin, out) = window.transpose_geometry(&xs[2..]);
        if ys.len() != xs.len() || ys[1] != m || out.iter().zip(&ys[2..]).any(|(&o, &d)| o != d as i64) {
            return Err(format!("output {ys:?} differs from the transposed convolution's {out:?}"));
        }
        let bias = match self.input(li, 2) {
            Some(b) if numel(&self.shape(b)?) != m => return Err(format!("B must have {m} values")),
            Some(b) => self.ptr(b)?,
            None => 0,
        };
        if numel(&ys) == 0 {
            return Ok(());
        }
        let f = self.p.typed("conv_transpose")?;
        let (xp, wp, yp) = (self.ptr(x)?, self.ptr(w)?, self.ptr(y)?);
        let (n, c, m, g, r) = (xs[0] as i64, xs[1] as i64, m as i64, group as i64, nsp as i32);
        let (inp, outp, kernel) = (str8(&xs[2..])?, str8(&ys[2..])?, str8(&window.kernel)?);
        let (st, dil, pb) = (str8(&window.strides)?, str8(&window.dilations)?, str8(&pad_begin)?);
        let grid = self.grid(numel(&ys));
        self.launch(f, grid, 256, params!(xp, wp, bias, yp, n, c, m, g, r, inp, outp, kernel, st, dil, pb))
    }

    fn deform_conv(&mut self, li: usize, window: &Window, offset_groups: i64) -> CudaResult<()> {
        let (x, w, offset, y) =
            (self.required(li, 0)?, self.required(li, 1)?, self.required(li, 2)?, self.output(li, 0)?);
        let (xs, wsh, offs, ys) = (self.shape(x)?, self.shape(w)?, self.shape(offset)?, self.shape(y)?);
        let nsp = xs.len() - 2;
        let (group, og) = (window.group as usize, offset_groups as usize);
        let (n, c, m) = (xs[0], xs[1], wsh[0]);
        if wsh.len() != xs.len() || wsh[1] * group != c || m % group != 0 || c % og != 0 {
            return Err(format!("X {xs:?} and W {wsh:?} do not match group {group} and offset_group {og}"));
        }
        let mut window = window.clone();
        window.kernel = wsh[2..].iter().map(|&k| k as i64).collect();
        let ks = numel(&wsh[2..]);
        let (pad_begin, _) = window.pool_pads(&xs[2..]);
        let mut want_off = vec![n, og * ks * nsp];
        want_off.extend(&ys[2..]);
        if ys.len() != xs.len() || ys[0] != n || ys[1] != m || offs != want_off {
            return Err(format!("offset {offs:?} and output {ys:?} do not match X {xs:?} and W {wsh:?}"));
        }
        let bias = match self.input(li, 3) {
            Some(b) if numel(&self.shape(b)?) != m => return Err(format!("B must have {m} values")),
            Some(b) => self.ptr(b)?,
            None => 0,
        };
        let mask = match self.input(li, 4) {
            Some(mk) if numel(&self.shape(mk)?) != n * og * ks * numel(&ys[2..]) => {
                return Err("mask does not match the offsets".into())
            }
            Some(mk) => self.ptr(mk)?,
            None => 0,
        };
        if numel(&ys) == 0 {
            return Ok(());
        }
        let f = self.p.typed("deform_conv")?;
        let (xp, wp, op, yp) = (self.ptr(x)?, self.ptr(w)?, self.ptr(offset)?, self.ptr(y)?);
        let (n, c, m, g, og, r) = (n as i64, c as i64, m as i64, group as i64, offset_groups, nsp as i32);
        let (inp, outp, kernel) = (str8(&xs[2..])?, str8(&ys[2..])?, str8(&window.kernel)?);
        let (st, dil, pb) = (str8(&window.strides)?, str8(&window.dilations)?, str8(&pad_begin)?);
        let grid = self.grid(numel(&ys));
        self.launch(
            f,
            grid,
            256,
            params!(xp, wp, op, bias, mask, yp, n, c, m, g, og, r, inp, outp, kernel, st, dil, pb),
        )
    }

    fn pool_nd(
        &mut self,
        li: usize,
        kind: i32,
        p: f32,
        window: Option<&Window>,
        count_include_pad: i32,
        col_major: i32,
    ) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let (xs, ys) = (self.shape(x)?, self.shape(y)?);
        let nsp = xs.len() - 2;
        let input = &xs[2..];
        let (kernel, st, dil, (pb, pe)) = match window {
            Some(w) => (w.kernel.clone(), w.strides.clone(), w.dilations.clone(), w.pool_pads(input)),
            // GlobalLpPool: one window over the whole plane.
            None => {
                (input.iter().map(|&d| d as i64).collect(), vec![1; nsp], vec![1; nsp], (vec![0; nsp], vec![0; nsp]))
            }
        };
        let planes = xs[0] * xs[1];
        if ys.len() != xs.len() || numel(&ys) != planes * numel(&ys[2..]) {
            return Err(format!("pool output {ys:?} for input {xs:?}"));
        }
        let indices = match self.p.graph.layers[li].layer.outputs.get(1).copied().flatten() {
            Some(id) => self.ptr(id.0)?,
            None => 0u64,
        };
        if numel(&ys) == 0 {
            return Ok(());
        }
        let f = match self.device_dtype(x)? {
            kiln_ir::DType::U8 => self.p.func("pool_nd_u8")?,
            kiln_ir::DType::I8 => self.p.func("pool_nd_i8")?,
            _ => self.p.typed("pool_nd")?,
        };
        let (xp, yp, planes64, r) = (self.ptr(x)?, self.ptr(y)?, planes as i64, nsp as i32);
        let (inp, outp, k8, st8, dil8) = (str8(input)?, str8(&ys[2..])?, str8(&kernel)?, str8(&st)?, str8(&dil)?);
        let (pb8, pe8) = (str8(&pb)?, str8(&pe)?);
        let grid = self.grid(numel(&ys));
        self.launch(
            f,
            grid,
            256,
            params!(
                xp,
                yp,
                indices,
                planes64,
                r,
                inp,
                outp,
                k8,
                st8,
                dil8,
                pb8,
                pe8,
                kind,
                p,
                count_include_pad,
                col_major
            ),
        )
    }

    fn batch_norm(&mut self, li: usize, eps: f32, momentum: Option<f32>) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let xs = self.shape(x)?;
        let (c, spatial) = (xs[1], numel(&xs[2..]));
        let mut p = [0u64; 4];
        for (k, slot) in p.iter_mut().enumerate() {
            let t = self.required(li, k + 1)?;
            if numel(&self.shape(t)?) != c {
                return Err(format!("BatchNormalization input {} must have {c} values", k + 1));
            }
            *slot = self.ptr(t)?;
        }
        let [scale, bias, mean, var] = p;
        let n = numel(&xs);
        if n == 0 {
            return Ok(());
        }
        let (xp, yp) = (self.ptr(x)?, self.ptr(y)?);
        let Some(momentum) = momentum else {
            let f = self.p.typed("batch_norm")?;
            let (n64, c64, sp64) = (n as i64, c as i64, spatial as i64);
            let grid = self.grid(n);
            return self.launch(f, grid, 256, params!(xp, yp, n64, c64, sp64, scale, bias, mean, var, eps));
        };
        // Training mode: batch statistics per channel over N and the spatial dims.
        let out = |k: usize| -> CudaResult<u64> {
            match self.p.graph.layers[li].layer.outputs.get(k).copied().flatten() {
                Some(id) => self.ptr(id.0),
                None => Ok(0),
            }
        };
        let (mean_out, var_out) = (out(1)?, out(2)?);
        let kept = (vec![c as i64], vec![spatial as i64]);
        let red = (vec![xs[0] as i64, spatial as i64], vec![(c * spatial) as i64, 1]);
        let stats = (mean, var, mean_out, var_out, momentum);
        self.norm_launch(x, y, (kept, red), 0, eps, (scale, bias), (spatial, c, 1), stats)
    }

    fn norm(&mut self, li: usize, kind: &NormKind) -> CudaResult<()> {
        let (x, y) = (self.required(li, 0)?, self.output(li, 0)?);
        let xs = self.shape(x)?;
        if numel(&xs) == 0 {
            return Ok(());
        }
        let none = (0, 0, 0, 0, 0.0f32);
        match kind {
            NormKind::Group { groups, per_group_params, eps } => {
                let (n, c, spatial) = (xs[0], xs[1], numel(&xs[2..]));
                let g = groups.map_or(c, |g| g as usize);
                if g == 0 || c % g != 0 {
                    return Err(format!("{g} groups for {c} channels"));
                }
                let cpg = c / g;
                let per_group = *per_group_params && groups.is_some();
                let want = if per_group { g } else { c };
                let mut affine = [0u64; 2];
                for (k, slot) in affine.iter_mut().enumerate() {
                    let t = self.required(li, k + 1)?;
                    if numel(&self.shape(t)?) != want {
                        return Err(format!("input {} must have {want} values", k + 1));
                    }
                    *slot = self.ptr(t)?;
                }
                let block = (cpg * spatial) as i64;
                let split = ((vec![(n * g) as i64], vec![block]), (vec![block], vec![1]));
                let ch = (spatial.max(1), c, if per_group { cpg } else { 1 });
                self.norm_launch(x, y, split, 0, *eps, (affine[0], affine[1]), ch, none)
            }
            NormKind::Lp { p, axis } => {
                let axis = normalize_axis(*axis, xs.len())?;
                let mut reduced = vec![false; xs.len()];
                reduced[axis] = true;
                self.norm_launch(x, y, split_axes(&xs, &reduced), 1 + *p as i32, 0.0, (0, 0), (1, 1, 1), none)
            }
            NormKind::MeanVariance { axes } => {
                let mut reduced = vec![false; xs.len()];
                for &a in axes {
                    let ax = normalize_axis(a, xs.len())?;
                    if reduced[ax] {
                        return Err(format!("axes {axes:?} repeat an axis"));
                    }
                    reduced[ax] = true;
                }
                self.norm_launch(x, y, split_axes(&xs, &reduced), 1, 0.0, (0, 0), (1, 1, 1), none)
            }
        }
    }

    /// norm_axes (spatial.cu): one block per kept position. `ch` is (channel stride, channels,
    /// channels per scale/bias entry); `stats` BatchNormalization's running statistics (in, out,
    /// momentum) or zeros.
    #[allow(clippy::too_many_arguments)]
    fn norm_launch(
        &mut self,
        x: usize,
        y: usize,
        ((kept_shape, kept_stride), (red_shape, red_stride)): AxesSplit,
        kind: i32,
        eps: f32,
        (scale, bias): (u64, u64),
        (ch_stride, channels, ch_div): (usize, usize, usize),
        (mean_in, var_in, mean_out, var_out, momentum): (u64, u64, u64, u64, f32),
    ) -> CudaResult<()> {
        let blocks: i64 = kept_shape.iter().product();
        let n_red: i64 = red_shape.iter().product();
        if blocks == 0 || n_red == 0 {
            return Ok(());
        }
        let blocks = u32::try_from(blocks).map_err(|_| format!("{blocks} rows exceed one launch"))?;
        let f = self.p.typed("norm_axes")?;
        let (xp, yp) = (self.ptr(x)?, self.ptr(y)?);
        let (kr, rr) = (kept_shape.len() as i32, red_shape.len() as i32);
        let (ks, kst, rs, rst) = (str8(&kept_shape)?, str8(&kept_stride)?, str8(&red_shape)?, str8(&red_stride)?);
        let (ch_stride, channels, ch_div) = (ch_stride as i64, channels as i64, ch_div as i64);
        self.launch(
            f,
            blocks,
            256,
            params!(
                xp, yp, kr, ks, kst, rr, rs, rst, n_red, kind, eps, scale, bias, ch_stride, channels, ch_div, mean_in,
                var_in, mean_out, var_out, momentum
            ),
        )
    }
}
