// kiln's hand-written CUDA kernels, compiled by NVRTC at build time together with the kernels
// generated for the engine's fused element-wise layers (elementwise.rs), for the device's own
// architecture. Each kernel exists once per storage type of float tensors, `_f32`, `_f16` and
// `_bf16` (the engine's precision); arithmetic is in fp32 (accumulation and statistics too).
// No CUDA headers are needed: half and bfloat16 conversions are single PTX instructions.

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

typedef unsigned short u16;
typedef long long i64;

__device__ __forceinline__ float h2f(u16 x) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x)); return f; }
__device__ __forceinline__ u16 f2h(float f) { u16 x; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(x) : "f"(f)); return x; }
__device__ __forceinline__ float b2f(u16 x) { return __uint_as_float(((unsigned)x) << 16); }
__device__ __forceinline__ u16 f2b(float f) { u16 x; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(x) : "f"(f)); return x; }

struct F32 {
  static __device__ __forceinline__ float ld(const void* p, i64 i) { return ((const float*)p)[i]; }
  static __device__ __forceinline__ void st(void* p, i64 i, float v) { ((float*)p)[i] = v; }
};
struct F16 {
  static __device__ __forceinline__ float ld(const void* p, i64 i) { return h2f(((const u16*)p)[i]); }
  static __device__ __forceinline__ void st(void* p, i64 i, float v) { ((u16*)p)[i] = f2h(v); }
};
struct BF16 {
  static __device__ __forceinline__ float ld(const void* p, i64 i) { return b2f(((const u16*)p)[i]); }
  static __device__ __forceinline__ void st(void* p, i64 i, float v) { ((u16*)p)[i] = f2b(v); }
};

// One extern "C" entry point per storage type, so the host finds kernels by plain names.
#define KILN_INSTANTIATE(NAME, PARAMS, ARGS) \
  extern "C" __global__ void NAME##_f32 PARAMS { NAME<F32> ARGS; } \
  extern "C" __global__ void NAME##_f16 PARAMS { NAME<F16> ARGS; } \
  extern "C" __global__ void NAME##_bf16 PARAMS { NAME<BF16> ARGS; }

// One extern "C" entry point per element size (NAME_1, _2, _4, _8), for kernels that only move
// elements whatever their type.
#define KILN_BY_SIZE_TYPE_1 unsigned char
#define KILN_BY_SIZE_TYPE_2 u16
#define KILN_BY_SIZE_TYPE_4 unsigned
#define KILN_BY_SIZE_TYPE_8 unsigned long long
#define KILN_BY_SIZE(NAME, PARAMS, ARGS) \
  extern "C" __global__ void NAME##_1 PARAMS { NAME<KILN_BY_SIZE_TYPE_1> ARGS; } \
  extern "C" __global__ void NAME##_2 PARAMS { NAME<KILN_BY_SIZE_TYPE_2> ARGS; } \
  extern "C" __global__ void NAME##_4 PARAMS { NAME<KILN_BY_SIZE_TYPE_4> ARGS; } \
  extern "C" __global__ void NAME##_8 PARAMS { NAME<KILN_BY_SIZE_TYPE_8> ARGS; }

#define GRID_STRIDE(i, n) for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// ---- activations: kiln_ir::Activation, codes as in activation_code() on the Rust side --------
__device__ __forceinline__ float apply_act(int act, float x, float p0, float p1) {
  switch (act) {
    case 1: return fmaxf(x, 0.0f);
    case 2: return fminf(fmaxf(x, p0), p1);
    case 3: return 1.0f / (1.0f + expf(-x));
    case 4: return x / (1.0f + expf(-x));
    case 5: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case 6: { float u = 0.7978845608028654f * (x + 0.044715f * x * x * x); return 0.5f * x * (1.0f + tanhf(u)); }
    case 7: return x * fminf(fmaxf(x / 6.0f + 0.5f, 0.0f), 1.0f);
    case 8: return fminf(fmaxf(p0 * x + p1, 0.0f), 1.0f);
    case 9: return x >= 0.0f ? x : p0 * x;
    case 10: return tanhf(x);
    default: return x;
  }
}

