//! Det: determinants of the trailing [M, M] matrices, by LU decomposition with partial
//! pivoting in f64.

use super::with_float;
use crate::util::{make, single, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{Element, Value};

pub(super) fn det(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let r = x.rank();
    if r < 2 || x.shape()[r - 1] != x.shape()[r - 2] {
        return Err(format!("Det needs square matrices [..., M, M], got shape {:?}", x.shape()));
    }
    let m = x.shape()[r - 1];
    let out_shape = x.shape()[..r - 2].to_vec();
    let y = with_float!(x, ctx.op, v => dets(v, m, out_shape))?;
    Ok(single(y))
}

fn dets<T: Element>(v: &[T], m: usize, out_shape: Vec<usize>) -> Result<kiln_ir::Tensor, String> {
    let mut a = vec![0f64; m * m];
    let out: Vec<T> = (0..out_shape.iter().product::<usize>())
        .map(|b| {
            for (dst, src) in a.iter_mut().zip(&v[b * m * m..(b + 1) * m * m]) {
                *dst = src.to_f64();
            }
            T::from_f64(lu_det(&mut a, m))
        })
        .collect();
    make(out_shape, out)
}

/// Determinant of the row-major `m`×`m` matrix in `a` (overwritten by its LU factors).
fn lu_det(a: &mut [f64], m: usize) -> f64 {
    let mut det = 1.0;
    for col in 0..m {
        // Partial pivoting: the largest magnitude in this column at or below the diagonal.
        let mut p = col;
        for row in col + 1..m {
            if a[row * m + col].abs() > a[p * m + col].abs() {
                p = row;
            }
        }
        let pivot = a[p * m + col];
        if pivot == 0.0 {
            return 0.0;
        }
        if p != col {
            for k in 0..m {
                a.swap(p * m + k, col * m + k);
            }
            det = -det;
        }
        det *= pivot;
        for row in col + 1..m {
            let f = a[row * m + col] / pivot;
            if f != 0.0 {
                for k in col + 1..m {
                    a[row * m + k] -= f * a[col * m + k];
                }
            }
        }
    }
    det
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn det_with_pivoting() {
        // [[0, 2, 1], [1, 1, 0], [3, 0, 4]]: det = 0*(4) - 2*(4 - 0) + 1*(0 - 3) = -11.
        let mut a = vec![0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 3.0, 0.0, 4.0];
        assert!((lu_det(&mut a, 3) + 11.0).abs() < 1e-12);
        let mut singular = vec![1.0, 2.0, 2.0, 4.0];
        assert_eq!(lu_det(&mut singular, 2), 0.0);
        assert_eq!(lu_det(&mut [], 0), 1.0);
    }
}
