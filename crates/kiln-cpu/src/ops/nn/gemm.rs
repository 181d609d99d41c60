//! Matrix products: the shared GEMM core and MatMul, Gemm, MatMulInteger, QLinearMatMul.

use super::{round_to_dtype, with_acc, zeros, Acc, Addend, Epilogue};
use crate::util::{broadcast_indices, broadcast_shape, opt_tensor_arg, single, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{DType, Tensor, Value};
use rayon::prelude::*;

/// MatMul: numpy `matmul` (1-D operands promoted, leading axes broadcast). The fused form
/// (inputs [A, B, Bias?, Residual?], optional activation) computes `act(A·B + Bias + Residual)`
/// with Bias 1-D along the output's last dim, applied to each block of rows as it is finished.
pub(super) fn matmul(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (a, b) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 1)?);
    if a.dtype() != b.dtype() {
        return Err(format!("inputs must have the same dtype, got {} and {}", a.dtype(), b.dtype()));
    }
    if inputs.len() > 4 {
        return Err(format!("MatMul takes at most 4 inputs (A, B, Bias, Residual), got {}", inputs.len()));
    }
    let (bias, residual) = (opt_tensor_arg(inputs, 2)?, opt_tensor_arg(inputs, 3)?);
    let act = super::activation(ctx.attrs, a.dtype())?;
    if let Some(bias) = bias {
        if !a.dtype().is_float() || bias.dtype() != a.dtype() || bias.rank() != 1 {
            return Err(format!(
                "Bias must be a 1-D tensor of the float dtype {}, got {} {:?}",
                a.dtype(),
                bias.dtype(),
                bias.shape()
            ));
        }
        if b.rank() < 2 || bias.len() != b.shape()[b.rank() - 1] {
            return Err(format!(
                "Bias of shape {:?} does not match the output's last dim (B has shape {:?})",
                bias.shape(),
                b.shape()
            ));
        }
    }
    fn run<T: Acc>(
        a: &Tensor,
        b: &Tensor,
        bias: Option<&Tensor>,
        residual: Option<&Tensor>,
        act: Option<kiln_ir::Activation>,
    ) -> Result<Tensor, String> {
        let bias = bias.map(T::load);
        let res = residual.map(T::load);
        let epi = Epilogue {
            scale: None,
            addend: bias.as_deref().map(|data| Addend { data, beta: T::of_f64(1.0), row_stride: 0, col_stride: 1 }),
            residual: res.as_deref(),
            act,
        };
        let shape = matmul_shape(a.shape(), b.shape())?;
        super::check_residual(residual, a.dtype(), &shape)?;
        let (out, shape) = matmul_nd::<T>(&T::load(a), a.shape(), &T::load(b), b.shape(), &epi)?;
        T::store(a.dtype(), shape, out)
    }
    Ok(single(with_acc!(a.dtype(), run(a, b, bias, residual, act))?))
}

