//! kiln's own packed f32 matrix multiply: `C = epilogue(A · B)` from panels packed for the
//! AVX-512 register tile (microkernel.rs), with the constant operand — a layer's weight —
//! packed once, when the kernel is made, instead of on every call as a general GEMM must.
//!
//! - Row panels (`A`, the broadcast operand): `MR` rows interleaved per depth step,
//!   `[panel][k][MR]`, the last panel zero-padded. Convolution weights (`cout × K`) are packed
//!   so; MatMul activations are packed so per call, a chunk of rows at a time.
//! - Column panels (`B`, the vector operand): `[panel][k][w]` with `w = 16·ceil(cols/16)` ≤ NR.
//!   MatMul weights are packed so once; convolution inputs per call, one panel at a time
//!   straight from the image (im2col writes the panel: no separate unrolled matrix).
//!
//! Work is split into (row chunk × column chunk) units across the rayon pool; each unit walks
//! its column panels and, per panel, every row panel, so the packed column panel is read from
//! L1/L2 by every tile that needs it.

use super::epilogue::clamp_of;
use super::io::OutPtr;
use super::microkernel::{self, ALayout, TileEpilogue, LANES, MR, NR};
use super::sgemm::Mat;
use kiln_ir::Activation;
use rayon::prelude::*;

/// Width of column panel `p` of an `n`-column matrix, in packed columns (whole vectors).
pub(crate) fn panel_width(n: usize, p: usize) -> usize {
    (n - p * NR).min(NR).div_ceil(LANES) * LANES
}

/// Values [`pack_rows`] makes for an `m × k` matrix.
pub(crate) fn packed_rows_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * MR * k
}

/// Values [`pack_columns`] makes for a `k × n` matrix.
pub(crate) fn packed_columns_len(k: usize, n: usize) -> usize {
    (0..n.div_ceil(NR)).map(|p| k * panel_width(n, p)).sum()
}

/// Row panels of an `m × k` matrix: `[panel][k][MR]`.
pub(crate) fn pack_rows(a: Mat, m: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; packed_rows_len(m, k)];
    pack_rows_into(a, 0, m, k, &mut out);
    out
}

/// Rows `[r0, r1)` of `a` as row panels into `out` (`ceil((r1 − r0)/MR) · k · MR` values).
fn pack_rows_into(a: Mat, r0: usize, r1: usize, k: usize, out: &mut [f32]) {
    for (pi, panel) in out.chunks_mut(k * MR).enumerate().take((r1 - r0).div_ceil(MR)) {
        let rows = (r1 - r0 - pi * MR).min(MR);
        for r in 0..MR {
            if r >= rows {
                for p in 0..k {
                    panel[p * MR + r] = 0.0;
                }
                continue;
            }
            let base = (r0 + pi * MR + r) * a.row_stride;
            if a.col_stride == 1 {
                for (p, &v) in a.data[base..base + k].iter().enumerate() {
                    panel[p * MR + r] = v;
                }
            } else {
                for p in 0..k {
                    panel[p * MR + r] = a.data[base + p * a.col_stride];
                }
            }
        }
    }
}

/// Column panels of a `k × n` matrix: `[panel][k][w]`.
pub(crate) fn pack_columns(b: Mat, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; packed_columns_len(k, n)];
    pack_columns_into(b, k, n, &mut out);
    out
}

/// [`pack_columns`] into `out` (at least [`packed_columns_len`] values). Only the matrix's
/// columns are written: a panel's padding past them is never read (the tile masks it off).
pub(crate) fn pack_columns_into(b: Mat, k: usize, n: usize, out: &mut [f32]) {
    let mut at = 0;
    for p in 0..n.div_ceil(NR) {
        let (j0, w) = (p * NR, panel_width(n, p));
        let cols = (n - j0).min(NR);
        for kk in 0..k {
            let dst = &mut out[at + kk * w..at + kk * w + cols];
            for (j, d) in dst.iter_mut().enumerate() {
                *d = b.data[kk * b.row_stride + (j0 + j) * b.col_stride];
            }
        }
        at += k * w;
    }
}