// ---- what the generated element-wise kernels share -------------------------------------------
// Per input, its strides in elements per output dimension (0 where it broadcasts).
struct Str8 { i64 s[8]; };
// Offset of output element i in an input with strides t (output shape `shape`, rank `rank`).
__device__ __forceinline__ i64 bcast_offset(i64 i, int rank, const Str8& shape, const Str8& t) {
  i64 rem = i, off = 0;
  for (int k = rank - 1; k >= 0; --k) { i64 c = rem % shape.s[k]; rem /= shape.s[k]; off += c * t.s[k]; }
  return off;
}
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || b != b) ? __int_as_float(0x7fc00000) : fmaxf(a, b); }
__device__ __forceinline__ float nan_min(float a, float b) { return (a != a || b != b) ? __int_as_float(0x7fc00000) : fminf(a, b); }

// Float → integer as kiln-cpu's Cast (compiled C on x86-64, numpy's astype): truncation toward
// zero; NaN and out-of-range values give the converting instruction's minimum. 8/16-bit and
// int32 targets go through int, u32 and i64 through i64, u64 through its own rule.
__device__ __forceinline__ int kiln_f2i32(double v) { return (v > -2147483649.0 && v < 2147483648.0) ? (int)v : (-2147483647 - 1); }
__device__ __forceinline__ i64 kiln_f2i64(double v) {
  return (v >= -9223372036854775808.0 && v < 9223372036854775808.0) ? (i64)v : (-9223372036854775807LL - 1);
}
__device__ __forceinline__ unsigned long long kiln_f2u64(double v) {
  return (v >= 9223372036854775808.0 && v < 18446744073709551616.0) ? (unsigned long long)v : (unsigned long long)kiln_f2i64(v);
}

// ==== kernels (above: the prelude generated kernels share) ====

// ---- the epilogue of a convolution or matrix product, in place on its output -----------------
// y = act(alpha * y + beta * bias + residual). bias_mode 0: none; 1: one value per column (the
// last dim, `cols` of them); 2: one per channel of NCHW (`cols` channels of `inner` = H*W
// elements); 3: a tensor of y's shape; 4: one scalar; 5: one per row (`cols` columns per row).
template <class S>
__device__ void epilogue(void* y, i64 n, float alpha, float beta, const void* bias, int bias_mode, i64 cols,
                         i64 inner, const void* res, int act, float p0, float p1) {
  GRID_STRIDE(i, n) {
    float v = alpha * S::ld(y, i);
    if (bias_mode == 1) v += beta * S::ld(bias, i % cols);
    else if (bias_mode == 2) v += beta * S::ld(bias, (i / inner) % cols);
    else if (bias_mode == 3) v += beta * S::ld(bias, i);
    else if (bias_mode == 4) v += beta * S::ld(bias, 0);
    else if (bias_mode == 5) v += beta * S::ld(bias, i / cols);
    if (res) v += S::ld(res, i);
    S::st(y, i, apply_act(act, v, p0, p1));
  }
}
KILN_INSTANTIATE(epilogue,
  (void* y, i64 n, float alpha, float beta, const void* bias, int bias_mode, i64 cols, i64 inner, const void* res, int act, float p0, float p1),
  (y, n, alpha, beta, bias, bias_mode, cols, inner, res, act, p0, p1))

// ---- block reductions -------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}
// Sum (or max) over the block; every thread gets the result. blockDim.x is a multiple of 32.
__device__ float block_reduce(float v, bool is_max) {
  __shared__ float part[32];
  __shared__ float total;
  v = is_max ? warp_max(v) : warp_sum(v);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < nw ? part[lane] : (is_max ? -INFINITY : 0.0f);
    w = is_max ? warp_max(w) : warp_sum(w);
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}

