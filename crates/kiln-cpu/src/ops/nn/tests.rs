//! Unit tests for the nn kernels, run through a one-layer network so the inference rule is
//! checked against what the kernel produces. References are naive f64 loops or hand-computed.

use kiln_ir::{Attributes, Tensor, TensorData};

/// Run `op` once (inferred types are checked against the results).
fn run(op: &str, attrs: Attributes, inputs: &[Option<Tensor>], outputs: usize) -> Vec<Tensor> {
    crate::test_util::run_layer(op, attrs, inputs, outputs).unwrap()
}

/// Deterministic values in [-1, 1), never all zero.
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn t32(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape.to_vec(), data(n, seed)).unwrap()
}

fn assert_close(got: &Tensor, want: &[f64], tol: f64) {
    let g = got.to_f64_vec();
    assert_eq!(g.len(), want.len());
    for (i, (a, b)) in g.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "element {i}: got {a}, want {b}");
    }
}

#[test]
fn matmul_blocked_batched_matches_naive() {
    // Sizes cross the K/N block edges and the threading threshold; B broadcasts over batch.
    let (m, k, n) = (37, 300, 600);
    let a = t32(&[2, 1, m, k], 1);
    let b = t32(&[3, k, n], 2);
    let y = &run("MatMul", Attributes::new(), &[Some(a.clone()), Some(b.clone())], 1)[0];
    assert_eq!(y.shape(), [2, 3, m, n]);
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let mut want = Vec::new();
    for ba in 0..2 {
        for bb in 0..3 {
            for i in 0..m {
                for j in 0..n {
                    want.push((0..k).map(|p| av[(ba * m + i) * k + p] * bv[(bb * k + p) * n + j]).sum::<f64>());
                }
            }
        }
    }
    assert_close(y, &want, 1e-4);
}

#[test]
fn matmul_vector_operands() {
    let a = Tensor::from_vec(vec![3], vec![1.0f64, 2.0, 3.0]).unwrap();
    let b =
        Tensor::from_vec(vec![2, 3, 2], vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, 0.5, 2.0, 1.0, 0.0, 3.0]).unwrap();
    let y = &run("MatMul", Attributes::new(), &[Some(a.clone()), Some(b)], 1)[0];
    assert_eq!(y.shape(), [2, 2]);
    assert_close(y, &[22.0, 28.0, 3.0, 11.5], 0.0);
    let v = &run("MatMul", Attributes::new(), &[Some(a.clone()), Some(a)], 1)[0];
    assert_eq!(v.shape(), [] as [usize; 0]);
    assert_close(v, &[14.0], 0.0);
}

#[test]
fn gemm_transposes_alpha_beta_and_broadcast_c() {
    let a = Tensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap(); // A' = 3x2
    let b = Tensor::from_vec(vec![2, 2], vec![1.0f32, -1.0, 2.0, 0.5]).unwrap(); // B' = [[1,2],[-1,0.5]]
    let c = Tensor::from_vec(vec![2], vec![10.0f32, 20.0]).unwrap();
    let attrs = Attributes::new().with("transA", 1i64).with("transB", 1i64).with("alpha", 2.0f32).with("beta", 0.5f32);
    let y = &run("Gemm", attrs, &[Some(a), Some(b), Some(c)], 1)[0];
    // A'B' rows: [1-4, 2+2]=[-3,4], [2-5, 4+2.5]=[-3,6.5], [3-6, 6+3]=[-3,9]
    assert_close(y, &[-6.0 + 5.0, 8.0 + 10.0, -6.0 + 5.0, 13.0 + 10.0, -6.0 + 5.0, 18.0 + 10.0], 0.0);
}

#[test]
fn gemm_trans_b_both_paths() {
    // m <= 4 takes the dot-product path, m > 4 the transposed blocked GEMM; k = 21 leaves a
    // remainder after the 8-lane dot product.
    for m in [3, 7] {
        let (k, n) = (21, 5);
        let a = t32(&[m, k], 11);
        let b = t32(&[n, k], 12);
        let y = &run("Gemm", Attributes::new().with("transB", 1i64), &[Some(a.clone()), Some(b.clone())], 1)[0];
        let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
        let want: Vec<f64> =
            (0..m * n).map(|e| (0..k).map(|p| av[(e / n) * k + p] * bv[(e % n) * k + p]).sum()).collect();
        assert_close(y, &want, 1e-5);
    }
}

