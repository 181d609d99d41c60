//! Launching the attention variants, recurrent layers, Einsum and other product-shaped ops (lower_sequence.rs).

use crate::error::CudaResult;
use crate::kernels::strides;
use crate::launch::{numel, params};
use crate::lower_sequence::{AttentionAttrs, RecurrentAttrs, SequenceOp};
use crate::session::CudaSession;
use kiln_ir::DType;

impl CudaSession {
    pub(crate) fn launch_sequence(&mut self, li: usize, op: &SequenceOp) -> CudaResult<()> {
        match op {
            SequenceOp::Attention(a) => self.attention(li, a),
            SequenceOp::Rotary { heads, rot, interleaved } => self.rotary(li, *heads, *rot, *interleaved),
            SequenceOp::Einsum { equation } => self.einsum(li, equation),
            SequenceOp::BroadcastMatMul => self.broadcast_matmul(li),
            SequenceOp::QuantMatMul { qlinear } => self.quant_matmul(li, *qlinear),
            SequenceOp::QuantConv { qlinear } => self.quant_conv(li, *qlinear),
            SequenceOp::LinearAttention { q_heads, kv_heads, gating, delta, scale } => {
                self.linear_attention(li, (*q_heads, *kv_heads), (*gating, *delta), *scale)
            }
            SequenceOp::Recurrent(a) => self.recurrent(li, a),
        }
    }