/// Gemm: `alpha * A' * B' + beta * C` with optional transposes and a unidirectionally
/// broadcast, optional C. The fused form (inputs [A, B, C?, Residual?], optional activation)
/// computes `act(alpha·A'B' + beta·C + Residual)`; scaling, C, residual and activation are
/// applied to each block of rows as it is finished.
pub(super) fn gemm(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (a, b, c) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 1)?, opt_tensor_arg(inputs, 2)?);
    if a.rank() != 2 || b.rank() != 2 {
        return Err(format!("A and B must be 2-D, got shapes {:?} and {:?}", a.shape(), b.shape()));
    }
    if a.dtype() != b.dtype() || c.is_some_and(|c| c.dtype() != a.dtype()) {
        return Err("A, B and C must have the same dtype".into());
    }
    if inputs.len() > 4 {
        return Err(format!("Gemm takes at most 4 inputs (A, B, C, Residual), got {}", inputs.len()));
    }
    let residual = opt_tensor_arg(inputs, 3)?;
    let act = super::activation(ctx.attrs, a.dtype())?;
    let ta = ctx.attrs.int("transA", 0)? != 0;
    let tb = ctx.attrs.int("transB", 0)? != 0;
    let alpha = ctx.attrs.float("alpha", 1.0)? as f64;
    let beta = ctx.attrs.float("beta", 1.0)? as f64;
    let (m, ka) = if ta { (a.shape()[1], a.shape()[0]) } else { (a.shape()[0], a.shape()[1]) };
    let (kb, n) = if tb { (b.shape()[1], b.shape()[0]) } else { (b.shape()[0], b.shape()[1]) };
    if ka != kb {
        return Err(format!("inner dimensions differ: A' is {m}x{ka}, B' is {kb}x{n}"));
    }
    if let Some(c) = c {
        if c.rank() > 2 || broadcast_shape(c.shape(), &[m, n])? != [m, n] {
            return Err(format!("C of shape {:?} does not broadcast to [{m}, {n}]", c.shape()));
        }
    }
    super::check_residual(residual, a.dtype(), &[m, n])?;
    type Flags = (bool, bool, f64, f64, Option<kiln_ir::Activation>);
    fn run<T: Acc>(
        a: &Tensor,
        b: &Tensor,
        c: Option<&Tensor>,
        residual: Option<&Tensor>,
        (ta, tb, alpha, beta, act): Flags,
        (m, k, n): (usize, usize, usize),
    ) -> Result<Tensor, String> {
        let av = T::load(a);
        let bv = T::load(b);
        let av = if ta { transpose(&av, k, m).into() } else { av };
        let cv = c.map(T::load);
        let res = residual.map(T::load);
        // beta == 0 leaves C out entirely (so NaN/Inf in C do not leak), as runtimes do.
        let addend = match (c, &cv, beta != 0.0) {
            (Some(c), Some(cv), true) => {
                // C's dims, right-aligned against [m, n]; a dim of 1 (or absent) broadcasts.
                let (cm, cn) = match c.shape() {
                    [] => (1, 1),
                    [x] => (1, *x),
                    [x, y] => (*x, *y),
                    s => return Err(format!("C of shape {s:?} must have rank <= 2")),
                };
                Some(Addend {
                    data: &cv[..],
                    beta: T::of_f64(beta),
                    row_stride: if cm == 1 { 0 } else { cn },
                    col_stride: usize::from(cn != 1),
                })
            }
            _ => None,
        };
        let epi = Epilogue { scale: (alpha != 1.0).then(|| T::of_f64(alpha)), addend, residual: res.as_deref(), act };
        let mut y = zeros::<T>(&[m, n])?;
        if tb && m <= 4 && n > 0 {
            // Few rows (e.g. batch-1 linear layers): dot products against B's rows directly,
            // rather than transposing all of B for a product that is no bigger than B.
            for (i, yr) in y.chunks_exact_mut(n).enumerate() {
                let ar = &av[i * k..(i + 1) * k];
                for (j, v) in yr.iter_mut().enumerate() {
                    *v = dot(ar, &bv[j * k..(j + 1) * k]);
                }
                epi.apply(i, yr, n);
            }
        } else {
            let bv = if tb { transpose(&bv, n, k).into() } else { bv };
            gemm_acc_then(m, n, k, &av, &bv, &mut y, &|r0, rows| epi.apply(r0, rows, n));
        }
        T::store(a.dtype(), vec![m, n], y)
    }
    let flags = (ta, tb, alpha, beta, act);
    Ok(single(with_acc!(a.dtype(), run(a, b, c, residual, flags, (m, ka, n)))?))
}

/// MatMulInteger: `(A - a_zero_point) @ (B - b_zero_point)` in int32. A zero point is a scalar
/// or per row of A (length M) / per column of B (length N).
pub(super) fn matmul_integer(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (a, b) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 1)?);
    let av = centered(a, opt_tensor_arg(inputs, 2)?, true)?;
    let bv = centered(b, opt_tensor_arg(inputs, 3)?, false)?;
    let (out, shape) = matmul_nd::<i64>(&av, a.shape(), &bv, b.shape(), &Epilogue::none())?;
    Ok(single(i64::store(DType::I32, shape, out)?))
}

