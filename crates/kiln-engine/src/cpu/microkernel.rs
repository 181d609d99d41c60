//! The AVX-512 register tile of kiln's own packed matrix multiply (packed_gemm.rs).
//!
//! One call computes a whole `MR × (16·NV)` block of `C = A · B` over the full depth `k`, in
//! registers, and stores it once with the epilogue fused (bias, residual, ReLU/Clip): there is
//! no second pass over the output and no partial sums written back. Operands are packed:
//! - `a`: `[k][MR]`, the MR rows of one row panel interleaved (weights pre-packed once, or
//!   activations packed per call);
//! - `b`: `[k][16·NV]`, one column panel (an im2col block, a pre-packed weight panel).
//!
//! Each depth step loads NV vectors of `b` and broadcasts MR values of `a` into `MR · NV`
//! independent multiply-add chains (24 for 8 × 48), enough to cover the FMA latency on Zen 4
//! and Intel cores alike while leaving registers for the operands.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows per register tile (the broadcast operand).
pub(crate) const MR: usize = 8;
/// f32 lanes per vector.
pub(crate) const LANES: usize = 16;
/// Vectors per tile row at most: the widest panel is `LANES · MAX_NV` columns.
pub(crate) const MAX_NV: usize = 3;
/// Columns of a full column panel.
pub(crate) const NR: usize = LANES * MAX_NV;

/// What the tile's store adds and clamps: `out = clamp(acc + row_bias[r] + col_bias[j] +
/// residual[r][j])`, each part optional. Pointers are to the tile's own first row/column.
#[derive(Clone, Copy)]
pub(crate) struct TileEpilogue {
    pub row_bias: *const f32,
    pub col_bias: *const f32,
    /// The residual tile, rows `residual_stride` apart (null: none).
    pub residual: *const f32,
    pub residual_stride: usize,
    pub clamp: Option<(f32, f32)>,
    /// Store whole aligned vectors past the caches (an output too large to stay there until
    /// its next reader): no read of each line before it is written.
    pub stream: bool,
}

/// Whether this CPU runs the AVX-512 tile.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::vecmath::level() == super::vecmath::Level::Avx512
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Where a tile's A operand lies.
#[derive(Clone, Copy)]
pub(crate) enum ALayout {
    /// A packed row panel: `[k][MR]`.
    Panel,
    /// `rows` plain rows read in place, `lda` apart (an NHWC image is its own 1×1
    /// convolution's A; MatMul activations need no packing).
    Rows { lda: usize },
    /// Rows read in place from an NHWC image, each in `segments` runs of `run` values
    /// `stride` apart, row r's first run at `starts[r]`: the patches of a convolution's
    /// output pixels (a run per filter row, `stride` the image's row length), with no
    /// unrolled copy. Depth step p of row r is at `starts[r] + (p / run) · stride + p % run`.
    Patches { starts: [usize; MR], run: usize, stride: usize, segments: usize },
}

/// `C[rows × cols] = epilogue(A · B_panel)` for one tile: `rows ≤ MR`, `cols ≤ NR`; A as
/// `a_layout` says; depth step p of `b` is the `cols` values at `b + p · ldb` (a packed panel:
/// `ldb` = `16 · ceil(cols / 16)`; a plain row-major matrix: its row length).
///
/// # Safety
/// [`available`] must be true; `a` must hold `k · MR` values (a panel) or be readable at
/// `r · lda + p` for r < rows, p < k (rows); `b` be readable at `p · ldb + j` for p < k, j < cols;
/// `c` must be writable at `r · ldc + j` for r < rows, j < cols, and the epilogue's pointers
/// readable at the same tile positions.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile(
    k: usize,
    a: *const f32,
    a_layout: ALayout,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    epi: &TileEpilogue,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match a_layout {
            ALayout::Panel => {
                let walk = AWalk { offsets: [0; MR], step: MR, run: k, stride: 0 };
                match cols.div_ceil(LANES) {
                    1 => tile_nv::<1, true, false>(k, a, &walk, b, ldb, c, ldc, rows, cols, epi),
                    2 => tile_nv::<2, true, false>(k, a, &walk, b, ldb, c, ldc, rows, cols, epi),
                    _ => tile_nv::<3, true, false>(k, a, &walk, b, ldb, c, ldc, rows, cols, epi),
                }
            }
            ALayout::Rows { lda } => {
                // Rows past `rows` repeat the last one (in bounds; their results are not stored).
                let offsets: [usize; MR] = std::array::from_fn(|r| r.min(rows.max(1) - 1) * lda);
                let walk = AWalk { offsets, step: 1, run: k, stride: 0 };
                match cols.div_ceil(LANES) {
                    1 => tile_nv::<1, false, false>(k, a, &walk, b, ldb, c, ldc, rows, cols, epi),
                    2 => tile_nv::<2, false, false>(k, a, &walk, b, ldb, c, ldc, rows, cols, epi),
                    _ => tile_nv::<3, false, false>(k, a, &walk, b, ldb, c, ldc, rows, cols, epi),
                }
            }
            ALayout::Patches { starts, run, stride, segments } => {
                debug_assert_eq!(run * segments, k, "patch runs cover the depth");
                let offsets: [usize; MR] = std::array::from_fn(|r| starts[r.min(rows.max(1) - 1)]);
                let walk = AWalk { offsets, step: 1, run, stride };
                match cols.div_ceil(LANES) {
                    1 => tile_nv::<1, false, true>(k, a, &walk, b, ldb, c, ldc, rows, cols, epi),
                    2 => tile_nv::<2, false, true>(k, a, &walk, b, ldb, c, ldc, rows, cols, epi),
                    _ => tile_nv::<3, false, true>(k, a, &walk, b, ldb, c, ldc, rows, cols, epi),
                }
            }
        }
    }
}

