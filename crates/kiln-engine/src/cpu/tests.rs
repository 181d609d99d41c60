//! Every native CPU tactic against the reference kernel (kiln-cpu, itself checked against
//! ONNX's expected outputs), on fresh random inputs, over the shapes each tactic claims.

use super::CpuBackend;
use crate::backend::{Arg, Backend, LayerDesc, LayerIo, OutputSlot, Produced, WeightView};
use kiln_ir::{Activation, Attributes, Layer, Tensor, TensorId, Value, ValueType};
use std::sync::atomic::Ordering::Relaxed;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

/// A layer reading tensors 0..inputs and writing the next `outputs` ids.
fn test_layer(op: &str, attrs: &Attributes, inputs: usize, outputs: usize) -> Layer {
    Layer {
        name: "l".into(),
        op: op.into(),
        attrs: attrs.clone(),
        inputs: (0..inputs).map(|i| Some(TensorId(i))).collect(),
        outputs: (0..outputs).map(|i| Some(TensorId(inputs + i))).collect(),
        implicit_inputs: Vec::new(),
    }
}

/// What the backend sees of `layer` over `inputs` (tensor, is-a-weight) whose bytes are `bytes`.
fn test_desc<'a>(layer: &'a Layer, inputs: &'a [(Tensor, bool)], bytes: &'a [Vec<u8>]) -> LayerDesc<'a> {
    LayerDesc {
        layer,
        input_types: inputs.iter().map(|(t, _)| Some(ValueType::Tensor(kiln_ir::TensorType::of(t)))).collect(),
        weights: inputs
            .iter()
            .zip(bytes)
            .map(|((t, w), b)| w.then(|| WeightView { dtype: t.dtype(), shape: t.shape(), bytes: b, packed: false }))
            .collect(),
        precisions: Default::default(),
    }
}

/// Run `tactic` on a layer whose inputs are `activations` (by position) and weights. A tactic
/// that stores its weights packed in the plan also runs from its packed weights (as a loaded
/// plan hands them over), which must give the very same result.
fn run(op: &str, attrs: &Attributes, inputs: &[(Tensor, bool)], tactic: &str) -> Result<Tensor, String> {
    let plain = run_once(op, attrs, inputs, tactic, false)?.expect("always runs");
    if let Some(packed) = run_once(op, attrs, inputs, tactic, true)? {
        assert_eq!(packed.to_f64_vec(), plain.to_f64_vec(), "{tactic}: packed in the plan vs packed when made");
    }
    Ok(plain)
}

/// [`run`] once; with `from_packed`, from the weights `pack_weights` makes (`None` when the
/// tactic packs none).
fn run_once(
    op: &str,
    attrs: &Attributes,
    inputs: &[(Tensor, bool)],
    tactic: &str,
    from_packed: bool,
) -> Result<Option<Tensor>, String> {
    run_once_without(op, attrs, inputs, &[], tactic, from_packed)
}

/// `desc` with the inputs at positions `absent` omitted.
fn omit<'a>(mut desc: LayerDesc<'a>, absent: &[usize]) -> LayerDesc<'a> {
    for &i in absent {
        desc.input_types[i] = None;
        desc.weights[i] = None;
    }
    desc
}

/// [`run_once`] with the inputs at positions `absent` omitted (their tensors are placeholders).
fn run_once_without(
    op: &str,
    attrs: &Attributes,
    inputs: &[(Tensor, bool)],
    absent: &[usize],
    tactic: &str,
    from_packed: bool,
) -> Result<Option<Tensor>, String> {
    let mut layer = test_layer(op, attrs, inputs.len(), 1);
    for &i in absent {
        layer.inputs[i] = None;
    }
    let mut bytes: Vec<Vec<u8>> = inputs.iter().map(|(t, _)| t.data().to_le_bytes()).collect();
    let backend = CpuBackend;
    let mut packed = vec![false; inputs.len()];
    {
        let desc = omit(test_desc(&layer, inputs, &bytes), absent);
        if !backend.tactics(&desc).iter().any(|t| t.name == tactic) {
            return Err(format!("tactic {tactic} not offered"));
        }
        if from_packed {
            let packs = backend.pack_weights(&desc, tactic)?;
            if packs.is_empty() {
                return Ok(None);
            }
            drop(desc);
            for (i, b) in packs {
                bytes[i] = b;
                packed[i] = true;
            }
        }
    }
    let mut desc = omit(test_desc(&layer, inputs, &bytes), absent);
    for (w, &p) in desc.weights.iter_mut().zip(&packed) {
        if let Some(w) = w {
            w.packed = p;
        }
    }
    let kernel = backend.instantiate(&desc, tactic)?;
    let values: Vec<Value> = inputs.iter().map(|(t, _)| Value::Tensor(t.clone())).collect();
    let args = inputs
        .iter()
        .zip(&values)
        .zip(&bytes)
        .zip(&packed)
        .enumerate()
        .map(|(i, ((((t, w), v), b), &p))| {
            if absent.contains(&i) {
                return None;
            }
            Some(match (*w, p) {
                (true, true) => Arg::PackedWeight { dtype: t.dtype(), shape: t.shape(), bytes: b },
                (true, false) => Arg::Bytes { dtype: t.dtype(), shape: t.shape(), bytes: b },
                _ => Arg::Value(v),
            })
        })
        .collect();
    // An arena slot large enough for any result here, so native kernels write in place.
    let mut slot = vec![0u32; 1 << 20];
    let slot_bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut slot);
    let mut io = LayerIo {
        inputs: args,
        captures: Vec::new(),
        outputs: vec![Some(OutputSlot::Arena { bytes: slot_bytes })],
        results: vec![None],
    };
    kernel.run(&mut io)?;
    match io.results.pop().flatten() {
        Some(Produced::Value(Value::Tensor(t))) => Ok(Some(t)),
        Some(Produced::InSlot(shape)) => {
            let n: usize = shape.iter().product();
            drop(io);
            let v: &[f32] = bytemuck::cast_slice(&slot[..n]);
            Ok(Some(Tensor::from_vec(shape, v.to_vec()).unwrap()))
        }
        other => Err(format!("unexpected result {other:?}")),
    }
}

