//! CPU kernels for the signal/image family: resampling (Resize, GridSample, AffineGrid),
//! detection post-processing (RoiAlign, NonMaxSuppression) and spectral ops (DFT, STFT, the
//! window generators, MelWeightMatrix). Upsample is rewritten into Resize by its importer.

mod detection;
mod grid;
mod resize;
mod spectral;

use crate::KernelFn;
use kiln_ir::{DType, Element, Tensor, Value};

pub(crate) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Resize" => resize::resize,
        "GridSample" => grid::grid_sample,
        "AffineGrid" => grid::affine_grid,
        "RoiAlign" => detection::roi_align,
        "NonMaxSuppression" => detection::non_max_suppression,
        "DFT" => spectral::dft,
        "STFT" => spectral::stft,
        "HannWindow" => spectral::hann_window,
        "HammingWindow" => spectral::hamming_window,
        "BlackmanWindow" => spectral::blackman_window,
        "MelWeightMatrix" => spectral::mel_weight_matrix,
        _ => return None,
    })
}

/// How f64 results become integers.
#[derive(Clone, Copy, PartialEq)]
enum Rounding {
    /// Round half to even, then saturate (the reference's `saturate_cast`).
    HalfEven,
    /// Truncate toward zero, saturating (numpy `astype`).
    Truncate,
}

/// Convert an f64 result to element type `T` the way the ONNX reference's `saturate_cast` does
/// for integers (round half to even, then clamp); floats round once to the target precision.
fn cast_f64<T: Element>(v: f64) -> T {
    cast_with::<T>(v, Rounding::HalfEven)
}

fn cast_with<T: Element>(v: f64, rounding: Rounding) -> T {
    if T::DTYPE.is_int() && rounding == Rounding::HalfEven {
        // `as` saturates at the type's bounds (and maps NaN to 0).
        T::from_f64(v.round_ties_even())
    } else {
        T::from_f64(v)
    }
}

/// A tensor of dtype `dtype` from f64 values (see [`cast_with`]).
fn tensor_from_f64(dtype: DType, shape: Vec<usize>, data: &[f64], r: Rounding) -> Result<Tensor, String> {
    fn build<T: Element>(shape: Vec<usize>, data: &[f64], r: Rounding) -> Result<Tensor, String> {
        crate::util::make(shape, data.iter().map(|&v| cast_with::<T>(v, r)).collect::<Vec<T>>())
    }
    use half::{bf16, f16};
    match dtype {
        DType::F32 => build::<f32>(shape, data, r),
        DType::F16 => build::<f16>(shape, data, r),
        DType::BF16 => build::<bf16>(shape, data, r),
        DType::F64 => build::<f64>(shape, data, r),
        DType::I8 => build::<i8>(shape, data, r),
        DType::U8 => build::<u8>(shape, data, r),
        DType::I16 => build::<i16>(shape, data, r),
        DType::U16 => build::<u16>(shape, data, r),
        DType::I32 => build::<i32>(shape, data, r),
        DType::U32 => build::<u32>(shape, data, r),
        DType::I64 => build::<i64>(shape, data, r),
        DType::U64 => build::<u64>(shape, data, r),
        DType::Bool => build::<bool>(shape, data, r),
    }
}

/// The single value of a scalar (or one-element) integer input.
fn scalar_i64(inputs: &[Option<&Value>], i: usize, what: &str) -> Result<i64, String> {
    let t = crate::util::tensor_arg(inputs, i)?;
    if t.len() != 1 {
        return Err(format!("{what} must be a scalar, got shape {:?}", t.shape()));
    }
    if !t.dtype().is_int() {
        return Err(format!("{what} must be an integer tensor, got {}", t.dtype()));
    }
    Ok(t.to_i64_vec()[0])
}

/// The single value of a scalar (or one-element) float input.
fn scalar_f64(inputs: &[Option<&Value>], i: usize, what: &str) -> Result<f64, String> {
    let t = crate::util::tensor_arg(inputs, i)?;
    if t.len() != 1 {
        return Err(format!("{what} must be a scalar, got shape {:?}", t.shape()));
    }
    Ok(t.to_f64_vec()[0])
}

