//! Order-based ops: TopK and Unique. Both use numpy's total order (NaN after every number)
//! and break ties by the lower index, as the ONNX reference does.

use super::index::take_blocks;
use super::layout::permute;
use super::{int_list, normalize_axes, tensor, total_cmp};
use crate::util::{normalize_axis, tensor_arg};
use crate::{KernelCtx, KernelFn};
use kiln_ir::{Element, Tensor, TensorData, Value};
use std::cmp::Ordering;

pub(super) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "TopK" => top_k,
        "Unique" => unique,
        _ => return None,
    })
}

fn top_k(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    if x.rank() == 0 {
        return Err("input must have rank at least 1".into());
    }
    let k = match int_list(tensor_arg(inputs, 1)?, "K")?.as_slice() {
        [k] => *k,
        _ => return Err("K must hold exactly one value".into()),
    };
    let axis = normalize_axis(ctx.attrs.int("axis", -1)?, x.rank())?;
    let largest = ctx.attrs.int("largest", 1)? != 0;
    let dim = x.shape()[axis];
    if k < 0 || k as usize > dim {
        return Err(format!("K = {k} is outside [0, {dim}] (the size of axis {axis})"));
    }
    let k = k as usize;
    let outer: usize = x.shape()[..axis].iter().product();
    let inner: usize = x.shape()[axis + 1..].iter().product();
    let mut out_shape = x.shape().to_vec();
    out_shape[axis] = k;
    // Results are always sorted: `sorted = 0` leaves the order unspecified, so sorted is valid.
    fn run<T: Element>(v: &[T], outer: usize, dim: usize, inner: usize, k: usize, largest: bool) -> (Vec<T>, Vec<i64>) {
        let mut vals = vec![T::default(); outer * k * inner];
        let mut idxs = vec![0i64; outer * k * inner];
        let mut lane: Vec<usize> = Vec::with_capacity(dim);
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| v[(o * dim + j) * inner + i];
                let cmp = |a: &usize, b: &usize| {
                    let c = total_cmp(&at(*a), &at(*b));
                    (if largest { c.reverse() } else { c }).then(a.cmp(b))
                };
                lane.clear();
                lane.extend(0..dim);
                if k == 0 {
                    continue;
                }
                if k < dim {
                    lane.select_nth_unstable_by(k - 1, cmp);
                    lane.truncate(k);
                }
                lane.sort_unstable_by(cmp);
                for (r, &j) in lane.iter().enumerate() {
                    let dst = (o * k + r) * inner + i;
                    vals[dst] = at(j);
                    idxs[dst] = j as i64;
                }
            }
        }
        (vals, idxs)
    }
    let (vals, idxs) = kiln_ir::dispatch!(x.data(), v => {
        let (a, b) = run(v, outer, dim, inner, k, largest);
        (Element::into_data(a), b)
    });
    Ok(vec![Value::Tensor(tensor(out_shape.clone(), vals)?), Value::Tensor(tensor(out_shape, TensorData::I64(idxs))?)])
}

/// Unique's grouping of `n` rows of length `m` (row `i` is `v[i*m..(i+1)*m]`): the first row
/// of each group in output order, each row's group, and each group's size.
struct Groups {
    first: Vec<usize>,
    inverse: Vec<usize>,
    counts: Vec<usize>,
}

fn group_rows<T: Element>(v: &[T], n: usize, m: usize, sorted: bool) -> Groups {
    let row = |i: usize| &v[i * m..(i + 1) * m];
    let cmp_rows = |a: usize, b: usize| -> Ordering {
        row(a).iter().zip(row(b)).map(|(x, y)| total_cmp(x, y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
    };
    let mut order: Vec<usize> = (0..n).collect();
    // Stable, so the first row of each run of equal rows is its first occurrence.
    order.sort_by(|&a, &b| cmp_rows(a, b));
    let mut first = Vec::new();
    let mut counts = Vec::new();
    let mut group_of = vec![0usize; n];
    for (p, &i) in order.iter().enumerate() {
        if p == 0 || cmp_rows(order[p - 1], i).is_ne() {
            first.push(i);
            counts.push(0);
        }
        group_of[i] = first.len() - 1;
        *counts.last_mut().expect("a group was just pushed") += 1;
    }
    if !sorted {
        // Renumber groups by first occurrence.
        let mut by_first: Vec<usize> = (0..first.len()).collect();
        by_first.sort_by_key(|&g| first[g]);
        let mut rank = vec![0usize; first.len()];
        for (r, &g) in by_first.iter().enumerate() {
            rank[g] = r;
        }
        group_of.iter_mut().for_each(|g| *g = rank[*g]);
        first = by_first.iter().map(|&g| first[g]).collect();
        counts = by_first.iter().map(|&g| counts[g]).collect();
    }
    Groups { first, inverse: group_of, counts }
}

fn unique(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let sorted = ctx.attrs.int("sorted", 1)? != 0;
    let axis = match ctx.attrs.int_opt("axis")? {
        None => None,
        Some(a) => {
            if x.rank() == 0 {
                return Err("cannot take unique slices of a scalar".into());
            }
            Some(normalize_axis(a, x.rank())?)
        }
    };
    // Bring the axis to the front so that each slice is one contiguous row.
    let (rows, perm): (Tensor, Vec<usize>) = match axis {
        None => (x.clone().reshape(vec![x.len()]).map_err(|e| e.to_string())?, vec![0]),
        Some(a) => {
            let mut perm: Vec<usize> = vec![a];
            perm.extend((0..x.rank()).filter(|&i| i != a));
            (permute(x, &perm)?, perm)
        }
    };
    let n = rows.shape()[0];
    let m: usize = rows.shape()[1..].iter().product();
    let g = kiln_ir::dispatch!(rows.data(), v => group_rows(v, n, m, sorted));
    let y_data = kiln_ir::map_data!(rows.data(), v => take_blocks(v, 1, n, m, &g.first));
    let mut y_shape = rows.shape().to_vec();
    y_shape[0] = g.first.len();
    let y = tensor(y_shape, y_data)?;
    // Undo the axis move: `perm` puts axis a first; its inverse restores the order.
    let y = match axis {
        None => y,
        Some(_) => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            permute(&y, &normalize_axes(&inv.iter().map(|&i| i as i64).collect::<Vec<_>>(), perm.len())?)?
        }
    };
    let ints = |v: &[usize]| -> Result<Value, String> {
        Ok(Value::Tensor(tensor(vec![v.len()], TensorData::I64(v.iter().map(|&i| i as i64).collect()))?))
    };
    let mut outs = vec![Value::Tensor(y), ints(&g.first)?, ints(&g.inverse)?, ints(&g.counts)?];
    outs.truncate(ctx.num_outputs.max(1));
    Ok(outs)
}