// ---- LayerNormalization / RMSNormalization over the trailing `cols` elements of each row ------
// Two passes over the row (mean, then centred variance; RMS: no mean), fp32 statistics, as the
// reference kernels compute them. gamma/beta hold `cols` values (or, with *_full, x's shape);
// mean_out/inv_out (optional) receive each row's mean and 1/sqrt(var + eps).
template <class S>
__device__ void layer_norm(const void* x, const void* gamma, const void* beta, void* y, i64 cols, float eps,
                           int gamma_full, int beta_full, void* mean_out, void* inv_out, int rms) {
  i64 row = blockIdx.x;
  i64 base = row * cols;
  float mean = 0.0f;
  if (!rms) {
    float s = 0.0f;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += S::ld(x, base + c);
    mean = block_reduce(s, false) / (float)cols;
  }
  float q = 0.0f;
  for (i64 c = threadIdx.x; c < cols; c += blockDim.x) { float d = S::ld(x, base + c) - mean; q += d * d; }
  float inv = rsqrtf(block_reduce(q, false) / (float)cols + eps);
  for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = (S::ld(x, base + c) - mean) * inv * S::ld(gamma, gamma_full ? base + c : c);
    if (beta) v += S::ld(beta, beta_full ? base + c : c);
    S::st(y, base + c, v);
  }
  if (threadIdx.x == 0) {
    if (mean_out) S::st(mean_out, row, mean);
    if (inv_out) S::st(inv_out, row, inv);
  }
}
KILN_INSTANTIATE(layer_norm,
  (const void* x, const void* gamma, const void* beta, void* y, i64 cols, float eps, int gamma_full, int beta_full, void* mean_out, void* inv_out, int rms),
  (x, gamma, beta, y, cols, eps, gamma_full, beta_full, mean_out, inv_out, rms))

// ---- fill: every element of y set to one value (Pad's border) ---------------------------------
template <class S>
__device__ void fill(void* y, i64 n, float v) { GRID_STRIDE(i, n) S::st(y, i, v); }
KILN_INSTANTIATE(fill, (void* y, i64 n, float v), (y, n, v))

// ---- Softmax over rows: y = softmax(scale * x + mask) -----------------------------------------
// mask (optional, storage type) is read at m_off(row) + col * m_col, where row = ((b*H + h)*Sq +
// q): strides mb, mh, mq per index of b/h/q (0 where the mask broadcasts). For a plain Softmax
// the row is split with H = Sq = 1.
template <class S>
__device__ void softmax_rows(const void* x, void* y, i64 cols, float scale, const void* mask, i64 heads, i64 sq,
                             i64 mb, i64 mh, i64 mq, i64 mcol) {
  i64 row = blockIdx.x;
  i64 base = row * cols;
  i64 moff = 0;
  if (mask) {
    i64 q = row % sq, h = (row / sq) % heads, b = row / (sq * heads);
    moff = b * mb + h * mh + q * mq;
  }
  float m = -INFINITY;
  for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = scale * S::ld(x, base + c);
    if (mask) v += S::ld(mask, moff + c * mcol);
    m = fmaxf(m, v);
  }
  m = block_reduce(m, true);
  float s = 0.0f;
  for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = scale * S::ld(x, base + c);
    if (mask) v += S::ld(mask, moff + c * mcol);
    s += (m == -INFINITY) ? 0.0f : expf(v - m);
  }
  s = block_reduce(s, false);
  for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = scale * S::ld(x, base + c);
    if (mask) v += S::ld(mask, moff + c * mcol);
    S::st(y, base + c, (m == -INFINITY) ? __int_as_float(0x7fc00000) : expf(v - m) / s);
  }
}
KILN_INSTANTIATE(softmax_rows,
  (const void* x, void* y, i64 cols, float scale, const void* mask, i64 heads, i64 sq, i64 mb, i64 mh, i64 mq, i64 mcol),
  (x, y, cols, scale, mask, heads, sq, mb, mh, mq, mcol))

