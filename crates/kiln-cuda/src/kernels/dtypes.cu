
// ==== dtype kernels: ops that move elements whatever their type (see kernels/mod.rs: LIBRARY)

// ---- Trilu: keep the upper (j - i >= k) or lower (j - i <= k) triangle of each matrix ---------
// By element size, so every dtype is covered: zero bits are 0, 0.0 and false in each of them.
template <typename E>
__device__ void trilu_sized(const E* x, E* y, i64 n, i64 rows, i64 cols, i64 k, int upper) {
  GRID_STRIDE(e, n) {
    i64 j = e % cols, i = (e / cols) % rows;
    bool keep = upper ? (j - i >= k) : (j - i <= k);
    y[e] = keep ? x[e] : (E)0;
  }
}
extern "C" __global__ void trilu_1(const unsigned char* x, unsigned char* y, i64 n, i64 rows, i64 cols, i64 k, int upper) { trilu_sized(x, y, n, rows, cols, k, upper); }
extern "C" __global__ void trilu_2(const u16* x, u16* y, i64 n, i64 rows, i64 cols, i64 k, int upper) { trilu_sized(x, y, n, rows, cols, k, upper); }
extern "C" __global__ void trilu_4(const unsigned* x, unsigned* y, i64 n, i64 rows, i64 cols, i64 k, int upper) { trilu_sized(x, y, n, rows, cols, k, upper); }
extern "C" __global__ void trilu_8(const i64* x, i64* y, i64 n, i64 rows, i64 cols, i64 k, int upper) { trilu_sized(x, y, n, rows, cols, k, upper); }

// ---- Dropout: training mode with a nonzero ratio drops at random, which kiln does not do -------
// One thread reads the run-time training_mode (bool, optional) and ratio (any float type, code
// `ratio_type` of cast_any; optional, default 0.5) and sets *err = 2 where the CPU kernel
// refuses: training with a nonzero ratio, or a ratio outside [0, 1).
extern "C" __global__ void dropout_check(const unsigned char* training, const void* ratio, int ratio_type, int* err) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double r = ratio ? load_any(ratio, 0, ratio_type) : 0.5;
  bool train = training && training[0] != 0;
  if (!(r >= 0.0 && r < 1.0) || (train && r != 0.0)) *err = 2;
}