/// A packed weight of the wrong size (a forged plan) is refused when the kernel is made, and
/// a tactic that packs nothing refuses a packed weight.
#[test]
fn packed_weights_of_the_wrong_size_are_refused() {
    if !super::microkernel::available() {
        return;
    }
    let attrs = conv_attrs(1, 1, 1, 1, None);
    let inputs = [(random(&[1, 8, 6, 6], 1), false), (random(&[16, 8, 3, 3], 2), true)];
    let layer = test_layer("Conv", &attrs, 2, 1);
    for tactic in
        [super::conv_packed::TACTIC, super::conv_packed::TRANSPOSED, super::winograd::TACTIC, super::conv::IM2COL]
    {
        let short = vec![0u8; 64];
        let bytes = vec![inputs[0].0.data().to_le_bytes(), short];
        let mut desc = test_desc(&layer, &inputs, &bytes);
        desc.weights[1].as_mut().unwrap().packed = true;
        assert!(CpuBackend.instantiate(&desc, tactic).is_err(), "{tactic}");
    }
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}");
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-6);
    let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max) / scale;
    assert!(err < 1e-5, "{what}: relative error {err}");
}

fn conv_attrs(stride: i64, pad: i64, dilation: i64, group: i64, act: Option<Activation>) -> Attributes {
    let mut a = Attributes::new()
        .with("strides", vec![stride, stride])
        .with("pads", vec![pad, pad, pad, pad])
        .with("dilations", vec![dilation, dilation])
        .with("group", group);
    if let Some(act) = act {
        act.to_attrs(&mut a);
    }
    a
}