    /// Zero `bytes` bytes at device address `ptr`.
    fn zero(&self, ptr: u64, bytes: usize) -> CudaResult<()> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: the callers pass a slot of at least `bytes` bytes.
        unsafe { cudarc::driver::result::memset_d8_async(ptr, 0, bytes, self.stream) }
            .map_err(|e| format!("device memset: {e:?}"))
    }

    /// MatMul with numpy semantics: a 1-D A is a row ([1, K]), a 1-D B a column ([K, 1]); the
    /// batch dims broadcast. One batched cuBLAS product per index of the outer batch dims, over
    /// the innermost batch dim (stride 0 where an operand broadcasts).
    fn broadcast_matmul(&mut self, li: usize) -> CudaResult<()> {
        let (a, b, y) = (self.required(li, 0)?, self.required(li, 1)?, self.output(li, 0)?);
        let (sa, sb) = (self.shape(a)?, self.shape(b)?);
        let MatMulDims { m, k, n, batch, stride_a, stride_b } = matmul_dims(&sa, &sb)?;
        let nb = batch.len();
        let ys = self.shape(y)?;
        if numel(&ys) != numel(&batch) * m * n {
            return Err(format!("MatMul output {ys:?} for {sa:?} × {sb:?}"));
        }
        if numel(&ys) == 0 {
            return Ok(());
        }
        let e = self.p.storage.dtype().size() as u64;
        let (ap, bp, yp) = (self.ptr(a)?, self.ptr(b)?, self.ptr(y)?);
        if k == 0 {
            return self.zero(yp, numel(&ys) * e as usize);
        }
        let inner = batch.last().copied().unwrap_or(1);
        let (ia, ib) = (stride_a.last().copied().unwrap_or(0), stride_b.last().copied().unwrap_or(0));
        let outer = &batch[..nb.saturating_sub(1)];
        for o in 0..numel(outer) {
            let (mut rem, mut off_a, mut off_b) = (o, 0i64, 0i64);
            for j in (0..outer.len()).rev() {
                let c = (rem % outer[j]) as i64;
                rem /= outer[j];
                off_a += c * stride_a[j];
                off_b += c * stride_b[j];
            }
            let off_y = (o * inner * m * n) as u64;
            self.blas.gemm(
                self.p.storage,
                self.p.tf32,
                (m, n, k),
                1.0,
                (ap + off_a as u64 * e, k, false, ia),
                (bp + off_b as u64 * e, n, false, ib),
                (yp + off_y * e, n, (m * n) as i64),
                inner,
            )?;
        }
        Ok(())
    }

    /// MatMulInteger (inputs A, B, zero points) or QLinearMatMul (A, scale, zero point, B,
    /// scale, zero point, Y's scale and zero point): `quant_matmul` in sequence.cu.
    fn quant_matmul(&mut self, li: usize, qlinear: bool) -> CudaResult<()> {
        let (ia, ib, iza, izb) = if qlinear { (0, 3, 2, 5) } else { (0, 1, 2, 3) };
        let (a, b, y) = (self.required(li, ia)?, self.required(li, ib)?, self.output(li, 0)?);
        let (sa, sb) = (self.shape(a)?, self.shape(b)?);
        let MatMulDims { m, k, n, batch, stride_a, stride_b } = matmul_dims(&sa, &sb)?;
        let total = numel(&self.shape(y)?);
        if total != numel(&batch) * m * n || batch.len() > crate::kernels::MAX_RANK {
            return Err(format!("{sa:?} × {sb:?} into {:?}", self.shape(y)?));
        }
        if total == 0 {
            return Ok(());
        }
        let ((za, za_len), (zb, zb_len)) = (self.zero_point(li, iza, m)?, self.zero_point(li, izb, n)?);
        let mut d = QMatDims { m: m as i64, n: n as i64, k: k as i64, nb: batch.len() as i32, ..Default::default() };
        for j in 0..batch.len() {
            (d.batch[j], d.a_stride[j], d.b_stride[j]) = (batch[j] as i64, stride_a[j], stride_b[j]);
        }
        let q = self.quant_out(li, qlinear, n)?;
        let f = self.p.func("quant_matmul")?;
        let (ap, a_signed, bp, b_signed) = (self.ptr(a)?, self.signed(a)?, self.ptr(b)?, self.signed(b)?);
        let (yp, total64) = (self.ptr(y)?, total as i64);
        let grid = self.grid(total);
        self.launch(f, grid, 256, params!(ap, a_signed, za, za_len, bp, b_signed, zb, zb_len, yp, total64, d, q))
    }

    /// ConvInteger (X, W, zero points) or QLinearConv (X, scale, zero point, W, scale, zero
    /// point, Y's scale and zero point, int32 bias): `quant_conv` in sequence.cu, 1 to 3
    /// spatial dims, pads from the attributes (auto_pad from the inferred output size).
    fn quant_conv(&mut self, li: usize, qlinear: bool) -> CudaResult<()> {
        let (ix, iw, izx, izw) = if qlinear { (0, 3, 2, 5) } else { (0, 1, 2, 3) };
        let (x, w, y) = (self.required(li, ix)?, self.required(li, iw)?, self.output(li, 0)?);
        let (xs, ws, ys) = (self.shape(x)?, self.shape(w)?, self.shape(y)?);
        let nsp = xs.len().saturating_sub(2);
        let attrs = &self.p.graph.layers[li].layer.attrs;
        let group = attrs.int("group", 1)?.max(1) as usize;
        if !(1..=3).contains(&nsp) || ws.len() != xs.len() || ys.len() != xs.len() || ws[1] * group != xs[1] {
            return Err(format!("X {xs:?}, W {ws:?} and Y {ys:?} with group {group}"));
        }
        if ws[0] % group != 0 || ys[0] != xs[0] || ys[1] != ws[0] {
            return Err(format!("W {ws:?} and Y {ys:?} do not fit group {group}"));
        }
        let ints = |name: &str, default: i64| -> CudaResult<Vec<i64>> {
            Ok(attrs.ints_opt(name)?.unwrap_or_else(|| vec![default; nsp]))
        };
        let (strides, dilations) = (ints("strides", 1)?, ints("dilations", 1)?);
        let pads = attrs.ints_opt("pads")?.unwrap_or_else(|| vec![0; 2 * nsp]);
        if strides.len() != nsp || dilations.len() != nsp || pads.len() != 2 * nsp {
            return Err("strides, dilations or pads of the wrong length".into());
        }
        let auto_pad = attrs.string("auto_pad", "NOTSET".into())?;
        let mut g = QConvGeom {
            nsp: nsp as i32,
            n: xs[0] as i64,
            c: xs[1] as i64,
            m: ws[0] as i64,
            group: group as i64,
            ..Default::default()
        };
        for s in 0..nsp {
            let (inp, out, k) = (xs[2 + s] as i64, ys[2 + s] as i64, ws[2 + s] as i64);
            (g.in_[s], g.out[s], g.k[s], g.stride[s], g.dil[s]) = (inp, out, k, strides[s], dilations[s]);
            g.pad[s] = match auto_pad.as_str() {
                "SAME_UPPER" | "SAME_LOWER" => {
                    let total = ((out - 1) * strides[s] + (k - 1) * dilations[s] + 1 - inp).max(0);
                    if auto_pad == "SAME_UPPER" {
                        total / 2
                    } else {
                        total - total / 2
                    }
                }
                "VALID" => 0,
                _ => pads[s],
            };
        }
        let total = numel(&ys);
        if total == 0 {
            return Ok(());
        }
        let ((zx, _), (zw, zw_len)) = (self.zero_point(li, izx, 1)?, self.zero_point(li, izw, ws[0])?);
        let bias = match self.input(li, 8).filter(|_| qlinear) {
            Some(b) if self.device_dtype(b)? == DType::I32 && numel(&self.shape(b)?) == ws[0] => self.ptr(b)?,
            Some(_) => return Err(format!("B must be int32 with {} entries", ws[0])),
            None => 0,
        };
        let q = self.quant_out(li, qlinear, ws[0])?;
        let f = self.p.func("quant_conv")?;
        let (xp, x_signed, wp, w_signed) = (self.ptr(x)?, self.signed(x)?, self.ptr(w)?, self.signed(w)?);
        let (yp, total64) = (self.ptr(y)?, total as i64);
        let grid = self.grid(total);
        self.launch(f, grid, 256, params!(xp, x_signed, zx, wp, w_signed, zw, zw_len, bias, yp, total64, g, q))
    }

    /// Whether an 8-bit tensor is signed (int8) rather than uint8.
    fn signed(&self, t: usize) -> CudaResult<i32> {
        Ok((self.device_dtype(t)? == DType::I8) as i32)
    }

    /// Optional zero point input `k`: its address and length, which must be 1 or `per`.
    fn zero_point(&self, li: usize, k: usize, per: usize) -> CudaResult<(u64, i64)> {
        let Some(z) = self.input(li, k) else { return Ok((0, 0)) };
        let len = numel(&self.shape(z)?);
        if len != 1 && len != per {
            return Err(format!("zero point of {len} values for {per}"));
        }
        Ok((self.ptr(z)?, len as i64))
    }

    /// The output side of a quantized product: int32 sums, or (qlinear: scales at inputs 1, 4
    /// and 6, each of 1 or `channels` values, Y's zero point at input 7) requantized 8 bits.
    fn quant_out(&self, li: usize, qlinear: bool, channels: usize) -> CudaResult<QOut> {
        let y = self.output(li, 0)?;
        let code = |d: DType| crate::kernels::dtype_code(d).unwrap_or(-1);
        let mut q = QOut { y_kind: code(self.device_dtype(y)?), a_sn: 1, b_sn: 1, y_sn: 1, ..Default::default() };
        if !qlinear {
            return Ok(q);
        }
        let mut scales = [(0u64, 1i64); 3];
        for (slot, k) in scales.iter_mut().zip([1, 4, 6]) {
            let s = self.required(li, k)?;
            let len = numel(&self.shape(s)?);
            if len != 1 && len != channels {
                return Err(format!("a scale of {len} values for {channels} channels"));
            }
            *slot = (self.ptr(s)?, len as i64);
            (q.scale_load, q.scale_round) = (code(self.device_dtype(s)?), code(self.graph_dtype(s)?));
        }
        ((q.a_scale, q.a_sn), (q.b_scale, q.b_sn), (q.y_scale, q.y_sn)) = (scales[0], scales[1], scales[2]);
        if let Some(z) = self.input(li, 7) {
            if numel(&self.shape(z)?) != 1 || self.device_dtype(z)? != self.device_dtype(y)? {
                return Err("y_zero_point must be one value of Y's type".into());
            }
            q.y_zp = self.ptr(z)?;
        }
        Ok(q)
    }

    /// An optional output's tensor id.
    fn optional_output(&self, li: usize, k: usize) -> Option<usize> {
        self.p.graph.layers[li].layer.outputs.get(k).copied().flatten().map(|id| id.0)
    }

    /// LinearAttention, its shapes checked as the reference checks them; the fp32 state lives in
    /// the workspace.
    fn linear_attention(
        &mut self,
        li: usize,
        (hq, hkv): (usize, usize),
        (gating, delta): (bool, bool),
        scale: f32,
    ) -> CudaResult<()> {
        let (q, k, v, y) = (self.required(li, 0)?, self.required(li, 1)?, self.required(li, 2)?, self.output(li, 0)?);
        let (qs, ks, vs) = (self.shape(q)?, self.shape(k)?, self.shape(v)?);
        let (b, t) = (qs[0], qs[1]);
        if qs[2] % hq != 0 || vs[2] % hkv != 0 {
            return Err(format!("query {qs:?} / value {vs:?} do not split into {hq} / {hkv} heads"));
        }
        let (dk, dv) = (qs[2] / hq, vs[2] / hkv);
        if ks != [b, t, hkv * dk] || vs[..2] != [b, t] {
            return Err(format!("query {qs:?}, key {ks:?} and value {vs:?} do not fit together"));
        }
        let state_shape = [b, hkv, dk, dv];
        let past = self.input(li, 3);
        if let Some(p) = past {
            if self.shape(p)? != state_shape {
                return Err(format!("past_state must be {state_shape:?}"));
            }
        }
        let gw = match self.input(li, 4) {
            None => 0,
            Some(g) => {
                let gs = self.shape(g)?;
                let gw = if gs.last() == Some(&hkv) { 1 } else { dk };
                if gs != [b, t, hkv * gw] {
                    return Err(format!("decay {gs:?} for [{b}, {t}, {hkv} or {}]", hkv * dk));
                }
                gw
            }
        };
        let hb = match self.input(li, 5) {
            None => 0,
            Some(bt) => {
                let bs = self.shape(bt)?;
                let last = bs.last().copied().unwrap_or(0);
                if bs != [b, t, last] || !(last == hkv || last == 1) {
                    return Err(format!("beta {bs:?} for [{b}, {t}, {hkv} or 1]"));
                }
                last
            }
        };
        let threads = b * hkv * dv;
        if threads == 0 {
            return Ok(());
        }
        self.ensure_workspace(numel(&state_shape) * 4)?;
        let opt =
            |id: Option<usize>| -> CudaResult<u64> { id.map(|t| self.ptr(t)).transpose().map(|p| p.unwrap_or(0)) };
        let (qp, kp, vp, yp) = (self.ptr(q)?, self.ptr(k)?, self.ptr(v)?, self.ptr(y)?);
        let (pp, gp, bp, present) =
            (opt(past)?, opt(self.input(li, 4))?, opt(self.input(li, 5))?, opt(self.optional_output(li, 1))?);
        let state = self.workspace.ptr();
        let scale = if scale == 0.0 { 1.0 / (dk as f32).sqrt() } else { scale };
        let dims = [b, t, hq, hkv, dk, dv, gw, hb].map(|d| d as i64);
        let (g, d) = (gating as i32, delta as i32);
        let f = self.p.typed("linear_attention")?;
        let grid = self.grid(threads);
        self.launch(
            f,
            grid,
            256,
            params!(
                qp, kp, vp, pp, gp, bp, yp, present, state, dims[0], dims[1], dims[2], dims[3], dims[4], dims[5],
                dims[6], dims[7], g, d, scale
            ),
        )
    }

    /// RNN, GRU or LSTM: Y zeroed (steps past a sequence length stay zero), then one block per
    /// (direction, batch entry) runs the recurrence with its state in the fp32 workspace.
    fn recurrent(&mut self, li: usize, a: &RecurrentAttrs) -> CudaResult<()> {
        let (x, w, r) = (self.required(li, 0)?, self.required(li, 1)?, self.required(li, 2)?);
        let (xs, ws, rs) = (self.shape(x)?, self.shape(w)?, self.shape(r)?);
        if xs.len() != 3 || ws.len() != 3 || rs.len() != 3 {
            return Err(format!("X {xs:?}, W {ws:?} and R {rs:?} must be 3-D"));
        }
        let (seq, batch) = if a.layout == 0 { (xs[0], xs[1]) } else { (xs[1], xs[0]) };
        let (input, hidden, dirs) = (xs[2], rs[2], a.dirs);
        let gh = [1, 3, 4][a.cell as usize] * hidden;
        if a.hidden_size.is_some_and(|h| h != hidden) || ws != [dirs, gh, input] || rs != [dirs, gh, hidden] {
            return Err(format!("W {ws:?} / R {rs:?} for {dirs} directions of {hidden} units over {input} inputs"));
        }
        let state = if a.layout == 0 { [dirs, batch, hidden] } else { [batch, dirs, hidden] };
        let lstm = a.cell == 2;
        let want = |k: usize, shape: &[usize], what: &str| -> CudaResult<u64> {
            match self.input(li, k) {
                None => Ok(0),
                Some(t) if self.shape(t)? == shape => self.ptr(t),
                Some(t) => Err(format!("{what} must be {shape:?}, got {:?}", self.shape(t)?)),
            }
        };
        let bias = want(3, &[dirs, 2 * gh], "B")?;
        let h0 = want(5, &state, "initial_h")?;
        let (c0, peep) =
            if lstm { (want(6, &state, "initial_c")?, want(7, &[dirs, 3 * hidden], "P")?) } else { (0, 0) };
        let (lens, lens_i32) = match self.input(li, 4) {
            None => (0, 0),
            Some(t) => {
                let is_i32 = match self.device_dtype(t)? {
                    DType::I32 => 1,
                    DType::I64 => 0,
                    other => return Err(format!("sequence_lens of type {other}")),
                };
                (want(4, &[batch], "sequence_lens")?, is_i32)
            }
        };
        let out = |k: usize| -> CudaResult<u64> {
            self.optional_output(li, k).map(|t| self.ptr(t)).transpose().map(|p| p.unwrap_or(0))
        };
        let (y, yh, yc) = (out(0)?, out(1)?, if lstm { out(2)? } else { 0 });
        let blocks = dirs * batch;
        if blocks == 0 || hidden == 0 {
            return Ok(());
        }
        let e = self.p.storage.dtype().size();
        if y != 0 {
            self.zero(y, seq * dirs * batch * hidden * e)?;
        }
        let n_state = dirs * batch * hidden;
        self.ensure_workspace(4 * n_state * 4)?;
        let scratch = self.workspace.ptr();
        let d = RnnDims {
            seq: seq as i64,
            batch: batch as i64,
            input: input as i64,
            hidden: hidden as i64,
            dirs: dirs as i64,
            cell: a.cell,
            linear_before_reset: a.linear_before_reset as i32,
            input_forget: a.input_forget as i32,
            layout: a.layout,
            reverse: a.reverse as i32,
            lens_i32,
            clip: a.clip,
        };
        let mut acts = RnnActs::default();
        for (j, &(code, alpha, beta)) in a.acts.iter().enumerate() {
            (acts.code[j], acts.alpha[j], acts.beta[j]) = (code, alpha, beta);
        }
        let (xp, wp, rp, err) = (self.ptr(x)?, self.ptr(w)?, self.ptr(r)?, self.error_flag.ptr());
        let blocks = u32::try_from(blocks).map_err(|_| format!("{blocks} sequences exceed one launch"))?;
        let f = self.p.typed("recurrent")?;
        self.launch(f, blocks, 128, params!(xp, wp, rp, bias, lens, h0, c0, peep, y, yh, yc, scratch, err, d, acts))
    }

    /// Einsum: one thread per output element (einsum.rs plans the loops).
    fn einsum(&mut self, li: usize, equation: &str) -> CudaResult<()> {
        let y = self.output(li, 0)?;
        let xs = (0..self.p.graph.layers[li].layer.inputs.len())
            .map(|k| self.required(li, k))
            .collect::<CudaResult<Vec<_>>>()?;
        let shapes = xs.iter().map(|&x| self.shape(x)).collect::<CudaResult<Vec<_>>>()?;
        let plan = crate::einsum::plan(equation, &shapes)?;
        if plan.out_shape != self.shape(y)? {
            return Err(format!("Einsum output {:?} where {:?} was inferred", plan.out_shape, self.shape(y)?));
        }
        let n = numel(&plan.out_shape);
        if n == 0 {
            return Ok(());
        }
        let n_sum = plan.loops.sum_shape[..plan.summed].iter().product::<i64>();
        let mut ptrs = [0u64; crate::einsum::MAX_OPERANDS];
        for (p, &x) in ptrs.iter_mut().zip(&xs) {
            *p = self.ptr(x)?;
        }
        let f = match self.device_dtype(y)? {
            DType::F64 => self.p.func("einsum_f64")?,
            _ => self.p.typed("einsum")?,
        };
        let (yp, n64, n_ops) = (self.ptr(y)?, n as i64, xs.len() as i32);
        let (out_rank, sum_rank, loops) = (plan.out_shape.len() as i32, plan.summed as i32, plan.loops);
        let grid = self.grid(n);
        self.launch(
            f,
            grid,
            256,
            params!(ptrs[0], ptrs[1], ptrs[2], ptrs[3], yp, n64, n_ops, out_rank, sum_rank, n_sum, loops),
        )
    }

    /// RotaryEmbedding, its shapes checked as the reference checks them.
    fn rotary(&mut self, li: usize, heads_attr: usize, rot_attr: usize, interleaved: bool) -> CudaResult<()> {
        let (x, cos, sin, y) =
            (self.required(li, 0)?, self.required(li, 1)?, self.required(li, 2)?, self.output(li, 0)?);
        let xs = self.shape(x)?;
        let (b, s, h, d, four_d) = match xs.len() {
            4 => (xs[0], xs[2], xs[1], xs[3], true),
            _ if xs.len() == 3 && heads_attr > 0 && xs[2] % heads_attr == 0 => {
                (xs[0], xs[1], heads_attr, xs[2] / heads_attr, false)
            }
            _ => return Err(format!("X {xs:?} does not split into {heads_attr} heads")),
        };
        let rot = if rot_attr == 0 { d } else { rot_attr };
        if rot % 2 != 0 || rot > d {
            return Err(format!("rotating {rot} of a head size {d}"));
        }
        let half = rot / 2;
        let (cs, ss) = (self.shape(cos)?, self.shape(sin)?);
        let pos = self.input(li, 3);
        let rows = match pos {
            Some(p) => {
                if self.shape(p)? != [b, s] || cs.len() != 2 || cs[1] != half {
                    return Err(format!("position_ids for [{b}, {s}] with a cos_cache {cs:?} of {half} columns"));
                }
                cs[0]
            }
            None if cs == [b, s, half] => b * s,
            None => return Err(format!("without position_ids cos_cache must be [{b}, {s}, {half}], got {cs:?}")),
        };
        if ss != cs {
            return Err(format!("sin_cache {ss:?} and cos_cache {cs:?} differ in shape"));
        }
        let n = numel(&xs);
        if n == 0 {
            return Ok(());
        }
        let f = self.p.typed("rotary_embedding")?;
        let (xp, yp, cp, sp) = (self.ptr(x)?, self.ptr(y)?, self.ptr(cos)?, self.ptr(sin)?);
        let pp = pos.map(|p| self.ptr(p)).transpose()?.unwrap_or(0);
        let (n64, s64, h64, d64, rot64, rows64) = (n as i64, s as i64, h as i64, d as i64, rot as i64, rows as i64);
        let (il, fd, err) = (interleaved as i32, four_d as i32, self.error_flag.ptr());
        let grid = self.grid(n);
        self.launch(f, grid, 256, params!(xp, yp, cp, sp, pp, n64, s64, h64, d64, rot64, il, fd, rows64, err))
    }

    /// ONNX Attention: the present K/V (past ++ new, when asked for or a cache is given) by
    /// strided copies, S = scale·Q·Kᵀ by cuBLAS, `attention_softmax` in place (softcap, mask,
    /// causal/window/padding rules, qk_matmul_output), then Y = P·V by cuBLAS, written in Y's
    /// layout. Grouped-query attention: query head h reads kv head h / (Hq/Hkv), so each product
    /// runs per batch and per member r of a group, batched over the kv heads.
    fn attention(&mut self, li: usize, a: &AttentionAttrs) -> CudaResult<()> {
        let (q, k, v, y) = (self.required(li, 0)?, self.required(li, 1)?, self.required(li, 2)?, self.output(li, 0)?);
        let d = self.attention_dims(li, a)?;
        let AttnDims { b, hq, hkv, sq, sp, skv, st, dk, dv, packed } = d;
        let g = hq / hkv;
        let e = self.p.storage.dtype().size();
        let out = |k: usize| self.p.graph.layers[li].layer.outputs.get(k).copied().flatten().map(|id| id.0);
        let (present_k, present_v, qk_out) = (out(1), out(2), out(3));
        let past = match (self.input(li, 4), self.input(li, 5)) {
            (Some(pk), Some(pv)) => Some((self.ptr(pk)?, self.ptr(pv)?)),
            _ => None,
        };

        // Scratch: the scores, then the present K and V where a cache is given but not returned.
        let align = |n: usize| n.div_ceil(256) * 256;
        let scores_bytes = align(b * hq * sq * st * e);
        let cache_k = if past.is_some() && present_k.is_none() { align(b * hkv * st * dk * e) } else { 0 };
        let cache_v = if past.is_some() && present_v.is_none() { align(b * hkv * st * dv * e) } else { 0 };
        self.ensure_workspace(scores_bytes + cache_k + cache_v)?;
        let scores = self.workspace.ptr();

        // K and V as the products read them: the inputs, or the present tensors.
        let mut kv_view = HeadView::of(self.ptr(k)?, packed, hkv, skv, dk);
        let mut vv_view = HeadView::of(self.ptr(v)?, packed, hkv, skv, dv);
        let targets = [
            (present_k, scores + scores_bytes as u64, past.map(|p| p.0), &mut kv_view, dk),
            (present_v, scores + (scores_bytes + cache_k) as u64, past.map(|p| p.1), &mut vv_view, dv),
        ];
        for (output, scratch, past_ptr, view, hd) in targets {
            let dst = match (output, past_ptr) {
                (Some(o), _) => self.ptr(o)?,
                (None, Some(_)) => scratch,
                (None, None) => continue,
            };
            let dst_strides = [(hkv * st * hd) as i64, (st * hd) as i64, hd as i64, 1];
            if let Some(pp) = past_ptr {
                let shape = [b, hkv, sp, hd];
                self.copy_strided(e, pp, dst, &shape, &strides(&shape), &dst_strides)?;
            }
            let new_strides = [view.batch, view.head, view.row, 1];
            self.copy_strided(e, view.ptr, dst + (sp * hd * e) as u64, &[b, hkv, skv, hd], &new_strides, &dst_strides)?;
            *view = HeadView::of(dst, false, hkv, st, hd);
        }

        let rows = b * hq * sq;
        if rows == 0 {
            return Ok(());
        }
        let (storage, tf32) = (self.p.storage, self.p.tf32);
        let qv = HeadView::of(self.ptr(q)?, packed, hq, sq, dk);
        let yv = HeadView::of(self.ptr(y)?, packed, hq, sq, dv);
        let head_scores = (sq * st) as u64;
        let scale = a.scale.unwrap_or(1.0 / (dk as f32).sqrt());
        if st > 0 {
            if dk == 0 {
                self.zero(scores, b * hq * sq * st * e)?;
            } else {
                for (bi, r) in (0..b).flat_map(|bi| (0..g).map(move |r| (bi, r))) {
                    self.blas.gemm(
                        storage,
                        tf32,
                        (sq, st, dk),
                        scale,
                        (qv.at(bi, r, e), qv.row as usize, false, g as i64 * qv.head),
                        (kv_view.at(bi, 0, e), kv_view.row as usize, true, kv_view.head),
                        (scores + ((bi * hq + r) as u64 * head_scores) * e as u64, st, (g * sq * st) as i64),
                        hkv,
                    )?;
                }
            }
            self.attention_softmax(li, a, &d, scores, qk_out)?;
        }
        if dv == 0 {
            return Ok(());
        }
        if st == 0 {
            // No keys: every output row is an empty sum.
            return self.zero(yv.ptr, b * hq * sq * dv * e);
        }
        for (bi, r) in (0..b).flat_map(|bi| (0..g).map(move |r| (bi, r))) {
            self.blas.gemm(
                storage,
                tf32,
                (sq, dv, st),
                1.0,
                (scores + ((bi * hq + r) as u64 * head_scores) * e as u64, st, false, (g * sq * st) as i64),
                (vv_view.at(bi, 0, e), vv_view.row as usize, false, vv_view.head),
                (yv.at(bi, r, e), yv.row as usize, g as i64 * yv.head),
                hkv,
            )?;
        }
        Ok(())
    }

    /// The sizes of one Attention run from its input shapes, checked as the reference checks them.
    fn attention_dims(&self, li: usize, a: &AttentionAttrs) -> CudaResult<AttnDims> {
        let (qs, ks, vs) = (
            self.shape(self.required(li, 0)?)?,
            self.shape(self.required(li, 1)?)?,
            self.shape(self.required(li, 2)?)?,
        );
        let rank = qs.len();
        if ks.len() != rank || vs.len() != rank {
            return Err(format!("Q, K and V must have the same rank, got {qs:?}, {ks:?}, {vs:?}"));
        }
        let packed = rank == 3;
        let (b, hq, sq, dk, hkv, skv, dv, k_dim) = if packed {
            let (hq, hkv) = (a.q_heads, a.kv_heads);
            if qs[2] % hq != 0 || ks[2] % hkv != 0 || vs[2] % hkv != 0 {
                return Err(format!("hidden sizes {qs:?}, {ks:?}, {vs:?} do not split into {hq} and {hkv} heads"));
            }
            (qs[0], hq, qs[1], qs[2] / hq, hkv, ks[1], vs[2] / hkv, ks[2] / hkv)
        } else {
            if vs[1] != ks[1] {
                return Err(format!("K has {} heads but V has {}", ks[1], vs[1]));
            }
            (qs[0], qs[1], qs[2], qs[3], ks[1], ks[2], vs[3], ks[3])
        };
        if k_dim != dk || ks[0] != b || vs[0] != b || vs[rank - 2] != skv {
            return Err(format!("Q {qs:?}, K {ks:?} and V {vs:?} do not fit together"));
        }
        if hkv == 0 || hq % hkv != 0 {
            return Err(format!("q heads ({hq}) must be a multiple of kv heads ({hkv})"));
        }
        let sp = match (self.input(li, 4), self.input(li, 5)) {
            (Some(pk), Some(pv)) => {
                let (pks, pvs) = (self.shape(pk)?, self.shape(pv)?);
                let sp = pks.get(2).copied().unwrap_or(0);
                if pks != [b, hkv, sp, dk] || pvs != [b, hkv, sp, dv] {
                    return Err(format!("past_key {pks:?} / past_value {pvs:?} for [{b}, {hkv}, past, {dk}/{dv}]"));
                }
                sp
            }
            _ => 0,
        };
        if let Some(n) = self.input(li, 6) {
            if sp > 0 || self.input(li, 4).is_some() {
                return Err("nonpad_kv_seqlen cannot be combined with past_key/past_value".into());
            }
            if self.device_dtype(n)? != DType::I64 || self.shape(n)? != [b] {
                return Err(format!("nonpad_kv_seqlen must be int64 [{b}]"));
            }
        }
        Ok(AttnDims { b, hq, hkv, sq, sp, skv, st: sp + skv, dk, dv, packed })
    }

    /// The masked softmax over the scores (`attention_softmax` in sequence.cu).
    fn attention_softmax(
        &self,
        li: usize,
        a: &AttentionAttrs,
        d: &AttnDims,
        scores: u64,
        qk_out: Option<usize>,
    ) -> CudaResult<()> {
        let mut rules = AttnRules {
            heads: d.hq as i64,
            sq: d.sq as i64,
            softcap: a.softcap,
            mask_kind: 0,
            key_broadcast: 0,
            causal: a.causal as i32,
            has_past: self.input(li, 4).is_some() as i32,
            mb: 0,
            mh: 0,
            mq: 0,
            mask_len: 0,
            left: a.left,
            right: a.right,
            past_len: d.sp as i64,
        };
        let mut mask = 0u64;
        if let Some(m) = self.input(li, 3) {
            // Right-aligned against [B, Hq, Sq, keys]; broadcast axes read with stride 0.
            let ms = self.shape(m)?;
            if ms.is_empty() || ms.len() > 4 {
                return Err(format!("attn_mask must have rank 1 to 4, got {ms:?}"));
            }
            let mut dims = [1usize; 4];
            dims[4 - ms.len()..].copy_from_slice(&ms);
            let full = [d.b, d.hq, d.sq];
            if (0..3).any(|ax| dims[ax] != 1 && dims[ax] != full[ax]) || dims[3] > d.st {
                return Err(format!("attn_mask {ms:?} does not broadcast to [{}, {}, {}, {}]", d.b, d.hq, d.sq, d.st));
            }
            if a.mask_broadcast && dims[3] != d.st && dims[3] != 1 {
                return Err(format!("attn_mask's last dim {} is neither 1 nor {}", dims[3], d.st));
            }
            let st = strides(&dims);
            let axis_stride = |ax: usize| if dims[ax] == 1 { 0 } else { st[ax] };
            (rules.mb, rules.mh, rules.mq) = (axis_stride(0), axis_stride(1), axis_stride(2));
            rules.mask_len = dims[3] as i64;
            rules.key_broadcast = (a.mask_broadcast && dims[3] == 1) as i32;
            rules.mask_kind = if self.device_dtype(m)? == DType::Bool { 2 } else { 1 };
            mask = self.ptr(m)?;
        }
        let nonpad = self.input(li, 6).map(|n| self.ptr(n)).transpose()?.unwrap_or(0);
        let qk = qk_out.map(|t| self.ptr(t)).transpose()?.unwrap_or(0);
        let rows = d.b * d.hq * d.sq;
        let rows = u32::try_from(rows).map_err(|_| format!("{rows} attention rows exceed one launch"))?;
        let f = self.p.typed("attention_softmax")?;
        let (cols, mode) = (d.st as i64, a.qk_mode);
        self.launch(f, rows, 256, params!(scores, cols, mask, nonpad, qk, mode, rules))
    }
}