// ---- 2-D pooling over NCHW (MaxPool, AveragePool) ----------------------------------------------
// is_max: max over the window (padding never wins); otherwise the average, dividing by the whole
// window when count_include_pad, else by the in-bounds elements.
template <class S>
__device__ void pool2d(const void* x, void* y, i64 nc, i64 h, i64 w, i64 oh, i64 ow, int kh, int kw, int sh, int sw,
                       int ph, int pw, int dh, int dw, int is_max, int count_include_pad) {
  i64 n = nc * oh * ow;
  GRID_STRIDE(i, n) {
    i64 ox = i % ow, oy = (i / ow) % oh, p = i / (ow * oh);
    const i64 base = p * h * w;
    float acc = is_max ? -INFINITY : 0.0f;
    int cnt = 0;
    for (int ky = 0; ky < kh; ++ky) {
      i64 iy = oy * sh - ph + ky * dh;
      if (iy < 0 || iy >= h) continue;
      for (int kx = 0; kx < kw; ++kx) {
        i64 ix = ox * sw - pw + kx * dw;
        if (ix < 0 || ix >= w) continue;
        float v = S::ld(x, base + iy * w + ix);
        acc = is_max ? fmaxf(acc, v) : acc + v;
        ++cnt;
      }
    }
    if (!is_max) acc /= (float)(count_include_pad ? kh * kw : (cnt > 0 ? cnt : 1));
    S::st(y, i, acc);
  }
}
KILN_INSTANTIATE(pool2d,
  (const void* x, void* y, i64 nc, i64 h, i64 w, i64 oh, i64 ow, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, int is_max, int count_include_pad),
  (x, y, nc, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, is_max, count_include_pad))

// ---- GlobalAveragePool / GlobalMaxPool: one block per (n, c) -----------------------------------
template <class S>
__device__ void global_pool(const void* x, void* y, i64 inner, int is_max) {
  i64 row = blockIdx.x;
  float acc = is_max ? -INFINITY : 0.0f;
  for (i64 i = threadIdx.x; i < inner; i += blockDim.x) {
    float v = S::ld(x, row * inner + i);
    acc = is_max ? fmaxf(acc, v) : acc + v;
  }
  acc = block_reduce(acc, is_max != 0);
  if (threadIdx.x == 0) S::st(y, row, is_max ? acc : acc / (float)inner);
}
KILN_INSTANTIATE(global_pool, (const void* x, void* y, i64 inner, int is_max), (x, y, inner, is_max))

// ---- Gather along one axis with int64 (or int32) indices ----------------------------------------
// out[o, j, i] = data[o, idx[j], i]; negative indices count from the end; an index out of range
// sets *err (checked by the host after the run) and writes zeros.
extern "C" __global__ void gather_bytes(const unsigned char* data, const void* idx, int idx_is_i32, unsigned char* out,
                                        i64 outer, i64 nidx, i64 axis_len, i64 inner_bytes, int* err) {
  i64 n = outer * nidx * inner_bytes;
  GRID_STRIDE(i, n) {
    i64 b = i % inner_bytes, j = (i / inner_bytes) % nidx, o = i / (inner_bytes * nidx);
    i64 k = idx_is_i32 ? (i64)((const int*)idx)[j] : ((const i64*)idx)[j];
    if (k < 0) k += axis_len;
    if (k < 0 || k >= axis_len) { out[i] = 0; if (err) *err = 1; continue; }
    out[i] = data[(o * axis_len + k) * inner_bytes + b];
  }
}
// The same for rows of 4-byte-aligned width (embedding tables): 4 bytes per thread.
extern "C" __global__ void gather_words(const unsigned* data, const void* idx, int idx_is_i32, unsigned* out,
                                        i64 outer, i64 nidx, i64 axis_len, i64 inner_words, int* err) {
  i64 n = outer * nidx * inner_words;
  GRID_STRIDE(i, n) {
    i64 b = i % inner_words, j = (i / inner_words) % nidx, o = i / (inner_words * nidx);
    i64 k = idx_is_i32 ? (i64)((const int*)idx)[j] : ((const i64*)idx)[j];
    if (k < 0) k += axis_len;
    if (k < 0 || k >= axis_len) { out[i] = 0; if (err) *err = 1; continue; }
    out[i] = data[(o * axis_len + k) * inner_words + b];
  }
}