/// Naive 2-D grouped convolution in f64.
#[allow(clippy::too_many_arguments)]
fn naive_conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    group: usize,
    s: [usize; 2],
    d: [usize; 2],
    pb: [usize; 2],
    out: [usize; 2],
) -> Vec<f64> {
    let (xs, ws) = (x.shape(), w.shape());
    let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (m, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let (xv, wv) = (x.to_f64_vec(), w.to_f64_vec());
    let bv = b.map(|b| b.to_f64_vec());
    let mg = m / group;
    let mut y = Vec::new();
    for ni in 0..n {
        for mi in 0..m {
            let g = mi / mg;
            for oy in 0..out[0] {
                for ox in 0..out[1] {
                    let mut acc = bv.as_ref().map_or(0.0, |b| b[mi]);
                    for ci in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s[0] + ky * d[0]) as isize - pb[0] as isize;
                                let ix = (ox * s[1] + kx * d[1]) as isize - pb[1] as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                                    continue;
                                }
                                let xi = ((ni * c + g * cg + ci) * h + iy as usize) * wd + ix as usize;
                                acc += xv[xi] * wv[((mi * cg + ci) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    y.push(acc);
                }
            }
        }
    }
    let _ = c;
    y
}

#[test]
fn conv2d_groups_dilations_strides_asymmetric_pads() {
    let x = t32(&[2, 4, 9, 8], 3);
    let w = t32(&[6, 2, 3, 2], 4);
    let b = t32(&[6], 5);
    let attrs = Attributes::new()
        .with("group", 2i64)
        .with("strides", vec![2i64, 1])
        .with("dilations", vec![2i64, 3])
        .with("pads", vec![1i64, 2, 0, 1]);
    let y = &run("Conv", attrs, &[Some(x.clone()), Some(w.clone()), Some(b.clone())], 1)[0];
    // H: (9 + 1 - 5) / 2 + 1 = 3; W: (8 + 3 - 4) / 1 + 1 = 8
    assert_eq!(y.shape(), [2, 6, 3, 8]);
    assert_close(y, &naive_conv2d(&x, &w, Some(&b), 2, [2, 1], [2, 3], [1, 2], [3, 8]), 1e-5);
}

#[test]
fn conv_depthwise_same_lower_and_pointwise() {
    // Depthwise (parallel per-group path) with SAME_LOWER: total pad 2 along H → 1/1, along W
    // (kernel 2) total 1 → begin 1, end 0.
    let x = t32(&[1, 3, 5, 6], 6);
    let w = t32(&[3, 1, 3, 2], 7);
    let attrs = Attributes::new().with("group", 3i64).with("auto_pad", "SAME_LOWER");
    let y = &run("Conv", attrs, &[Some(x.clone()), Some(w.clone())], 1)[0];
    assert_eq!(y.shape(), [1, 3, 5, 6]);
    assert_close(y, &naive_conv2d(&x, &w, None, 3, [1, 1], [1, 1], [1, 1], [5, 6]), 1e-5);
    // 1x1 kernel reads the input directly.
    let w1 = t32(&[4, 3, 1, 1], 8);
    let y1 = &run("Conv", Attributes::new(), &[Some(x.clone()), Some(w1.clone())], 1)[0];
    assert_close(y1, &naive_conv2d(&x, &w1, None, 1, [1, 1], [1, 1], [0, 0], [5, 6]), 1e-5);
}

/// Naive 2-D grouped transposed convolution in f64, straight from the definition:
/// `y[n, g*mg + m, i*s + k*d - pad] += x[n, g*cg + c, i] * w[g*cg + c, m, k]`.
fn naive_conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    group: usize,
    s: [usize; 2],
    d: [usize; 2],
    pb: [usize; 2],
    out: [usize; 2],
) -> Vec<f64> {
    let (xs, ws) = (x.shape(), w.shape());
    let (c, h, wd) = (xs[1], xs[2], xs[3]);
    let (mg, kh, kw) = (ws[1], ws[2], ws[3]);
    let (xv, wv) = (x.to_f64_vec(), w.to_f64_vec());
    let mut y = vec![0.0; mg * group * out[0] * out[1]];
    for ch in 0..c {
        let g = ch / (c / group);
        for mm in 0..mg {
            for iy in 0..h {
                for ix in 0..wd {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let oy = (iy * s[0] + ky * d[0]) as isize - pb[0] as isize;
                            let ox = (ix * s[1] + kx * d[1]) as isize - pb[1] as isize;
                            if oy < 0 || ox < 0 || oy as usize >= out[0] || ox as usize >= out[1] {
                                continue;
                            }
                            y[((g * mg + mm) * out[0] + oy as usize) * out[1] + ox as usize] +=
                                xv[(ch * h + iy) * wd + ix] * wv[((ch * mg + mm) * kh + ky) * kw + kx];
                        }
                    }
                }
            }
        }
    }
    y
}