/// A convolution case: input shape, weight shape, stride, pad, dilation, group, tactics.
type ConvCase<'a> = ([usize; 4], [usize; 4], i64, i64, i64, i64, &'a [&'a str]);

/// A max-pool case: input, kernel, stride, pads, dilation, ceil_mode, fast path expected.
type PoolCase = ([usize; 4], [i64; 2], [i64; 2], [i64; 4], [i64; 2], i64, bool);

/// A timing case: input shape, weight shape, stride, pad, group.
type TimingCase = ([usize; 4], [usize; 4], i64, i64, i64);

/// (input, weight, stride, pad, dilation, group, tactics expected to apply)
const CONV_CASES: &[ConvCase] = &[
    ([2, 8, 7, 7], [16, 8, 1, 1], 1, 0, 1, 1, &[super::conv::ONE_BY_ONE, super::conv::IM2COL]),
    ([1, 6, 9, 8], [4, 6, 3, 3], 1, 1, 1, 1, &[super::conv::IM2COL, super::winograd::TACTIC]),
    // Patches larger than half an L2: the packed multiply walks them 8 rows at a time.
    ([1, 32, 64, 64], [24, 32, 3, 3], 1, 1, 1, 1, &[super::conv::IM2COL, super::winograd::TACTIC]),
    ([2, 3, 7, 11], [5, 3, 3, 3], 1, 0, 1, 1, &[super::conv::IM2COL, super::winograd::TACTIC]),
    ([1, 17, 13, 10], [9, 17, 3, 3], 1, 2, 1, 1, &[super::conv::IM2COL, super::winograd::TACTIC]),
    ([2, 6, 11, 11], [6, 3, 3, 3], 2, 1, 1, 2, &[super::conv::IM2COL]),
    ([1, 4, 10, 10], [4, 4, 3, 3], 1, 2, 2, 1, &[super::conv::IM2COL]),
    (
        [2, 8, 9, 9],
        [8, 1, 3, 3],
        1,
        1,
        1,
        8,
        &[super::conv::DEPTHWISE, super::depthwise_c16::TACTIC, super::conv::IM2COL],
    ),
    (
        [1, 8, 10, 10],
        [8, 1, 3, 3],
        2,
        1,
        1,
        8,
        &[super::conv::DEPTHWISE, super::depthwise_c16::TACTIC, super::conv::IM2COL],
    ),
    ([1, 3, 12, 12], [5, 3, 7, 7], 2, 3, 1, 1, &[super::conv::IM2COL]),
    (
        [2, 5, 13, 6],
        [5, 1, 3, 3],
        2,
        0,
        1,
        5,
        &[super::conv::DEPTHWISE, super::depthwise_c16::TACTIC, super::conv::IM2COL],
    ),
    (
        [1, 3, 11, 17],
        [3, 1, 5, 5],
        1,
        2,
        2,
        3,
        &[super::conv::DEPTHWISE, super::depthwise_c16::TACTIC, super::conv::IM2COL],
    ),
    (
        [1, 4, 7, 7],
        [4, 1, 3, 3],
        3,
        2,
        1,
        4,
        &[super::conv::DEPTHWISE, super::depthwise_c16::TACTIC, super::conv::IM2COL],
    ),
    ([1, 2, 9, 10], [3, 2, 3, 3], 3, 2, 2, 1, &[super::conv::IM2COL]),
    // Several channel blocks of the channel-vectorized depthwise, the last one partial.
    ([2, 37, 9, 11], [37, 1, 3, 3], 1, 1, 1, 37, &[super::depthwise_c16::TACTIC, super::conv::DEPTHWISE]),
    ([1, 32, 14, 13], [32, 1, 5, 5], 2, 2, 1, 32, &[super::depthwise_c16::TACTIC, super::conv::DEPTHWISE]),
    ([1, 20, 6, 7], [20, 1, 3, 3], 2, 0, 2, 20, &[super::depthwise_c16::TACTIC, super::conv::DEPTHWISE]),
    // Rows of 8+ columns (register transposes of whole 8-column blocks, then the rest).
    ([1, 33, 18, 35], [33, 1, 3, 3], 1, 1, 1, 33, &[super::depthwise_c16::TACTIC, super::conv::DEPTHWISE]),
    ([2, 16, 20, 40], [16, 1, 3, 3], 2, 1, 1, 16, &[super::depthwise_c16::TACTIC, super::conv::DEPTHWISE]),
    // Wide enough for the column-blocked product (blocks of 64+ columns, ragged last one).
    ([1, 8, 20, 21], [12, 8, 1, 1], 1, 0, 1, 1, &[super::conv::ONE_BY_ONE, super::conv::IM2COL]),
    ([2, 5, 15, 15], [7, 5, 3, 3], 1, 1, 1, 1, &[super::conv::IM2COL, super::winograd::TACTIC]),
    ([1, 3, 30, 29], [4, 3, 3, 3], 2, 1, 1, 1, &[super::conv::IM2COL]),
    ([1, 2, 25, 27], [3, 2, 5, 3], 1, 2, 2, 1, &[super::conv::IM2COL]),
];

#[test]
fn convolution_tactics_match_the_reference() {
    let acts = [None, Some(Activation::Relu), Some(Activation::Clip { min: 0.0, max: 6.0 })];
    for (i, (xs, ws, s, p, d, g, tactics)) in CONV_CASES.iter().enumerate() {
        let x = random(xs, i as u64 + 1);
        let w = random(ws, i as u64 + 100);
        let b = random(&[ws[0]], i as u64 + 200);
        for (j, act) in acts.iter().enumerate() {
            let attrs = conv_attrs(*s, *p, *d, *g, *act);
            let base = [(x.clone(), false), (w.clone(), true), (b.clone(), true)];
            let want = run("Conv", &attrs, &base, super::reference::TACTIC).unwrap();
            let residual = random(want.shape(), 300 + j as u64);
            let with_res = [(x.clone(), false), (w.clone(), true), (b.clone(), true), (residual, false)];
            let want_res = run("Conv", &attrs, &with_res, super::reference::TACTIC).unwrap();
            let depthwise = ws[1] == 1 && *g as usize == ws[0] && xs[1] == ws[0];
            let packed: &[&str] = if !depthwise && super::microkernel::available() {
                &[super::conv_packed::TACTIC, super::conv_packed::TRANSPOSED]
            } else {
                &[]
            };
            for t in tactics.iter().chain(packed) {
                assert_close(&run("Conv", &attrs, &base, t).unwrap(), &want, &format!("case {i} act {j} {t}"));
                assert_close(
                    &run("Conv", &attrs, &with_res, t).unwrap(),
                    &want_res,
                    &format!("case {i} act {j} {t} +res"),
                );
            }
        }
    }
}

/// Every tactic the backend offers for a channels-last convolution (kiln_ir::channels_last),
/// with and without a residual, against the NCHW reference on the same values permuted; the
/// reference kernel run on the marked layer (kiln-cpu permutes around the ONNX kernel) too.
#[test]
fn channels_last_convolutions_match_the_nchw_reference() {
    use kiln_ir::channels_last::{permute_tensor, ATTR, TO_NHWC};
    let nhwc = |t: &Tensor| permute_tensor(t, &TO_NHWC).unwrap();
    let acts = [None, Some(Activation::Clip { min: 0.0, max: 6.0 })];
    let mut ran = 0;
    for (i, (xs, ws, s, p, d, g, _)) in CONV_CASES.iter().enumerate() {
        let x = random(xs, i as u64 + 1);
        let w = random(ws, i as u64 + 100);
        let b = random(&[ws[0]], i as u64 + 200);
        for (j, act) in acts.iter().enumerate() {
            let attrs = conv_attrs(*s, *p, *d, *g, *act);
            let marked = attrs.clone().with(ATTR, 1i64);
            let base = [(x.clone(), false), (w.clone(), true), (b.clone(), true)];
            let want = run("Conv", &attrs, &base, super::reference::TACTIC).unwrap();
            let residual = random(want.shape(), 300 + j as u64);
            let with_res = [(x.clone(), false), (w.clone(), true), (b.clone(), true), (residual.clone(), false)];
            let want_res = run("Conv", &attrs, &with_res, super::reference::TACTIC).unwrap();
            let base_nhwc = [(nhwc(&x), false), (w.clone(), true), (b.clone(), true)];
            let res_nhwc = [(nhwc(&x), false), (w.clone(), true), (b.clone(), true), (nhwc(&residual), false)];
            let layer = test_layer("Conv", &marked, 3, 1);
            let bytes: Vec<Vec<u8>> = base_nhwc.iter().map(|(t, _)| t.data().to_le_bytes()).collect();
            let offered: Vec<String> =
                CpuBackend.tactics(&test_desc(&layer, &base_nhwc, &bytes)).into_iter().map(|t| t.name).collect();
            for t in &offered {
                let what = format!("case {i} act {j} {t} (channels-last)");
                assert_close(&run("Conv", &marked, &base_nhwc, t).unwrap(), &nhwc(&want), &what);
                assert_close(&run("Conv", &marked, &res_nhwc, t).unwrap(), &nhwc(&want_res), &format!("{what} +res"));
                ran += 1;
            }
        }
    }
    if super::microkernel::available() {
        assert!(ran > 2 * CONV_CASES.len(), "native channels-last tactics ran {ran} times");
    }
}

/// MaxPool and GlobalAveragePool channels-last, and the transposes between layouts.
#[test]
fn channels_last_pools_and_transposes_match_the_reference() {
    use kiln_ir::channels_last::{permute_tensor, ATTR, TO_NCHW, TO_NHWC};
    let nhwc = |t: &Tensor| permute_tensor(t, &TO_NHWC).unwrap();
    let x = random(&[2, 19, 13, 11], 7);
    let pool = Attributes::new()
        .with("kernel_shape", vec![3i64, 3])
        .with("strides", vec![2i64, 2])
        .with("pads", vec![1i64, 1, 1, 1]);
    for (op, attrs, tactic) in
        [("MaxPool", pool, super::pool::TACTIC), ("GlobalAveragePool", Attributes::new(), super::global_pool::TACTIC)]
    {
        let want = run(op, &attrs, &[(x.clone(), false)], super::reference::TACTIC).unwrap();
        let marked = attrs.with(ATTR, 1i64);
        for t in [tactic, super::reference::TACTIC] {
            let got = run(op, &marked, &[(nhwc(&x), false)], t).unwrap();
            assert_close(&got, &nhwc(&want), &format!("{op} {t} (channels-last)"));
        }
    }
    for perm in [TO_NHWC, TO_NCHW] {
        let attrs = Attributes::new().with("perm", perm.iter().map(|&p| p as i64).collect::<Vec<_>>());
        for shape in [[2, 19, 13, 11], [1, 3, 40, 41], [1, 1, 1, 1]] {
            let x = random(&shape, 9);
            let want = run("Transpose", &attrs, &[(x.clone(), false)], super::reference::TACTIC).unwrap();
            let got = run("Transpose", &attrs, &[(x, false)], super::transpose::TACTIC).unwrap();
            assert_eq!(got, want, "Transpose {perm:?} of {shape:?}");
        }
    }
}

#[test]
fn matmul_and_gemm_tactics_match_the_reference() {
    let a3 = random(&[2, 5, 12], 1);
    let w = random(&[12, 7], 2);
    let bias = random(&[7], 3);
    let res = random(&[2, 5, 7], 4);
    let mut gelu = Attributes::new();
    Activation::GeluErf.to_attrs(&mut gelu);
    for attrs in [Attributes::new(), gelu] {
        for inputs in [
            vec![(a3.clone(), false), (w.clone(), true)],
            vec![(a3.clone(), false), (w.clone(), true), (bias.clone(), true)],
            vec![(a3.clone(), false), (w.clone(), true), (bias.clone(), true), (res.clone(), false)],
        ] {
            let want = run("MatMul", &attrs, &inputs, super::reference::TACTIC).unwrap();
            assert_close(&run("MatMul", &attrs, &inputs, super::matmul::TACTIC).unwrap(), &want, "MatMul");
            if super::microkernel::available() {
                assert_close(&run("MatMul", &attrs, &inputs, super::matmul::PACKED).unwrap(), &want, "MatMul packed");
            }
        }
    }
    let a = random(&[6, 10], 5);
    let wt = random(&[9, 10], 6); // transB
    let at = random(&[10, 6], 7); // transA
    for (attrs, inputs) in [
        (Attributes::new().with("transB", 1i64), vec![(a.clone(), false), (wt.clone(), true), (random(&[9], 8), true)]),
        (
            Attributes::new().with("transA", 1i64).with("transB", 1i64).with("alpha", 0.5f32).with("beta", 2.0f32),
            vec![(at.clone(), false), (wt.clone(), true), (random(&[6, 9], 9), true)],
        ),
        (
            Attributes::new().with("transB", 1i64),
            vec![(a.clone(), false), (wt.clone(), true), (random(&[1], 10), true)],
        ),
    ] {
        let want = run("Gemm", &attrs, &inputs, super::reference::TACTIC).unwrap();
        assert_close(&run("Gemm", &attrs, &inputs, super::matmul::TACTIC).unwrap(), &want, "Gemm");
        let per_column = attrs.float("alpha", 1.0).unwrap() == 1.0 && inputs[2].0.len() == 9;
        if per_column && super::microkernel::available() {
            assert_close(&run("Gemm", &attrs, &inputs, super::matmul::PACKED).unwrap(), &want, "Gemm packed");
        }
    }
}

#[test]
fn a_native_tactic_refuses_a_shape_it_was_not_built_for() {
    let attrs = conv_attrs(1, 1, 1, 1, None);
    // Not depthwise: the depthwise tactic is not offered.
    let e = run(
        "Conv",
        &attrs,
        &[(random(&[1, 4, 5, 5], 1), false), (random(&[4, 4, 3, 3], 2), true)],
        super::conv::DEPTHWISE,
    );
    assert!(e.unwrap_err().contains("not offered"));
}

#[test]
fn attention_tactic_matches_the_reference() {
    use kiln_ir::spec::ATTENTION_MASK_BROADCAST_ATTR;
    let t = super::attention::TACTIC;
    // Packed 3-D (BERT's form after fusion), with GQA, odd sequence lengths and head sizes.
    for (i, &(b, sq, skv, hq, hkv, d, dv)) in
        [(1usize, 5usize, 5usize, 2usize, 2usize, 8usize, 8usize), (2, 7, 9, 4, 2, 5, 3), (3, 17, 17, 3, 1, 16, 16)]
            .iter()
            .enumerate()
    {
        let seed = 10 * i as u64;
        let q = random(&[b, sq, hq * d], seed + 1);
        let k = random(&[b, skv, hkv * d], seed + 2);
        let v = random(&[b, skv, hkv * dv], seed + 3);
        let heads = Attributes::new().with("q_num_heads", hq as i64).with("kv_num_heads", hkv as i64);
        let mask_bcast = random(&[b, 1, 1, skv], seed + 4);
        let mask_full = random(&[b, hq, sq, skv], seed + 5);
        let mask_row = random(&[sq, skv], seed + 6);
        let last_one = random(&[b, 1, sq, 1], seed + 7);
        let cases: Vec<(Attributes, Vec<(Tensor, bool)>)> = vec![
            (heads.clone(), vec![(q.clone(), false), (k.clone(), false), (v.clone(), false)]),
            (
                heads.clone().with("scale", 0.3f32),
                vec![(q.clone(), false), (k.clone(), false), (v.clone(), false), (mask_bcast, false)],
            ),
            (heads.clone(), vec![(q.clone(), false), (k.clone(), false), (v.clone(), false), (mask_full, false)]),
            (heads.clone(), vec![(q.clone(), false), (k.clone(), false), (v.clone(), false), (mask_row, true)]),
            (
                heads.clone().with(ATTENTION_MASK_BROADCAST_ATTR, 1i64),
                vec![(q.clone(), false), (k.clone(), false), (v.clone(), false), (last_one, false)],
            ),
            // Causal: the tactic hands the call to the reference kernel.
            (heads.clone().with("is_causal", 1i64), vec![(q.clone(), false), (k.clone(), false), (v.clone(), false)]),
        ];
        for (j, (attrs, inputs)) in cases.iter().enumerate() {
            let want = run("Attention", attrs, inputs, super::reference::TACTIC).unwrap();
            let fast_before = super::attention::FAST_RUNS.load(Relaxed);
            assert_close(&run("Attention", attrs, inputs, t).unwrap(), &want, &format!("3-D case {i}.{j}"));
            let fast = super::attention::FAST_RUNS.load(Relaxed) > fast_before;
            assert_eq!(fast, j < 5, "3-D case {i}.{j}: fast path taken {fast}");
        }
    }
    // 4-D per-head inputs.
    let (q, k, v) = (random(&[2, 3, 6, 4], 51), random(&[2, 3, 11, 4], 52), random(&[2, 3, 11, 5], 53));
    let mask = random(&[2, 1, 6, 11], 54);
    for inputs in [
        vec![(q.clone(), false), (k.clone(), false), (v.clone(), false)],
        vec![(q.clone(), false), (k.clone(), false), (v.clone(), false), (mask, false)],
    ] {
        let want = run("Attention", &Attributes::new(), &inputs, super::reference::TACTIC).unwrap();
        let fast_before = super::attention::FAST_RUNS.load(Relaxed);
        assert_close(&run("Attention", &Attributes::new(), &inputs, t).unwrap(), &want, "4-D");
        assert!(super::attention::FAST_RUNS.load(Relaxed) > fast_before, "4-D: fast path not taken");
    }
}

#[test]
fn layer_norm_tactic_matches_the_reference() {
    let t = super::norm::TACTIC;
    for (i, (shape, axis)) in
        [(vec![2usize, 5, 33], -1i64), (vec![3, 4, 6], 1), (vec![700, 48], -1), (vec![1, 1, 768], 2)]
            .into_iter()
            .enumerate()
    {
        let x = random(&shape, i as u64 + 1);
        let cols: Vec<usize> = shape[(if axis < 0 { axis + shape.len() as i64 } else { axis }) as usize..].to_vec();
        let scale = random(&cols, i as u64 + 2);
        let bias = random(&cols, i as u64 + 3);
        let attrs = Attributes::new().with("axis", axis).with("epsilon", 1e-3f32);
        for inputs in [
            vec![(x.clone(), false), (scale.clone(), true)],
            vec![(x.clone(), false), (scale.clone(), true), (bias.clone(), true)],
        ] {
            let want = run("LayerNormalization", &attrs, &inputs, super::reference::TACTIC).unwrap();
            let fast_before = super::norm::FAST_RUNS.load(Relaxed);
            assert_close(&run("LayerNormalization", &attrs, &inputs, t).unwrap(), &want, &format!("case {i}"));
            assert!(super::norm::FAST_RUNS.load(Relaxed) > fast_before, "case {i}: fast path not taken");
        }
    }
    // A scale broadcast over the normalized shape goes to the reference kernel.
    let x = random(&[2, 3, 4], 9);
    let attrs = Attributes::new().with("axis", 1i64);
    let inputs = vec![(x, false), (random(&[1, 4], 10), true)];
    let want = run("LayerNormalization", &attrs, &inputs, super::reference::TACTIC).unwrap();
    assert_close(&run("LayerNormalization", &attrs, &inputs, t).unwrap(), &want, "broadcast scale");
}

#[test]
fn fused_gelu_and_tanh_epilogues_match_the_reference() {
    let a = random(&[3, 9, 20], 1);
    let w = random(&[20, 11], 2);
    for act in [Activation::GeluErf, Activation::Tanh] {
        let mut attrs = Attributes::new();
        act.to_attrs(&mut attrs);
        let inputs = vec![(a.clone(), false), (w.clone(), true), (random(&[11], 3), true)];
        let want = run("MatMul", &attrs, &inputs, super::reference::TACTIC).unwrap();
        assert_close(&run("MatMul", &attrs, &inputs, super::matmul::TACTIC).unwrap(), &want, &format!("{act:?}"));
    }
}

#[test]
fn depthwise_c16_applies_other_activations_after_the_residual() {
    let x = random(&[1, 19, 8, 9], 1);
    let w = random(&[19, 1, 3, 3], 2);
    let residual = random(&[1, 19, 8, 9], 4);
    for act in [Activation::Tanh, Activation::Sigmoid] {
        let attrs = conv_attrs(1, 1, 1, 19, Some(act));
        let inputs = [(x.clone(), false), (w.clone(), true), (random(&[19], 3), true), (residual.clone(), false)];
        let want = run("Conv", &attrs, &inputs, super::reference::TACTIC).unwrap();
        let got = run("Conv", &attrs, &inputs, super::depthwise_c16::TACTIC).unwrap();
        assert_close(&got, &want, &format!("{act:?}"));
    }
}

#[test]
fn global_average_pool_tactic_matches_the_reference() {
    for (i, shape) in [vec![2, 37, 7, 7], vec![1, 5, 3, 4, 5], vec![3, 20, 1, 1], vec![1, 3, 40]].iter().enumerate() {
        let inputs = [(random(shape, i as u64 + 1), false)];
        let attrs = Attributes::new();
        let want = run("GlobalAveragePool", &attrs, &inputs, super::reference::TACTIC).unwrap();
        let got = run("GlobalAveragePool", &attrs, &inputs, super::global_pool::TACTIC).unwrap();
        assert_close(&got, &want, &format!("{shape:?}"));
    }
}

#[test]
fn max_pool_tactic_matches_the_reference() {
    let t = super::pool::TACTIC;
    // (input, kernel, stride, pads, dilation, ceil_mode, fast path expected)
    let cases: &[PoolCase] = &[
        ([1, 4, 112, 112], [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 0, true), // ResNet's
        ([2, 3, 9, 11], [2, 3], [1, 2], [0, 1, 1, 0], [1, 1], 0, true),
        ([1, 2, 10, 7], [3, 3], [2, 2], [0, 0, 0, 0], [1, 1], 1, true),
        ([1, 2, 13, 13], [3, 2], [3, 1], [1, 0, 1, 1], [2, 3], 1, true),
        ([1, 1, 5, 5], [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], 0, true),
    ];
    for (i, (xs, k, s, p, d, ceil, fast)) in cases.iter().enumerate() {
        let x = random(xs, i as u64 + 1);
        let attrs = Attributes::new()
            .with("kernel_shape", k.to_vec())
            .with("strides", s.to_vec())
            .with("pads", p.to_vec())
            .with("dilations", d.to_vec())
            .with("ceil_mode", *ceil);
        let inputs = vec![(x, false)];
        let want = run("MaxPool", &attrs, &inputs, super::reference::TACTIC).unwrap();
        let before = super::pool::FAST_RUNS.load(Relaxed);
        assert_close(&run("MaxPool", &attrs, &inputs, t).unwrap(), &want, &format!("case {i}"));
        assert_eq!(super::pool::FAST_RUNS.load(Relaxed) > before, *fast, "case {i}: fast path");
    }
    // SAME_UPPER padding is left to the reference kernel.
    let attrs = Attributes::new().with("kernel_shape", vec![3i64, 3]).with("auto_pad", "SAME_UPPER".to_string());
    let inputs = vec![(random(&[1, 2, 6, 6], 9), false)];
    let want = run("MaxPool", &attrs, &inputs, super::reference::TACTIC).unwrap();
    assert_close(&run("MaxPool", &attrs, &inputs, t).unwrap(), &want, "SAME_UPPER");
}

/// Median microseconds of `tactic` on these inputs, the kernel and its memory made once.
fn time_tactic(op: &str, attrs: &Attributes, inputs: &[(Tensor, bool)], tactic: &str, iters: usize) -> Option<f64> {
    time_tactic_without(op, attrs, inputs, &[], tactic, iters)
}

/// [`time_tactic`] with the inputs at positions `absent` omitted.
fn time_tactic_without(
    op: &str,
    attrs: &Attributes,
    inputs: &[(Tensor, bool)],
    absent: &[usize],
    tactic: &str,
    iters: usize,
) -> Option<f64> {
    let mut layer = test_layer(op, attrs, inputs.len(), 1);
    for &i in absent {
        layer.inputs[i] = None;
    }
    let bytes: Vec<Vec<u8>> = inputs.iter().map(|(t, _)| t.data().to_le_bytes()).collect();
    let desc = omit(test_desc(&layer, inputs, &bytes), absent);
    let backend = CpuBackend;
    if !backend.tactics(&desc).iter().any(|t| t.name == tactic) {
        return None;
    }
    let kernel = backend.instantiate(&desc, tactic).ok()?;
    let mut slot = vec![0u32; 1 << 24];
    let mut times = Vec::new();
    for i in 0..iters + 3 {
        let args = inputs
            .iter()
            .zip(&bytes)
            .enumerate()
            .map(|(i, ((t, _), b))| {
                (!absent.contains(&i)).then_some(Arg::Bytes { dtype: t.dtype(), shape: t.shape(), bytes: b })
            })
            .collect();
        let slot_bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut slot);
        let mut io = LayerIo {
            inputs: args,
            captures: Vec::new(),
            outputs: vec![Some(OutputSlot::Arena { bytes: slot_bytes })],
            results: vec![None],
        };
        let start = std::time::Instant::now();
        kernel.run(&mut io).ok()?;
        if i >= 3 {
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    times.sort_by(f64::total_cmp);
    Some(times[times.len() / 2])
}

/// Not a test: prints each convolution tactic's median time on MobileNetV2-like depthwise and
/// 1×1 layers (`cargo test --release -p kiln-engine tactic_timings -- --ignored --nocapture`).
#[test]
#[ignore]
fn tactic_timings() {
    let cases: &[TimingCase] = &[
        ([1, 144, 56, 56], [144, 1, 3, 3], 1, 1, 144),
        ([1, 96, 112, 112], [96, 1, 3, 3], 2, 1, 96),
        ([1, 960, 7, 7], [960, 1, 3, 3], 1, 1, 960),
        ([1, 144, 56, 56], [24, 144, 1, 1], 1, 0, 1),
        ([1, 160, 7, 7], [960, 160, 1, 1], 1, 0, 1),
        ([1, 64, 56, 56], [64, 64, 3, 3], 1, 1, 1),
        ([1, 256, 14, 14], [256, 256, 3, 3], 1, 1, 1),
        ([1, 512, 7, 7], [512, 512, 3, 3], 1, 1, 1),
        // ResNet-50's other shapes: the stem, 1×1 expand/reduce, strided, late layers.
        ([1, 3, 224, 224], [64, 3, 7, 7], 2, 3, 1),
        ([1, 64, 56, 56], [256, 64, 1, 1], 1, 0, 1),
        ([1, 256, 56, 56], [64, 256, 1, 1], 1, 0, 1),
        ([1, 128, 56, 56], [128, 128, 3, 3], 2, 1, 1),
        ([1, 256, 56, 56], [512, 256, 1, 1], 2, 0, 1),
        ([1, 1024, 14, 14], [256, 1024, 1, 1], 1, 0, 1),
        ([1, 2048, 7, 7], [512, 2048, 1, 1], 1, 0, 1),
        ([1, 512, 7, 7], [2048, 512, 1, 1], 1, 0, 1),
        ([8, 512, 7, 7], [2048, 512, 1, 1], 1, 0, 1),
        ([1, 512, 28, 28], [1024, 512, 1, 1], 2, 0, 1),
        ([1, 1024, 14, 14], [2048, 1024, 1, 1], 2, 0, 1),
        ([1, 256, 28, 28], [256, 256, 3, 3], 2, 1, 1),
        ([1, 512, 14, 14], [512, 512, 3, 3], 2, 1, 1),
        ([8, 64, 56, 56], [256, 64, 1, 1], 1, 0, 1),
        // MobileNetV2's stem and 7×7 expand.
        ([1, 3, 224, 224], [32, 3, 3, 3], 2, 1, 1),
        ([1, 320, 7, 7], [1280, 320, 1, 1], 1, 0, 1),
        // MobileNetV2's batch-8 56×56 project and depthwise layers.
        ([8, 144, 56, 56], [24, 144, 1, 1], 1, 0, 1),
        ([8, 144, 56, 56], [144, 1, 3, 3], 1, 1, 144),
        ([8, 96, 112, 112], [96, 1, 3, 3], 2, 1, 96),
    ];
    // KILN_TIMING_CASE=i times only case i (for a profiler).
    let only: Option<usize> = std::env::var("KILN_TIMING_CASE").ok().and_then(|v| v.parse().ok());
    // KILN_TIMING_TACTIC=name times only that tactic.
    let only_tactic = std::env::var("KILN_TIMING_TACTIC").ok();
    for (i, (xs, ws, s, p, g)) in cases.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let attrs = conv_attrs(*s, *p, 1, *g, Some(Activation::Clip { min: 0.0, max: 6.0 }));
        let mut inputs = vec![(random(xs, 1), false), (random(ws, 2), true), (random(&[ws[0]], 3), true)];
        // KILN_TIMING_RESIDUAL=1: with a fused residual (NCHW; only the NCHW tactics see it).
        let residual = std::env::var("KILN_TIMING_RESIDUAL").is_ok_and(|v| v == "1");
        if residual {
            inputs.push((random(&[xs[0], ws[0], xs[2] / *s as usize, xs[3] / *s as usize], 4), false));
        }
        // The channels-last forms of the layer, on its NHWC input.
        let marked = attrs.clone().with(kiln_ir::channels_last::ATTR, 1i64);
        let mut nhwc_inputs = inputs.clone();
        for i in if residual { vec![0, 3] } else { vec![0] } {
            nhwc_inputs[i].0 =
                kiln_ir::channels_last::permute_tensor(&inputs[i].0, &kiln_ir::channels_last::TO_NHWC).unwrap();
        }
        for t in [super::depthwise_nhwc::TACTIC, super::conv_nhwc::TACTIC] {
            if only_tactic.as_deref().is_some_and(|o| o != t) {
                continue;
            }
            if let Some(us) = time_tactic("Conv", &marked, &nhwc_inputs, t, if only.is_some() { 300 } else { 15 }) {
                println!("{xs:?} {ws:?} s{s}: {t} {us:.1} us");
            }
        }
        for t in [
            super::depthwise_c16::TACTIC,
            super::conv::DEPTHWISE,
            super::conv::ONE_BY_ONE,
            super::conv::IM2COL,
            super::winograd::TACTIC,
            super::conv_packed::TACTIC,
            super::conv_packed::TRANSPOSED,
        ] {
            if only_tactic.as_deref().is_some_and(|o| o != t) {
                continue;
            }
            if let Some(us) = time_tactic("Conv", &attrs, &inputs, t, if only.is_some() { 300 } else { 15 }) {
                println!("{xs:?} {ws:?} s{s}: {t} {us:.1} us");
            }
        }
    }
}

/// [`run`] for a layer with `outputs` outputs (each its own arena slot).
fn run_multi(
    op: &str,
    attrs: &Attributes,
    inputs: &[(Tensor, bool)],
    outputs: usize,
    tactic: &str,
) -> Result<Vec<Tensor>, String> {
    let layer = test_layer(op, attrs, inputs.len(), outputs);
    let bytes: Vec<Vec<u8>> = inputs.iter().map(|(t, _)| t.data().to_le_bytes()).collect();
    let desc = test_desc(&layer, inputs, &bytes);
    let backend = CpuBackend;
    if !backend.tactics(&desc).iter().any(|t| t.name == tactic) {
        return Err(format!("tactic {tactic} not offered"));
    }
    let kernel = backend.instantiate(&desc, tactic)?;
    let args = inputs
        .iter()
        .zip(&bytes)
        .map(|((t, _), b)| Some(Arg::Bytes { dtype: t.dtype(), shape: t.shape(), bytes: b }))
        .collect();
    let mut slots: Vec<Vec<u32>> = (0..outputs).map(|_| vec![0u32; 1 << 16]).collect();
    let mut io = LayerIo {
        inputs: args,
        captures: Vec::new(),
        outputs: slots.iter_mut().map(|s| Some(OutputSlot::Arena { bytes: bytemuck::cast_slice_mut(s) })).collect(),
        results: (0..outputs).map(|_| None).collect(),
    };
    kernel.run(&mut io)?;
    let results: Vec<Option<Produced>> = std::mem::take(&mut io.results);
    drop(io);
    results
        .into_iter()
        .zip(&slots)
        .map(|(r, slot)| match r {
            Some(Produced::Value(Value::Tensor(t))) => Ok(t),
            Some(Produced::InSlot(shape)) => {
                let n: usize = shape.iter().product();
                Ok(Tensor::from_vec(shape, bytemuck::cast_slice::<u32, f32>(&slot[..n]).to_vec()).unwrap())
            }
            other => Err(format!("unexpected result {other:?}")),
        })
        .collect()
}

#[test]
fn split_tactic_matches_the_reference() {
    let t = super::split::TACTIC;
    let x = random(&[2, 9, 12], 1);
    let sizes = |v: Vec<i64>| Tensor::from_vec(vec![v.len()], v).unwrap();
    // (attributes, split sizes input, outputs, fast path expected)
    let cases: Vec<(Attributes, Option<Tensor>, usize, bool)> = vec![
        (Attributes::new().with("axis", 2i64), None, 3, true),
        (Attributes::new().with("axis", -1i64), Some(sizes(vec![5, 0, 7])), 3, true),
        (Attributes::new().with("axis", 1i64).with("num_outputs", 4i64), None, 4, true),
        (Attributes::new(), Some(sizes(vec![1, 1])), 2, true),
        // Sizes that do not add up: the reference kernel's error.
        (Attributes::new().with("axis", 1i64), Some(sizes(vec![4, 4])), 2, false),
    ];
    for (i, (attrs, split, outputs, fast)) in cases.into_iter().enumerate() {
        let mut inputs = vec![(x.clone(), false)];
        if let Some(s) = split {
            inputs.push((s, true));
        }
        let want = run_multi("Split", &attrs, &inputs, outputs, super::reference::TACTIC);
        let before = super::split::FAST_RUNS.load(Relaxed);
        let got = run_multi("Split", &attrs, &inputs, outputs, t);
        assert_eq!(super::split::FAST_RUNS.load(Relaxed) > before, fast, "case {i}: fast path");
        match (got, want) {
            (Ok(got), Ok(want)) => {
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.shape(), w.shape(), "case {i}");
                    assert_eq!(g.to_f64_vec(), w.to_f64_vec(), "case {i}");
                }
            }
            (Err(_), Err(_)) => {}
            (got, want) => panic!("case {i}: {got:?} vs {want:?}"),
        }
    }
    // Sizes computed at run time: not offered (the builder could not time it).
    let inputs = vec![(x.clone(), false), (sizes(vec![4, 5]), false)];
    let e = run_multi("Split", &Attributes::new().with("axis", 1i64), &inputs, 2, t).unwrap_err();
    assert!(e.contains("not offered"), "{e}");
}

