//! KilnInvertedBottleneck (kiln_ir::inverted_bottleneck) on the CPU: MobileNet's expand →
//! depthwise → project block, NHWC, f32.
//!
//! - `bottleneck-banded`: each task walks a range of output rows of one image, a band of a
//!   few rows at a time: the expand product makes the input rows the band's depthwise filter
//!   needs (rows the previous band already made are kept, moved to the top of the buffer),
//!   the depthwise filter makes the band's rows, and the project product writes the band's
//!   output with bias and residual. The six-times-wide expanded tensor and the depthwise
//!   output exist only a band at a time, in buffers sized for the core's L2, instead of
//!   crossing memory twice each (at batch 8 the largest is 38 MiB). Tasks: images, and enough
//!   row ranges per image to go round the pool (each range's first band also makes the
//!   expanded rows its filter shares with the range above).
//! - `bottleneck-layered`: the three stages one after another, each across the pool, through
//!   whole-tensor buffers, as separate layers would run: where an image's rows are split
//!   between threads (batch 1, small images), banded tasks make again the expanded rows their
//!   ranges share (a 7×7 layer split in two makes 9 expanded rows for 7), and the builder's
//!   timing may prefer this.
//!
//! Both products run on kiln's packed tile with the 1×1 weights packed at build time (stored
//! so in the plan, like `conv-nhwc-packed`'s).

use super::conv::{checked_nhwc_epilogue, Geometry};
use super::conv_nhwc::{check_packed, pack_weight, packed_len};
use super::depthwise_nhwc::{self, Filter};
use super::io::{f32_input, opt_f32_input, own_packed_weight, weight_panels, write_f32_output, OutPtr};
use super::microkernel;
use super::packed_gemm::{gemm, Epilogue, Operand};
use super::sgemm::Mat;
use crate::backend::{LayerDesc, LayerIo, LayerKernel, Tactic};
use crate::engine::AlignedBytes;
use kiln_ir::inverted_bottleneck::{stage_attrs, Stage, OP, RESIDUAL, X};
use kiln_ir::{Activation, Attributes, DType, ValueType};
use rayon::prelude::*;
use std::sync::Mutex;

pub const BANDED: &str = "bottleneck-banded";
pub const LAYERED: &str = "bottleneck-layered";

/// What a band's buffers (its expanded input rows and depthwise output) may take: about a
/// quarter of a Zen 4 / Intel server core's L2, leaving room for the weights.
const BAND_BYTES: usize = 256 << 10;

/// The tactics for a KilnInvertedBottleneck layer at its opt shapes.
pub(super) fn tactics(desc: &LayerDesc) -> Vec<Tactic> {
    if desc.layer.op != OP || !microkernel::available() {
        return Vec::new();
    }
    let Some(Some(ValueType::Tensor(x))) = desc.input_types.get(X) else { return Vec::new() };
    let Some(xs) = x.shape.as_deref().and_then(kiln_ir::concrete) else { return Vec::new() };
    let weight = |stage: Stage| {
        desc.weights.get(stage.weight_input()).copied().flatten().filter(|w| w.dtype == DType::F32).map(|w| w.shape)
    };
    let has_expand = desc.layer.inputs.get(Stage::Expand.weight_input()).copied().flatten().is_some();
    let (Some(wd), Some(wp), we) = (weight(Stage::Depthwise), weight(Stage::Project), weight(Stage::Expand)) else {
        return Vec::new();
    };
    if x.dtype != DType::F32 || has_expand != we.is_some() {
        return Vec::new();
    }
    let Ok(stages) = Stages::new(&desc.layer.attrs, &xs, we, wd, wp) else { return Vec::new() };
    let wide = stages.depthwise.n * stages.depthwise.h * stages.depthwise.w * stages.depthwise.cin;
    let narrow = stages.depthwise.n * stages.depthwise.oh * stages.depthwise.ow * stages.depthwise.cout;
    vec![
        Tactic::new(BANDED),
        Tactic { name: LAYERED.to_string(), workspace_bytes: 4 * (wide * stages.expand.is_some() as usize + narrow) },
    ]
}