// ---- strided copy: Transpose, Split, Concat pieces, Expand, contiguous copies (up to 8 dims) ----
// Element i of the copied block (of shape `shape`) is read at src[sum c_k * src_stride_k] and
// written at dst[sum c_k * dst_stride_k], c = i's coordinates in `shape`.
struct Dims8 { i64 shape[8]; i64 src_stride[8]; i64 dst_stride[8]; };
template <typename E>
__device__ void copy_strided(const E* src, E* dst, i64 n, int rank, Dims8 d) {
  GRID_STRIDE(i, n) {
    i64 rem = i, so = 0, dof = 0;
    for (int k = rank - 1; k >= 0; --k) {
      i64 c = rem % d.shape[k];
      rem /= d.shape[k];
      so += c * d.src_stride[k];
      dof += c * d.dst_stride[k];
    }
    dst[dof] = src[so];
  }
}
extern "C" __global__ void copy_strided_1(const unsigned char* s, unsigned char* d, i64 n, int rank, Dims8 dims) { copy_strided(s, d, n, rank, dims); }
extern "C" __global__ void copy_strided_2(const u16* s, u16* d, i64 n, int rank, Dims8 dims) { copy_strided(s, d, n, rank, dims); }
extern "C" __global__ void copy_strided_4(const unsigned* s, unsigned* d, i64 n, int rank, Dims8 dims) { copy_strided(s, d, n, rank, dims); }
extern "C" __global__ void copy_strided_8(const i64* s, i64* d, i64 n, int rank, Dims8 dims) { copy_strided(s, d, n, rank, dims); }