/// Writes one column panel of B: `fill(j0, cols, w, panel)`.
pub(crate) type PanelFill<'a> = dyn Fn(usize, usize, usize, &mut [f32]) + Sync + 'a;

/// Writes rows `[r0, r1)` of A, row-major (`k` apart): `fill(r0, r1, rows)`.
pub(crate) type RowFill<'a> = dyn Fn(usize, usize, &mut [f32]) + Sync + 'a;

/// Where a product's operand comes from.
pub(crate) enum Operand<'a> {
    /// Packed when the kernel was made ([`pack_rows`] for A, [`pack_columns`] for B).
    Packed(&'a [f32]),
    /// A plain matrix, read in place when row-major (A: packed per call, a chunk of rows at
    /// a time, otherwise; B must be row-major).
    Matrix(Mat<'a>),
    /// Filled per column panel by the caller: `fill(j0, cols, w, panel)` writes the `k × cols`
    /// block starting at column `j0` into `panel`, rows `w` apart (B only).
    Panels(&'a PanelFill<'a>),
    /// Filled per chunk of rows by the caller (A only): an NHWC convolution's patches, each
    /// pixel's a few contiguous runs of its input's channels.
    Rows(&'a RowFill<'a>),
    /// An NHWC convolution's patches read in place where a tile's pixels lie inside the
    /// image, filled by the caller only for tiles that touch the padding (A only).
    Patches(&'a PatchRows<'a>),
}

/// A convolution's patch matrix over its NHWC image `x` (see [`ALayout::Patches`]).
pub(crate) struct PatchRows<'a> {
    pub x: &'a [f32],
    /// `starts(i0, starts)`: where each row `i0 + r`'s first run starts in `x`, for r <
    /// `starts.len()`; false when a row's patch reaches into the padding. A start must leave
    /// every run of its row inside `x`.
    pub starts: &'a (dyn Fn(usize, &mut [usize]) -> bool + Sync),
    pub run: usize,
    pub stride: usize,
    pub segments: usize,
    /// Unrolls rows, zeros for padding, as [`Operand::Rows`] does.
    pub fill: &'a RowFill<'a>,
}

impl PatchRows<'_> {
    /// Rows `i0..i0 + rows` as one tile reads them: in place when every row's patch is inside
    /// the image, else unrolled into `buf` (k values apart).
    fn tile_rows(&self, i0: usize, rows: usize, k: usize, buf: &mut [f32]) -> (*const f32, ALayout) {
        let mut starts = [0usize; MR];
        let span = (self.segments - 1) * self.stride + self.run;
        if !(self.starts)(i0, &mut starts[..rows]) || starts[..rows].iter().any(|&s| s + span > self.x.len()) {
            (self.fill)(i0, i0 + rows, &mut buf[..rows * k]);
            return (buf.as_ptr(), ALayout::Rows { lda: k });
        }
        let layout = ALayout::Patches { starts, run: self.run, stride: self.stride, segments: self.segments };
        (self.x.as_ptr(), layout)
    }
}

/// The fused epilogue of a whole product (bias per row or per column, a residual with C's
/// layout, an activation).
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    pub row_bias: Option<&'a [f32]>,
    pub col_bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
    pub activation: Option<Activation>,
}

