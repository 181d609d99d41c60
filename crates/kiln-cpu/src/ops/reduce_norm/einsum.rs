//! Einsum: the general form — repeated labels within an operand (diagonals), labels summed
//! away, ellipsis (broadcast like numpy, aligned to the right), implicit output.
//!
//! Every distinct label becomes one loop; each operand (and the output) gets a stride per loop
//! (summed over repeated labels, which walks a diagonal; 0 where it lacks the label or
//! broadcasts a size-1 dim). The loops run with the output's labels outermost except its last,
//! then the summed labels, then the output's last label innermost, so the common contractions
//! (matmul "ij,jk->ik", batched forms) run in the cache-friendly i-k-j order, accumulating into
//! the output.

use super::{with_numeric, Arith};
use crate::util::{make, single, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{Tensor, Value};

pub(super) fn einsum(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let equation = ctx.attrs.string_opt("equation")?.ok_or("required attribute 'equation' is missing")?;
    let xs: Vec<&Tensor> = (0..inputs.len()).map(|i| tensor_arg(inputs, i)).collect::<Result<_, _>>()?;
    let Some(first) = xs.first() else {
        return Err("Einsum needs at least one input".into());
    };
    if xs.iter().any(|t| t.dtype() != first.dtype()) {
        return Err("Einsum inputs must all have the same dtype".into());
    }
    let plan = Plan::new(&equation, &xs.iter().map(|t| t.shape()).collect::<Vec<_>>())?;
    let y = with_numeric!(first, ctx.op, v0 => {
        let slices: Vec<&[_]> = std::iter::once(Ok(v0.as_slice()))
            .chain(xs[1..].iter().map(|t| t.as_slice().map_err(|e| e.to_string())))
            .collect::<Result<_, String>>()?;
        plan.run(&slices)
    })?;
    Ok(single(y))
}

/// The parsed equation: per label its size, per operand and for the output the stride of each
/// label, and the loop order.
struct Plan {
    /// Loop sizes, in loop order.
    sizes: Vec<usize>,
    /// `strides[op][l]`: operand `op`'s stride for loop `l`.
    strides: Vec<Vec<usize>>,
    out_strides: Vec<usize>,
    out_shape: Vec<usize>,
}

/// One label of a term: a letter, or the i-th ellipsis dim (counted from the right end of the
/// ellipsis, so that differently ranked operands align as numpy broadcasting does).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Label {
    Ellipsis(usize),
    Letter(u8),
}