/// QLinearMatMul: integer product of the centred operands, requantized with
/// `a_scale * b_scale / y_scale` (evaluated in the scales' precision) to y's 8-bit type.
pub(super) fn qlinear_matmul(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let (a, b) = (tensor_arg(inputs, 0)?, tensor_arg(inputs, 3)?);
    let (a_scale, b_scale, y_scale) = (tensor_arg(inputs, 1)?, tensor_arg(inputs, 4)?, tensor_arg(inputs, 6)?);
    let y_zp = opt_tensor_arg(inputs, 7)?;
    let av = centered(a, opt_tensor_arg(inputs, 2)?, true)?;
    let bv = centered(b, opt_tensor_arg(inputs, 5)?, false)?;
    let (acc, shape) = matmul_nd::<i64>(&av, a.shape(), &bv, b.shape(), &Epilogue::none())?;
    let n = if b.rank() == 1 { 1 } else { b.shape()[b.rank() - 1] };
    let mult = requant_multipliers(&[a_scale, b_scale], y_scale, n)?;
    let out_dtype = y_zp.map_or(a.dtype(), |z| z.dtype());
    let zp = match y_zp {
        Some(z) if z.len() == 1 => z.to_i64_vec()[0],
        Some(z) => return Err(format!("y_zero_point must be a scalar, got shape {:?}", z.shape())),
        None => 0,
    };
    let q: Vec<i64> = acc
        .iter()
        .enumerate()
        .map(|(i, &v)| saturate_round(v as f64 * mult[if mult.len() == 1 { 0 } else { i % n }], zp, out_dtype))
        .collect::<Result<_, _>>()?;
    Ok(single(i64::store(out_dtype, shape, q)?))
}

// ---------------------------------------------------------------------------------------------
// Shared helpers (also used by the convolutions)

/// `C[m×n] += A[m×k] · B[k×n]`, all row-major and contiguous. Cache-blocked i-k-j loop nest
/// (the inner loop runs over contiguous columns of B and C so it vectorizes), rows split over
/// threads when the product is large enough to pay for it.
pub(super) fn gemm_acc<T: Acc>(m: usize, n: usize, k: usize, a: &[T], b: &[T], c: &mut [T]) {
    gemm_acc_then(m, n, k, a, b, c, &|_, _| {});
}

/// [`gemm_acc`], then `then(first_row, rows)` on each block of finished rows of C (by the
/// thread that computed them, while they are in cache): the fused epilogues.
pub(super) fn gemm_acc_then<T: Acc>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    then: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    if m == 0 || n == 0 {
        return;
    }
    let work = m.saturating_mul(n).saturating_mul(k);
    let threads = rayon::current_num_threads();
    if work >= 1 << 18 && m >= 2 && threads > 1 {
        let rows = m.div_ceil(threads * 4).max(1);
        c[..m * n].par_chunks_mut(rows * n).enumerate().for_each(|(ci, cc)| {
            let r0 = ci * rows;
            let mr = cc.len() / n;
            if k > 0 {
                gemm_serial(mr, n, k, &a[r0 * k..(r0 + mr) * k], b, cc);
            }
            then(r0, cc);
        });
    } else {
        if k > 0 {
            gemm_serial(m, n, k, a, b, c);
        }
        then(0, &mut c[..m * n]);
    }
}

fn gemm_serial<T: Acc>(m: usize, n: usize, k: usize, a: &[T], b: &[T], c: &mut [T]) {
    if n == 1 {
        // Matrix-vector: a dot product per row.
        for (i, ci) in c.iter_mut().enumerate() {
            *ci = ci.add(dot(&a[i * k..(i + 1) * k], &b[..k]));
        }
        return;
    }
    // A KC x NC block of B (256 KiB of f32) stays in cache while every row of A streams over it.
    const KC: usize = 128;
    const NC: usize = 512;
    for j0 in (0..n).step_by(NC) {
        let j1 = (j0 + NC).min(n);
        for p0 in (0..k).step_by(KC) {
            let p1 = (p0 + KC).min(k);
            let brow = |p: usize| &b[p * n + j0..p * n + j1];
            // Two rows of C at a time share every load of B; four rows of B per pass save
            // loads/stores of C. Zipped iterators keep the inner loop free of bounds checks.
            let mut rows = c[..m * n].chunks_exact_mut(n).enumerate();
            while let Some((i, c0)) = rows.next() {
                let c0 = &mut c0[j0..j1];
                let a0 = &a[i * k..(i + 1) * k];
                let Some((_, c1)) = rows.next() else {
                    let mut p = p0;
                    while p + 4 <= p1 {
                        let (x0, x1, x2, x3) = (a0[p], a0[p + 1], a0[p + 2], a0[p + 3]);
                        for ((((c, &b0), &b1), &b2), &b3) in
                            c0.iter_mut().zip(brow(p)).zip(brow(p + 1)).zip(brow(p + 2)).zip(brow(p + 3))
                        {
                            *c = c.madd(x0, b0).madd(x1, b1).madd(x2, b2).madd(x3, b3);
                        }
                        p += 4;
                    }
                    for (p, &x0) in a0.iter().enumerate().take(p1).skip(p) {
                        for (c, &b0) in c0.iter_mut().zip(brow(p)) {
                            *c = c.madd(x0, b0);
                        }
                    }
                    break;
                };
                let c1 = &mut c1[j0..j1];
                let a1 = &a[(i + 1) * k..(i + 2) * k];
                let mut p = p0;
                while p + 4 <= p1 {
                    let (x0, x1, x2, x3) = (a0[p], a0[p + 1], a0[p + 2], a0[p + 3]);
                    let (y0, y1, y2, y3) = (a1[p], a1[p + 1], a1[p + 2], a1[p + 3]);
                    for (((((c, d), &b0), &b1), &b2), &b3) in
                        c0.iter_mut().zip(c1.iter_mut()).zip(brow(p)).zip(brow(p + 1)).zip(brow(p + 2)).zip(brow(p + 3))
                    {
                        *c = c.madd(x0, b0).madd(x1, b1).madd(x2, b2).madd(x3, b3);
                        *d = d.madd(y0, b0).madd(y1, b1).madd(y2, b2).madd(y3, b3);
                    }
                    p += 4;
                }
                for (p, (&x0, &y0)) in a0.iter().zip(a1).enumerate().take(p1).skip(p) {
                    for ((c, d), &b0) in c0.iter_mut().zip(c1.iter_mut()).zip(brow(p)) {
                        *c = c.madd(x0, b0);
                        *d = d.madd(y0, b0);
                    }
                }
            }
        }
    }
}