#[test]
fn conv_transpose_matches_scatter_definition() {
    let x = t32(&[1, 4, 3, 4], 9);
    let w = t32(&[4, 3, 2, 3], 10);
    let attrs = Attributes::new()
        .with("group", 2i64)
        .with("strides", vec![2i64, 1])
        .with("dilations", vec![1i64, 2])
        .with("pads", vec![1i64, 0, 0, 2])
        .with("output_padding", vec![1i64, 0]);
    let y = &run("ConvTranspose", attrs, &[Some(x.clone()), Some(w.clone())], 1)[0];
    // H: 2*(3-1) + 1 + 2 - 1 = 6; W: 1*(4-1) + 0 + 5 - 2 = 6
    assert_eq!(y.shape(), [1, 6, 6, 6]);
    assert_close(y, &naive_conv_transpose2d(&x, &w, 2, [2, 1], [1, 2], [1, 0], [6, 6]), 1e-5);
}

#[test]
fn large_conv_and_conv_transpose_use_threaded_paths() {
    // Big enough for the multi-threaded im2col / col2im and row-split GEMM.
    let x = t32(&[1, 8, 42, 42], 13);
    let w = t32(&[16, 8, 3, 3], 14);
    let attrs = Attributes::new().with("strides", vec![1i64, 1]).with("pads", vec![0i64, 1, 0, 1]);
    let y = &run("Conv", attrs, &[Some(x.clone()), Some(w.clone())], 1)[0];
    assert_eq!(y.shape(), [1, 16, 40, 42]);
    assert_close(y, &naive_conv2d(&x, &w, None, 1, [1, 1], [1, 1], [0, 1], [40, 42]), 1e-4);
    let x = t32(&[1, 4, 32, 32], 15);
    let w = t32(&[4, 8, 3, 3], 16);
    let attrs = Attributes::new().with("strides", vec![2i64, 2]).with("pads", vec![1i64, 1, 1, 1]);
    let y = &run("ConvTranspose", attrs, &[Some(x.clone()), Some(w.clone())], 1)[0];
    assert_eq!(y.shape(), [1, 8, 63, 63]);
    assert_close(y, &naive_conv_transpose2d(&x, &w, 1, [2, 2], [1, 1], [1, 1], [63, 63]), 1e-4);
}

#[test]
fn conv_transpose_output_shape_pads_the_end() {
    // Natural size 1*(3-1)+3 = 5; asking for 6 adds a zero column at the end.
    let x = Tensor::from_vec(vec![1, 1, 3], vec![1.0f32, 2.0, 3.0]).unwrap();
    let w = Tensor::from_vec(vec![1, 1, 3], vec![1.0f32, 1.0, 1.0]).unwrap();
    let y = &run("ConvTranspose", Attributes::new().with("output_shape", vec![6i64]), &[Some(x), Some(w)], 1)[0];
    assert_close(y, &[1.0, 3.0, 6.0, 5.0, 3.0, 0.0], 0.0);
}

