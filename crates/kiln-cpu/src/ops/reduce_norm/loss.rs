//! NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.
//!
//! Both see the input as [N, C, D] (D = product of the trailing dims, 1 if none) and the
//! target as [N, D]. Element loss = -weight[t] * input[n, t, d] for target t, 0 where t equals
//! `ignore_index`. `mean` divides the weighted sum by the sum of the applied weights (the
//! element count when there are no weights and nothing is ignored).

use super::with_float;
use crate::util::{make, opt_tensor_arg, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{Element, Tensor, Value};

type Out = Result<Vec<Value>, String>;

pub(super) fn nll_loss(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let x = tensor_arg(inputs, 0)?;
    let args = LossArgs::new(ctx, inputs, x)?;
    with_float!(x, ctx.op, v => Ok(vec![Value::Tensor(args.loss(|i| v[i].to_f64(), v)?)]))
}

pub(super) fn softmax_cross_entropy_loss(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let x = tensor_arg(inputs, 0)?;
    let args = LossArgs::new(ctx, inputs, x)?;
    with_float!(x, ctx.op, v => {
        // log_softmax over the class axis (axis 1).
        let (n, c, d) = (args.n, args.c, args.d);
        let mut lp = vec![0f64; v.len()];
        for b in 0..n {
            for j in 0..d {
                let at = |k: usize| (b * c + k) * d + j;
                let max = (0..c).map(|k| v[at(k)].to_f64()).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..c).map(|k| (v[at(k)].to_f64() - max).exp()).sum();
                let log_sum = sum.ln();
                for k in 0..c {
                    lp[at(k)] = v[at(k)].to_f64() - max - log_sum;
                }
            }
        }
        let mut out = vec![Value::Tensor(args.loss(|i| lp[i], v)?)];
        if ctx.num_outputs > 1 {
            out.push(Value::Tensor(typed(x.shape().to_vec(), &lp, v)?));
        }
        Ok(out)
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Reduction {
    None,
    Sum,
    Mean,
}

struct LossArgs {
    n: usize,
    c: usize,
    d: usize,
    /// Target shape [N, d1, ...]: the shape of an unreduced loss.
    target_shape: Vec<usize>,
    target: Vec<i64>,
    weight: Option<Vec<f64>>,
    ignore: Option<i64>,
    reduction: Reduction,
}

impl LossArgs {
    fn new(ctx: &KernelCtx, inputs: &[Option<&Value>], x: &Tensor) -> Result<LossArgs, String> {
        let t = tensor_arg(inputs, 1)?;
        let w = opt_tensor_arg(inputs, 2)?;
        if x.rank() < 2 {
            return Err(format!("input must have shape [N, C, ...], got {:?}", x.shape()));
        }
        let (n, c) = (x.shape()[0], x.shape()[1]);
        let mut want = vec![n];
        want.extend_from_slice(&x.shape()[2..]);
        if t.shape() != want.as_slice() {
            return Err(format!("target shape {:?} must be {want:?} for input shape {:?}", t.shape(), x.shape()));
        }
        if !t.dtype().is_int() {
            return Err(format!("target must be an integer tensor, got {}", t.dtype()));
        }
        if let Some(w) = w {
            if w.shape() != [c] {
                return Err(format!("weight must have shape [{c}], got {:?}", w.shape()));
            }
        }
        let reduction = match ctx.attrs.string("reduction", "mean".into())?.as_str() {
            "none" => Reduction::None,
            "sum" => Reduction::Sum,
            "mean" => Reduction::Mean,
            other => return Err(format!("reduction must be none, sum or mean, got '{other}'")),
        };
        Ok(LossArgs {
            n,
            c,
            d: x.shape()[2..].iter().product(),
            target_shape: want,
            target: t.to_i64_vec(),
            weight: w.map(|w| w.to_f64_vec()),
            ignore: ctx.attrs.int_opt("ignore_index")?,
            reduction,
        })
    }

    /// The loss from per-class log-probabilities (`lp(i)` = element i of an [N, C, D] layout).
    fn loss<T: Element>(&self, lp: impl Fn(usize) -> f64, like: &[T]) -> Result<Tensor, String> {
        let (c, d) = (self.c, self.d);
        let mut loss = vec![0f64; self.n * d];
        let mut weight_sum = 0.0;
        for b in 0..self.n {
            for j in 0..d {
                let t = self.target[b * d + j];
                if Some(t) == self.ignore {
                    continue;
                }
                if t < 0 || t >= c as i64 {
                    return Err(format!("target value {t} is outside [0, {c})"));
                }
                let t = t as usize;
                let w = self.weight.as_ref().map_or(1.0, |w| w[t]);
                loss[b * d + j] = -lp((b * c + t) * d + j) * w;
                weight_sum += w;
            }
        }
        match self.reduction {
            Reduction::None => typed(self.target_shape.clone(), &loss, like),
            Reduction::Sum => typed(vec![], &[loss.iter().sum()], like),
            Reduction::Mean => typed(vec![], &[loss.iter().sum::<f64>() / weight_sum], like),
        }
    }
}

fn typed<T: Element>(shape: Vec<usize>, v: &[f64], _like: &[T]) -> Result<Tensor, String> {
    make(shape, v.iter().map(|&e| T::from_f64(e)).collect::<Vec<T>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_mean_ignores_index() {
        let args = LossArgs {
            n: 3,
            c: 2,
            d: 1,
            target_shape: vec![3],
            target: vec![0, 1, 1],
            weight: Some(vec![2.0, 0.5]),
            ignore: Some(0),
            reduction: Reduction::Mean,
        };
        // lp[N=3, C=2]
        let lp = [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0];
        let t = args.loss(|i| lp[i], &[0f64]).unwrap();
        // (4*0.5 + 6*0.5) / (0.5 + 0.5)
        assert_eq!(t.as_slice::<f64>().unwrap(), &[5.0]);
    }
}
