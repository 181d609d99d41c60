//! RNN, GRU and LSTM: one driver for the three cells. It handles directions (forward,
//! reverse, bidirectional), `layout` 0/1, `sequence_lens` (steps past a batch entry's length
//! output zeros and leave its state alone; reverse runs from its last valid step), initial
//! states, activations with their alpha/beta, `clip`, GRU's `linear_before_reset` and LSTM's
//! `input_forget` and peepholes.
//!
//! Per direction the input projection X·Wᵀ (+ Wb) is one GEMM over all time steps; each step
//! then does H·Rᵀ (+ Rb) for the whole batch. Weights are transposed once so both GEMMs run
//! in i-k-j order over contiguous rows.

use super::common::{gemm_acc, load, numel, store, transpose, Real};
use crate::util::{opt_tensor_arg, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{DType, Value};

pub(super) fn rnn(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    dispatch(ctx, inputs, Cell::Rnn)
}

pub(super) fn gru(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let lbr = ctx.attrs.int("linear_before_reset", 0)? != 0;
    dispatch(ctx, inputs, Cell::Gru { linear_before_reset: lbr })
}

pub(super) fn lstm(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let input_forget = ctx.attrs.int("input_forget", 0)? != 0;
    dispatch(ctx, inputs, Cell::Lstm { input_forget })
}

#[derive(Clone, Copy)]
enum Cell {
    Rnn,
    Gru { linear_before_reset: bool },
    Lstm { input_forget: bool },
}

impl Cell {
    /// Gates per hidden unit (rows of W/R per direction are gates × hidden).
    fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru { .. } => 3,
            Cell::Lstm { .. } => 4,
        }
    }

    /// The activation functions per direction and their defaults (f, g, h).
    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Cell::Rnn => &["Tanh"],
            Cell::Gru { .. } => &["Sigmoid", "Tanh"],
            Cell::Lstm { .. } => &["Sigmoid", "Tanh", "Tanh"],
        }
    }
}

fn dispatch(ctx: &KernelCtx, inputs: &[Option<&Value>], cell: Cell) -> Result<Vec<Value>, String> {
    match tensor_arg(inputs, 0)?.dtype() {
        DType::F64 => run::<f64>(ctx, inputs, cell),
        DType::F32 | DType::F16 | DType::BF16 => run::<f32>(ctx, inputs, cell),
        other => Err(format!("{} does not support {other} inputs", ctx.op)),
    }
}

/// An activation function with its alpha/beta resolved.
#[derive(Clone, Copy, Debug)]
enum Act {
    Relu,
    Tanh,
    Sigmoid,
    Affine(f64, f64),
    LeakyRelu(f64),
    ThresholdedRelu(f64),
    ScaledTanh(f64, f64),
    HardSigmoid(f64, f64),
    Elu(f64),
    Softsign,
    Softplus,
}

impl Act {
    /// Parses `name`, taking alpha/beta from the attribute lists in order for the functions
    /// that use them (ONNX: "consumed in the order of activation functions"); missing values
    /// default as in the standalone ONNX operators.
    fn parse(
        name: &str,
        alphas: &mut impl Iterator<Item = f32>,
        betas: &mut impl Iterator<Item = f32>,
    ) -> Result<Act, String> {
        let mut alpha = |d: f64| alphas.next().map_or(d, |v| v as f64);
        Ok(match name.to_ascii_lowercase().as_str() {
            "relu" => Act::Relu,
            "tanh" => Act::Tanh,
            "sigmoid" => Act::Sigmoid,
            "softsign" => Act::Softsign,
            "softplus" => Act::Softplus,
            "leakyrelu" => Act::LeakyRelu(alpha(0.01)),
            "thresholdedrelu" => Act::ThresholdedRelu(alpha(1.0)),
            "elu" => Act::Elu(alpha(1.0)),
            "affine" => Act::Affine(alpha(1.0), betas.next().map_or(0.0, |v| v as f64)),
            "scaledtanh" => Act::ScaledTanh(alpha(1.0), betas.next().map_or(1.0, |v| v as f64)),
            "hardsigmoid" => Act::HardSigmoid(alpha(0.2), betas.next().map_or(0.5, |v| v as f64)),
            _ => return Err(format!("unknown activation function '{name}'")),
        })
    }