#[test]
fn quantize_rounds_half_to_even_and_saturates() {
    let x = Tensor::from_vec(vec![8], vec![0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 300.0, -300.0]).unwrap();
    let s = Tensor::scalar(1.0f32);
    let z = Tensor::scalar(0i8);
    let y = &run("QuantizeLinear", Attributes::new(), &[Some(x), Some(s), Some(z)], 1)[0];
    assert_eq!(y.data(), &TensorData::I8(vec![0, 2, 2, 0, -2, -2, 127, -128]));
}

#[test]
fn quantize_blocked_with_remainder_block() {
    // Axis 1 of length 5 in blocks of 2 → 3 scale columns, the last covering one element.
    let x = Tensor::from_vec(vec![2, 5], vec![2.0f32, 4.0, 6.0, 8.0, 10.0, -2.0, -4.0, -6.0, -8.0, -10.0]).unwrap();
    let s = Tensor::from_vec(vec![2, 3], vec![2.0f32, 4.0, 5.0, 1.0, 2.0, 10.0]).unwrap();
    let z = Tensor::from_vec(vec![2, 3], vec![1u8, 2, 3, 100, 110, 120]).unwrap();
    let attrs = Attributes::new().with("axis", 1i64).with("block_size", 2i64);
    let y = &run("QuantizeLinear", attrs, &[Some(x), Some(s), Some(z)], 1)[0];
    assert_eq!(y.data(), &TensorData::U8(vec![2, 3, 4, 4, 5, 98, 96, 107, 106, 119]));
}

#[test]
fn dequantize_per_axis_int16_to_f16() {
    let x = Tensor::from_vec(vec![2, 2], vec![-300i16, 7, 1000, -5]).unwrap();
    let s = Tensor::from_vec(vec![2], vec![0.5f32, 0.25]).unwrap();
    let z = Tensor::from_vec(vec![2], vec![-100i16, 3]).unwrap();
    let attrs = Attributes::new().with("axis", 0i64).with("output_dtype", 10i64);
    let y = &run("DequantizeLinear", attrs, &[Some(x), Some(s), Some(z)], 1)[0];
    assert_eq!(y.dtype(), kiln_ir::DType::F16);
    assert_close(y, &[-100.0, 53.5, 249.25, -2.0], 0.0);
}

#[test]
fn max_pool_indices_in_both_storage_orders() {
    let x = Tensor::from_vec(vec![1, 1, 2, 3], vec![1.0f32, 9.0, 2.0, 8.0, 3.0, 7.0]).unwrap();
    let attrs = Attributes::new().with("kernel_shape", vec![2i64, 2]).with("pads", vec![0i64, 0, 0, 1]);
    let out = run("MaxPool", attrs.clone(), &[Some(x.clone())], 2);
    assert_close(&out[0], &[9.0, 9.0, 7.0], 0.0);
    assert_eq!(out[1].data(), &TensorData::I64(vec![1, 1, 5]));
    let out = run("MaxPool", attrs.with("storage_order", 1i64), &[Some(x)], 2);
    // Column-major within the 2x3 plane: (h, w) → h + 2w.
    assert_eq!(out[1].data(), &TensorData::I64(vec![2, 2, 5]));
}