/// The 1×1 weights in the packed tile's layout: (input slot, packed values) for expand (if
/// any) and project.
pub(super) fn pack_weights(desc: &LayerDesc) -> Result<Vec<(usize, Vec<f32>)>, String> {
    let mut out = Vec::new();
    for stage in [Stage::Expand, Stage::Project] {
        let i = stage.weight_input();
        let Some(w) = desc.weights.get(i).copied().flatten() else { continue };
        let values: &[f32] = bytemuck::try_cast_slice(w.bytes).map_err(|e| format!("weight bytes: {e:?}"))?;
        out.push((i, pack_weight(values, w.shape)?));
    }
    Ok(out)
}

/// The three convolutions' geometries (NHWC inputs).
struct Stages {
    expand: Option<Geometry>,
    depthwise: Geometry,
    project: Geometry,
}

impl Stages {
    fn new(attrs: &Attributes, x: &[usize], we: Option<&[usize]>, wd: &[usize], wp: &[usize]) -> Result<Self, String> {
        let geo = |stage: Stage, x: &[usize], w: &[usize]| {
            Geometry::from_nhwc(&stage_attrs(attrs, stage), x, w).map_err(|e| format!("{} stage: {e}", stage.name()))
        };
        let expand = we.map(|w| geo(Stage::Expand, x, w)).transpose()?;
        let wide = match &expand {
            Some(e) => vec![e.n, e.oh, e.ow, e.cout],
            None => x.to_vec(),
        };
        let depthwise = geo(Stage::Depthwise, &wide, wd)?;
        let project = geo(Stage::Project, &[depthwise.n, depthwise.oh, depthwise.ow, depthwise.cout], wp)?;
        let pointwise = |g: &Geometry| g.group == 1 && g.is_pointwise();
        if expand.as_ref().is_some_and(|e| !pointwise(e)) || !pointwise(&project) {
            return Err("the expand and project stages must be 1×1 convolutions of one group".into());
        }
        if !depthwise.is_depthwise() {
            return Err("the middle stage must be a depthwise convolution".into());
        }
        Ok(Stages { expand, depthwise, project })
    }
}

/// The layered tactic's whole-tensor buffers, shared by every block of every engine: taken
/// for a run and given back, so the blocks of a network reuse the same memory (warm in cache,
/// as the activation arena's is) and runs after the first allocate nothing.
static LAYERED_BUFFERS: Mutex<Vec<AlignedBytes>> = Mutex::new(Vec::new());

fn with_layered_buffer<R>(len: usize, f: impl FnOnce(&mut [f32]) -> Result<R, String>) -> Result<R, String> {
    let mut buf = LAYERED_BUFFERS.lock().ok().and_then(|mut p| p.pop()).unwrap_or(AlignedBytes::empty());
    let r = f32s(&mut buf, len).and_then(f);
    if let Ok(mut p) = LAYERED_BUFFERS.lock() {
        p.push(buf);
    }
    r
}

/// `len` f32 values of `buf`, 64-byte aligned like the activation arena (a 16-lane load of a
/// channel run never straddles two cache lines), the buffer remade larger when it is short.
/// A buffer larger than `MAX_BUFFER_BYTES` is refused (a forged plan's shapes could ask for
/// any size; the builder's default workspace is as large).
fn f32s(buf: &mut AlignedBytes, len: usize) -> Result<&mut [f32], String> {
    let bytes = len.saturating_mul(4);
    if bytes > MAX_BUFFER_BYTES {
        return Err(format!("the block needs a {} MiB buffer, more than {} MiB", bytes >> 20, MAX_BUFFER_BYTES >> 20));
    }
    if buf.as_slice().len() < bytes {
        *buf = AlignedBytes::zeroed(bytes);
    }
    bytemuck::try_cast_slice_mut(&mut buf.as_mut_slice()[..bytes]).map_err(|e| format!("block buffer: {e:?}"))
}

/// The most scratch memory one block may take.
const MAX_BUFFER_BYTES: usize = 1 << 30;

/// `n` rounded up to whole 64-byte lines of f32 (so a buffer split there stays aligned).
fn whole_lines(n: usize) -> usize {
    n.div_ceil(16) * 16
}