/// Sizes of one Attention run: batch, query and kv heads, query, past and new kv and total key
/// lengths, head sizes; `packed` for 3-D inputs ([B, S, H·D]).
#[derive(Clone, Copy)]
struct AttnDims {
    b: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    sp: usize,
    skv: usize,
    st: usize,
    dk: usize,
    dv: usize,
    packed: bool,
}

/// `AttnRules` of sequence.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct AttnRules {
    heads: i64,
    sq: i64,
    softcap: f32,
    mask_kind: i32,
    key_broadcast: i32,
    causal: i32,
    has_past: i32,
    mb: i64,
    mh: i64,
    mq: i64,
    mask_len: i64,
    left: i64,
    right: i64,
    past_len: i64,
}

/// Where an operand's (batch, head) matrices lie: element strides between batches, heads and
/// rows (a row's elements are contiguous).
#[derive(Clone, Copy)]
struct HeadView {
    ptr: u64,
    batch: i64,
    head: i64,
    row: i64,
}

impl HeadView {
    /// A 3-D packed [B, S, H·D] (`packed`) or 4-D [B, H, S, D] tensor at `ptr`.
    fn of(ptr: u64, packed: bool, heads: usize, seq: usize, dim: usize) -> HeadView {
        let (h, s, d) = (heads as i64, seq as i64, dim as i64);
        if packed {
            HeadView { ptr, batch: s * h * d, head: d, row: h * d }
        } else {
            HeadView { ptr, batch: h * s * d, head: s * d, row: d }
        }
    }