    fn apply<F: Real>(self, x: F) -> F {
        let f = F::from_f64;
        match self {
            Act::Relu => {
                if x > F::ZERO {
                    x
                } else {
                    F::ZERO
                }
            }
            Act::Tanh => x.tanh(),
            Act::Sigmoid => F::ONE / (F::ONE + (-x).exp()),
            Act::Affine(a, b) => f(a) * x + f(b),
            Act::LeakyRelu(a) => {
                if x >= F::ZERO {
                    x
                } else {
                    f(a) * x
                }
            }
            Act::ThresholdedRelu(a) => {
                if x > f(a) {
                    x
                } else {
                    F::ZERO
                }
            }
            Act::ScaledTanh(a, b) => f(a) * (f(b) * x).tanh(),
            Act::HardSigmoid(a, b) => {
                let y = f(a) * x + f(b);
                if y < F::ZERO {
                    F::ZERO
                } else if y > F::ONE {
                    F::ONE
                } else {
                    y
                }
            }
            Act::Elu(a) => {
                if x >= F::ZERO {
                    x
                } else {
                    f(a) * (x.exp() - F::ONE)
                }
            }
            Act::Softsign => {
                let ax = if x < F::ZERO { -x } else { x };
                x / (F::ONE + ax)
            }
            Act::Softplus => f(x.to_f64().exp().ln_1p()),
        }
    }
}

/// Sizes of the recurrence.
#[derive(Clone, Copy)]
struct Dims {
    seq: usize,
    batch: usize,
    input: usize,
    hidden: usize,
    dirs: usize,
    gates: usize,
}

/// One direction's weights, transposed for i-k-j GEMMs, and its settings.
struct DirParams<F> {
    /// Wᵀ: (input, gates·hidden).
    wt: Vec<F>,
    /// Rᵀ: (hidden, gates·hidden).
    rt: Vec<F>,
    /// GRU without linear_before_reset: Rᵀ of the z/r gates (hidden, 2·hidden) and of the
    /// h gate (hidden, hidden) separately, since the h gate multiplies (r ⊙ H) by R_h.
    rt_zr: Vec<F>,
    rt_h: Vec<F>,
    wb: Vec<F>,
    rb: Vec<F>,
    /// LSTM peepholes (i, o, f), each `hidden` long; zeros when absent.
    p: Vec<F>,
    acts: Vec<Act>,
    reverse: bool,
}