thread_local! {
    /// Per thread: the band buffers of the task it runs (no task runs parallel work inside, so
    /// no other task can start on this thread while they are borrowed). One per thread, shared
    /// by every block, stays in the core's L2.
    static BAND_BUFFER: std::cell::RefCell<AlignedBytes> = const { std::cell::RefCell::new(AlignedBytes::empty()) };
}

pub(crate) struct InvertedBottleneckKernel {
    banded: bool,
    attrs: Attributes,
    activations: [Option<Activation>; 3],
    /// The packed 1×1 weights (expand, project), when the plan holds the ONNX layout.
    packed: [Option<Vec<f32>>; 2],
}

impl InvertedBottleneckKernel {
    pub fn new(desc: &LayerDesc, tactic: &str) -> Result<Self, String> {
        let mut activations = [None; 3];
        for (a, stage) in activations.iter_mut().zip(Stage::ALL) {
            *a = Activation::from_attrs(&stage_attrs(&desc.layer.attrs, stage))
                .map_err(|e| format!("{} stage: {e}", stage.name()))?;
        }
        let mut packed = [None, None];
        for (p, stage) in packed.iter_mut().zip([Stage::Expand, Stage::Project]) {
            if let Some(w) = desc.weights.get(stage.weight_input()).copied().flatten() {
                *p = own_packed_weight(&w, packed_len(w.shape)?, |values| pack_weight(values, w.shape))?;
            } else if desc.layer.inputs.get(stage.weight_input()).copied().flatten().is_some() {
                return Err(format!("{tactic} needs the {} stage's weight to be constant", stage.name()));
            }
        }
        Ok(InvertedBottleneckKernel { banded: tactic == BANDED, attrs: desc.layer.attrs.clone(), activations, packed })
    }
}

/// One stage's packed 1×1 weight (checked against its geometry) and bias.
struct Pointwise<'a> {
    g: &'a Geometry,
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    act: Option<Activation>,
}

impl Pointwise<'_> {
    /// `out[pixels × cout] = act(x[pixels × cin] · W + bias + residual)` on this thread (or
    /// across the pool when `parallel`), rows of `x` and `out` contiguous.
    fn run(
        &self,
        pixels: usize,
        x: &[f32],
        out: &mut [f32],
        residual: Option<&[f32]>,
        parallel: bool,
    ) -> Result<(), String> {
        let (cin, cout) = (self.g.cin, self.g.cout);
        if x.len() < pixels * cin || out.len() < pixels * cout || residual.is_some_and(|r| r.len() < pixels * cout) {
            return Err("a stage's buffer is smaller than its pixels".into());
        }
        let epilogue = Epilogue { col_bias: self.bias, residual, activation: self.act, ..Default::default() };
        // SAFETY: AVX-512 checked by the kernel; `out` holds the pixels × cout values this call
        // alone writes (a &mut borrow).
        unsafe {
            gemm(
                pixels,
                cout,
                cin,
                &Operand::Matrix(Mat::row_major(x, cin)),
                &Operand::Packed(self.weight),
                OutPtr(out.as_mut_ptr()),
                cout,
                &epilogue,
                parallel,
            )
        }
    }
}