/// How the tile walks A: per row an offset from `a` (a panel's rows are interleaved: offset
/// r, step MR), `step` apart per depth step; with PATCHES, in runs of `run` steps whose starts
/// are `stride` apart.
struct AWalk {
    offsets: [usize; MR],
    step: usize,
    run: usize,
    stride: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_nv<const NV: usize, const PANEL: bool, const PATCHES: bool>(
    k: usize,
    a: *const f32,
    walk: &AWalk,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    epi: &TileEpilogue,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let (mut a, mut b) = (a, b);
    let a_offsets = walk.offsets;
    let a_step = walk.step;
    // The last vector of a row of `b` loads only the tile's columns: `b` may be a plain matrix
    // read in place, whose row ends there.
    let tail = cols - (NV - 1) * LANES;
    let last: __mmask16 = if tail >= LANES { 0xffff } else { (1u16 << tail) - 1 };
    // SAFETY: the caller guarantees `k` depth steps of both operands; prefetches never fault.
    unsafe {
        // Ask for the tile's output (and residual) lines now: a large output (a batch's early
        // layer writes tens of MiB) is not in cache, and its stores would otherwise wait for
        // each line at the end; the depth loop hides the fetch.
        for r in 0..rows {
            for v in 0..NV {
                if !epi.stream {
                    _mm_prefetch::<_MM_HINT_ET0>(c.wrapping_add(r * ldc + v * LANES) as *const i8);
                }
                if !epi.residual.is_null() {
                    _mm_prefetch::<_MM_HINT_T0>(
                        epi.residual.wrapping_add(r * epi.residual_stride + v * LANES) as *const i8
                    );
                }
            }
        }
        // One depth step: NV vectors of `b` times the MR rows' values at `a`.
        let step = |a: *const f32, b: *const f32, acc: &mut [[__m512; NV]; MR]| {
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = if v + 1 == NV {
                    _mm512_maskz_loadu_ps(last, b.add(v * LANES))
                } else {
                    _mm512_loadu_ps(b.add(v * LANES))
                };
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(if PANEL { r } else { a_offsets[r] }));
                for v in 0..NV {
                    acc[v] = _mm512_fmadd_ps(av, bv[v], acc[v]);
                }
            }
        };
        if PATCHES {
            for segment in 0..k / walk.run {
                let mut a = a.add(segment * walk.stride);
                for _ in 0..walk.run {
                    step(a, b, &mut acc);
                    a = a.add(1);
                    b = b.add(ldb);
                }
            }
        } else {
            for _ in 0..k {
                step(a, b, &mut acc);
                a = a.add(a_step);
                b = b.add(ldb);
            }
        }
        let (lo, hi) = epi.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let row_bias = if epi.row_bias.is_null() { 0.0 } else { *epi.row_bias.add(r) };
            for (v, &x) in acc.iter().enumerate() {
                let j = v * LANES;
                if j >= cols {
                    break;
                }
                let mask: __mmask16 = if cols - j >= LANES { 0xffff } else { (1u16 << (cols - j)) - 1 };
                let mut x = _mm512_add_ps(x, _mm512_set1_ps(row_bias));
                if !epi.col_bias.is_null() {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, epi.col_bias.add(j)));
                }
                if !epi.residual.is_null() {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, epi.residual.add(r * epi.residual_stride + j)));
                }
                if epi.clamp.is_some() {
                    // vmaxps/vminps return their second operand when either is NaN: with x
                    // second, NaN stays NaN, as in the scalar clip.
                    x = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
                }
                let at = c.add(r * ldc + j);
                if epi.stream && mask == 0xffff && (at as usize).is_multiple_of(64) {
                    _mm512_stream_ps(at, x);
                } else {
                    _mm512_mask_storeu_ps(at, mask, x);
                }
            }
        }
    }
}