// ---- Cast between element types (codes: kiln_cuda::kernels::dtype_code) -----------------------
// As kiln-cpu's Cast: integers convert between themselves exactly (wrapping to the target width),
// floats into integers as kiln_f2i32/kiln_f2i64/kiln_f2u64, integers into f32 with one rounding,
// anything nonzero (NaN included) into true.
__device__ __forceinline__ double load_any(const void* p, i64 i, int t) {
  switch (t) {
    case 0: return ((const float*)p)[i];
    case 1: return h2f(((const u16*)p)[i]);
    case 2: return b2f(((const u16*)p)[i]);
    case 3: return ((const double*)p)[i];
    case 4: return (double)((const i64*)p)[i];
    case 5: return (double)((const int*)p)[i];
    case 6: return (double)((const unsigned char*)p)[i];
    case 7: return (double)((const signed char*)p)[i];
    case 8: return (double)((const unsigned char*)p)[i];
    case 9: return (double)((const short*)p)[i];
    case 10: return (double)((const unsigned short*)p)[i];
    case 11: return (double)((const unsigned*)p)[i];
    case 12: return (double)((const unsigned long long*)p)[i];
    default: return 0.0;
  }
}
__device__ __forceinline__ bool float_code(int t) { return t <= 3; }
__device__ __forceinline__ bool signed_code(int t) { return t == 4 || t == 5 || t == 7 || t == 9; }
// An integer (or bool) element as 64 bits: sign-extended for signed types.
__device__ __forceinline__ unsigned long long load_int(const void* p, i64 i, int t) {
  switch (t) {
    case 4: return (unsigned long long)((const i64*)p)[i];
    case 5: return (unsigned long long)(i64)((const int*)p)[i];
    case 7: return (unsigned long long)(i64)((const signed char*)p)[i];
    case 9: return (unsigned long long)(i64)((const short*)p)[i];
    case 6: case 8: return ((const unsigned char*)p)[i];
    case 10: return ((const unsigned short*)p)[i];
    case 11: return ((const unsigned*)p)[i];
    case 12: return ((const unsigned long long*)p)[i];
    default: return 0;
  }
}
// The low bits of v stored as integer type t (two's complement wrapping).
__device__ __forceinline__ void store_int(void* p, i64 i, int t, unsigned long long v) {
  switch (t) {
    case 4: case 12: ((unsigned long long*)p)[i] = v; break;
    case 5: case 11: ((unsigned*)p)[i] = (unsigned)v; break;
    case 6: ((unsigned char*)p)[i] = v != 0; break;
    case 7: case 8: ((unsigned char*)p)[i] = (unsigned char)v; break;
    case 9: case 10: ((u16*)p)[i] = (u16)v; break;
  }
}
__device__ __forceinline__ void store_float(void* p, i64 i, int t, double v) {
  switch (t) {
    case 0: ((float*)p)[i] = (float)v; break;
    case 1: ((u16*)p)[i] = f2h((float)v); break;
    case 2: ((u16*)p)[i] = f2b((float)v); break;
    case 3: ((double*)p)[i] = v; break;
  }
}
// A double stored as type t: floats rounded once, integers as Cast converts floats (kiln_f2*),
// bool as v != 0.
__device__ __forceinline__ void store_any(void* p, i64 i, int t, double v) {
  if (t == 6) ((unsigned char*)p)[i] = v != 0.0;
  else if (float_code(t)) store_float(p, i, t, v);
  else if (t == 12) store_int(p, i, t, kiln_f2u64(v));
  else if (t == 4 || t == 11) store_int(p, i, t, (unsigned long long)kiln_f2i64(v));
  else store_int(p, i, t, (unsigned long long)(i64)kiln_f2i32(v));
}
extern "C" __global__ void cast_any(const void* x, int xt, void* y, int yt, i64 n) {
  GRID_STRIDE(i, n) {
    if (float_code(xt)) {
      store_any(y, i, yt, load_any(x, i, xt));
    } else {
      unsigned long long b = load_int(x, i, xt);
      bool s = signed_code(xt);
      if (yt == 0) ((float*)y)[i] = s ? (float)(i64)b : (float)b;
      else if (float_code(yt)) store_float(y, i, yt, s ? (double)(i64)b : (double)b);
      else store_int(y, i, yt, b);
    }
  }
}

// ---- Generated values: Range, ConstantOfShape, Shape and Size --------------------------------
// Range: element i is start + i * delta (in double for floats, as the CPU kernel computes it).
extern "C" __global__ void range_any(void* y, int yt, i64 n, int is_int, i64 istart, i64 idelta, double fstart,
                                     double fdelta) {
  GRID_STRIDE(i, n) {
    if (is_int) store_int(y, i, yt, istart + idelta * i);
    else store_any(y, i, yt, fstart + fdelta * (double)i);
  }
}
// ConstantOfShape: every element the one value.
extern "C" __global__ void fill_any(void* y, int yt, i64 n, int is_int, i64 iv, double fv) {
  GRID_STRIDE(i, n) {
    if (is_int) store_int(y, i, yt, iv);
    else store_any(y, i, yt, fv);
  }
}
// Shape and Size: up to eight int64 values known on the host, passed by value so that a captured
// graph replays them (they depend only on shapes, which a replay keeps).
struct Values8 { i64 v[8]; };
extern "C" __global__ void write_values_i64(i64* y, i64 n, Values8 vals) {
  GRID_STRIDE(i, n) { y[i] = vals.v[i]; }
}

