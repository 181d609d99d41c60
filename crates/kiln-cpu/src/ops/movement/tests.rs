//! Unit tests for the movement kernels. Each test builds a one-layer network (so the inference
//! rule runs too, with constant or run-time inputs) and compares against hand-computed values.

use kiln_ir::{f16, Attributes, Dim, Element, Network, Tensor, TensorType, Value, ValueType};

/// An input of a test layer: a run-time input or a network constant.
enum In {
    Run(Tensor),
    Const(Tensor),
}

fn t<T: Element>(shape: &[usize], v: Vec<T>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

fn i64s(v: &[i64]) -> Tensor {
    t(&[v.len()], v.to_vec())
}

/// Run `op` and return (inferred output types, output tensors), or the first error.
fn run(op: &str, attrs: Attributes, inputs: Vec<In>, n_out: usize) -> Result<(Vec<ValueType>, Vec<Tensor>), String> {
    let mut net = Network::new("test");
    let mut ids = Vec::new();
    let mut feeds = Vec::new();
    for (i, inp) in inputs.into_iter().enumerate() {
        let name = format!("in{i}");
        ids.push(Some(match inp {
            In::Run(x) => {
                let id = net.add_input(&name, ValueType::Tensor(TensorType::of(&x))).map_err(|e| e.to_string())?;
                feeds.push(Value::Tensor(x));
                id
            }
            In::Const(x) => net.add_constant(&name, x).map_err(|e| e.to_string())?,
        }));
    }
    let names: Vec<String> = (0..n_out).map(|i| format!("out{i}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let outs = net.add_layer("layer", op, attrs, &ids, &refs).map_err(|e| e.to_string())?;
    let mut types = Vec::new();
    for id in outs.into_iter().flatten() {
        types.push(net.tensor(id).ty.clone().unwrap_or(ValueType::Tensor(TensorType::unranked(kiln_ir::DType::F32))));
        net.mark_output(id).map_err(|e| e.to_string())?;
    }
    let values = crate::execute(&net, feeds).map_err(|e| e.to_string())?;
    Ok((types, values.into_iter().map(|v| v.into_tensor().unwrap()).collect()))
}

fn one(op: &str, attrs: Attributes, inputs: Vec<In>) -> Tensor {
    run(op, attrs, inputs, 1).unwrap().1.remove(0)
}

fn shape_of(ty: &ValueType) -> Vec<Dim> {
    ty.as_tensor().and_then(|t| t.shape.clone()).expect("ranked type")
}

fn known(d: &[usize]) -> Vec<Dim> {
    kiln_ir::known_shape(d)
}

fn arange(shape: &[usize]) -> Tensor {
    let n = shape.iter().product::<usize>();
    t(shape, (0..n).map(|i| i as f32).collect())
}

#[test]
fn reshape_infers_minus_one_and_zero() {
    let (ty, out) =
        run("Reshape", Attributes::new(), vec![In::Run(arange(&[2, 3, 4])), In::Const(i64s(&[0, -1, 2]))], 1).unwrap();
    assert_eq!(shape_of(&ty[0]), known(&[2, 6, 2]));
    assert_eq!(out[0].shape(), &[2, 6, 2]);
    // allowzero: 0 is a real zero-size dim.
    let out = one(
        "Reshape",
        Attributes::new().with("allowzero", 1i64),
        vec![In::Run(t::<f32>(&[0, 3], vec![])), In::Const(i64s(&[3, 0]))],
    );
    assert_eq!(out.shape(), &[3, 0]);
    let err = run("Reshape", Attributes::new(), vec![In::Run(arange(&[2, 3])), In::Const(i64s(&[4, -1]))], 1);
    assert!(err.unwrap_err().contains("-1 cannot be inferred"));
}

#[test]
fn slice_negative_steps_and_clamping() {
    // x = 0..10; start 100 clamps to 9, end -100 clamps to -1 (i.e. through index 0), step -3.
    let out = one(
        "Slice",
        Attributes::new(),
        vec![
            In::Run(arange(&[10])),
            In::Const(i64s(&[100])),
            In::Const(i64s(&[-100])),
            In::Const(i64s(&[0])),
            In::Const(i64s(&[-3])),
        ],
    );
    assert_eq!(out.as_slice::<f32>().unwrap(), &[9.0, 6.0, 3.0, 0.0]);
    // 2-D, slicing only axis -1 with a run-time starts input: the rank stays known.
    let (ty, out) = run(
        "Slice",
        Attributes::new(),
        vec![In::Run(arange(&[2, 5])), In::Run(i64s(&[1])), In::Const(i64s(&[-1])), In::Const(i64s(&[-1]))],
        1,
    )
    .unwrap();
    assert_eq!(shape_of(&ty[0]), vec![Dim::Known(2), Dim::Unknown]);
    assert_eq!(out[0].as_slice::<f32>().unwrap(), &[1.0, 2.0, 3.0, 6.0, 7.0, 8.0]);
}

#[test]
fn pad_modes_match_numpy() {
    let x = t(&[4], vec![1.0f32, 2.0, 3.0, 4.0]);
    let pad = |mode: &str, pads: &[i64]| {
        one("Pad", Attributes::new().with("mode", mode), vec![In::Run(x.clone()), In::Const(i64s(pads))])
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    };
    // np.pad([1,2,3,4], (5,2), 'reflect') = [2,3,4,3,2,1,2,3,4,3,2]
    assert_eq!(pad("reflect", &[5, 2]), vec![2., 3., 4., 3., 2., 1., 2., 3., 4., 3., 2.]);
    assert_eq!(pad("edge", &[2, 1]), vec![1., 1., 1., 2., 3., 4., 4.]);
    assert_eq!(pad("wrap", &[5, 1]), vec![4., 1., 2., 3., 4., 1., 2., 3., 4., 1.]);
    // Negative pads crop.
    assert_eq!(pad("constant", &[-1, 2]), vec![2., 3., 4., 0., 0.]);
    // Constant value and dtype other than f32.
    let out = one(
        "Pad",
        Attributes::new(),
        vec![In::Run(t(&[1, 2], vec![5i8, 6])), In::Const(i64s(&[1, 0, 0, 1])), In::Const(Tensor::scalar(-7i8))],
    );
    assert_eq!(out.shape(), &[2, 3]);
    assert_eq!(out.as_slice::<i8>().unwrap(), &[-7, -7, -7, 5, 6, -7]);
}

#[test]
fn split_uneven_num_outputs() {
    let (ty, outs) = run("Split", Attributes::new().with("num_outputs", 3i64), vec![In::Run(arange(&[7]))], 3).unwrap();
    let lens: Vec<usize> = outs.iter().map(|o| o.len()).collect();
    assert_eq!(lens, vec![3, 3, 1]);
    assert_eq!(shape_of(&ty[2]), known(&[1]));
    assert_eq!(outs[2].as_slice::<f32>().unwrap(), &[6.0]);
}

#[test]
fn top_k_ties_and_nan() {
    let x = t(&[6], vec![1.0f32, 3.0, f32::NAN, 3.0, -1.0, 1.0]);
    let (_, outs) = run("TopK", Attributes::new(), vec![In::Run(x.clone()), In::Const(i64s(&[3]))], 2).unwrap();
    // NaN sorts as the largest; equal values keep the lower index first.
    assert!(outs[0].as_slice::<f32>().unwrap()[0].is_nan());
    assert_eq!(outs[1].as_slice::<i64>().unwrap(), &[2, 1, 3]);
    let (_, outs) =
        run("TopK", Attributes::new().with("largest", 0i64), vec![In::Run(x), In::Const(i64s(&[3]))], 2).unwrap();
    assert_eq!(outs[0].as_slice::<f32>().unwrap(), &[-1.0, 1.0, 1.0]);
    assert_eq!(outs[1].as_slice::<i64>().unwrap(), &[4, 0, 5]);
    let err = run("TopK", Attributes::new(), vec![In::Run(arange(&[3])), In::Run(i64s(&[4]))], 2);
    assert!(err.unwrap_err().contains("outside"));
}

#[test]
fn unique_unsorted_outputs() {
    let x = t(&[6], vec![2i32, 1, 2, 0, 1, 5]);
    let (_, o) = run("Unique", Attributes::new().with("sorted", 0i64), vec![In::Run(x.clone())], 4).unwrap();
    assert_eq!(o[0].as_slice::<i32>().unwrap(), &[2, 1, 0, 5]);
    assert_eq!(o[1].as_slice::<i64>().unwrap(), &[0, 1, 3, 5]);
    assert_eq!(o[2].as_slice::<i64>().unwrap(), &[0, 1, 0, 2, 1, 3]);
    assert_eq!(o[3].as_slice::<i64>().unwrap(), &[2, 2, 1, 1]);
    let (_, o) = run("Unique", Attributes::new(), vec![In::Run(x)], 4).unwrap();
    assert_eq!(o[0].as_slice::<i32>().unwrap(), &[0, 1, 2, 5]);
    assert_eq!(o[1].as_slice::<i64>().unwrap(), &[3, 1, 0, 5]);
    assert_eq!(o[2].as_slice::<i64>().unwrap(), &[2, 1, 2, 0, 1, 3]);
}

#[test]
fn gather_nd_batch_dims_and_bad_index() {
    // data [2,2,2]; batch_dims=1; per batch pick rows by one index.
    let data = arange(&[2, 2, 2]);
    let idx = t(&[2, 1], vec![1i64, -2]);
    let out = one("GatherND", Attributes::new().with("batch_dims", 1i64), vec![In::Run(data.clone()), In::Run(idx)]);
    assert_eq!(out.shape(), &[2, 2]);
    assert_eq!(out.as_slice::<f32>().unwrap(), &[2.0, 3.0, 4.0, 5.0]);
    let bad = run("GatherND", Attributes::new(), vec![In::Run(data), In::Run(t(&[1, 1], vec![2i64]))], 1);
    assert!(bad.unwrap_err().contains("out of range"));
}

#[test]
fn scatter_reductions_with_duplicates() {
    let data = t(&[4], vec![1i32, 2, 3, 4]);
    let idx = t(&[3, 1], vec![1i64, 1, -1]);
    let upd = t(&[3], vec![10i32, 5, 7]);
    let go = |red: &str| {
        one(
            "ScatterND",
            Attributes::new().with("reduction", red),
            vec![In::Run(data.clone()), In::Run(idx.clone()), In::Run(upd.clone())],
        )
        .as_slice::<i32>()
        .unwrap()
        .to_vec()
    };
    assert_eq!(go("add"), vec![1, 17, 3, 11]);
    assert_eq!(go("mul"), vec![1, 100, 3, 28]);
    assert_eq!(go("max"), vec![1, 10, 3, 7]);
    assert_eq!(go("min"), vec![1, 2, 3, 4]);
    // ScatterElements on f16 along axis 1 with a negative index.
    let d = t(&[1, 3], vec![f16::from_f32(1.0); 3]);
    let out = one(
        "ScatterElements",
        Attributes::new().with("axis", 1i64).with("reduction", "add"),
        vec![In::Run(d), In::Run(t(&[1, 2], vec![-1i64, 0])), In::Run(t(&[1, 2], vec![f16::from_f32(0.5); 2]))],
    );
    assert_eq!(out.to_f64_vec(), vec![1.5, 1.0, 1.5]);
}

#[test]
fn expand_tile_transpose_shapes() {
    let (ty, o) =
        run("Expand", Attributes::new(), vec![In::Run(arange(&[3, 1])), In::Const(i64s(&[2, 1, 2]))], 1).unwrap();
    assert_eq!(shape_of(&ty[0]), known(&[2, 3, 2]));
    assert_eq!(o[0].as_slice::<f32>().unwrap(), &[0., 0., 1., 1., 2., 2., 0., 0., 1., 1., 2., 2.]);
    let o = one("Tile", Attributes::new(), vec![In::Run(arange(&[1, 2])), In::Const(i64s(&[2, 2]))]);
    assert_eq!(o.as_slice::<f32>().unwrap(), &[0., 1., 0., 1., 0., 1., 0., 1.]);
    let o = one("Transpose", Attributes::new().with("perm", vec![1i64, 0]), vec![In::Run(arange(&[2, 3]))]);
    assert_eq!(o.as_slice::<f32>().unwrap(), &[0., 3., 1., 4., 2., 5.]);
}

#[test]
fn tensor_scatter_circular_and_linear_overflow() {
    let past = t(&[1, 4, 1], vec![0.0f32; 4]);
    let upd = t(&[1, 3, 1], vec![1.0f32, 2.0, 3.0]);
    let out = one(
        "TensorScatter",
        Attributes::new().with("mode", "circular"),
        vec![In::Run(past.clone()), In::Run(upd.clone()), In::Run(i64s(&[2]))],
    );
    assert_eq!(out.as_slice::<f32>().unwrap(), &[3.0, 0.0, 1.0, 2.0]);
    let err = run("TensorScatter", Attributes::new(), vec![In::Run(past), In::Run(upd), In::Run(i64s(&[2]))], 1);
    assert!(err.unwrap_err().contains("outside the cache length"));
}

#[test]
fn one_hot_negative_and_out_of_range() {
    let out = one(
        "OneHot",
        Attributes::new(),
        vec![In::Run(t(&[3], vec![-1i64, 3, 0])), In::Const(Tensor::scalar(3i64)), In::Run(t(&[2], vec![0u8, 9]))],
    );
    assert_eq!(out.shape(), &[3, 3]);
    assert_eq!(out.as_slice::<u8>().unwrap(), &[0, 0, 9, 0, 0, 0, 9, 0, 0]);
}

#[test]
fn gather_rejects_out_of_range() {
    let err = run("Gather", Attributes::new(), vec![In::Run(arange(&[3])), In::Run(i64s(&[3]))], 1);
    assert!(err.unwrap_err().contains("out of range"));
    let o =
        one("Gather", Attributes::new().with("axis", 1i64), vec![In::Run(arange(&[2, 3])), In::Run(i64s(&[-1, 0]))]);
    assert_eq!(o.as_slice::<f32>().unwrap(), &[2., 0., 5., 3.]);
}

/// Inference only: a network input with symbolic dims.
fn infer_sym(op: &str, attrs: Attributes, x: Vec<Dim>, consts: Vec<Tensor>) -> Vec<Dim> {
    let mut net = Network::new("test");
    let mut ids = vec![Some(net.add_input("x", ValueType::tensor(kiln_ir::DType::F32, x)).unwrap())];
    for (i, c) in consts.into_iter().enumerate() {
        ids.push(Some(net.add_constant(&format!("c{i}"), c).unwrap()));
    }
    let out = net.add_layer("layer", op, attrs, &ids, &["y"]).unwrap();
    shape_of(net.tensor(out[0].unwrap()).ty.as_ref().unwrap())
}

#[test]
fn symbolic_dims_survive_reshape_flatten_slice() {
    let n = Dim::Symbol("N".into());
    let x = vec![n.clone(), Dim::Known(3), Dim::Known(4)];
    assert_eq!(
        infer_sym("Reshape", Attributes::new(), x.clone(), vec![i64s(&[0, -1])]),
        vec![n.clone(), Dim::Known(12)]
    );
    assert_eq!(
        infer_sym("Reshape", Attributes::new(), x.clone(), vec![i64s(&[-1, 6])]),
        vec![Dim::Unknown, Dim::Known(6)]
    );
    assert_eq!(infer_sym("Flatten", Attributes::new(), x.clone(), vec![]), vec![n.clone(), Dim::Known(12)]);
    assert_eq!(
        infer_sym("Slice", Attributes::new(), x, vec![i64s(&[0, 1]), i64s(&[i64::MAX, 3]), i64s(&[0, 2])]),
        vec![n, Dim::Known(3), Dim::Known(2)]
    );
}

/// Hostile inputs must produce errors (at inference or run time), never panics or huge allocations.
#[test]
fn bad_inputs_are_errors() {
    let x = || In::Run(arange(&[2, 3]));
    let big = 1i64 << 40;
    let cases: Vec<(&str, Attributes, Vec<In>, usize)> = vec![
        ("Tile", Attributes::new(), vec![x(), In::Run(i64s(&[big, big]))], 1),
        ("Tile", Attributes::new(), vec![x(), In::Const(i64s(&[big, big]))], 1),
        ("ConstantOfShape", Attributes::new(), vec![In::Run(i64s(&[big, big]))], 1),
        ("ConstantOfShape", Attributes::new(), vec![In::Run(i64s(&[-1]))], 1),
        ("Pad", Attributes::new(), vec![x(), In::Run(i64s(&[0, 0, big, big]))], 1),
        ("Pad", Attributes::new(), vec![x(), In::Run(i64s(&[0, -5, 0, 0]))], 1),
        (
            "Pad",
            Attributes::new().with("mode", "reflect"),
            vec![In::Run(t::<f32>(&[0], vec![])), In::Run(i64s(&[1, 1]))],
            1,
        ),
        ("Expand", Attributes::new(), vec![x(), In::Run(i64s(&[big, 1, 1]))], 1),
        (
            "Range",
            Attributes::new(),
            vec![In::Run(Tensor::scalar(0i64)), In::Run(Tensor::scalar(i64::MAX)), In::Run(Tensor::scalar(1i64))],
            1,
        ),
        (
            "Range",
            Attributes::new(),
            vec![In::Run(Tensor::scalar(0.0f32)), In::Run(Tensor::scalar(1.0f32)), In::Run(Tensor::scalar(0.0f32))],
            1,
        ),
        (
            "OneHot",
            Attributes::new(),
            vec![In::Run(i64s(&[0])), In::Run(Tensor::scalar(big)), In::Run(t(&[2], vec![0.0f32, 1.0]))],
            1,
        ),
        (
            "Slice",
            Attributes::new(),
            vec![x(), In::Run(i64s(&[0])), In::Run(i64s(&[1])), In::Run(i64s(&[0])), In::Run(i64s(&[0]))],
            1,
        ),
        ("Reshape", Attributes::new(), vec![x(), In::Run(i64s(&[big, big, big]))], 1),
        ("Reshape", Attributes::new(), vec![x(), In::Run(i64s(&[-1, -1]))], 1),
        ("DepthToSpace", Attributes::new().with("blocksize", 1i64 << 33), vec![In::Run(arange(&[1, 4, 1, 1]))], 1),
        (
            "SpaceToDepth",
            Attributes::new().with("blocksize", 1i64 << 33),
            vec![In::Run(t::<f32>(&[1, 2, 0, 0], vec![]))],
            1,
        ),
        (
            "ScatterElements",
            Attributes::new(),
            vec![x(), In::Run(t(&[1, 1], vec![2i64])), In::Run(t(&[1, 1], vec![1.0f32]))],
            1,
        ),
        ("GatherElements", Attributes::new().with("axis", 1i64), vec![x(), In::Run(t(&[1, 1], vec![-4i64]))], 1),
        (
            "ScatterND",
            Attributes::new(),
            vec![x(), In::Run(t(&[1, 3], vec![0i64, 0, 0])), In::Run(t(&[1], vec![1.0f32]))],
            1,
        ),
        (
            "TensorScatter",
            Attributes::new().with("axis", 1i64),
            vec![x(), In::Run(arange(&[2, 2])), In::Run(i64s(&[0, -1]))],
            1,
        ),
        ("ReverseSequence", Attributes::new(), vec![x(), In::Run(i64s(&[1, 2, 3]))], 1),
        ("ReverseSequence", Attributes::new(), vec![x(), In::Run(i64s(&[1, 2, 5]))], 1),
        ("Compress", Attributes::new().with("axis", 0i64), vec![x(), In::Run(t(&[3], vec![false, false, true]))], 1),
        ("Split", Attributes::new(), vec![x(), In::Run(i64s(&[1, i64::MAX]))], 2),
        ("Split", Attributes::new(), vec![x(), In::Run(i64s(&[-1, 3]))], 2),
        ("Unsqueeze", Attributes::new(), vec![x(), In::Run(i64s(&[0, -4]))], 1),
        ("Squeeze", Attributes::new(), vec![x(), In::Run(i64s(&[0]))], 1),
        ("TopK", Attributes::new(), vec![x(), In::Run(i64s(&[-1]))], 2),
        ("Transpose", Attributes::new().with("perm", vec![0i64, 0]), vec![x()], 1),
        ("Concat", Attributes::new().with("axis", 0i64), vec![x(), In::Run(arange(&[2, 2]))], 1),
        ("GatherND", Attributes::new().with("batch_dims", 1i64), vec![x(), In::Run(t(&[3, 1], vec![0i64; 3]))], 1),
        ("EyeLike", Attributes::new(), vec![In::Run(arange(&[2]))], 1),
        ("Trilu", Attributes::new(), vec![In::Run(arange(&[3]))], 1),
    ];
    for (op, attrs, inputs, n) in cases {
        let r = run(op, attrs, inputs, n);
        assert!(
            r.is_err(),
            "{op} accepted bad input: {:?}",
            r.map(|(_, o)| o.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>())
        );
    }
}