thread_local! {
    /// Per thread: the packed row chunk and column panel of the unit it runs.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// How a product is cut into units (chunks of row panels × chunks of column panels) across
/// the pool: the cut with the shortest estimated time, counting
/// - the arithmetic of the busiest thread: units are dealt out whole, so 7 equal units on two
///   threads take as long as 8 (a 49 × 1280 product in 7 chunks of 4 column panels ran 16
///   panels on one thread and 11 on the other);
/// - the bytes moved: each unit reads its rows of A once per column panel it covers (from
///   cache: the rows are few) and every column panel of B in its range once, so B crosses the
///   memory bus once per row chunk and A once per column chunk. A late convolution (49 pixels
///   × 4608 × 512) then splits its 9 MiB weight across the threads instead of streaming it
///   once per few rows; an early one (3136 pixels, a 150 KiB weight) splits its pixels.
fn split(m: usize, n: usize, k: usize, threads: usize, fill: (bool, bool)) -> (usize, usize) {
    let (row_panels, col_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    if threads <= 1 {
        return (1, 1);
    }
    // Unrolling an operand per unit (im2col, packing) costs about as much again as reading it.
    let a_cost = m * k * if fill.0 { 2 } else { 1 };
    let b_cost = k * n * if fill.1 { 2 } else { 1 };
    // Cycles: a tile is 24 FMAs per depth step at about one a cycle; a value from outside the
    // core's caches about one cycle, the threads fetching side by side.
    let tile_cycles = 24 * k;
    let limit = 4 * threads;
    let mut best = (usize::MAX, 1, 1);
    for rows_per in (1..=row_panels).rev() {
        let row_chunks = row_panels.div_ceil(rows_per);
        if row_chunks > limit || row_panels.div_ceil(row_chunks) != rows_per {
            continue;
        }
        for cols_per in (1..=col_panels).rev() {
            let col_chunks = col_panels.div_ceil(cols_per);
            if col_chunks > limit || col_panels.div_ceil(col_chunks) != cols_per {
                continue;
            }
            let busiest = (row_chunks * col_chunks).div_ceil(threads) * rows_per * cols_per;
            let moved = (row_chunks * b_cost + col_chunks * a_cost) / threads;
            let time = busiest * tile_cycles + moved;
            if time < best.0 {
                best = (time, row_chunks, col_chunks);
            }
        }
    }
    (best.1, best.2)
}

/// Ask for rows `[s0, s1)` of an A read in place (or packed) ahead of their tiles: a batch's
/// early layer streams megabytes of A from memory, eight rows (a few KiB) per tile, and the
/// tile would otherwise wait on each line as its depth loop reaches it.
fn prefetch_rows(a: &Operand, s0: usize, s1: usize, k: usize) {
    let (data, from, len) = match a {
        Operand::Packed(p) => (*p, s0 * k, (s1.saturating_sub(s0)).div_ceil(MR) * MR * k),
        Operand::Matrix(mat) if mat.col_stride == 1 => {
            (mat.data, s0 * mat.row_stride, s1.saturating_sub(s0) * mat.row_stride)
        }
        _ => return,
    };
    let end = (from + len).min(data.len());
    #[cfg(target_arch = "x86_64")]
    for at in (from.min(end)..end).step_by(16) {
        // SAFETY: a prefetch of an address inside `data`; it never faults and changes nothing.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(data[at..].as_ptr() as *const i8)
        };
    }
}

/// Per-core L2 the blocking plans for (Zen 4: 1 MiB; Intel server cores: 1–2 MiB).
const L2_BYTES: usize = 1 << 20;

/// Last-level cache the streaming-store choice plans for (a Zen 4 CCD's L3: 32 MiB).
const LLC_BYTES: usize = 32 << 20;

/// Rows `[s0, s1)` of A as the tile reads them (`s0 − r0` a multiple of MR for a packed A): a
/// slice starting at row s0, its layout, and the distance between consecutive rows' starts
/// in a panel-aligned walk (`k` for panels, the row stride for rows).
fn rows_of<'b>(a: &'b Operand, s0: usize, s1: usize, k: usize, a_buf: &'b mut Vec<f32>) -> (&'b [f32], ALayout, usize) {
    match a {
        Operand::Packed(p) => (&p[s0 * k..], ALayout::Panel, k),
        Operand::Matrix(mat) if mat.col_stride == 1 => {
            (&mat.data[s0 * mat.row_stride..], ALayout::Rows { lda: mat.row_stride }, mat.row_stride)
        }
        Operand::Matrix(mat) => {
            let len = (s1 - s0).div_ceil(MR) * MR * k;
            if a_buf.len() < len {
                a_buf.resize(len, 0.0);
            }
            pack_rows_into(*mat, s0, s1, k, a_buf);
            (&a_buf[..], ALayout::Panel, k)
        }
        Operand::Rows(fill) => {
            let len = (s1 - s0) * k;
            if a_buf.len() < len {
                a_buf.resize(len, 0.0);
            }
            fill(s0, s1, &mut a_buf[..len]);
            (&a_buf[..], ALayout::Rows { lda: k }, k)
        }
        Operand::Panels(_) | Operand::Patches(_) => unreachable!("checked by gemm"),
    }
}

