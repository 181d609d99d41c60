//! An Einsum equation at run-time shapes as the loops of the GPU kernel (`einsum` in
//! sequence.cu): one thread per output element walks the summed labels. The semantics are the
//! reference kernel's (crates/kiln-cpu/src/ops/reduce_norm/einsum.rs): repeated labels within
//! an operand walk a diagonal (their strides add), "..." broadcasts like numpy aligned to the
//! right, size-1 dims broadcast, and without "->" the output is the ellipsis dims then the
//! letters occurring once, in ASCII order.

/// Operands the kernel takes.
pub(crate) const MAX_OPERANDS: usize = 4;
/// Output dims, and summed labels, the kernel takes.
pub(crate) const MAX_LOOPS: usize = 8;

/// `EinsumLoops` of sequence.cu: per output dim and per summed label its size and each
/// operand's stride (0 where the operand lacks the label or broadcasts it).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct EinsumLoops {
    pub out_shape: [i64; MAX_LOOPS],
    pub out_stride: [[i64; MAX_LOOPS]; MAX_OPERANDS],
    pub sum_shape: [i64; MAX_LOOPS],
    pub sum_stride: [[i64; MAX_LOOPS]; MAX_OPERANDS],
}

/// The plan of one equation at given input shapes.
pub(crate) struct EinsumPlan {
    pub out_shape: Vec<usize>,
    pub summed: usize,
    pub loops: EinsumLoops,
}

/// A label: a letter (its byte), or the i-th ellipsis dim counted from the right (256 + i), so
/// differently ranked operands align as numpy broadcasting does.
type Label = u16;
const ELLIPSIS: Label = 256;

/// Whether the kernel takes an equation of `operands` inputs (checked before the shapes are known).
pub(crate) fn fits(equation: &str, operands: usize) -> bool {
    (1..=MAX_OPERANDS).contains(&operands)
        && equation.split("->").next().is_some_and(|l| l.split(',').count() == operands)
}

pub(crate) fn plan(equation: &str, shapes: &[Vec<usize>]) -> Result<EinsumPlan, String> {
    let eq: String = equation.chars().filter(|c| *c != ' ').collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != shapes.len() || shapes.len() > MAX_OPERANDS {
        return Err(format!("equation '{equation}' for {} inputs", shapes.len()));
    }
    let mut ell_rank = 0;
    let mut op_labels = Vec::with_capacity(terms.len());
    for (term, shape) in terms.iter().zip(shapes) {
        let labels = expand(term, Some(shape.len()), equation)?;
        ell_rank = ell_rank.max(labels.iter().filter(|&&l| l >= ELLIPSIS).count());
        op_labels.push(labels);
    }
    // Each label's size, size-1 dims broadcasting.
    let mut sizes: Vec<(Label, usize)> = Vec::new();
    for (labels, shape) in op_labels.iter().zip(shapes) {
        for (&l, &d) in labels.iter().zip(shape) {
            match sizes.iter_mut().find(|(x, _)| *x == l) {
                Some((_, s)) if *s == d || d == 1 => {}
                Some((_, s)) if *s == 1 => *s = d,
                Some((_, s)) => return Err(format!("a label of '{equation}' has sizes {s} and {d}")),
                None => sizes.push((l, d)),
            }
        }
    }
    let out_labels: Vec<Label> = match rhs {
        Some(r) => {
            let mut out = Vec::new();
            for l in expand(r, None, equation)? {
                if l >= ELLIPSIS {
                    out.extend((0..ell_rank as Label).rev().map(|i| ELLIPSIS + i));
                } else {
                    out.push(l);
                }
            }
            for (i, l) in out.iter().enumerate() {
                if out[..i].contains(l) || !sizes.iter().any(|(x, _)| x == l) {
                    return Err(format!("output labels of '{equation}' repeat or occur in no input"));
                }
            }
            out
        }
        None => {
            let mut out: Vec<Label> = (0..ell_rank as Label).rev().map(|i| ELLIPSIS + i).collect();
            let mut once: Vec<Label> = sizes
                .iter()
                .map(|(l, _)| *l)
                .filter(|l| *l < ELLIPSIS && op_labels.iter().flatten().filter(|x| *x == l).count() == 1)
                .collect();
            once.sort();
            out.extend(once);
            out
        }
    };
    let summed: Vec<Label> = sizes.iter().map(|(l, _)| *l).filter(|l| !out_labels.contains(l)).collect();
    if out_labels.len() > MAX_LOOPS || summed.len() > MAX_LOOPS {
        return Err(format!("'{equation}' has more than {MAX_LOOPS} output or summed labels"));
    }
    let size_of = |l: Label| sizes.iter().find(|(x, _)| *x == l).map_or(1, |(_, s)| *s);
    // Operand `op`'s stride for label `l`: the sum over its dims carrying it (a diagonal).
    let stride = |op: usize, l: Label| -> i64 {
        let shape = &shapes[op];
        let dense = crate::kernels::strides(shape);
        op_labels[op].iter().zip(shape).zip(dense).filter(|((x, &d), _)| **x == l && d != 1).map(|(_, s)| s).sum()
    };
    let mut loops = EinsumLoops::default();
    for (k, &l) in out_labels.iter().enumerate() {
        loops.out_shape[k] = size_of(l) as i64;
        for op in 0..shapes.len() {
            loops.out_stride[op][k] = stride(op, l);
        }
    }
    for (k, &l) in summed.iter().enumerate() {
        loops.sum_shape[k] = size_of(l) as i64;
        for op in 0..shapes.len() {
            loops.sum_stride[op][k] = stride(op, l);
        }
    }
    Ok(EinsumPlan { out_shape: out_labels.iter().map(|&l| size_of(l)).collect(), summed: summed.len(), loops })
}