fn run<F: Real>(ctx: &KernelCtx, inputs: &[Option<&Value>], cell: Cell) -> Result<Vec<Value>, String> {
    let attrs = ctx.attrs;
    let x_t = tensor_arg(inputs, 0)?;
    let w_t = tensor_arg(inputs, 1)?;
    let r_t = tensor_arg(inputs, 2)?;
    let b_t = opt_tensor_arg(inputs, 3)?;
    let lens_t = opt_tensor_arg(inputs, 4)?;
    let h0_t = opt_tensor_arg(inputs, 5)?;
    let (c0_t, p_t) = match cell {
        Cell::Lstm { .. } => (opt_tensor_arg(inputs, 6)?, opt_tensor_arg(inputs, 7)?),
        _ => (None, None),
    };
    let dt = x_t.dtype();
    let layout = attrs.int("layout", 0)?;
    if layout != 0 && layout != 1 {
        return Err(format!("layout must be 0 or 1, got {layout}"));
    }
    let direction = attrs.string("direction", "forward".into())?;
    let dirs = match direction.as_str() {
        "forward" | "reverse" => 1,
        "bidirectional" => 2,
        other => return Err(format!("unknown direction '{other}'")),
    };
    let gates = cell.gates();

    if x_t.rank() != 3 || w_t.rank() != 3 || r_t.rank() != 3 {
        return Err(format!(
            "X, W and R must be 3-D, got shapes {:?}, {:?}, {:?}",
            x_t.shape(),
            w_t.shape(),
            r_t.shape()
        ));
    }
    let xs = x_t.shape();
    let (seq, batch) = if layout == 0 { (xs[0], xs[1]) } else { (xs[1], xs[0]) };
    let input = xs[2];
    let hidden = r_t.shape()[2];
    if let Some(hs) = attrs.int_opt("hidden_size")? {
        if hs != hidden as i64 {
            return Err(format!("hidden_size {hs} does not match R's shape {:?}", r_t.shape()));
        }
    }
    let d = Dims { seq, batch, input, hidden, dirs, gates };
    let gh = gates * hidden;
    if w_t.shape() != [dirs, gh, input] {
        return Err(format!("W must be [{dirs}, {gh}, {input}], got {:?}", w_t.shape()));
    }
    if r_t.shape() != [dirs, gh, hidden] {
        return Err(format!("R must be [{dirs}, {gh}, {hidden}], got {:?}", r_t.shape()));
    }
    numel(&[seq, dirs, batch, gh])?;

    // Sequence lengths, validated against the sequence axis.
    let lens: Vec<usize> = match lens_t {
        None => vec![seq; batch],
        Some(t) => {
            if t.shape() != [batch] || !matches!(t.dtype(), DType::I32 | DType::I64) {
                return Err(format!("sequence_lens must be int32 [{batch}], got {}{:?}", t.dtype(), t.shape()));
            }
            t.to_i64_vec()
                .into_iter()
                .map(|l| {
                    usize::try_from(l)
                        .ok()
                        .filter(|&l| l <= seq)
                        .ok_or_else(|| format!("sequence length {l} is outside [0, {seq}]"))
                })
                .collect::<Result<_, _>>()?
        }
    };

    // Activations: `n` per direction; a list of just `n` serves both directions.
    let n_acts = cell.default_activations().len();
    let names: Vec<String> = match attrs.strings_opt("activations")? {
        Some(v) if v.len() == n_acts * dirs => v,
        Some(v) if v.len() == n_acts => v.iter().cycle().take(n_acts * dirs).cloned().collect(),
        Some(v) => return Err(format!("expected {} activations, got {}", n_acts * dirs, v.len())),
        None => cell.default_activations().iter().cycle().take(n_acts * dirs).map(|s| s.to_string()).collect(),
    };
    let alphas = attrs.floats("activation_alpha", Vec::new())?;
    let betas = attrs.floats("activation_beta", Vec::new())?;
    let (mut ai, mut bi) = (alphas.into_iter(), betas.into_iter());
    let acts: Vec<Act> = names.iter().map(|n| Act::parse(n, &mut ai, &mut bi)).collect::<Result<_, _>>()?;
    let clip = match attrs.float_opt("clip")? {
        Some(c) if c.is_nan() || c <= 0.0 => return Err(format!("clip must be positive, got {c}")),
        c => c.map(|c| F::from_f64(c as f64)),
    };

    // Weights per direction.
    let w = load::<F>(w_t, "W")?;
    let r = load::<F>(r_t, "R")?;
    let bias = match b_t {
        None => vec![F::ZERO; dirs * 2 * gh],
        Some(t) if t.shape() == [dirs, 2 * gh] => load::<F>(t, "B")?,
        Some(t) => return Err(format!("B must be [{dirs}, {}], got {:?}", 2 * gh, t.shape())),
    };
    let peep = match p_t {
        None => vec![F::ZERO; dirs * 3 * hidden],
        Some(t) if t.shape() == [dirs, 3 * hidden] => load::<F>(t, "P")?,
        Some(t) => return Err(format!("P must be [{dirs}, {}], got {:?}", 3 * hidden, t.shape())),
    };
    let params: Vec<DirParams<F>> = (0..dirs)
        .map(|di| {
            let wd = &w[di * gh * input..(di + 1) * gh * input];
            let rd = &r[di * gh * hidden..(di + 1) * gh * hidden];
            let (rt_zr, rt_h) = match cell {
                Cell::Gru { linear_before_reset: false } => (
                    transpose(&rd[..2 * hidden * hidden], 2 * hidden, hidden),
                    transpose(&rd[2 * hidden * hidden..], hidden, hidden),
                ),
                _ => (Vec::new(), Vec::new()),
            };
            DirParams {
                wt: transpose(wd, gh, input),
                rt: transpose(rd, gh, hidden),
                rt_zr,
                rt_h,
                wb: bias[di * 2 * gh..di * 2 * gh + gh].to_vec(),
                rb: bias[di * 2 * gh + gh..(di + 1) * 2 * gh].to_vec(),
                p: peep[di * 3 * hidden..(di + 1) * 3 * hidden].to_vec(),
                acts: acts[di * n_acts..(di + 1) * n_acts].to_vec(),
                reverse: direction == "reverse" || di == 1,
            }
        })
        .collect();

    // X as (seq, batch, input); initial states as (dirs, batch, hidden).
    let x = load::<F>(x_t, "X")?;
    let x = if layout == 0 { x } else { swap01(&x, batch, seq, input) };
    let state_in = |t: Option<&kiln_ir::Tensor>, what: &str| -> Result<Vec<F>, String> {
        let Some(t) = t else { return Ok(vec![F::ZERO; dirs * batch * hidden]) };
        let want = if layout == 0 { [dirs, batch, hidden] } else { [batch, dirs, hidden] };
        if t.shape() != want {
            return Err(format!("{what} must be {want:?}, got {:?}", t.shape()));
        }
        let v = load::<F>(t, what)?;
        Ok(if layout == 0 { v } else { swap01(&v, batch, dirs, hidden) })
    };
    let mut h = state_in(h0_t, "initial_h")?;
    let mut c = state_in(c0_t, "initial_c")?;

    // Y as (seq, dirs, batch, hidden).
    let mut y = vec![F::ZERO; seq * dirs * batch * hidden];
    // (With hidden = 0 every output is empty and there is nothing to run.)
    for (di, p) in params.iter().enumerate().filter(|_| hidden > 0) {
        let hs = &mut h[di * batch * hidden..(di + 1) * batch * hidden];
        let cs = &mut c[di * batch * hidden..(di + 1) * batch * hidden];
        run_direction(cell, d, p, clip, &x, &lens, hs, cs, &mut y, di);
    }

    // Outputs in the requested layout.
    let mut out = Vec::with_capacity(ctx.num_outputs);
    let y = if layout == 0 {
        store(dt, vec![seq, dirs, batch, hidden], &y)?
    } else {
        // (seq, dirs, batch, hidden) → (batch, seq, dirs, hidden)
        let mut t = vec![F::ZERO; y.len()];
        for s in 0..seq {
            for di in 0..dirs {
                for b in 0..batch {
                    let src = ((s * dirs + di) * batch + b) * hidden;
                    let dst = ((b * seq + s) * dirs + di) * hidden;
                    t[dst..dst + hidden].copy_from_slice(&y[src..src + hidden]);
                }
            }
        }
        store(dt, vec![batch, seq, dirs, hidden], &t)?
    };
    out.push(Value::Tensor(y));
    let state_out = |v: &[F]| {
        if layout == 0 {
            store(dt, vec![dirs, batch, hidden], v)
        } else {
            store(dt, vec![batch, dirs, hidden], &swap01(v, dirs, batch, hidden))
        }
    };
    if ctx.num_outputs > 1 {
        out.push(Value::Tensor(state_out(&h)?));
    }
    if ctx.num_outputs > 2 {
        out.push(Value::Tensor(state_out(&c)?));
    }
    Ok(out)
}