    /// Address of matrix (b, h), elements of `esize` bytes.
    fn at(&self, b: usize, h: usize, esize: usize) -> u64 {
        self.ptr + ((b as i64 * self.batch + h as i64 * self.head) * esize as i64) as u64
    }
}

/// A numpy matmul's sizes: [.., M, K] × [.., K, N] (a 1-D A is [1, K], a 1-D B [K, 1]), the
/// broadcast batch dims and each operand's element stride per batch dim (0 where it broadcasts).
pub(crate) struct MatMulDims {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub batch: Vec<usize>,
    pub stride_a: Vec<i64>,
    pub stride_b: Vec<i64>,
}

pub(crate) fn matmul_dims(sa: &[usize], sb: &[usize]) -> CudaResult<MatMulDims> {
    let (m, k, a_batch) = match sa.len() {
        0 => return Err("MatMul of a scalar".into()),
        1 => (1, sa[0], &sa[..0]),
        r => (sa[r - 2], sa[r - 1], &sa[..r - 2]),
    };
    let (kb, n, b_batch) = match sb.len() {
        0 => return Err("MatMul of a scalar".into()),
        1 => (sb[0], 1, &sb[..0]),
        r => (sb[r - 2], sb[r - 1], &sb[..r - 2]),
    };
    if kb != k {
        return Err(format!("MatMul of {sa:?} and {sb:?}"));
    }
    let nb = a_batch.len().max(b_batch.len());
    let (mut batch, mut stride_a, mut stride_b) = (vec![1usize; nb], vec![0i64; nb], vec![0i64; nb]);
    for (dims, strides, matrix) in [(a_batch, &mut stride_a, m * k), (b_batch, &mut stride_b, k * n)] {
        let off = nb - dims.len();
        let mut step = matrix as i64;
        for (j, &d) in dims.iter().enumerate().rev() {
            match (batch[off + j], d) {
                (_, 1) => {}
                (1, d) => batch[off + j] = d,
                (have, d) if have == d => {}
                _ => return Err(format!("MatMul batch dims of {sa:?} and {sb:?} do not broadcast")),
            }
            if d != 1 {
                strides[off + j] = step;
            }
            step *= d as i64;
        }
    }
    Ok(MatMulDims { m, k, n, batch, stride_a, stride_b })
}

