//! Detection post-processing: RoiAlign and NonMaxSuppression, following the ONNX reference
//! (itself a port of ONNX Runtime's kernels).

use super::{require_float, tensor_from_f64, Rounding};
use crate::util::{make, opt_tensor_arg, single, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{checked_numel, Value};

/// RoiAlign: average (or max) of bilinearly sampled points in each output bin of each ROI.
pub(super) fn roi_align(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let rois = tensor_arg(inputs, 1)?;
    let batch_indices = tensor_arg(inputs, 2)?;
    let dtype = require_float(x, "X")?;
    require_float(rois, "rois")?;
    if !batch_indices.dtype().is_int() {
        return Err(format!("batch_indices must be an integer tensor, got {}", batch_indices.dtype()));
    }
    let a = ctx.attrs;
    let max_mode = match a.string("mode", "avg".into())?.as_str() {
        "avg" => false,
        "max" => true,
        other => return Err(format!("unknown mode '{other}'")),
    };
    // half_pixel shifts ROI corners by -0.5 (pixel centres); output_half_pixel is the pre-16
    // behaviour, which also clamps the ROI size to at least 1.
    let half_pixel = match a.string("coordinate_transformation_mode", "half_pixel".into())?.as_str() {
        "half_pixel" => true,
        "output_half_pixel" => false,
        other => return Err(format!("unknown coordinate_transformation_mode '{other}'")),
    };
    let (oh, ow) = (a.int("output_height", 1)?, a.int("output_width", 1)?);
    if oh < 1 || ow < 1 {
        return Err(format!("output_height/output_width must be positive, got {oh}x{ow}"));
    }
    let (oh, ow) = (oh as usize, ow as usize);
    let sampling_ratio = a.int("sampling_ratio", 0)?;
    if sampling_ratio < 0 {
        return Err(format!("sampling_ratio must not be negative, got {sampling_ratio}"));
    }
    let spatial_scale = a.float("spatial_scale", 1.0)? as f64;

    let &[n, c, h, w] = x.shape() else {
        return Err(format!("X must be 4-D [N, C, H, W], got shape {:?}", x.shape()));
    };
    if rois.rank() != 2 || rois.shape()[1] != 4 {
        return Err(format!("rois must have shape [num_rois, 4], got {:?}", rois.shape()));
    }
    let num_rois = rois.shape()[0];
    if batch_indices.shape() != [num_rois] {
        return Err(format!("batch_indices must have shape [{num_rois}], got {:?}", batch_indices.shape()));
    }
    let out_shape = vec![num_rois, c, oh, ow];
    let total = checked_numel(&out_shape).map_err(|e| e.to_string())?;
    if total > 0 && h * w == 0 {
        return Err(format!("X {:?} has an empty spatial dimension", x.shape()));
    }
    let data = x.to_f64_vec();
    let roi_data = rois.to_f64_vec();
    let bidx = batch_indices.to_i64_vec();
    let mut out = vec![0.0f64; total];

    let mut samples: Vec<Sample> = Vec::new();
    for r in 0..num_rois {
        let b = bidx[r];
        if b < 0 || b as usize >= n {
            return Err(format!("batch_indices[{r}] = {b} is out of range for batch size {n}"));
        }
        let off = if half_pixel { 0.5 } else { 0.0 };
        let roi = &roi_data[r * 4..r * 4 + 4];
        let (start_w, start_h) = (roi[0] * spatial_scale - off, roi[1] * spatial_scale - off);
        let (end_w, end_h) = (roi[2] * spatial_scale - off, roi[3] * spatial_scale - off);
        let (mut roi_w, mut roi_h) = (end_w - start_w, end_h - start_h);
        if !half_pixel {
            roi_w = roi_w.max(1.0);
            roi_h = roi_h.max(1.0);
        }
        let bin_h = roi_h / oh as f64;
        let bin_w = roi_w / ow as f64;
        // Samples per bin along each axis: fixed, or adaptive ceil(bin size). A degenerate ROI
        // can make the adaptive count <= 0 (no samples, output 0).
        let grid = |bin: f64| -> Result<i64, String> {
            if sampling_ratio > 0 {
                return Ok(sampling_ratio);
            }
            let g = bin.ceil();
            if !g.is_finite() || g > 1e6 {
                return Err(format!("ROI {r} is too large or not finite"));
            }
            Ok(g as i64)
        };
        let (grid_h, grid_w) = (grid(bin_h)?, grid(bin_w)?);
        let count = grid_h.saturating_mul(grid_w).max(1) as f64;
        let (gh, gw) = (grid_h.max(0) as usize, grid_w.max(0) as usize);
        let n_samples = gh.checked_mul(gw).and_then(|g| g.checked_mul(oh * ow));
        if n_samples.is_none_or(|s| s > kiln_ir::MAX_ELEMENTS) {
            return Err(format!("ROI {r} needs too many sampling points ({gh}x{gw} per bin)"));
        }

        // Bilinear sample positions/weights of every bin, shared by all channels.
        samples.clear();
        for ph in 0..oh {
            for pw in 0..ow {
                for iy in 0..gh {
                    let y = start_h + ph as f64 * bin_h + (iy as f64 + 0.5) * bin_h / grid_h as f64;
                    for ix in 0..gw {
                        let x = start_w + pw as f64 * bin_w + (ix as f64 + 0.5) * bin_w / grid_w as f64;
                        samples.push(Sample::new(y, x, h, w));
                    }
                }
            }
        }
        let per_bin = gh * gw;
        for ch in 0..c {
            let plane = &data[(b as usize * c + ch) * h * w..(b as usize * c + ch + 1) * h * w];
            let dst = &mut out[(r * c + ch) * oh * ow..(r * c + ch + 1) * oh * ow];
            for (bin, d) in dst.iter_mut().enumerate() {
                let ss = &samples[bin * per_bin..(bin + 1) * per_bin];
                *d = if max_mode {
                    // ONNX Runtime's definition: the max over samples of the largest weighted
                    // corner (not of the interpolated value).
                    let mut best: Option<f64> = None;
                    for s in ss {
                        let v = (0..4).map(|k| s.w[k] * plane[s.pos[k]]).fold(f64::NEG_INFINITY, f64::max);
                        best = Some(best.map_or(v, |m: f64| m.max(v)));
                    }
                    best.unwrap_or(0.0)
                } else {
                    ss.iter().map(|s| (0..4).map(|k| s.w[k] * plane[s.pos[k]]).sum::<f64>()).sum::<f64>() / count
                };
            }
        }
    }
    Ok(single(tensor_from_f64(dtype, out_shape, &out, Rounding::HalfEven)?))
}

/// One bilinear sample: four flat positions in the H×W plane and their weights.
struct Sample {
    pos: [usize; 4],
    w: [f64; 4],
}

impl Sample {
    fn new(y: f64, x: f64, h: usize, w: usize) -> Sample {
        // Samples more than one pixel outside the image contribute nothing.
        if y < -1.0 || y > h as f64 || x < -1.0 || x > w as f64 || h == 0 || w == 0 {
            return Sample { pos: [0; 4], w: [0.0; 4] };
        }
        let (mut y, mut x) = (y.max(0.0), x.max(0.0));
        let (mut y_lo, mut x_lo) = (y as usize, x as usize);
        let y_hi = if y_lo >= h - 1 {
            y_lo = h - 1;
            y = y_lo as f64;
            y_lo
        } else {
            y_lo + 1
        };
        let x_hi = if x_lo >= w - 1 {
            x_lo = w - 1;
            x = x_lo as f64;
            x_lo
        } else {
            x_lo + 1
        };
        let (ly, lx) = (y - y_lo as f64, x - x_lo as f64);
        let (hy, hx) = (1.0 - ly, 1.0 - lx);
        Sample {
            pos: [y_lo * w + x_lo, y_lo * w + x_hi, y_hi * w + x_lo, y_hi * w + x_hi],
            w: [hy * hx, hy * lx, ly * hx, ly * lx],
        }
    }
}

/// NonMaxSuppression: per batch and class, greedily keep the highest-scoring boxes whose IoU
/// with every kept box is at most `iou_threshold`. Output rows are [batch, class, box].
pub(super) fn non_max_suppression(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let boxes = tensor_arg(inputs, 0)?;
    let scores = tensor_arg(inputs, 1)?;
    require_float(boxes, "boxes")?;
    require_float(scores, "scores")?;
    let center_point_box = ctx.attrs.int("center_point_box", 0)?;
    if center_point_box != 0 && center_point_box != 1 {
        return Err(format!("center_point_box must be 0 or 1, got {center_point_box}"));
    }
    let &[nb, nboxes, four] = boxes.shape() else {
        return Err(format!("boxes must be 3-D [batch, boxes, 4], got shape {:?}", boxes.shape()));
    };
    let &[sb, nclasses, sboxes] = scores.shape() else {
        return Err(format!("scores must be 3-D [batch, classes, boxes], got shape {:?}", scores.shape()));
    };
    if four != 4 || sb != nb || sboxes != nboxes {
        return Err(format!("boxes {:?} and scores {:?} do not match", boxes.shape(), scores.shape()));
    }
    // Optional scalar inputs; empty tensors count as absent, as in the reference.
    let first = |i: usize| -> Result<Option<f64>, String> {
        Ok(opt_tensor_arg(inputs, i)?.filter(|t| !t.is_empty()).map(|t| t.to_f64_vec()[0]))
    };
    let max_out = match opt_tensor_arg(inputs, 2)?.filter(|t| !t.is_empty()) {
        Some(t) => t.to_i64_vec()[0].max(0) as u64,
        None => 0,
    };
    // The reference works in float32 (the only type the spec allows); doing the same keeps
    // IoU ties at the threshold identical.
    let iou_threshold = first(3)?.unwrap_or(0.0) as f32;
    let score_threshold = first(4)?.map(|v| v as f32);
    let bx: Vec<f32> = boxes.to_f64_vec().into_iter().map(|v| v as f32).collect();
    let sc: Vec<f32> = scores.to_f64_vec().into_iter().map(|v| v as f32).collect();

    let mut selected: Vec<i64> = Vec::new();
    let mut candidates: Vec<(f32, usize)> = Vec::with_capacity(nboxes);
    let mut kept: Vec<usize> = Vec::new();
    for b in 0..nb {
        let batch_boxes = &bx[b * nboxes * 4..(b + 1) * nboxes * 4];
        for cl in 0..nclasses {
            let class_scores = &sc[(b * nclasses + cl) * nboxes..(b * nclasses + cl + 1) * nboxes];
            candidates.clear();
            candidates.extend(
                class_scores
                    .iter()
                    .enumerate()
                    .filter(|(_, &s)| score_threshold.is_none_or(|t| s > t))
                    // + 0.0 turns -0.0 into 0.0 so that the two compare equal below.
                    .map(|(i, &s)| (s + 0.0, i)),
            );
            // Highest score first, NaN scores last; equal scores keep the lower box index
            // first. (A total order: sorting with a partial one may panic.)
            candidates.sort_by(|a, b| a.0.is_nan().cmp(&b.0.is_nan()).then(b.0.total_cmp(&a.0)).then(a.1.cmp(&b.1)));
            kept.clear();
            for &(_, i) in &candidates {
                if kept.len() as u64 >= max_out {
                    break;
                }
                let bi = &batch_boxes[i * 4..i * 4 + 4];
                if kept
                    .iter()
                    .all(|&k| !suppress_by_iou(bi, &batch_boxes[k * 4..k * 4 + 4], center_point_box, iou_threshold))
                {
                    kept.push(i);
                    selected.extend_from_slice(&[b as i64, cl as i64, i as i64]);
                }
            }
        }
    }
    let rows = selected.len() / 3;
    Ok(single(make(vec![rows, 3], selected)?))
}

/// Whether two boxes overlap by more than `threshold` IoU (float32 arithmetic, as ONNX Runtime).
fn suppress_by_iou(b1: &[f32], b2: &[f32], center_point_box: i64, threshold: f32) -> bool {
    let (x1_min, x1_max, y1_min, y1_max, x2_min, x2_max, y2_min, y2_max);
    if center_point_box == 0 {
        // [y1, x1, y2, x2], corners in either order.
        (x1_min, x1_max) = (b1[1].min(b1[3]), b1[1].max(b1[3]));
        (x2_min, x2_max) = (b2[1].min(b2[3]), b2[1].max(b2[3]));
        (y1_min, y1_max) = (b1[0].min(b1[2]), b1[0].max(b1[2]));
        (y2_min, y2_max) = (b2[0].min(b2[2]), b2[0].max(b2[2]));
    } else {
        // [x_center, y_center, width, height].
        (x1_min, x1_max) = (b1[0] - b1[2] / 2.0, b1[0] + b1[2] / 2.0);
        (x2_min, x2_max) = (b2[0] - b2[2] / 2.0, b2[0] + b2[2] / 2.0);
        (y1_min, y1_max) = (b1[1] - b1[3] / 2.0, b1[1] + b1[3] / 2.0);
        (y2_min, y2_max) = (b2[1] - b2[3] / 2.0, b2[1] + b2[3] / 2.0);
    }
    let (ix_min, ix_max) = (x1_min.max(x2_min), x1_max.min(x2_max));
    if ix_max <= ix_min {
        return false;
    }
    let (iy_min, iy_max) = (y1_min.max(y2_min), y1_max.min(y2_max));
    if iy_max <= iy_min {
        return false;
    }
    let inter = (ix_max - ix_min) * (iy_max - iy_min);
    if inter <= 0.0 {
        return false;
    }
    let area1 = (x1_max - x1_min) * (y1_max - y1_min);
    let area2 = (x2_max - x2_min) * (y2_max - y2_min);
    let union = area1 + area2 - inter;
    if area1 <= 0.0 || area2 <= 0.0 || union <= 0.0 {
        return false;
    }
    inter / union > threshold
}