/// Runs one direction over all steps, updating its state `h`/`c` (batch, hidden) and writing
/// its slice of `y`.
#[allow(clippy::too_many_arguments)]
fn run_direction<F: Real>(
    cell: Cell,
    d: Dims,
    p: &DirParams<F>,
    clip: Option<F>,
    x: &[F],
    lens: &[usize],
    h: &mut [F],
    c: &mut [F],
    y: &mut [F],
    di: usize,
) {
    let Dims { seq, batch, input, hidden, dirs, gates } = d;
    let gh = gates * hidden;
    // X·Wᵀ + Wb for every (step, batch) row at once.
    let mut xw = vec![F::ZERO; seq * batch * gh];
    for row in xw.chunks_mut(gh) {
        row.copy_from_slice(&p.wb);
    }
    gemm_acc(x, &p.wt, &mut xw, seq * batch, input, gh);

    let clamp = |v: F| match clip {
        Some(cl) if v > cl => cl,
        Some(cl) if v < -cl => -cl,
        _ => v,
    };
    let mut hr = vec![F::ZERO; batch * gh];
    let gru_split = matches!(cell, Cell::Gru { linear_before_reset: false });
    let mut rh = if gru_split { vec![F::ZERO; batch * hidden] } else { Vec::new() };
    let mut hh = vec![F::ZERO; batch * hidden];
    let mut zr = if gru_split { vec![F::ZERO; batch * 2 * hidden] } else { Vec::new() };
    for step in 0..seq {
        // H·Rᵀ + Rb for the whole batch (rows of finished batch entries are ignored).
        for row in hr.chunks_mut(gh) {
            row.copy_from_slice(&p.rb);
        }
        if gru_split {
            // Only the z and r gates use H·Rᵀ directly; Rbh is added with (r ⊙ H)·R_hᵀ.
            zr.fill(F::ZERO);
            gemm_acc(h, &p.rt_zr, &mut zr, batch, hidden, 2 * hidden);
            for b in 0..batch {
                for (o, &v) in hr[b * gh..b * gh + 2 * hidden].iter_mut().zip(&zr[b * 2 * hidden..(b + 1) * 2 * hidden])
                {
                    *o += v;
                }
            }
        } else {
            gemm_acc(h, &p.rt, &mut hr, batch, hidden, gh);
        }

        // Which time index each batch entry processes at this step (None once finished).
        let t_of = |b: usize| -> Option<usize> {
            let l = lens[b];
            (step < l).then(|| if p.reverse { l - 1 - step } else { step })
        };

        match cell {
            Cell::Rnn => {
                for b in 0..batch {
                    let Some(t) = t_of(b) else { continue };
                    let xr = &xw[(t * batch + b) * gh..][..gh];
                    let hrow = &hr[b * gh..][..gh];
                    for k in 0..hidden {
                        h[b * hidden + k] = p.acts[0].apply(clamp(xr[k] + hrow[k]));
                    }
                }
            }
            Cell::Gru { linear_before_reset } => {
                let (f, g) = (p.acts[0], p.acts[1]);
                if !linear_before_reset {
                    // (r ⊙ H) for all rows, then one GEMM with R_hᵀ.
                    for b in 0..batch {
                        let Some(t) = t_of(b) else { continue };
                        let xr = &xw[(t * batch + b) * gh..][..gh];
                        for k in 0..hidden {
                            let r = f.apply(clamp(xr[hidden + k] + hr[b * gh + hidden + k]));
                            hh[b * hidden + k] = r * h[b * hidden + k];
                        }
                    }
                    rh.fill(F::ZERO);
                    gemm_acc(&hh, &p.rt_h, &mut rh, batch, hidden, hidden);
                }
                for b in 0..batch {
                    let Some(t) = t_of(b) else { continue };
                    let xr = &xw[(t * batch + b) * gh..][..gh];
                    let hrow = &hr[b * gh..][..gh];
                    for k in 0..hidden {
                        let z = f.apply(clamp(xr[k] + hrow[k]));
                        let pre = if linear_before_reset {
                            let r = f.apply(clamp(xr[hidden + k] + hrow[hidden + k]));
                            xr[2 * hidden + k] + r * hrow[2 * hidden + k]
                        } else {
                            xr[2 * hidden + k] + rh[b * hidden + k] + hrow[2 * hidden + k]
                        };
                        let cand = g.apply(clamp(pre));
                        let hp = h[b * hidden + k];
                        hh[b * hidden + k] = (F::ONE - z) * cand + z * hp;
                    }
                }
                for b in 0..batch {
                    if t_of(b).is_some() {
                        h[b * hidden..(b + 1) * hidden].copy_from_slice(&hh[b * hidden..(b + 1) * hidden]);
                    }
                }
            }
            Cell::Lstm { input_forget } => {
                let (f, g, hact) = (p.acts[0], p.acts[1], p.acts[2]);
                let (pi, po, pf) = (&p.p[..hidden], &p.p[hidden..2 * hidden], &p.p[2 * hidden..]);
                for b in 0..batch {
                    let Some(t) = t_of(b) else { continue };
                    let xr = &xw[(t * batch + b) * gh..][..gh];
                    let hrow = &hr[b * gh..][..gh];
                    for k in 0..hidden {
                        // Gate order i, o, f, c.
                        let cp = c[b * hidden + k];
                        let i = f.apply(clamp(xr[k] + hrow[k] + pi[k] * cp));
                        let fg = if input_forget {
                            F::ONE - i
                        } else {
                            f.apply(clamp(xr[2 * hidden + k] + hrow[2 * hidden + k] + pf[k] * cp))
                        };
                        let cand = g.apply(clamp(xr[3 * hidden + k] + hrow[3 * hidden + k]));
                        let cn = fg * cp + i * cand;
                        let o = f.apply(clamp(xr[hidden + k] + hrow[hidden + k] + po[k] * cn));
                        c[b * hidden + k] = cn;
                        h[b * hidden + k] = o * hact.apply(cn);
                    }
                }
            }
        }

        for b in 0..batch {
            if let Some(t) = t_of(b) {
                let dst = ((t * dirs + di) * batch + b) * hidden;
                y[dst..dst + hidden].copy_from_slice(&h[b * hidden..(b + 1) * hidden]);
            }
        }
    }
}

/// Swap the first two axes of an (a, b, n) array.
fn swap01<F: Copy + Default>(v: &[F], a: usize, b: usize, n: usize) -> Vec<F> {
    let mut out = vec![F::default(); v.len()];
    for i in 0..a {
        for j in 0..b {
            out[(j * a + i) * n..][..n].copy_from_slice(&v[(i * b + j) * n..][..n]);
        }
    }
    out
}