impl Plan {
    fn new(equation: &str, shapes: &[&[usize]]) -> Result<Plan, String> {
        let eq: String = equation.chars().filter(|c| *c != ' ').collect();
        let (lhs, rhs) = match eq.split_once("->") {
            Some((l, r)) => (l, Some(r)),
            None => (eq.as_str(), None),
        };
        let terms: Vec<&str> = lhs.split(',').collect();
        if terms.len() != shapes.len() {
            return Err(format!("equation '{equation}' has {} operands but {} inputs", terms.len(), shapes.len()));
        }
        // Expand each term to one label per dim of its operand.
        let mut ell_rank = 0;
        let mut op_labels = Vec::with_capacity(terms.len());
        for (term, shape) in terms.iter().zip(shapes) {
            let labels = expand_term(term, Some(shape.len()), equation)?;
            ell_rank = ell_rank.max(labels.iter().filter(|l| matches!(l, Label::Ellipsis(_))).count());
            op_labels.push(labels);
        }
        // Sizes of labels, broadcasting size-1 dims.
        let mut all: Vec<(Label, usize)> = Vec::new();
        for (labels, shape) in op_labels.iter().zip(shapes) {
            for (&l, &d) in labels.iter().zip(shape.iter()) {
                match all.iter_mut().find(|(x, _)| *x == l) {
                    Some((_, s)) if *s == d || d == 1 => {}
                    Some((_, s)) if *s == 1 => *s = d,
                    Some((_, s)) => return Err(format!("label {l:?} has sizes {s} and {d}")),
                    None => all.push((l, d)),
                }
            }
        }
        let out_labels: Vec<Label> = match rhs {
            Some(r) => {
                let labels = expand_term(r, None, equation)?;
                // The output's "..." stands for all ellipsis dims.
                let mut out = Vec::new();
                for l in labels {
                    match l {
                        Label::Ellipsis(_) => out.extend((0..ell_rank).rev().map(Label::Ellipsis)),
                        l => out.push(l),
                    }
                }
                for (i, l) in out.iter().enumerate() {
                    if out[..i].contains(l) {
                        return Err(format!("output label {l:?} repeats in '{equation}'"));
                    }
                    if !all.iter().any(|(x, _)| x == l) {
                        return Err(format!("output label {l:?} does not occur in any input of '{equation}'"));
                    }
                }
                out
            }
            None => {
                // Implicit output: the ellipsis dims, then the letters occurring exactly once,
                // in ASCII order.
                let mut out: Vec<Label> = (0..ell_rank).rev().map(Label::Ellipsis).collect();
                let mut letters: Vec<Label> = all
                    .iter()
                    .map(|(l, _)| *l)
                    .filter(|l| {
                        matches!(l, Label::Letter(_)) && op_labels.iter().flatten().filter(|x| *x == l).count() == 1
                    })
                    .collect();
                letters.sort();
                out.extend(letters);
                out
            }
        };
        // Loop order: output labels but the last, summed labels, the last output label.
        let summed: Vec<Label> = all.iter().map(|(l, _)| *l).filter(|l| !out_labels.contains(l)).collect();
        let mut order: Vec<Label> = out_labels.iter().take(out_labels.len().saturating_sub(1)).copied().collect();
        order.extend(&summed);
        order.extend(out_labels.last());
        let size_of = |l: &Label| all.iter().find(|(x, _)| x == l).map_or(1, |(_, s)| *s);
        let sizes: Vec<usize> = order.iter().map(size_of).collect();
        let out_shape: Vec<usize> = out_labels.iter().map(size_of).collect();
        kiln_ir::checked_numel(&out_shape).map_err(|e| e.to_string())?;
        let mut strides = Vec::with_capacity(shapes.len());
        for (labels, shape) in op_labels.iter().zip(shapes) {
            let dense = kiln_ir::strides_of(shape);
            let mut s = vec![0usize; order.len()];
            for ((l, &d), st) in labels.iter().zip(shape.iter()).zip(dense) {
                if d != 1 {
                    let pos = order.iter().position(|x| x == l).expect("every label is in the loop order");
                    s[pos] += st;
                }
            }
            strides.push(s);
        }
        let dense = kiln_ir::strides_of(&out_shape);
        let mut out_strides = vec![0usize; order.len()];
        for (l, st) in out_labels.iter().zip(dense) {
            let pos = order.iter().position(|x| x == l).expect("output labels are in the loop order");
            out_strides[pos] = st;
        }
        Ok(Plan { sizes, strides, out_strides, out_shape })
    }

    fn run<T: Arith>(&self, xs: &[&[T]]) -> Result<Tensor, String> {
        let out_len: usize = self.out_shape.iter().product();
        let mut acc = vec![T::ZERO; out_len];
        let total = kiln_ir::checked_numel(&self.sizes).map_err(|e| e.to_string())?;
        if total > 0 {
            let depth = self.sizes.len();
            let mut idx = vec![0usize; depth];
            let mut offs = vec![0usize; xs.len()];
            let mut o = 0usize;
            let (inner, inner_os) = match depth {
                0 => (1, 0),
                _ => (self.sizes[depth - 1], self.out_strides[depth - 1]),
            };
            let inner_st: Vec<usize> = self.strides.iter().map(|s| if depth == 0 { 0 } else { s[depth - 1] }).collect();
            let mut cur = offs.clone();
            for _ in 0..total / inner {
                cur.copy_from_slice(&offs);
                let mut oo = o;
                if let ([a, b], [ca, cb], [sa, sb]) = (xs, cur.as_slice(), inner_st.as_slice()) {
                    // Two operands (the common case): a tight multiply-accumulate loop.
                    for step in 0..inner {
                        let p = T::mul(a[ca + step * sa].load(), b[cb + step * sb].load());
                        acc[oo] = T::add(acc[oo], p);
                        oo += inner_os;
                    }
                } else {
                    inner_general(xs, &mut cur, &inner_st, inner, &mut acc, oo, inner_os);
                }
                // Advance the odometer over the outer loops.
                for ax in (0..depth.saturating_sub(1)).rev() {
                    idx[ax] += 1;
                    o += self.out_strides[ax];
                    for (off, s) in offs.iter_mut().zip(&self.strides) {
                        *off += s[ax];
                    }
                    if idx[ax] < self.sizes[ax] {
                        break;
                    }
                    o -= self.out_strides[ax] * self.sizes[ax];
                    for (off, s) in offs.iter_mut().zip(&self.strides) {
                        *off -= s[ax] * self.sizes[ax];
                    }
                    idx[ax] = 0;
                }
            }
        }
        make(self.out_shape.clone(), acc.into_iter().map(T::store).collect())
    }
}