impl LayerKernel for InvertedBottleneckKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        if !microkernel::available() {
            return Err("the inverted-bottleneck kernels need AVX-512".into());
        }
        let (x, x_shape) = f32_input(io, X)?;
        let expand_weight = match io.inputs.get(Stage::Expand.weight_input()) {
            Some(Some(_)) => Some(weight_panels(io, Stage::Expand.weight_input(), self.packed[0].as_deref())?),
            _ => None,
        };
        let (wd, wd_shape) = f32_input(io, Stage::Depthwise.weight_input())?;
        let (wp, wp_shape) = weight_panels(io, Stage::Project.weight_input(), self.packed[1].as_deref())?;
        let s = Stages::new(&self.attrs, x_shape, expand_weight.map(|w| w.1), wd_shape, wp_shape)?;
        let bias = |stage: Stage| opt_f32_input(io, stage.bias_input()).map(|b| b.map(|b| b.0));
        let (be, bd, bp) = (bias(Stage::Expand)?, bias(Stage::Depthwise)?, bias(Stage::Project)?);
        let residual = opt_f32_input(io, RESIDUAL)?;
        // Shapes, biases and the residual, checked per stage as the Convs' kernels would.
        if let Some(e) = &s.expand {
            checked_nhwc_epilogue(e, be, None).map_err(|m| format!("expand stage: {m}"))?;
        }
        checked_nhwc_epilogue(&s.depthwise, bd, None).map_err(|m| format!("depthwise stage: {m}"))?;
        let (out_shape, residual) =
            checked_nhwc_epilogue(&s.project, bp, residual).map_err(|m| format!("project stage: {m}"))?;
        let d = &s.depthwise;
        if wd.len() != d.cout * d.kh * d.kw {
            return Err(format!("depthwise weight of {} values for shape {wd_shape:?}", wd.len()));
        }
        let first = s.expand.as_ref().unwrap_or(d);
        if x.len() < first.n * first.h * first.w * first.cin {
            return Err(format!("input of {} values for shape {x_shape:?}", x.len()));
        }
        let expand = match (&s.expand, expand_weight) {
            (Some(g), Some((w, shape))) => {
                check_packed(w, shape)?;
                Some(Pointwise { g, weight: w, bias: be, act: self.activations[0] })
            }
            _ => None,
        };
        check_packed(wp, wp_shape)?;
        let project = Pointwise { g: &s.project, weight: wp, bias: bp, act: self.activations[2] };
        let filter = Filter::new(d, wd, bd, self.activations[1]);
        let block = Block { expand, depthwise: d, filter, project, x, residual };
        write_f32_output(io, 0, out_shape, |out| if self.banded { block.banded(out) } else { block.layered(out) })
    }
}

/// One invocation's stages and tensors.
struct Block<'a> {
    expand: Option<Pointwise<'a>>,
    depthwise: &'a Geometry,
    filter: Filter,
    project: Pointwise<'a>,
    x: &'a [f32],
    residual: Option<&'a [f32]>,
}

impl Block<'_> {
    /// The stages one after another over the whole batch, each across the pool.
    fn layered(&self, out: &mut [f32]) -> Result<(), String> {
        let d = self.depthwise;
        let (wide, narrow) = (d.n * d.h * d.w * d.cin, d.n * d.oh * d.ow * d.cout);
        let expanded = self.expand.is_some() as usize * whole_lines(wide);
        with_layered_buffer(expanded + narrow, |buf| {
            let (e_buf, d_buf) = buf.split_at_mut(expanded);
            let source: &[f32] = match &self.expand {
                Some(e) => {
                    e.run(d.n * d.h * d.w, self.x, e_buf, None, true)?;
                    e_buf
                }
                None => self.x,
            };
            depthwise_nhwc::run(&self.filter, d, source, d_buf, None, true);
            self.project.run(d.n * d.oh * d.ow, d_buf, out, self.residual, true)
        })
    }

    /// Band by band: tasks of consecutive output rows of one image.
    fn banded(&self, out: &mut [f32]) -> Result<(), String> {
        let d = self.depthwise;
        let threads = rayon::current_num_threads();
        // A task that expands rows makes again the rows it shares with the range above, so
        // ranges are as few as the pool needs; without that, twice as many balance better.
        let expands = self.expand.is_some();
        let per_thread = if expands { 1 } else { 2 };
        let ranges_per_image = (per_thread * threads).div_ceil(d.n).clamp(1, d.oh.max(1));
        let rows_per_range = d.oh.div_ceil(ranges_per_image);
        let ranges = d.oh.div_ceil(rows_per_range.max(1));
        // Output rows per band: the expanded input rows and the depthwise output within
        // BAND_BYTES, at least one row.
        let row_bytes = 4 * d.cin * (d.stride[0] * d.w + d.ow);
        let band = (BAND_BYTES / row_bytes.max(1)).clamp(1, rows_per_range.max(1));
        let reach = (d.kh - 1) * d.dilation[0] + 1;
        let in_rows = ((band - 1) * d.stride[0] + reach).min(d.h);
        // The expanded rows' buffer (none without expand) ends on a line, so the other is aligned.
        let e_len = if expands { whole_lines(in_rows * d.w * d.cin) } else { 0 };
        let d_len = band * d.ow * d.cout;
        let out_ptr = OutPtr(out.as_mut_ptr());
        let out_len = out.len();
        (0..d.n * ranges).into_par_iter().try_for_each(|task| {
            let (img, r) = (task / ranges, task % ranges);
            let (o0, o1) = (r * rows_per_range, ((r + 1) * rows_per_range).min(d.oh));
            BAND_BUFFER.with(|cell| {
                let mut buf = cell.try_borrow_mut().map_err(|_| "band buffer already in use on this thread")?;
                let (e_buf, d_buf) = f32s(&mut buf, e_len + d_len)?.split_at_mut(e_len);
                let mut walk = RangeWalk { block: self, img, e_buf, d_buf, kept: (0, 0) };
                for a in (o0..o1).step_by(band) {
                    let b = (a + band).min(o1);
                    let pixel0 = (img * d.oh + a) * d.ow;
                    let len = (b - a) * d.ow * self.project.g.cout;
                    if (pixel0 * self.project.g.cout + len) > out_len {
                        return Err("the output is smaller than the block's".to_string());
                    }
                    // SAFETY: output rows a..b of image img: this task's alone, inside `out`
                    // (checked above), which outlives the tasks.
                    let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(pixel0 * self.project.g.cout), len) };
                    walk.band(a, b, out)?;
                }
                Ok(())
            })
        })
    }
}