#[test]
fn average_pool_ceil_mode_counts_only_explicit_padding() {
    // Input [1..5], kernel 3, stride 2, pads [1, 0], ceil: windows start at -1, 1, 3
    // (padded coords 0, 2, 4); the last window reaches past the padded extent (length 6).
    let x = Tensor::from_vec(vec![1, 1, 5], vec![1.0f32, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let base = Attributes::new()
        .with("kernel_shape", vec![3i64])
        .with("strides", vec![2i64])
        .with("pads", vec![1i64, 0])
        .with("ceil_mode", 1i64);
    let y = &run("AveragePool", base.clone().with("count_include_pad", 1i64), &[Some(x.clone())], 1)[0];
    assert_close(y, &[3.0 / 3.0, 9.0 / 3.0, 9.0 / 2.0], 1e-7);
    let y = &run("AveragePool", base, &[Some(x)], 1)[0];
    assert_close(y, &[3.0 / 2.0, 9.0 / 3.0, 9.0 / 2.0], 1e-7);
}

#[test]
fn max_unpool_places_into_larger_output() {
    let x = Tensor::from_vec(vec![1, 1, 1, 2], vec![5.0f32, 6.0]).unwrap();
    let i = Tensor::from_vec(vec![1, 1, 1, 2], vec![1i64, 2]).unwrap();
    let os = Tensor::from_vec(vec![4], vec![1i64, 1, 3, 5]).unwrap();
    let attrs = Attributes::new().with("kernel_shape", vec![2i64, 2]).with("strides", vec![2i64, 2]);
    let y = &run("MaxUnpool", attrs, &[Some(x), Some(i), Some(os)], 1)[0];
    assert_eq!(y.shape(), [1, 1, 3, 5]);
    let mut want = vec![0.0; 15];
    // Natural shape [2, 4]: flat 1 → (0, 1), flat 2 → (0, 2).
    want[1] = 5.0;
    want[2] = 6.0;
    assert_close(y, &want, 0.0);
}

#[test]
fn causal_conv_with_state_silu_and_state() {
    let x = Tensor::from_vec(vec![1, 1, 3], vec![1.0f32, 2.0, 3.0]).unwrap();
    let w = Tensor::from_vec(vec![1, 1, 3], vec![0.5f32, -1.0, 2.0]).unwrap();
    let b = Tensor::from_vec(vec![1], vec![0.25f32]).unwrap();
    let past = Tensor::from_vec(vec![1, 1, 2], vec![-1.0f32, 4.0]).unwrap();
    let out = run(
        "CausalConvWithState",
        Attributes::new().with("activation", "silu"),
        &[Some(x), Some(w), Some(b), Some(past)],
        2,
    );
    // padded = [-1, 4, 1, 2, 3]
    let conv = [-0.5 - 4.0 + 2.0 + 0.25, 2.0 - 1.0 + 4.0 + 0.25, 0.5 - 2.0 + 6.0 + 0.25];
    let silu: Vec<f64> = conv.iter().map(|&v: &f64| v / (1.0 + (-v).exp())).collect();
    assert_close(&out[0], &silu, 1e-6);
    assert_close(&out[1], &[2.0, 3.0], 0.0);
}

#[test]
fn deform_conv_1d_samples_between_and_beyond_inputs() {
    // Every tap is shifted by +0.5: taps land between inputs, the last one half outside.
    let x = Tensor::from_vec(vec![1, 1, 4], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let w = Tensor::from_vec(vec![1, 1, 2], vec![1.0f32, 1.0]).unwrap();
    let off = Tensor::from_vec(vec![1, 2, 3], vec![0.5f32; 6]).unwrap();
    let y = &run("DeformConv", Attributes::new(), &[Some(x), Some(w), Some(off)], 1)[0];
    assert_close(y, &[1.5 + 2.5, 2.5 + 3.5, 3.5 + 2.0], 1e-7);
}

#[test]
fn qlinear_matmul_requantizes() {
    let a = Tensor::from_vec(vec![1, 2], vec![130u8, 126]).unwrap();
    let b = Tensor::from_vec(vec![2, 1], vec![10u8, 20]).unwrap();
    let sc = |v: f32| Some(Tensor::scalar(v));
    let zp = |v: u8| Some(Tensor::scalar(v));
    let y = &run(
        "QLinearMatMul",
        Attributes::new(),
        &[Some(a), sc(0.5), zp(128), Some(b), sc(0.25), zp(0), sc(1.0), zp(100)],
        1,
    )[0];
    // (2*10 + -2*20) * 0.125 = -2.5 → rint -2 → 98
    assert_eq!(y.data(), &TensorData::U8(vec![98]));
}

#[test]
fn window_larger_than_input_gives_empty_output() {
    // floor((3 - 5) / 1) + 1 = -1 is an error, floor((3 - 5) / 2) + 1 = 0 an empty output.
    let x = Tensor::from_vec(vec![1, 1, 3], vec![1.0f32, 2.0, 3.0]).unwrap();
    let w = Tensor::from_vec(vec![1, 1, 5], vec![1.0f32; 5]).unwrap();
    let y = &run("Conv", Attributes::new().with("strides", vec![2i64]), &[Some(x.clone()), Some(w)], 1)[0];
    assert_eq!(y.shape(), [1, 1, 0]);
    let attrs =
        Attributes::new().with("kernel_shape", vec![3i64]).with("dilations", vec![2i64]).with("strides", vec![2i64]);
    let y = &run("MaxPool", attrs, &[Some(x)], 1)[0];
    assert_eq!(y.shape(), [1, 1, 0]);
}

// ---------------------------------------------------------------------------------------------
// Fused epilogues: act(op + bias + residual), against the unfused layers.

mod fused {
    use super::*;
    use kiln_ir::Activation;

    fn with_act(mut attrs: Attributes, act: Activation) -> Attributes {
        act.to_attrs(&mut attrs);
        attrs
    }

    fn one(op: &str, attrs: Attributes, inputs: &[Tensor]) -> Tensor {
        let ins: Vec<Option<Tensor>> = inputs.iter().cloned().map(Some).collect();
        run(op, attrs, &ins, 1).remove(0)
    }

    /// `act(y + residual)` computed by the Add and activation kernels.
    fn unfused(y: Tensor, residual: Option<&Tensor>, act: Activation) -> Tensor {
        let y = match residual {
            Some(r) => one("Add", Attributes::new(), &[y, r.clone()]),
            None => y,
        };
        let v: Vec<f32> = y.as_slice::<f32>().unwrap().iter().map(|&x| act.apply_f32(x)).collect();
        Tensor::from_vec(y.shape().to_vec(), v).unwrap()
    }

    fn close(got: &Tensor, want: &Tensor) {
        assert_eq!(got.shape(), want.shape());
        assert!(want.to_f64_vec().iter().any(|&v| v != 0.0));
        assert_close(got, &want.to_f64_vec(), 1e-5);
    }

    const ACTS: [Activation; 4] =
        [Activation::Relu, Activation::Clip { min: 0.0, max: 0.5 }, Activation::GeluErf, Activation::Silu];

    #[test]
    fn conv_with_residual_and_activation() {
        // Grouped (depthwise path) and dense convolutions, large enough to split over threads.
        for (group, c) in [(1, 8), (8, 8)] {
            let x = t32(&[2, c, 20, 20], 1);
            let w = t32(&[c, c / group, 3, 3], 2);
            let b = t32(&[c], 3);
            let r = t32(&[2, c, 20, 20], 4);
            let attrs = Attributes::new().with("pads", vec![1i64, 1, 1, 1]).with("group", group as i64);
            let plain = one("Conv", attrs.clone(), &[x.clone(), w.clone(), b.clone()]);
            for act in ACTS {
                let got = one("Conv", with_act(attrs.clone(), act), &[x.clone(), w.clone(), b.clone(), r.clone()]);
                close(&got, &unfused(plain.clone(), Some(&r), act));
            }
            // Residual without bias.
            let ins = [Some(x.clone()), Some(w.clone()), None, Some(r.clone())];
            let got = run("Conv", attrs.clone(), &ins, 1).remove(0);
            let plain = one("Conv", attrs, &[x, w]);
            close(&got, &unfused(plain, Some(&r), Activation::Clip { min: f32::NEG_INFINITY, max: f32::INFINITY }));
        }
    }

    #[test]
    fn gemm_with_c_residual_and_activation() {
        for (m, tb, c_shape) in [(3, true, vec![1, 40]), (64, false, vec![64, 1]), (64, true, vec![64, 40])] {
            let a = t32(&[m, 30], 5);
            let b = if tb { t32(&[40, 30], 6) } else { t32(&[30, 40], 6) };
            let c = t32(&c_shape, 7);
            let r = t32(&[m, 40], 8);
            let attrs = Attributes::new().with("transB", tb as i64).with("alpha", 0.75f32).with("beta", 1.25f32);
            let plain = one("Gemm", attrs.clone(), &[a.clone(), b.clone(), c.clone()]);
            for act in ACTS {
                let got = one("Gemm", with_act(attrs.clone(), act), &[a.clone(), b.clone(), c.clone(), r.clone()]);
                close(&got, &unfused(plain.clone(), Some(&r), act));
            }
        }
    }

    #[test]
    fn matmul_with_bias_residual_and_activation() {
        // Shared B (one big GEMM over the folded batch) and batched B.
        for (a_shape, b_shape) in [(vec![2, 50, 32], vec![32, 48]), (vec![2, 5, 32], vec![2, 32, 48])] {
            let a = t32(&a_shape, 9);
            let b = t32(&b_shape, 10);
            let bias = t32(&[48], 11);
            let plain = one("MatMul", Attributes::new(), &[a.clone(), b.clone()]);
            let r = t32(plain.shape(), 12);
            let biased = one("Add", Attributes::new(), &[plain, bias.clone()]);
            for act in ACTS {
                let got =
                    one("MatMul", with_act(Attributes::new(), act), &[a.clone(), b.clone(), bias.clone(), r.clone()]);
                close(&got, &unfused(biased.clone(), Some(&r), act));
            }
            let got =
                one("MatMul", with_act(Attributes::new(), Activation::Tanh), &[a.clone(), b.clone(), bias.clone()]);
            close(&got, &unfused(biased.clone(), None, Activation::Tanh));
        }
    }

    #[test]
    fn fused_inputs_of_the_wrong_shape_are_errors() {
        let err = |op: &str, attrs: Attributes, ins: &[Option<Tensor>]| {
            crate::test_util::run_layer(op, attrs, ins, 1).unwrap_err()
        };
        let (x, w) = (t32(&[1, 2, 4, 4], 1), t32(&[3, 2, 1, 1], 2));
        let e = err("Conv", Attributes::new(), &[Some(x.clone()), Some(w.clone()), None, Some(t32(&[1, 3, 4, 5], 3))]);
        assert!(e.contains("Residual"), "{e}");
        let e = err("Conv", Attributes::new(), &[Some(x.clone()), Some(w.clone()), Some(t32(&[2], 3))]);
        assert!(e.contains("entries") || e.contains("B has"), "{e}");
        let bad_act = Attributes::new().with(kiln_ir::activation::ACTIVATION_ATTR, "Swish2");
        let e = err("Conv", bad_act.clone(), &[Some(x), Some(w)]);
        assert!(e.contains("unknown activation"), "{e}");
        let (a, b) = (t32(&[2, 3, 4], 1), t32(&[4, 5], 2));
        let e = err("MatMul", Attributes::new(), &[Some(a.clone()), Some(b.clone()), Some(t32(&[4], 3))]);
        assert!(e.contains("Bias"), "{e}");
        let e = err("MatMul", Attributes::new(), &[Some(a.clone()), Some(t32(&[4], 2)), Some(t32(&[3], 3))]);
        assert!(e.contains("rank >= 2"), "{e}");
        let e = err("MatMul", Attributes::new(), &[Some(a.clone()), Some(b.clone()), None, Some(t32(&[3, 5], 3))]);
        assert!(e.contains("Residual"), "{e}");
        let e = err("Gemm", Attributes::new(), &[Some(t32(&[2, 4], 1)), Some(b), None, Some(t32(&[5, 2], 3))]);
        assert!(e.contains("Residual"), "{e}");
        let (ia, ib) =
            (Tensor::from_vec(vec![1, 1], vec![1i32]).unwrap(), Tensor::from_vec(vec![1, 1], vec![2i32]).unwrap());
        let e = err("MatMul", with_act(Attributes::new(), Activation::Relu), &[Some(ia), Some(ib)]);
        assert!(e.contains("float"), "{e}");
    }
}