/// The labels of one term; with `rank` (an input) "..." expands to the dims letters leave
/// uncovered, without (the output) it stays one ELLIPSIS marker.
fn expand(term: &str, rank: Option<usize>, equation: &str) -> Result<Vec<Label>, String> {
    let letters = |s: &str| -> Result<Vec<Label>, String> {
        s.bytes()
            .map(|b| match b.is_ascii_alphabetic() {
                true => Ok(b as Label),
                false => Err(format!("invalid character '{}' in einsum equation '{equation}'", b as char)),
            })
            .collect()
    };
    let (head, tail) = match term.split_once("...") {
        Some((h, t)) => (h, Some(t)),
        None => (term, None),
    };
    let mut out = letters(head)?;
    match (tail, rank) {
        (None, Some(r)) if r != out.len() => Err(format!("term '{term}' of '{equation}' for an input of rank {r}")),
        (None, _) => Ok(out),
        (Some(tail), Some(r)) => {
            let tail = letters(tail)?;
            let n = r
                .checked_sub(out.len() + tail.len())
                .ok_or_else(|| format!("term '{term}' of '{equation}' has more labels than rank {r}"))?;
            out.extend((0..n as Label).rev().map(|i| ELLIPSIS + i));
            out.extend(tail);
            Ok(out)
        }
        (Some(tail), None) => {
            out.push(ELLIPSIS);
            out.extend(letters(tail)?);
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_numpy() {
        // Batched matmul: b, i, k out; j summed.
        let p = plan("bij, bjk -> bik", &[vec![2, 3, 4], vec![2, 4, 5]]).unwrap();
        assert_eq!(p.out_shape, [2, 3, 5]);
        assert_eq!(p.summed, 1);
        assert_eq!(p.loops.out_stride[0][..3], [12, 4, 0]);
        assert_eq!(p.loops.out_stride[1][..3], [20, 0, 1]);
        assert_eq!((p.loops.sum_stride[0][0], p.loops.sum_stride[1][0]), (1, 5));
        // A diagonal under an ellipsis: strides add.
        let p = plan("...ii->...i", &[vec![3, 4, 4]]).unwrap();
        assert_eq!(p.out_shape, [3, 4]);
        assert_eq!(p.loops.out_stride[0][..2], [16, 5]);
        // Implicit output: letters occurring once, sorted; an inner product sums everything.
        assert_eq!(plan("ba", &[vec![2, 3]]).unwrap().out_shape, [3, 2]);
        let p = plan("i,i", &[vec![5], vec![5]]).unwrap();
        assert!(p.out_shape.is_empty() && p.summed == 1);
        assert!(plan("ij,jk", &[vec![2, 3], vec![4, 5]]).is_err());
    }
}