/// One task's walk down its output rows, keeping the expanded rows the next band shares.
struct RangeWalk<'a, 'b> {
    block: &'a Block<'a>,
    img: usize,
    /// Expanded input rows `kept.0..kept.1` of the image, from the top (unused without expand).
    e_buf: &'b mut [f32],
    d_buf: &'b mut [f32],
    kept: (usize, usize),
}

impl RangeWalk<'_, '_> {
    /// Output rows `a..b` of the image into `out`.
    fn band(&mut self, a: usize, b: usize, out: &mut [f32]) -> Result<(), String> {
        let blk = self.block;
        let d = blk.depthwise;
        let (s, reach) = (d.stride[0], (d.kh - 1) * d.dilation[0] + 1);
        // Input rows the band's filter reads (inside the image).
        let lo = (a * s).saturating_sub(d.pad_begin[0]);
        let hi = ((b - 1) * s + reach).saturating_sub(d.pad_begin[0]).min(d.h);
        let row = d.w * d.cin;
        let source: &[f32] = match &blk.expand {
            None => &blk.x[(self.img * d.h + lo) * row..(self.img * d.h + hi) * row],
            Some(e) => {
                let (k0, k1) = self.kept;
                // Rows already made that this band reads again move to the top.
                let from = if lo >= k0 && lo < k1 && k1 <= hi {
                    self.e_buf.copy_within((lo - k0) * row..(k1 - k0) * row, 0);
                    k1
                } else {
                    lo
                };
                let x_row = d.w * e.g.cin;
                let x_rows = &blk.x[(self.img * d.h + from) * x_row..(self.img * d.h + hi) * x_row];
                e.run((hi - from) * d.w, x_rows, &mut self.e_buf[(from - lo) * row..(hi - lo) * row], None, false)?;
                self.kept = (lo, hi);
                &self.e_buf[..(hi - lo) * row]
            }
        };
        // The band as a convolution of its own: one image of rows lo..hi, output rows a..b
        // (the top padding what is left of it above row lo).
        let mut g = d.clone();
        g.n = 1;
        g.h = hi - lo;
        g.oh = b - a;
        g.pad_begin[0] = (d.pad_begin[0] + lo) - a * s;
        let d_out = &mut self.d_buf[..(b - a) * d.ow * d.cout];
        depthwise_nhwc::run(&blk.filter, &g, source, d_out, None, false);
        let pixel0 = (self.img * d.oh + a) * d.ow;
        let residual = blk.residual.map(|r| &r[pixel0 * blk.project.g.cout..]);
        blk.project.run((b - a) * d.ow, d_out, out, residual, false)
    }
}