/// Dot product with eight independent partial sums, so the loop vectorizes.
fn dot<T: Acc>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] = acc[l].madd(xs[l], ys[l]);
        }
    }
    let mut s = xr.iter().zip(yr).fold(T::ZERO, |s, (&a, &b)| s.madd(a, b));
    for v in acc {
        s = s.add(v);
    }
    s
}

/// The shape numpy `matmul` gives operands of these shapes.
fn matmul_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    if a.is_empty() || b.is_empty() {
        return Err("MatMul operands must have rank >= 1".into());
    }
    let (ab, bb) = (&a[..a.len().saturating_sub(2)], &b[..b.len().saturating_sub(2)]);
    let mut shape = broadcast_shape(ab, bb)?;
    if a.len() > 1 {
        shape.push(a[a.len() - 2]);
    }
    if b.len() > 1 {
        shape.push(b[b.len() - 1]);
    }
    Ok(shape)
}

/// numpy `matmul` over already-loaded operands; returns the product and its shape. `epi` is
/// applied to the finished rows (of `n` elements, n = B's last dim).
pub(super) fn matmul_nd<T: Acc>(
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    epi: &Epilogue<T>,
) -> Result<(Vec<T>, Vec<usize>), String> {
    if a_shape.is_empty() || b_shape.is_empty() {
        return Err("MatMul operands must have rank >= 1".into());
    }
    let a2: Vec<usize> = if a_shape.len() == 1 { vec![1, a_shape[0]] } else { a_shape.to_vec() };
    let b2: Vec<usize> = if b_shape.len() == 1 { vec![b_shape[0], 1] } else { b_shape.to_vec() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (kb, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != kb {
        return Err(format!("inner dimensions differ: {a_shape:?} @ {b_shape:?}"));
    }
    let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
    let batch = broadcast_shape(ab, bb)?;
    let mut shape = batch.clone();
    if a_shape.len() > 1 {
        shape.push(m);
    }
    if b_shape.len() > 1 {
        shape.push(n);
    }
    let nb: usize = batch.iter().product();
    let mut out = zeros::<T>(&[nb, m, n])?;
    if out.is_empty() {
        return Ok((out, shape));
    }
    let b_batch: usize = bb.iter().product();
    if b_batch == 1 && ab == batch.as_slice() {
        // B shared by every batch: fold A's batch axes into its rows, one large GEMM.
        gemm_acc_then(nb * m, n, k, a, b, &mut out, &|r0, rows| epi.apply(r0, rows, n));
        return Ok((out, shape));
    }
    let ia = broadcast_indices(ab, &batch);
    let ib = broadcast_indices(bb, &batch);
    let one = |(t, o): (usize, &mut [T])| {
        let (pa, pb) = (ia[t] * m * k, ib[t] * k * n);
        if k > 0 {
            gemm_serial(m, n, k, &a[pa..pa + m * k], &b[pb..pb + k * n], o);
        }
        epi.apply(t * m, o, n);
    };
    if nb >= 2 && m * n * k * nb >= 1 << 16 {
        out.par_chunks_mut(m * n).enumerate().for_each(one);
    } else {
        out.chunks_mut(m * n).enumerate().for_each(one);
    }
    Ok((out, shape))
}

/// Row-major transpose of an `r×c` matrix.
pub(super) fn transpose<T: Copy>(v: &[T], r: usize, c: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(r * c);
    for j in 0..c {
        out.extend((0..r).map(|i| v[i * c + j]));
    }
    out
}

/// An 8-bit matmul operand minus its zero point, as i64. The zero point is a scalar, or (when
/// `per_row`) one per row of the last-but-one axis (A: length M), else one per column of the
/// last axis (B: length N).
fn centered(x: &Tensor, zp: Option<&Tensor>, per_row: bool) -> Result<Vec<i64>, String> {
    if !matches!(x.dtype(), DType::I8 | DType::U8) {
        return Err(format!("quantized operand must be int8 or uint8, got {}", x.dtype()));
    }
    let mut v = x.to_i64_vec();
    let Some(zp) = zp else { return Ok(v) };
    if zp.dtype() != x.dtype() {
        return Err(format!("zero point dtype {} differs from its operand's {}", zp.dtype(), x.dtype()));
    }
    let z = zp.to_i64_vec();
    if z.len() == 1 {
        v.iter_mut().for_each(|e| *e -= z[0]);
        return Ok(v);
    }
    let r = x.rank();
    let (len, stride) = match (per_row, r) {
        (true, r) if r >= 2 => (x.shape()[r - 2], x.shape()[r - 1]),
        (false, r) if r >= 1 => (x.shape()[r - 1], 1),
        _ => (1, 1),
    };
    if zp.rank() > 1 || z.len() != len {
        return Err(format!("zero point of shape {:?} does not match operand shape {:?}", zp.shape(), x.shape()));
    }
    for (i, e) in v.iter_mut().enumerate() {
        *e -= z[(i / stride) % len];
    }
    Ok(v)
}

/// Requantization multipliers `prod(scales) / y_scale`, each step rounded to the scales' dtype
/// (as the reference evaluates it); one value, or `n` (per output column / channel).
pub(super) fn requant_multipliers(scales: &[&Tensor], y_scale: &Tensor, n: usize) -> Result<Vec<f64>, String> {
    let mut all: Vec<&Tensor> = scales.to_vec();
    all.push(y_scale);
    let mut len = 1;
    for s in &all {
        if !s.dtype().is_float() {
            return Err(format!("scales must be float tensors, got {}", s.dtype()));
        }
        if s.len() != 1 {
            if s.rank() != 1 || s.len() != n {
                return Err(format!("scale of shape {:?} must be a scalar or have {n} entries", s.shape()));
            }
            len = n;
        }
    }
    let vals: Vec<Vec<f64>> = all.iter().map(|s| s.to_f64_vec()).collect();
    let at = |v: &Vec<f64>, i: usize| if v.len() == 1 { v[0] } else { v[i] };
    let dt = scales[0].dtype();
    Ok((0..len)
        .map(|i| {
            let mut m = at(&vals[0], i);
            for v in &vals[1..vals.len() - 1] {
                m = round_to_dtype(dt, m * at(v, i));
            }
            round_to_dtype(dt, m / at(&vals[vals.len() - 1], i))
        })
        .collect())
}

/// `clip(rint(x) + zp)` to the range of the 8/16-bit integer `dtype`.
pub(super) fn saturate_round(x: f64, zp: i64, dtype: DType) -> Result<i64, String> {
    let (lo, hi) = int_range(dtype)?;
    let r = x.round_ties_even() + zp as f64;
    Ok(if r.is_nan() { 0 } else { r.clamp(lo as f64, hi as f64) as i64 })
}

/// Representable range of a quantized integer dtype.
pub(super) fn int_range(dtype: DType) -> Result<(i64, i64), String> {
    Ok(match dtype {
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::U8 => (0, u8::MAX as i64),
        DType::I16 => (i16::MIN as i64, i16::MAX as i64),
        DType::U16 => (0, u16::MAX as i64),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        other => return Err(format!("{other} is not a quantized integer type")),
    })
}
