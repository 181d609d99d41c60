//! Focused checks of the family's tricky semantics against hand-computed or f64 values, run
//! through a one-layer network so inference and kernel are exercised together.

use kiln_ir::{f16, Attributes, Element, Tensor};

/// Runs `op` on `inputs` (None = omitted optional input) and returns `n_out` outputs.
fn run(op: &str, attrs: Attributes, inputs: Vec<Option<Tensor>>, n_out: usize) -> Result<Vec<Tensor>, String> {
    crate::test_util::run_layer(op, attrs, &inputs, n_out)
}

fn t<T: Element>(shape: &[usize], v: Vec<T>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

fn run1(op: &str, attrs: Attributes, inputs: Vec<Tensor>) -> Tensor {
    run(op, attrs, inputs.into_iter().map(Some).collect(), 1).unwrap().remove(0)
}

fn vals<T: Element>(x: &Tensor) -> Vec<T> {
    x.as_slice::<T>().unwrap().to_vec()
}

#[test]
fn integer_div_truncates_and_mod_follows_sign_rules() {
    let a = t(&[4], vec![7i32, -7, 7, -7]);
    let b = t(&[4], vec![2i32, 2, -2, -2]);
    assert_eq!(vals::<i32>(&run1("Div", Attributes::new(), vec![a.clone(), b.clone()])), vec![3, -3, -3, 3]);
    // fmod = 0: sign of the divisor (Python); fmod = 1: sign of the dividend (C).
    assert_eq!(vals::<i32>(&run1("Mod", Attributes::new(), vec![a.clone(), b.clone()])), vec![1, 1, -1, -1]);
    let fmod = Attributes::new().with("fmod", 1i64);
    assert_eq!(vals::<i32>(&run1("Mod", fmod, vec![a, b])), vec![1, -1, 1, -1]);
    // Overflow wraps, division by zero gives 0 (numpy) instead of trapping.
    let a = t(&[2], vec![i8::MIN, 5]);
    let b = t(&[2], vec![-1i8, 0]);
    assert_eq!(vals::<i8>(&run1("Div", Attributes::new(), vec![a, b])), vec![i8::MIN, 0]);
}

#[test]
fn float_mod_special_cases() {
    let a = t(&[5], vec![5.5f32, -5.5, -0.0, 3.0, -3.0]);
    let b = t(&[5], vec![-2.0f32, 2.0, 3.0, f32::INFINITY, f32::INFINITY]);
    let y = vals::<f32>(&run1("Mod", Attributes::new(), vec![a, b]));
    assert_eq!(&y[..2], &[-0.5, 0.5]);
    assert!(y[2] == 0.0 && y[2].is_sign_positive());
    assert_eq!(y[3], 3.0);
    assert_eq!(y[4], f32::INFINITY);
}

#[test]
fn broadcasting_with_coalesced_and_middle_dims() {
    // [2,1,3] + [4,1] -> [2,4,3]; checks row walking over a broadcast middle dim.
    let a = t(&[2, 1, 3], vec![0i64, 1, 2, 100, 101, 102]);
    let b = t(&[4, 1], vec![0i64, 10, 20, 30]);
    let y = run1("Add", Attributes::new(), vec![a, b]);
    assert_eq!(y.shape(), &[2, 4, 3]);
    let want: Vec<i64> =
        (0..2).flat_map(|i| (0..4).flat_map(move |j| (0..3).map(move |k| i * 100 + k + j * 10))).collect();
    assert_eq!(vals::<i64>(&y), want);
    // Where over three differently shaped inputs.
    let c = t(&[2, 1], vec![true, false]);
    let x = t(&[3], vec![1.0f32, 2.0, 3.0]);
    let z = t(&[], vec![-1.0f32]);
    let y = run1("Where", Attributes::new(), vec![c, x, z]);
    assert_eq!(y.shape(), &[2, 3]);
    assert_eq!(vals::<f32>(&y), vec![1.0, 2.0, 3.0, -1.0, -1.0, -1.0]);
}

#[test]
fn bitshift_edges() {
    let left = Attributes::new().with("direction", "LEFT");
    let right = Attributes::new().with("direction", "RIGHT");
    let x = t(&[4], vec![-8i8, 64, -8, 3]);
    let s = t(&[4], vec![1i8, 1, 9, -1]);
    assert_eq!(vals::<i8>(&run1("BitShift", right, vec![x.clone(), s.clone()])), vec![-4, 32, -1, 0]);
    assert_eq!(vals::<i8>(&run1("BitShift", left, vec![x, s])), vec![-16, -128, 0, 0]);
}

#[test]
fn erf_matches_reference_values() {
    // erf values from high-precision tables.
    let x = t(&[6], vec![0.0f64, 0.1, 0.5, 1.0, 2.5, 3.5]);
    let want = [0.0, 0.1124629160182849, 0.5204998778130465, 0.8427007929497149, 0.999593047982555, 0.9999992569016276];
    for (g, w) in vals::<f64>(&run1("Erf", Attributes::new(), vec![x])).iter().zip(want) {
        assert!((g - w).abs() <= 1e-15 * w.max(1e-300) + 1e-16, "{g} vs {w}");
    }
    // Gelu far in the negative tail keeps relative accuracy (0.5·x·erfc(-x/√2)).
    let y = vals::<f64>(&run1("Gelu", Attributes::new(), vec![t(&[1], vec![-8.0f64])]));
    let want = -8.0 * 0.5 * 1.2441921148543267e-15; // erfc(8/√2)
    assert!((y[0] - want).abs() < 1e-12 * want.abs(), "{} vs {want}", y[0]);
}

#[test]
fn cast_semantics() {
    let cast = |x: Tensor, to: i64| run1("Cast", Attributes::new().with("to", to), vec![x]);
    let x = t(&[5], vec![-1.7f32, 2.9, f32::NAN, 0.0, 300.0]);
    // float -> bool: nonzero (NaN included) is true.
    assert_eq!(vals::<bool>(&cast(x.clone(), 9)), vec![true, true, true, false, true]);
    // float -> int truncates toward zero; into u8 it wraps through i32 like a C cast.
    assert_eq!(vals::<i32>(&cast(x.clone(), 6))[..2], [-1, 2]);
    assert_eq!(vals::<i32>(&cast(x.clone(), 6))[2], i32::MIN);
    assert_eq!(vals::<u8>(&cast(x, 2)), vec![255, 2, 0, 0, 44]);
    // f32 -> f16 rounds to nearest even; int -> float; bool -> float.
    let y = cast(t(&[2], vec![1.0009766f32 + 0.0004, 70000.0]), 10);
    assert_eq!(vals::<f16>(&y), vec![f16::from_f32(1.0009766), f16::INFINITY]);
    assert_eq!(vals::<f32>(&cast(t(&[2], vec![i64::MAX, -3]), 1)), vec![9.223372e18, -3.0]);
    assert_eq!(vals::<f64>(&cast(t(&[2], vec![true, false]), 11)), vec![1.0, 0.0]);
    // BitCast keeps the bits.
    let y = run1("BitCast", Attributes::new().with("to", 6i64), vec![t(&[1], vec![1.0f32])]);
    assert_eq!(vals::<i32>(&y), vec![0x3f80_0000]);
}

#[test]
fn pow_mixed_types() {
    let y = run1("Pow", Attributes::new(), vec![t(&[4], vec![2i64, -3, 2, -1]), t(&[4], vec![10i64, 3, -1, -3])]);
    assert_eq!(vals::<i64>(&y), vec![1024, -27, 0, -1]);
    let y = run1("Pow", Attributes::new(), vec![t(&[2], vec![4.0f32, 2.0]), t(&[2], vec![0.5f64, -1.0])]);
    assert_eq!(vals::<f32>(&y), vec![2.0, 0.5]);
    let y = run1("Pow", Attributes::new(), vec![t(&[1], vec![9i32]), t(&[1], vec![0.5f32])]);
    assert_eq!(vals::<i32>(&y), vec![3]);
}

#[test]
fn clip_min_above_max_and_nan() {
    let x = t(&[3], vec![-5.0f32, 0.5, f32::NAN]);
    let y = run1("Clip", Attributes::new(), vec![x.clone(), t(&[], vec![2.0f32]), t(&[], vec![1.0f32])]);
    let y = vals::<f32>(&y);
    assert_eq!(&y[..2], &[1.0, 1.0]);
    assert!(y[2].is_nan());
    // Only max given (min omitted).
    let y = run("Clip", Attributes::new(), vec![Some(t(&[3], vec![-5i32, 0, 9])), None, Some(t(&[], vec![3i32]))], 1)
        .unwrap();
    assert_eq!(vals::<i32>(&y[0]), vec![-5, 0, 3]);
}

#[test]
fn variadic_and_nan_propagation() {
    let a = t(&[2], vec![1.0f32, f32::NAN]);
    let b = t(&[2, 1], vec![3.0f32, -1.0]);
    let y = run1("Max", Attributes::new(), vec![a.clone(), b.clone()]);
    assert_eq!(y.shape(), &[2, 2]);
    let v = vals::<f32>(&y);
    assert_eq!((v[0], v[2]), (3.0, 1.0));
    assert!(v[1].is_nan() && v[3].is_nan());
    let y = run1(
        "Mean",
        Attributes::new(),
        vec![t(&[2], vec![1.0f32, 2.0]), t(&[2], vec![2.0f32, 2.0]), t(&[1], vec![3.0f32])],
    );
    assert_eq!(vals::<f32>(&y), vec![2.0, 7.0 / 3.0]);
}

#[test]
fn dropout_inference_and_training() {
    let x = t(&[2], vec![1.5f32, -2.0]);
    let out = run("Dropout", Attributes::new(), vec![Some(x.clone())], 2).unwrap();
    assert_eq!(out[0], x);
    assert_eq!(vals::<bool>(&out[1]), vec![true, true]);
    // Training with ratio 0 is the identity; with a nonzero ratio it is refused.
    let zero = Some(t(&[], vec![0.0f32]));
    let on = Some(t(&[], vec![true]));
    let out = run("Dropout", Attributes::new(), vec![Some(x.clone()), zero, on.clone()], 1).unwrap();
    assert_eq!(out[0], x);
    let err = run("Dropout", Attributes::new(), vec![Some(x), None, on], 1).unwrap_err();
    assert!(err.contains("training-mode Dropout is not supported"), "{err}");
}

#[test]
fn activations_against_f64_formulas() {
    let xs = [-20.0f64, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0];
    let x = t(&[xs.len()], xs.to_vec());
    let check = |op: &str, attrs: Attributes, f: &dyn Fn(f64) -> f64| {
        let y = vals::<f64>(&run1(op, attrs, vec![x.clone()]));
        for (&xi, yi) in xs.iter().zip(y) {
            let w = f(xi);
            assert!((yi - w).abs() <= 1e-12 * w.abs().max(1e-300), "{op}({xi}) = {yi}, want {w}");
        }
    };
    check("Sigmoid", Attributes::new(), &|v| 1.0 / (1.0 + (-v).exp()));
    check("Softplus", Attributes::new(), &|v| v.exp().ln_1p());
    check("Mish", Attributes::new(), &|v| v * v.exp().ln_1p().tanh());
    check("HardSwish", Attributes::new(), &|v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0));
    check("Celu", Attributes::new().with("alpha", 2.0f32), &|v| v.max(0.0) + (2.0 * ((v / 2.0).exp() - 1.0)).min(0.0));
    // The attribute defaults are f32 values.
    let (alpha, gamma) = (1.673_263_2_f32 as f64, 1.050_701_f32 as f64);
    check("Selu", Attributes::new(), &|v| gamma * if v > 0.0 { v } else { alpha * v.exp_m1() });
    // Round: halves to even.
    let y = run1("Round", Attributes::new(), vec![t(&[4], vec![0.5f32, 1.5, 2.5, -2.5])]);
    assert_eq!(vals::<f32>(&y), vec![0.0, 2.0, 2.0, -2.0]);
}

#[test]
fn large_broadcast_in_parallel_chunks_matches_naive() {
    // 3·257·131 = 100 971 outputs: above the parallel threshold, with chunks that start and
    // end in the middle of rows.
    let (p, q, r) = (3usize, 257usize, 131usize);
    let a: Vec<i64> = (0..(p * q) as i64).collect();
    let b: Vec<i64> = (0..r as i64).map(|v| v * 1_000_000).collect();
    let y = run1("Sub", Attributes::new(), vec![t(&[p, q, 1], a.clone()), t(&[1, 1, r], b.clone())]);
    assert_eq!(y.shape(), &[p, q, r]);
    let want: Vec<i64> = (0..p * q).flat_map(|i| (0..r).map(move |k| (i as i64) - (k as i64) * 1_000_000)).collect();
    assert_eq!(vals::<i64>(&y), want);
    // Same-shape inputs coalesce to one long row that is split across chunks.
    let x: Vec<f32> = (0..100_000).map(|v| v as f32 * 0.5).collect();
    let y = run1("Mul", Attributes::new(), vec![t(&[100_000], x.clone()), t(&[100_000], x.clone())]);
    assert!(vals::<f32>(&y).iter().zip(&x).all(|(g, v)| *g == v * v));
}