#[test]
fn large_matmul_and_gemm_split_across_threads_match_the_reference() {
    // Big enough for the product to be split across a 2-thread pool.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        let a3 = random(&[3, 40, 96], 1);
        let w = random(&[96, 200], 2);
        let bias = random(&[200], 3);
        let res = random(&[3, 40, 200], 4);
        let mut gelu = Attributes::new();
        Activation::GeluErf.to_attrs(&mut gelu);
        for attrs in [Attributes::new(), gelu] {
            for inputs in [
                vec![(a3.clone(), false), (w.clone(), true)],
                vec![(a3.clone(), false), (w.clone(), true), (bias.clone(), true), (res.clone(), false)],
            ] {
                let want = run("MatMul", &attrs, &inputs, super::reference::TACTIC).unwrap();
                assert_close(&run("MatMul", &attrs, &inputs, super::matmul::TACTIC).unwrap(), &want, "MatMul");
            }
        }
        let a = random(&[120, 96], 5);
        let wt = random(&[200, 96], 6);
        let attrs = Attributes::new().with("transB", 1i64);
        let inputs = vec![(a, false), (wt, true), (random(&[200], 7), true)];
        let want = run("Gemm", &attrs, &inputs, super::reference::TACTIC).unwrap();
        assert_close(&run("Gemm", &attrs, &inputs, super::matmul::TACTIC).unwrap(), &want, "Gemm transB");
    });
}