/// `C[m × n] = epilogue(A · B)`, C's rows `ldc` apart from `c`, across the current pool.
///
/// # Safety
/// [`microkernel::available`] must be true, `c` valid for writes of `c[r·ldc + j]` (r < m,
/// j < n) that no other thread touches during the call, and a residual (if any) must hold
/// `(m − 1)·ldc + n` values.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &Operand,
    b: &Operand,
    c: OutPtr,
    ldc: usize,
    epilogue: &Epilogue,
    parallel: bool,
) -> Result<(), String> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let col_panels = n.div_ceil(NR);
    match a {
        Operand::Packed(p) if p.len() < packed_rows_len(m, k) => return Err("packed A is too small".into()),
        Operand::Matrix(mat) if !mat.covers(m, k) => return Err("A is smaller than its shape".into()),
        Operand::Panels(_) => return Err("A cannot be filled by panels".into()),
        Operand::Patches(p) if p.run * p.segments != k => return Err("patch runs do not cover the depth".into()),
        _ => {}
    }
    match b {
        Operand::Packed(p) if p.len() < packed_columns_len(k, n) => return Err("packed B is too small".into()),
        Operand::Matrix(mat) if mat.col_stride != 1 || !mat.covers(k, n) => {
            return Err("B read in place must be a row-major matrix covering its shape".into())
        }
        Operand::Rows(_) | Operand::Patches(_) => return Err("B cannot be filled by rows".into()),
        _ => {}
    }
    if epilogue.row_bias.is_some_and(|v| v.len() < m) || epilogue.col_bias.is_some_and(|v| v.len() < n) {
        return Err("bias shorter than the product".into());
    }
    if epilogue.residual.is_some_and(|r| r.len() < (m - 1) * ldc + n) {
        return Err("residual shorter than the product".into());
    }
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let fill_a = matches!(a, Operand::Rows(_)) || matches!(a, Operand::Matrix(mat) if mat.col_stride != 1);
    let fill_b = matches!(b, Operand::Panels(_));
    let (row_chunks, col_chunks) = split(m, n, k, threads, (fill_a, fill_b));
    let rows_per_chunk = m.div_ceil(MR).div_ceil(row_chunks) * MR;
    let panels_per_chunk = col_panels.div_ceil(col_chunks);
    let row_chunks = m.div_ceil(rows_per_chunk);
    let col_chunks = col_panels.div_ceil(panels_per_chunk);
    // An output larger than half the last-level cache would be evicted before its next reader
    // anyway: stored past the caches, no line is read in before it is written (ResNet-50's
    // batch-8 1×1 expansions, 25 MiB each: 11.6 → 9.9 ms). Not with an activation applied
    // after the store, which reads the tile back.
    let stream = m * n * 4 > LLC_BYTES / 2 && clamp_of(epilogue.activation).is_some() == epilogue.activation.is_some();
    // ReLU/Clip go into the tile's store; any other activation runs on the tile after it.
    let clamp = clamp_of(epilogue.activation);
    let other_act = epilogue.activation.filter(|_| clamp.is_none());
    // Where each column panel of a packed B starts.
    let mut panel_at = vec![0usize; col_panels + 1];
    for q in 0..col_panels {
        panel_at[q + 1] = panel_at[q] + k * panel_width(n, q);
    }
    let unit = |u: usize| {
        let (rc, cc) = (u / col_chunks, u % col_chunks);
        let (r0, r1) = (rc * rows_per_chunk, ((rc + 1) * rows_per_chunk).min(m));
        let (q0, q1) = (cc * panels_per_chunk, ((cc + 1) * panels_per_chunk).min(col_panels));
        // Column panel q of a B that needs no filling: the slice and its row stride.
        let fixed_panel = |q: usize| -> (&[f32], usize) {
            match b {
                Operand::Packed(p) => (&p[panel_at[q]..panel_at[q + 1]], panel_width(n, q)),
                // Read in place: the tile loads row segments `row_stride` apart.
                Operand::Matrix(mat) => (&mat.data[q * NR..], mat.row_stride),
                Operand::Panels(_) | Operand::Rows(_) | Operand::Patches(_) => unreachable!("filled per unit"),
            }
        };
        // One tile: rows i0.. of A (at `a_tile`, as `layout`) times column panel q.
        let tile = |a_tile: *const f32, layout: ALayout, i0: usize, q: usize, panel: &[f32], ldb: usize| {
            let (rows, j0) = ((r1 - i0).min(MR), q * NR);
            let cols = (n - j0).min(NR);
            let at = |v: Option<&[f32]>, i: usize| v.map_or(std::ptr::null(), |v| v[i..].as_ptr());
            let epi = TileEpilogue {
                row_bias: at(epilogue.row_bias, i0),
                col_bias: at(epilogue.col_bias, j0),
                residual: at(epilogue.residual, i0 * ldc + j0),
                residual_stride: ldc,
                clamp,
                stream,
            };
            // SAFETY: A holds k depth steps of these rows and the panel k of its columns
            // (checked above); the tile's outputs (rows i0.., columns j0..) belong to this
            // unit alone (caller).
            unsafe {
                microkernel::tile(k, a_tile, layout, panel.as_ptr(), ldb, c.at(i0 * ldc + j0), ldc, rows, cols, &epi)
            };
            if let Some(act) = other_act {
                for r in 0..rows {
                    // SAFETY: a row of this unit's own tile, just written.
                    let seg = unsafe { std::slice::from_raw_parts_mut(c.at((i0 + r) * ldc + j0), cols) };
                    super::epilogue::activate(seg, act);
                }
            }
        };
        SCRATCH.with(|s| {
            let (a_buf, b_buf) = &mut *s.borrow_mut();
            // Many rows of deep A and a B that fits in L2 (an early convolution's pixels, a
            // batch's): each MR rows of A (prepared just then, while in L1) meet every column
            // panel, instead of the whole chunk of A streaming past once per panel.
            let b_bytes = (q0..q1).map(|q| k * panel_width(n, q) * 4).sum::<usize>();
            let rows_first =
                !matches!(b, Operand::Panels(_)) && (r1 - r0) * k * 4 > L2_BYTES / 2 && b_bytes <= L2_BYTES * 3 / 4;
            if let Operand::Patches(p) = a {
                // Per tile: in place, or unrolled (once, for every column panel) where it
                // touches the padding.
                let tiles = (r1 - r0).div_ceil(MR);
                if rows_first {
                    if a_buf.len() < MR * k {
                        a_buf.resize(MR * k, 0.0);
                    }
                    for i0 in (r0..r1).step_by(MR) {
                        let (a_tile, layout) = p.tile_rows(i0, (r1 - i0).min(MR), k, a_buf);
                        for q in q0..q1 {
                            let (panel, ldb) = fixed_panel(q);
                            tile(a_tile, layout, i0, q, panel, ldb);
                        }
                    }
                    return;
                }
                if a_buf.len() < tiles * MR * k {
                    a_buf.resize(tiles * MR * k, 0.0);
                }
                let mut reads = Vec::with_capacity(tiles);
                for (t, buf) in a_buf.chunks_mut(MR * k).take(tiles).enumerate() {
                    let i0 = r0 + t * MR;
                    reads.push(p.tile_rows(i0, (r1 - i0).min(MR), k, buf));
                }
                for q in q0..q1 {
                    let (panel, ldb) = fixed_panel(q);
                    for (t, &(a_tile, layout)) in reads.iter().enumerate() {
                        tile(a_tile, layout, r0 + t * MR, q, panel, ldb);
                    }
                }
                return;
            }
            if rows_first {
                for i0 in (r0..r1).step_by(MR) {
                    prefetch_rows(a, i0 + MR, (i0 + 2 * MR).min(r1), k);
                    let (a_rows, layout, _) = rows_of(a, i0, (i0 + MR).min(r1), k, a_buf);
                    for q in q0..q1 {
                        let (panel, ldb) = fixed_panel(q);
                        tile(a_rows.as_ptr(), layout, i0, q, panel, ldb);
                    }
                }
                return;
            }
            let (a_rows, layout, row_step) = rows_of(a, r0, r1, k, a_buf);
            for q in q0..q1 {
                let (panel, ldb) = match b {
                    Operand::Panels(fill) => {
                        let (j0, w) = (q * NR, panel_width(n, q));
                        if b_buf.len() < k * w {
                            b_buf.resize(k * w, 0.0);
                        }
                        fill(j0, (n - j0).min(NR), w, &mut b_buf[..k * w]);
                        (&b_buf[..k * w], w)
                    }
                    _ => fixed_panel(q),
                };
                for i0 in (r0..r1).step_by(MR) {
                    tile(a_rows[(i0 - r0) * row_step..].as_ptr(), layout, i0, q, panel, ldb);
                }
            }
        });
    };
    let units = row_chunks * col_chunks;
    // Streaming stores are weakly ordered: fenced before the unit counts as done, so whoever
    // reads the output after the join sees them.
    let unit = |u: usize| {
        unit(u);
        #[cfg(target_arch = "x86_64")]
        if stream {
            // SAFETY: a store fence; no memory access of its own.
            unsafe { std::arch::x86_64::_mm_sfence() };
        }
    };
    if units > 1 && threads > 1 {
        (0..units).into_par_iter().for_each(unit);
    } else {
        (0..units).for_each(unit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every combination of packed/per-call operands, tails in both dimensions and the
    /// epilogue, against a float64 product.
    #[test]
    fn matches_a_float64_product() {
        if !microkernel::available() {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        // The last output is larger than half the last-level cache: streamed.
        for (m, n, k) in
            [(1, 1, 1), (8, 48, 16), (13, 49, 37), (70, 100, 5), (130, 17, 64), (9, 200, 300), (2048, 2100, 3)]
        {
            let a = random(m * k, 1 + m as u64);
            let b = random(k * n, 2 + n as u64);
            let bias = random(m.max(n), 3);
            let residual = random(m * n, 4);
            let want = |i: usize, j: usize| (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum::<f64>();
            let packed_a = pack_rows(Mat::row_major(&a, k), m, k);
            let packed_b = pack_columns(Mat::row_major(&b, n), k, n);
            let fill = |j0: usize, cols: usize, w: usize, panel: &mut [f32]| {
                for p in 0..k {
                    panel[p * w..p * w + cols].copy_from_slice(&b[p * n + j0..p * n + j0 + cols]);
                }
            };
            for (case, (ao, bo)) in [
                (Operand::Packed(&packed_a), Operand::Panels(&fill)),
                (Operand::Matrix(Mat::row_major(&a, k)), Operand::Packed(&packed_b)),
            ]
            .into_iter()
            .enumerate()
            {
                for parallel in [false, true] {
                    let epi = if case == 0 {
                        Epilogue {
                            row_bias: Some(&bias),
                            residual: Some(&residual),
                            activation: Some(Activation::Relu),
                            ..Default::default()
                        }
                    } else {
                        Epilogue { col_bias: Some(&bias), activation: Some(Activation::GeluErf), ..Default::default() }
                    };
                    let mut c = vec![f32::NAN; m * n];
                    unsafe { gemm(m, n, k, &ao, &bo, OutPtr(c.as_mut_ptr()), n, &epi, parallel).unwrap() };
                    for i in 0..m {
                        for j in 0..n {
                            let w = if case == 0 {
                                (want(i, j) + bias[i] as f64 + residual[i * n + j] as f64).max(0.0)
                            } else {
                                let x = want(i, j) + bias[j] as f64;
                                0.5 * x * (1.0 + kiln_ir::activation::erf(x / std::f64::consts::SQRT_2, 1e-15))
                            };
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - w).abs() < 1e-4 * (1.0 + w.abs()),
                                "{m}x{n}x{k} case {case} [{i},{j}]: {got} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Not a test: GFLOP/s of the packed tile against the gemm crate on ResNet/BERT shapes
    /// (`cargo test --release -p kiln-engine packed_rates -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn packed_rates() {
        if !microkernel::available() {
            return;
        }
        for (m, n, k) in [
            (64usize, 3136usize, 576usize),
            (256, 3136, 64),
            (64, 3136, 256),
            (256, 196, 2304),
            (512, 49, 4608),
            (2048, 49, 512),
            (128, 3072, 768),
            (128, 768, 3072),
            (197, 2304, 768),
            (197, 3072, 768),
            (197, 768, 3072),
            (1576, 768, 768),
        ] {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; k * n];
            let mut c = vec![0f32; m * n];
            let packed_a = pack_rows(Mat::row_major(&a, k), m, k);
            let packed_b = pack_columns(Mat::row_major(&b, n), k, n);
            let fill = |j0: usize, cols: usize, w: usize, panel: &mut [f32]| {
                for p in 0..k {
                    panel[p * w..p * w + cols].copy_from_slice(&b[p * n + j0..p * n + j0 + cols]);
                }
            };
            let rate = |f: &mut dyn FnMut()| {
                let mut best = f64::MAX;
                for _ in 0..10 {
                    let t = std::time::Instant::now();
                    f();
                    best = best.min(t.elapsed().as_secs_f64());
                }
                2.0 * (m * n * k) as f64 / best / 1e9
            };
            let ptr = OutPtr(c.as_mut_ptr());
            let conv = rate(&mut || unsafe {
                gemm(m, n, k, &Operand::Packed(&packed_a), &Operand::Panels(&fill), ptr, n, &Epilogue::default(), false)
                    .unwrap()
            });
            let direct = rate(&mut || unsafe {
                gemm(
                    m,
                    n,
                    k,
                    &Operand::Packed(&packed_a),
                    &Operand::Matrix(Mat::row_major(&b, n)),
                    ptr,
                    n,
                    &Epilogue::default(),
                    false,
                )
                .unwrap()
            });
            let linear = rate(&mut || unsafe {
                gemm(
                    m,
                    n,
                    k,
                    &Operand::Matrix(Mat::row_major(&a, k)),
                    &Operand::Packed(&packed_b),
                    ptr,
                    n,
                    &Epilogue::default(),
                    false,
                )
                .unwrap()
            });
            let crate_rate = rate(&mut || {
                super::super::sgemm::sgemm_serial(m, n, k, Mat::row_major(&a, k), Mat::row_major(&b, n), &mut c)
                    .unwrap()
            });
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            let linear2 = rate(&mut || {
                pool.install(|| unsafe {
                    gemm(
                        m,
                        n,
                        k,
                        &Operand::Matrix(Mat::row_major(&a, k)),
                        &Operand::Packed(&packed_b),
                        ptr,
                        n,
                        &Epilogue::default(),
                        true,
                    )
                    .unwrap()
                })
            });
            println!(
                "{m}x{n}x{k}: packed A {conv:.1} (B in place {direct:.1}), packed B {linear:.1} (2 threads {linear2:.1}), gemm crate {crate_rate:.1} GFLOP/s"
            );
        }
    }
}