// ---- LogSoftmax over rows --------------------------------------------------------------------
template <class S>
__device__ void log_softmax_rows(const void* x, void* y, i64 cols) {
  i64 base = blockIdx.x * cols;
  float m = -INFINITY;
  for (i64 c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, S::ld(x, base + c));
  m = block_reduce(m, true);
  float s = 0.0f;
  for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += expf(S::ld(x, base + c) - m);
  float lse = m + logf(block_reduce(s, false));
  for (i64 c = threadIdx.x; c < cols; c += blockDim.x) S::st(y, base + c, S::ld(x, base + c) - lse);
}
KILN_INSTANTIATE(log_softmax_rows, (const void* x, void* y, i64 cols), (x, y, cols))

// ---- Reduce* and ArgMax/ArgMin over any set of axes (one thread per output element) ----------
// The output's coordinates walk the kept axes (kept_shape, input strides kept_stride); each
// output reduces n_red elements over the reduced axes (red_shape, red_stride). kind: 0 sum,
// 1 mean, 2 max, 3 min, 4 prod, 5 sum of squares, 6 L1, 7 L2, 8 log-sum-exp, 9 log-sum,
// 10 argmax, 11 argmin (int64 output; select_last picks the last of equal extremes).
template <class S>
__device__ void reduce_axes(const void* x, void* y, i64 n_out, int kept_rank, Str8 kept_shape, Str8 kept_stride,
                            int red_rank, Str8 red_shape, Str8 red_stride, i64 n_red, int kind, int select_last) {
  GRID_STRIDE(o, n_out) {
    i64 base = bcast_offset(o, kept_rank, kept_shape, kept_stride);
    double acc = (kind == 2 || kind == 10) ? -INFINITY : (kind == 3 || kind == 11) ? INFINITY : (kind == 4 ? 1.0 : 0.0);
    double m = -INFINITY;
    if (kind == 8) {
      for (i64 r = 0; r < n_red; ++r) m = fmax(m, (double)S::ld(x, base + bcast_offset(r, red_rank, red_shape, red_stride)));
      if (m == -INFINITY) m = 0.0;  // all -inf (or empty): log(sum exp) is -inf either way
    }
    i64 best = 0;
    for (i64 r = 0; r < n_red; ++r) {
      double v = S::ld(x, base + bcast_offset(r, red_rank, red_shape, red_stride));
      switch (kind) {
        case 0: case 1: case 9: acc += v; break;
        case 2: acc = (v != v || acc != acc) ? __longlong_as_double(0x7ff8000000000000LL) : fmax(acc, v); break;
        case 3: acc = (v != v || acc != acc) ? __longlong_as_double(0x7ff8000000000000LL) : fmin(acc, v); break;
        case 4: acc *= v; break;
        case 5: case 7: acc += v * v; break;
        case 6: acc += fabs(v); break;
        case 8: acc += exp(v - m); break;
        case 10: if (r == 0 || v > acc || (select_last && v == acc)) { acc = v; best = r; } break;
        case 11: if (r == 0 || v < acc || (select_last && v == acc)) { acc = v; best = r; } break;
      }
    }
    if (kind == 10 || kind == 11) {
      // The index along the reduced axis (ArgMax/ArgMin reduce exactly one axis).
      ((i64*)y)[o] = best;
      continue;
    }
    if (kind == 1) acc /= (double)n_red;
    else if (kind == 7) acc = sqrt(acc);
    else if (kind == 8) acc = m + log(acc);
    else if (kind == 9) acc = log(acc);
    S::st(y, o, (float)acc);
  }
}
KILN_INSTANTIATE(reduce_axes,
  (const void* x, void* y, i64 n_out, int kept_rank, Str8 kept_shape, Str8 kept_stride, int red_rank, Str8 red_shape, Str8 red_stride, i64 n_red, int kind, int select_last),
  (x, y, n_out, kept_rank, kept_shape, kept_stride, red_rank, red_shape, red_stride, n_red, kind, select_last))