/// A KilnInvertedBottleneck case: (n, cin, h, w, expanded channels (None: no expand),
/// kernel, stride, pad, dilation, cout, residual).
type BottleneckCase = (usize, usize, usize, usize, Option<usize>, usize, i64, i64, i64, usize, bool);

/// A test layer: its attributes, its inputs (placeholders where absent), the absent positions,
/// and its output shape.
type TestLayer = (Attributes, Vec<(Tensor, bool)>, Vec<usize>, [usize; 4]);

/// The KilnInvertedBottleneck layer of `case`, ReLU6 after expand and depthwise.
fn bottleneck_layer(case: &BottleneckCase, seed: u64) -> TestLayer {
    use kiln_ir::channels_last::ATTR;
    use kiln_ir::inverted_bottleneck::{set_stage_attrs, Stage};
    let &(n, cin, h, w, ce, k, s, p, d, cout, res) = case;
    let relu6 = Some(Activation::Clip { min: 0.0, max: 6.0 });
    let mid = ce.unwrap_or(cin);
    let out = |x: usize| (x + 2 * p as usize - d as usize * (k - 1) - 1) / s as usize + 1;
    let (oh, ow) = (out(h), out(w));
    let mut attrs = Attributes::new();
    let mark = |a: Attributes| a.with(ATTR, 1i64);
    set_stage_attrs(&mut attrs, Stage::Expand, &mark(conv_attrs(1, 0, 1, 1, relu6)));
    set_stage_attrs(&mut attrs, Stage::Depthwise, &mark(conv_attrs(s, p, d, mid as i64, relu6)));
    set_stage_attrs(&mut attrs, Stage::Project, &mark(conv_attrs(1, 0, 1, 1, None)));
    let placeholder = || (random(&[1], 0), true);
    let inputs = vec![
        (random(&[n, h, w, cin], seed + 1), false),
        ce.map_or_else(placeholder, |ce| (random(&[ce, cin, 1, 1], seed + 2), true)),
        ce.map_or_else(placeholder, |ce| (random(&[ce], seed + 3), true)),
        (random(&[mid, 1, k, k], seed + 4), true),
        (random(&[mid], seed + 5), true),
        (random(&[cout, mid, 1, 1], seed + 6), true),
        (random(&[cout], seed + 7), true),
        if res { (random(&[n, oh, ow, cout], seed + 8), false) } else { placeholder() },
    ];
    let mut absent = Vec::new();
    if ce.is_none() {
        absent.extend([1, 2]);
    }
    if !res {
        absent.push(7);
    }
    (attrs, inputs, absent, [n, oh, ow, cout])
}

