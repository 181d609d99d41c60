//! Multidirectional (numpy) broadcasting of N inputs, walked row by row.
//!
//! Instead of materialising an index per output element, the output is split into rows along
//! its innermost (coalesced) dimension: within a row every input either advances by one
//! element or stays on one element (stride 0), so kernels run tight slice loops. Large outputs
//! are split into flat chunks that are filled in parallel.

use kiln_ir::{checked_numel, Element, Tensor};
use rayon::prelude::*;

/// How N input shapes broadcast to the output.
pub(super) struct Broadcast<const N: usize> {
    /// The full output shape.
    pub shape: Vec<usize>,
    pub numel: usize,
    /// Output dims after dropping 1s and merging neighbours that broadcast alike (never empty).
    dims: Vec<usize>,
    /// Per coalesced dim, each input's element stride (0 where the input is broadcast).
    strides: Vec<[usize; N]>,
}

impl<const N: usize> Broadcast<N> {
    pub fn new(shapes: [&[usize]; N]) -> Result<Self, String> {
        let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
        let dim_of = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
        let mut shape = vec![1usize; rank];
        for (i, out) in shape.iter_mut().enumerate() {
            for s in &shapes {
                let d = dim_of(s, i);
                if d != 1 {
                    if *out != 1 && *out != d {
                        return Err(format!("shapes {} cannot be broadcast together", fmt_shapes(&shapes)));
                    }
                    *out = d;
                }
            }
        }
        let numel = checked_numel(&shape).map_err(|e| e.to_string())?;
        // Coalesce: each remaining dim with a per-input "broadcast here" flag; runs of equal
        // flags merge into one dim.
        let mut dims: Vec<usize> = Vec::new();
        let mut flags: Vec<[bool; N]> = Vec::new();
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let f: [bool; N] = std::array::from_fn(|k| dim_of(shapes[k], i) == 1);
            match flags.last() {
                Some(last) if *last == f => *dims.last_mut().expect("dims and flags grow together") *= d,
                _ => {
                    dims.push(d);
                    flags.push(f);
                }
            }
        }
        if dims.is_empty() {
            dims.push(1);
            flags.push([true; N]);
        }
        let mut strides = vec![[0usize; N]; dims.len()];
        let mut acc = [1usize; N];
        for j in (0..dims.len()).rev() {
            for k in 0..N {
                if !flags[j][k] {
                    strides[j][k] = acc[k];
                    acc[k] *= dims[j];
                }
            }
        }
        Ok(Broadcast { shape, numel, dims, strides })
    }

    /// Calls `f(offsets, len, inner_strides)` for each run of output elements in the flat range
    /// `start..end`, in row-major order. A run never crosses a row of the innermost
    /// (coalesced) dimension: input `k`'s elements for it are `offsets[k] + i * inner_strides[k]`
    /// for `i < len`, and each inner stride is 0 or 1.
    pub fn for_range(&self, start: usize, end: usize, mut f: impl FnMut([usize; N], usize, [usize; N])) {
        let end = end.min(self.numel);
        if start >= end {
            return;
        }
        let last = self.dims.len() - 1;
        let (len, inner) = (self.dims[last], self.strides[last]);
        // Unravel the starting row over the outer dims.
        let (mut row, mut col) = (start / len, start % len);
        let mut idx = vec![0usize; last];
        let mut offs = [0usize; N];
        for d in (0..last).rev() {
            idx[d] = row % self.dims[d];
            row /= self.dims[d];
            for (o, s) in offs.iter_mut().zip(&self.strides[d]) {
                *o += idx[d] * s;
            }
        }
        let mut pos = start;
        loop {
            let seg = (len - col).min(end - pos);
            f(std::array::from_fn(|k| offs[k] + col * inner[k]), seg, inner);
            pos += seg;
            if pos >= end {
                return;
            }
            col = 0;
            // Next row: advance the odometer over the outer dims.
            let mut d = last;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                for (o, s) in offs.iter_mut().zip(&self.strides[d]) {
                    *o += s;
                }
                if idx[d] < self.dims[d] {
                    break;
                }
                for (o, s) in offs.iter_mut().zip(&self.strides[d]) {
                    *o -= s * self.dims[d];
                }
                idx[d] = 0;
            }
        }
    }

    /// Fills a fresh output buffer: `fill(start, dst)` writes the elements `start..start +
    /// dst.len()`; large outputs are split into chunks filled in parallel.
    fn build<O: Element>(&self, fill: impl Fn(usize, &mut [O]) + Sync) -> Vec<O> {
        let mut out = vec![O::default(); self.numel];
        if self.numel >= PAR_MIN {
            out.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(i, c)| fill(i * PAR_CHUNK, c));
        } else {
            fill(0, &mut out);
        }
        out
    }
}