/// A float tensor input's dtype, or an error naming the op's allowed types.
fn require_float(t: &Tensor, what: &str) -> Result<DType, String> {
    let d = t.dtype();
    if d.is_float() {
        Ok(d)
    } else {
        Err(format!("{what} must be a float tensor, got {d}"))
    }
}

#[cfg(test)]
mod tests {
    use kiln_ir::{Attributes, Tensor};

    /// Run one layer of `op` on the CPU executor; `None` inputs are omitted optional inputs.
    pub(super) fn run_op(op: &str, attrs: Attributes, inputs: &[Option<Tensor>]) -> Result<Tensor, String> {
        crate::test_util::run_layer(op, attrs, inputs, 1).map(|mut v| v.remove(0))
    }

    pub(super) fn f32s(shape: &[usize], v: &[f32]) -> Option<Tensor> {
        Some(Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap())
    }

    pub(super) fn i64s(shape: &[usize], v: &[i64]) -> Option<Tensor> {
        Some(Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap())
    }

    pub(super) fn assert_close(got: &Tensor, shape: &[usize], want: &[f64]) {
        assert_eq!(got.shape(), shape);
        let g = got.to_f64_vec();
        for (i, (a, b)) in g.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "element {i}: got {a}, want {b} (all: {g:?})");
        }
    }

    #[test]
    fn resize_linear_half_pixel_clamps_at_edges() {
        // x_ori = (y + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25; edges clamp.
        let attrs = Attributes::new().with("mode", "linear");
        let y = run_op("Resize", attrs, &[f32s(&[1, 2], &[0.0, 10.0]), None, f32s(&[2], &[1.0, 2.0]), None]).unwrap();
        assert_close(&y, &[1, 4], &[0.0, 2.5, 7.5, 10.0]);
    }

    #[test]
    fn resize_integer_linear_rounds_half_to_even() {
        // asymmetric: x_ori = y / 2 → values 0, 0.5, 1, 1 (clamped); 0.5 rounds to 0.
        let attrs = Attributes::new().with("mode", "linear").with("coordinate_transformation_mode", "asymmetric");
        let x = Some(Tensor::from_vec(vec![2], vec![0i32, 1]).unwrap());
        let y = run_op("Resize", attrs, &[x, None, f32s(&[1], &[2.0]), None]).unwrap();
        assert_eq!(y.as_slice::<i32>().unwrap(), &[0, 0, 1, 1]);
    }

    #[test]
    fn resize_nearest_modes_and_sizes() {
        // 4 → 3 with sizes: scale 0.75, half_pixel x_ori = (y + .5) / .75 - .5 = 0.1667, 1.5, 2.8333.
        let x = Some(Tensor::from_vec(vec![4], vec![10u8, 20, 30, 40]).unwrap());
        let run = |nm: &str| {
            let attrs = Attributes::new().with("nearest_mode", nm);
            run_op("Resize", attrs, &[x.clone(), None, None, i64s(&[1], &[3])]).unwrap()
        };
        assert_eq!(run("round_prefer_floor").as_slice::<u8>().unwrap(), &[10, 20, 40]);
        assert_eq!(run("round_prefer_ceil").as_slice::<u8>().unwrap(), &[10, 30, 40]);
        assert_eq!(run("floor").as_slice::<u8>().unwrap(), &[10, 20, 30]);
        assert_eq!(run("ceil").as_slice::<u8>().unwrap(), &[20, 30, 40]);
    }

    #[test]
    fn resize_tf_crop_and_resize_extrapolates() {
        // roi 0..1.5 over 3 samples of a length-3 axis: x_ori = 0, 1.5, 3 (outside → -1).
        let attrs = Attributes::new()
            .with("mode", "linear")
            .with("coordinate_transformation_mode", "tf_crop_and_resize")
            .with("extrapolation_value", -1.0f32);
        let y =
            run_op("Resize", attrs, &[f32s(&[3], &[1.0, 2.0, 4.0]), f32s(&[2], &[0.0, 1.5]), None, i64s(&[1], &[3])])
                .unwrap();
        assert_close(&y, &[3], &[1.0, 3.0, -1.0]);
    }

    #[test]
    fn resize_rejects_scales_and_sizes_together() {
        let r =
            run_op("Resize", Attributes::new(), &[f32s(&[2], &[1.0, 2.0]), None, f32s(&[1], &[2.0]), i64s(&[1], &[4])]);
        assert!(r.is_err());
    }

    #[test]
    fn resize_large_linear_and_nearest_take_the_parallel_path() {
        // A ramp f(y, x) = x + 2y stays a ramp under linear interpolation (away from the
        // clamped last row/column): asymmetric x_ori = x / 2.
        let (h, w) = (200usize, 300usize);
        let ramp: Vec<f32> = (0..h * w).map(|i| ((i % w) + 2 * (i / w)) as f32).collect();
        let attrs = Attributes::new().with("mode", "linear").with("coordinate_transformation_mode", "asymmetric");
        let scales = f32s(&[4], &[1.0, 1.0, 2.0, 2.0]);
        let y = run_op("Resize", attrs, &[f32s(&[1, 1, h, w], &ramp), None, scales.clone(), None]).unwrap();
        assert_eq!(y.shape(), &[1, 1, 2 * h, 2 * w]);
        let v = y.as_slice::<f32>().unwrap();
        for &(i, j) in &[(0usize, 0usize), (1, 1), (3, 5), (200, 301), (398, 598)] {
            assert_eq!(v[i * 2 * w + j], j as f32 / 2.0 + i as f32, "at ({i}, {j})");
        }
        let y = run_op("Resize", Attributes::new(), &[f32s(&[1, 1, h, w], &ramp), None, scales, None]).unwrap();
        let v = y.as_slice::<f32>().unwrap();
        // half_pixel + round_prefer_floor at scale 2: x_ori = j / 2 - 0.25 → source j / 2.
        for &(i, j) in &[(0usize, 0usize), (5, 7), (399, 599)] {
            assert_eq!(v[i * 2 * w + j], ((j / 2) + 2 * (i / 2)) as f32, "at ({i}, {j})");
        }
    }

    #[test]
    fn hann_window_periodic_and_symmetric() {
        let y = run_op("HannWindow", Attributes::new(), &[i64s(&[], &[4])]).unwrap();
        assert_close(&y, &[4], &[0.0, 0.5, 1.0, 0.5]);
        let y = run_op("HannWindow", Attributes::new().with("periodic", 0i64), &[i64s(&[], &[3])]).unwrap();
        assert_close(&y, &[3], &[0.0, 1.0, 0.0]);
    }

    #[test]
    fn dft_inverse_onesided_odd_length() {
        // Real signal [1, 2, 3, 4, 5]: rfft gives 3 bins; irfft with dft_length 5 restores it.
        let n = 5usize;
        let sig = [1.0f64, 2.0, 3.0, 4.0, 5.0];
        let mut spec = Vec::new();
        for k in 0..3 {
            let (mut re, mut im) = (0.0, 0.0);
            for (t, &v) in sig.iter().enumerate() {
                let a = -2.0 * std::f64::consts::PI * (k * t) as f64 / n as f64;
                re += v * a.cos();
                im += v * a.sin();
            }
            spec.extend([re as f32, im as f32]);
        }
        let attrs = Attributes::new().with("inverse", 1i64).with("onesided", 1i64);
        let y = run_op("DFT", attrs, &[f32s(&[1, 3, 2], &spec), i64s(&[], &[5]), i64s(&[], &[1])]).unwrap();
        assert_close(&y, &[1, 5, 1], &sig);
    }

    #[test]
    fn dft_forward_onesided_with_padding() {
        // [1, 1] zero-padded to 4: bins 0..=2 are 2, 1 - i, 0.
        let attrs = Attributes::new().with("onesided", 1i64);
        let y = run_op("DFT", attrs, &[f32s(&[2, 1], &[1.0, 1.0]), i64s(&[], &[4]), i64s(&[], &[0])]).unwrap();
        assert_close(&y, &[3, 2], &[2.0, 0.0, 1.0, -1.0, 0.0, 0.0]);
    }

    #[test]
    fn nms_orders_ties_by_index_and_applies_thresholds() {
        // Boxes 0 and 1 overlap with IoU 0.5 (not suppressed at threshold 0.5: needs > 0.5);
        // box 2 equals box 0 and is suppressed; box 3 is below the score threshold.
        let boxes = f32s(&[1, 4, 4], &[0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0, 3.0, 0.0, 0.0, 1.0, 2.0, 5.0, 5.0, 6.0, 6.0]);
        let scores = f32s(&[1, 1, 4], &[0.9, 0.9, 0.8, 0.1]);
        let y = run_op(
            "NonMaxSuppression",
            Attributes::new(),
            &[boxes, scores, i64s(&[1], &[10]), f32s(&[1], &[0.5]), f32s(&[1], &[0.2])],
        )
        .unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(y.as_slice::<i64>().unwrap(), &[0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn grid_sample_reflection_and_border() {
        // 1-D-like 2-D input 1x3; x coords -1.5 (beyond left edge), 0 (centre), 1.25.
        // align_corners=1 maps x to (x + 1) / 2 * 2 = x + 1: -0.5, 1, 2.25.
        let x = f32s(&[1, 1, 1, 3], &[10.0, 20.0, 40.0]);
        let grid = f32s(&[1, 1, 3, 2], &[-1.5, 0.0, 0.0, 0.0, 1.25, 0.0]);
        let run = |pad: &str| {
            let attrs = Attributes::new().with("align_corners", 1i64).with("padding_mode", pad);
            run_op("GridSample", attrs, &[x.clone(), grid.clone()]).unwrap()
        };
        // border: -0.5 → 0 (10); 2.25 → 2 (40).
        assert_close(&run("border"), &[1, 1, 1, 3], &[10.0, 20.0, 40.0]);
        // reflection in [0, 2]: -0.5 → 0.5 (15); 2.25 → 1.75 (35).
        assert_close(&run("reflection"), &[1, 1, 1, 3], &[15.0, 20.0, 35.0]);
        // zeros: -0.5 mixes 0 and 10 → 5; 2.25 mixes 40 and 0 → 30.
        assert_close(&run("zeros"), &[1, 1, 1, 3], &[5.0, 20.0, 30.0]);
    }

    #[test]
    fn affine_grid_identity() {
        let theta = f32s(&[1, 2, 3], &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let y = run_op("AffineGrid", Attributes::new(), &[theta, i64s(&[4], &[1, 1, 1, 2])]).unwrap();
        // W = 2 → x = -0.5, 0.5; H = 1 → y = 0.
        assert_close(&y, &[1, 1, 2, 2], &[-0.5, 0.0, 0.5, 0.0]);
    }

    #[test]
    fn roi_align_avg_of_constant_plane() {
        let x = f32s(&[1, 1, 2, 2], &[3.0, 3.0, 3.0, 3.0]);
        let rois = f32s(&[1, 4], &[0.0, 0.0, 1.0, 1.0]);
        let y = run_op("RoiAlign", Attributes::new(), &[x, rois, i64s(&[1], &[0])]).unwrap();
        assert_close(&y, &[1, 1, 1, 1], &[3.0]);
        let bad = run_op(
            "RoiAlign",
            Attributes::new(),
            &[f32s(&[1, 1, 1, 1], &[1.0]), f32s(&[1, 4], &[0.0; 4]), i64s(&[1], &[3])],
        );
        assert!(bad.is_err());
    }
}