/// KilnInvertedBottleneck's tactics against the reference (its three Convs through kiln-cpu):
/// with and without expand, strides 1 and 2, dilation, channel counts off the vector width, a
/// residual, several bands per task and several tasks per image (a 3-thread pool).
#[test]
fn inverted_bottlenecks_match_the_reference() {
    use kiln_ir::inverted_bottleneck::OP;
    if !super::microkernel::available() {
        eprintln!("skipped: no AVX-512 on this CPU");
        return;
    }
    let cases: &[BottleneckCase] = &[
        (1, 16, 40, 40, Some(96), 3, 1, 1, 1, 16, true),
        (2, 8, 23, 17, Some(48), 3, 2, 1, 1, 24, false),
        (1, 32, 30, 30, None, 3, 1, 1, 1, 16, false),
        (2, 8, 12, 12, Some(40), 5, 2, 2, 1, 12, false),
        (1, 8, 20, 20, Some(24), 3, 1, 2, 2, 8, true),
        (3, 24, 7, 7, Some(144), 3, 1, 1, 1, 24, true),
    ];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    for (i, case) in cases.iter().enumerate() {
        let (attrs, inputs, absent, shape) = bottleneck_layer(case, 1000 * i as u64);
        let go = |tactic: &str, packed: bool| {
            run_once_without(OP, &attrs, &inputs, &absent, tactic, packed).unwrap().expect("ran")
        };
        let want = go(super::reference::TACTIC, false);
        assert_eq!(want.shape(), &shape, "case {i}");
        for tactic in [super::inverted_bottleneck::BANDED, super::inverted_bottleneck::LAYERED] {
            for packed in [false, true] {
                assert_close(&go(tactic, packed), &want, &format!("case {i} {tactic} packed {packed}"));
                let threaded = pool.install(|| go(tactic, packed));
                assert_close(&threaded, &want, &format!("case {i} {tactic} packed {packed}, 3 threads"));
            }
        }
    }
}