/// The innermost loop of `Plan::run` for any number of operands.
fn inner_general<T: Arith>(
    xs: &[&[T]],
    cur: &mut [usize],
    inner_st: &[usize],
    inner: usize,
    acc: &mut [T::Acc],
    mut oo: usize,
    inner_os: usize,
) {
    for _ in 0..inner {
        let mut p = T::ONE;
        for (x, &c) in xs.iter().zip(cur.iter()) {
            p = T::mul(p, x[c].load());
        }
        acc[oo] = T::add(acc[oo], p);
        oo += inner_os;
        for (c, &s) in cur.iter_mut().zip(inner_st) {
            *c += s;
        }
    }
}

/// The labels of one term. With `rank` (an input term) the ellipsis expands to the dims not
/// covered by letters; without (the output term) it stays one `Ellipsis(0)` marker.
fn expand_term(term: &str, rank: Option<usize>, equation: &str) -> Result<Vec<Label>, String> {
    let (head, tail) = match term.split_once("...") {
        Some((h, t)) => (h, Some(t)),
        None => (term, None),
    };
    let letters = |s: &str| -> Result<Vec<Label>, String> {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphabetic() {
                    Ok(Label::Letter(b))
                } else {
                    Err(format!("invalid character '{}' in einsum equation '{equation}'", b as char))
                }
            })
            .collect()
    };
    let mut out = letters(head)?;
    let Some(tail) = tail else {
        if let Some(r) = rank {
            if r != out.len() {
                return Err(format!("term '{term}' of '{equation}' has {} labels for an input of rank {r}", out.len()));
            }
        }
        return Ok(out);
    };
    let tail = letters(tail)?;
    match rank {
        Some(r) => {
            let n = r
                .checked_sub(out.len() + tail.len())
                .ok_or_else(|| format!("term '{term}' of '{equation}' has more labels than its input's rank {r}"))?;
            out.extend((0..n).rev().map(Label::Ellipsis));
        }
        None => out.push(Label::Ellipsis(0)),
    }
    out.extend(tail);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(eq: &str, xs: &[(&[usize], &[f64])]) -> (Vec<usize>, Vec<f64>) {
        let shapes: Vec<&[usize]> = xs.iter().map(|x| x.0).collect();
        let plan = Plan::new(eq, &shapes).unwrap();
        let data: Vec<&[f64]> = xs.iter().map(|x| x.1).collect();
        let t = plan.run(&data).unwrap();
        (t.shape().to_vec(), t.as_slice::<f64>().unwrap().to_vec())
    }

    #[test]
    fn matmul_trace_diagonal_implicit() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2x3
        let b = [1.0, 0.0, 2.0, 1.0, 0.0, 3.0]; // 3x2
        assert_eq!(run("ij,jk->ik", &[(&[2, 3], &a), (&[3, 2], &b)]), (vec![2, 2], vec![5.0, 11.0, 14.0, 23.0]));
        // Implicit: "ij,jk" -> "ik".
        assert_eq!(run("ij,jk", &[(&[2, 3], &a), (&[3, 2], &b)]).1, vec![5.0, 11.0, 14.0, 23.0]);
        let m = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(run("ii", &[(&[2, 2], &m)]), (vec![], vec![5.0]));
        assert_eq!(run("...ii->...i", &[(&[1, 2, 2], &m)]), (vec![1, 2], vec![1.0, 4.0]));
        // Implicit transpose: "ji" -> "ij".
        assert_eq!(run("ji", &[(&[2, 3], &a)]).1, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    fn ellipsis_broadcast() {
        // "...j,j->..." with a [2,2] and a [2] operand.
        let a = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(run("...j,j->...", &[(&[2, 2], &a), (&[2], &[10.0, 1.0])]), (vec![2], vec![12.0, 34.0]));
    }
}