/// Outputs at least this large are computed in parallel, in chunks of [`PAR_CHUNK`] elements.
pub(super) const PAR_MIN: usize = 1 << 16;
const PAR_CHUNK: usize = 1 << 14;

/// `v.map(f)`, in parallel for large inputs.
pub(super) fn par_map<T: Copy + Sync, U: Send>(v: &[T], f: impl Fn(T) -> U + Sync + Send) -> Vec<U> {
    if v.len() >= PAR_MIN {
        v.par_iter().with_min_len(PAR_CHUNK).map(|&x| f(x)).collect()
    } else {
        v.iter().map(|&x| f(x)).collect()
    }
}

fn fmt_shapes(shapes: &[&[usize]]) -> String {
    shapes.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
}

/// `f` over two broadcast slices; returns the output shape and values.
pub(super) fn zip2<A: Copy + Sync, B: Copy + Sync, O: Element>(
    a: &[A],
    a_shape: &[usize],
    b: &[B],
    b_shape: &[usize],
    f: impl Fn(A, B) -> O + Sync,
) -> Result<(Vec<usize>, Vec<O>), String> {
    let plan = Broadcast::new([a_shape, b_shape])?;
    let out = plan.build(|start, dst: &mut [O]| {
        let mut w = 0;
        plan.for_range(start, start + dst.len(), |[oa, ob], len, [sa, sb]| {
            let d = &mut dst[w..w + len];
            match (sa, sb) {
                (0, 0) => d.fill(f(a[oa], b[ob])),
                (0, _) => {
                    let x = a[oa];
                    d.iter_mut().zip(&b[ob..ob + len]).for_each(|(o, &y)| *o = f(x, y));
                }
                (_, 0) => {
                    let y = b[ob];
                    d.iter_mut().zip(&a[oa..oa + len]).for_each(|(o, &x)| *o = f(x, y));
                }
                _ => d
                    .iter_mut()
                    .zip(a[oa..oa + len].iter().zip(&b[ob..ob + len]))
                    .for_each(|(o, (&x, &y))| *o = f(x, y)),
            }
            w += len;
        });
    });
    Ok((plan.shape, out))
}

/// `f` over three broadcast slices; returns the output shape and values.
pub(super) fn zip3<A: Copy + Sync, B: Copy + Sync, C: Copy + Sync, O: Element>(
    a: (&[A], &[usize]),
    b: (&[B], &[usize]),
    c: (&[C], &[usize]),
    f: impl Fn(A, B, C) -> O + Sync,
) -> Result<(Vec<usize>, Vec<O>), String> {
    let plan = Broadcast::new([a.1, b.1, c.1])?;
    let (av, bv, cv) = (a.0, b.0, c.0);
    let out = plan.build(|start, dst: &mut [O]| {
        let mut w = 0;
        plan.for_range(start, start + dst.len(), |[oa, ob, oc], len, [sa, sb, sc]| {
            for (i, o) in dst[w..w + len].iter_mut().enumerate() {
                *o = f(av[oa + i * sa], bv[ob + i * sb], cv[oc + i * sc]);
            }
            w += len;
        });
    });
    Ok((plan.shape, out))
}

/// [`zip2`] over two typed tensors, wrapped back into a tensor.
pub(super) fn zip2_tensor<A: Copy + Sync, B: Copy + Sync, O: Element>(
    a: &Tensor,
    av: &[A],
    b: &Tensor,
    bv: &[B],
    f: impl Fn(A, B) -> O + Sync,
) -> Result<Tensor, String> {
    let (shape, data) = zip2(av, a.shape(), bv, b.shape(), f)?;
    Tensor::from_vec(shape, data).map_err(|e| e.to_string())
}