/// Not a test: MobileNetV2's blocks (batch 1) through each bottleneck tactic, beside their
/// three convolutions' best NHWC tactics one after another
/// (`cargo test --release -p kiln-engine bottleneck_timings -- --ignored --nocapture`).
#[test]
#[ignore]
fn bottleneck_timings() {
    use kiln_ir::inverted_bottleneck::{stage_attrs, Stage, OP};
    let cases: &[BottleneckCase] = &[
        (1, 32, 112, 112, None, 3, 1, 1, 1, 16, false),
        (1, 16, 112, 112, Some(96), 3, 2, 1, 1, 24, false),
        (1, 24, 56, 56, Some(144), 3, 1, 1, 1, 24, true),
        (1, 32, 28, 28, Some(192), 3, 1, 1, 1, 32, true),
        (1, 64, 14, 14, Some(384), 3, 1, 1, 1, 64, true),
        (1, 96, 14, 14, Some(576), 3, 1, 1, 1, 96, true),
        (1, 160, 7, 7, Some(960), 3, 1, 1, 1, 160, true),
    ];
    let iters = 200;
    for case in cases {
        let (attrs, inputs, absent, _) = bottleneck_layer(case, 7);
        let mut line = format!("{case:?}:");
        for t in [super::inverted_bottleneck::BANDED, super::inverted_bottleneck::LAYERED] {
            let us = time_tactic_without(OP, &attrs, &inputs, &absent, t, iters).unwrap_or(f64::NAN);
            line += &format!(" {t} {us:.1}");
        }
        // The stages as separate layers, each through its fastest NHWC tactic.
        let mut x = inputs[0].0.clone();
        let mut total = 0.0;
        for stage in Stage::ALL {
            let wi = stage.weight_input();
            if absent.contains(&wi) {
                continue;
            }
            let sa = stage_attrs(&attrs, stage);
            let mut conv_inputs = vec![(x.clone(), false), inputs[wi].clone(), inputs[wi + 1].clone()];
            if stage == Stage::Project && !absent.contains(&7) {
                conv_inputs.push(inputs[7].clone());
            }
            let best = [super::depthwise_nhwc::TACTIC, super::conv_nhwc::TACTIC]
                .iter()
                .filter_map(|t| time_tactic("Conv", &sa, &conv_inputs, t, iters))
                .fold(f64::INFINITY, f64::min);
            total += best;
            x = run("Conv", &sa, &conv_inputs, super::reference::TACTIC).unwrap();
        }
        println!("{line} layers {total:.1} us");
    }
}