/// `QMatDims` of sequence.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct QMatDims {
    m: i64,
    n: i64,
    k: i64,
    nb: i32,
    batch: [i64; 8],
    a_stride: [i64; 8],
    b_stride: [i64; 8],
}

/// `RnnDims` of sequence.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct RnnDims {
    seq: i64,
    batch: i64,
    input: i64,
    hidden: i64,
    dirs: i64,
    cell: i32,
    linear_before_reset: i32,
    input_forget: i32,
    layout: i32,
    reverse: i32,
    lens_i32: i32,
    clip: f32,
}

/// `RnnActs` of sequence.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RnnActs {
    code: [i32; 6],
    alpha: [f32; 6],
    beta: [f32; 6],
}

/// `QOut` of sequence.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct QOut {
    a_scale: u64,
    b_scale: u64,
    y_scale: u64,
    y_zp: u64,
    a_sn: i64,
    b_sn: i64,
    y_sn: i64,
    scale_load: i32,
    scale_round: i32,
    y_kind: i32,
}

/// `QConvGeom` of sequence.cu.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct QConvGeom {
    nsp: i32,
    n: i64,
    c: i64,
    m: i64,
    group: i64,
    in_: [i64; 3],
    out: [i64; 3],
    k: [i64; 3],
    stride: [i64; 3],
    pad: [i64; 3],
    dil: [i64; 3],
}
