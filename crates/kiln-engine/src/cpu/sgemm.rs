//! Single-precision matrix multiply through the `gemm` crate (packed, SIMD-dispatched at run
//! time, threaded through rayon), behind a checked safe wrapper.

/// A row-major or transposed view of a matrix: element (r, c) is at `r * row_stride +
/// c * col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Mat<'a> {
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        Mat { data, row_stride: cols, col_stride: 1 }
    }

    pub fn col_major(data: &'a [f32], rows: usize) -> Self {
        Mat { data, row_stride: 1, col_stride: rows }
    }

    /// Whether every element of a `rows × cols` matrix lies inside `data`.
    pub(crate) fn covers(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// `c[m×n] = a[m×k] · b[k×n]` (+ the old `c` when `accumulate`), `c` row-major; split over
/// the current rayon pool when the product is large enough.
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    accumulate: bool,
) -> Result<(), String> {
    if c.len() < m * n {
        return Err(format!("matrix multiply {m}×{k} · {k}×{n}: output of {} elements", c.len()));
    }
    // SAFETY: `c` holds the m×n row-major output and is borrowed mutably for the call.
    unsafe { sgemm_strided(m, n, k, a, b, c.as_mut_ptr(), n, accumulate, true) }
}

/// [`sgemm`] on the calling thread only (for callers that already split work across the pool).
pub(crate) fn sgemm_serial(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32]) -> Result<(), String> {
    if c.len() < m * n {
        return Err(format!("matrix multiply {m}×{k} · {k}×{n}: output of {} elements", c.len()));
    }
    // SAFETY: `c` holds the m×n row-major output and is borrowed mutably for the call.
    unsafe { sgemm_strided(m, n, k, a, b, c.as_mut_ptr(), n, false, false) }
}

/// [`sgemm`] into rows of `c` that are `c_row_stride` apart (a column block of a wider matrix,
/// e.g. one attention head of a packed output), on the calling thread unless `parallel`.
///
/// # Safety
/// `c` must be valid for writes of every `c[r * c_row_stride + j]`, r < m, j < n, and no other
/// thread may touch those elements during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_strided(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: *mut f32,
    c_row_stride: usize,
    accumulate: bool,
    parallel: bool,
) -> Result<(), String> {
    if !a.covers(m, k) || !b.covers(k, n) {
        return Err(format!("matrix multiply {m}×{k} · {k}×{n}: operand sizes do not match"));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                // SAFETY: the caller guarantees row r's n elements are writable.
                unsafe { std::slice::from_raw_parts_mut(c.add(r * c_row_stride), n) }.fill(0.0);
            }
        }
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    // Small products are faster on the calling thread than split across the pool.
    let parallelism = if parallel && threads > 1 && m * n * k >= 1 << 15 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the checks above guarantee every element the product reads lies inside `a` and
    // `b`; the caller guarantees the elements of `c` it writes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            c_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_float64_product_in_every_layout() {
        let (m, n, k) = (7, 9, 13);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
        let want: Vec<f64> =
            (0..m * n).map(|ij| (0..k).map(|p| a[ij / n * k + p] as f64 * b[p * n + ij % n] as f64).sum()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect(); // b transposed, row-major n×k
        for (bm, acc) in [(Mat::row_major(&b, n), false), (Mat::col_major(&bt, k), true)] {
            let mut c = vec![1.0f32; m * n];
            sgemm(m, n, k, Mat::row_major(&a, k), bm, &mut c, acc).unwrap();
            for (got, w) in c.iter().zip(&want) {
                let w = if acc { w + 1.0 } else { *w };
                assert!((*got as f64 - w).abs() < 1e-4, "{got} vs {w}");
            }
        }
        let mut c = vec![0.0; 3];
        assert!(sgemm(m, n, k, Mat::row_major(&a, k), Mat::row_major(&b, n), &mut c, false).is_err());
    }
}

#[cfg(test)]
mod timing {
    /// Not a test: GFLOP/s of the gemm crate on ResNet/BERT shapes, both output layouts
    /// (`cargo test --release -p kiln-engine gemm_rates -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn gemm_rates() {
        for (m, n, k) in [
            (64usize, 3136usize, 576usize),
            (256, 3136, 64),
            (128, 3072, 768),
            (128, 768, 3072),
            (197, 2304, 768),
            (1576, 2304, 768),
        ] {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; k * n];
            let mut c = vec![0f32; m * n];
            for (col_major_out, b_transposed) in [(false, false), (true, false), (false, true)] {
                let mut best = f64::MAX;
                for _ in 0..8 {
                    let t = std::time::Instant::now();
                    // SAFETY: all three buffers hold the full matrices.
                    unsafe {
                        let (cs, rs) = if col_major_out { (m as isize, 1) } else { (1, n as isize) };
                        let (bcs, brs) = if b_transposed { (k as isize, 1) } else { (1, n as isize) };
                        gemm::gemm(
                            m,
                            n,
                            k,
                            c.as_mut_ptr(),
                            cs,
                            rs,
                            false,
                            a.as_ptr(),
                            1,
                            k as isize,
                            b.as_ptr(),
                            bcs,
                            brs,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!(
                    "{m}x{n}x{k} col_major_out={col_major_out} b_transposed={b_transposed}: {:.1} GFLOP/s",
                    2.0 * (m * n * k) as f64 / best / 1e9
                );
            }
            // Two threads: the crate's own split, and column blocks of serial products.
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            for split_columns in [false, true] {
                let mut best = f64::MAX;
                for _ in 0..8 {
                    let t = std::time::Instant::now();
                    pool.install(|| {
                        if split_columns {
                            let width = n.div_ceil(8).next_multiple_of(16);
                            let ptr = c.as_mut_ptr() as usize;
                            rayon::prelude::ParallelIterator::for_each(
                                rayon::prelude::IntoParallelIterator::into_par_iter(0..n.div_ceil(width)),
                                |blk| {
                                    let (j0, nb) = (blk * width, width.min(n - blk * width));
                                    let bm = super::Mat { data: &b[j0..], row_stride: n, col_stride: 1 };
                                    // SAFETY: disjoint column blocks of c.
                                    unsafe {
                                        super::sgemm_strided(
                                            m,
                                            nb,
                                            k,
                                            super::Mat::row_major(&a, k),
                                            bm,
                                            (ptr as *mut f32).add(j0),
                                            n,
                                            false,
                                            false,
                                        )
                                        .unwrap()
                                    };
                                },
                            );
                        } else {
                            super::sgemm(
                                m,
                                n,
                                k,
                                super::Mat::row_major(&a, k),
                                super::Mat::row_major(&b, n),
                                &mut c,
                                false,
                            )
                            .unwrap();
                        }
                    });
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!(
                    "{m}x{n}x{k} 2 threads split_columns={split_columns}: {:.1} GFLOP/s",
                    2.0 * (m * n * k) as f64 / best / 1e9
                );
            }
        }
    }
}
