
// ==== index kernels (see kernels/mod.rs: LIBRARY)
// Gather/scatter, cumulative, loss and index-permutation ops (lower_index.rs, launch_index.rs).
// Ops that only move elements work on any dtype by element size (the `_1/_2/_4/_8` entry
// points); ops that compute on floats are templates over the storage type (KILN_INSTANTIATE).
// Every index read from data is resolved on the device: negative counts from the end once,
// anything else out of range sets *err to INDEX_ERROR (the host fails the run) and is skipped.

#define INDEX_ERROR 2

// Element i of an int64 (or, with is_i32, int32) index tensor.
__device__ __forceinline__ i64 load_index(const void* idx, int is_i32, i64 i) {
  return is_i32 ? (i64)((const int*)idx)[i] : ((const i64*)idx)[i];
}

// Index k into an axis of `len` elements, or -1 (and *err set) when it is out of range.
__device__ __forceinline__ i64 resolve_index(i64 k, i64 len, int* err) {
  if (k < 0) k += len;
  if (k < 0 || k >= len) {
    if (err) *err = INDEX_ERROR;
    return -1;
  }
  return k;
}

// ---- NegativeLogLikelihoodLoss / SoftmaxCrossEntropyLoss ---------------------------------------
// x is viewed as [N, C, D] (D: the product of the trailing dims), target as [N, D]. Element
// (n, d) with target t: loss = -w[t] * lp(n, t, d), 0 where t == ignore (has_ignore), where lp
// is x itself (NLL) or, with softmax, log_softmax of x over C (written to log_prob when given).
// reduction 0 (none): the loss of each element into y. 1 (sum) and 2 (mean: divided by the sum
// of the applied weights, as the reference does): launched as one block, y gets one value.
template <class S>
__device__ void nll_loss(const void* x, const void* target, int t_i32, const void* weight, void* y, void* log_prob,
                         i64 n, i64 c, i64 d, int softmax, int reduction, int has_ignore, i64 ignore, int* err) {
  float loss_sum = 0.0f, weight_sum = 0.0f;
  GRID_STRIDE(e, n * d) {
    i64 base = (e / d) * c * d + e % d;  // x[n, k, d] is at base + k * d
    float lse = 0.0f;
    if (softmax) {
      float m = -INFINITY;
      for (i64 k = 0; k < c; ++k) m = fmaxf(m, S::ld(x, base + k * d));
      float s = 0.0f;
      for (i64 k = 0; k < c; ++k) s += expf(S::ld(x, base + k * d) - m);
      lse = m + logf(s);
      if (log_prob) {
        for (i64 k = 0; k < c; ++k) S::st(log_prob, base + k * d, S::ld(x, base + k * d) - lse);
      }
    }
    i64 t = load_index(target, t_i32, e);
    float loss = 0.0f;
    if (!(has_ignore && t == ignore)) {
      if (t < 0 || t >= c) {
        *err = INDEX_ERROR;
      } else {
        float w = weight ? S::ld(weight, t) : 1.0f;
        loss = -(S::ld(x, base + t * d) - lse) * w;
        weight_sum += w;
      }
    }
    if (reduction == 0) S::st(y, e, loss);
    loss_sum += loss;
  }
  if (reduction != 0) {
    loss_sum = block_reduce(loss_sum, false);
    weight_sum = block_reduce(weight_sum, false);
    if (threadIdx.x == 0) S::st(y, 0, reduction == 1 ? loss_sum : loss_sum / weight_sum);
  }
}
KILN_INSTANTIATE(nll_loss,
  (const void* x, const void* target, int t_i32, const void* weight, void* y, void* log_prob, i64 n, i64 c, i64 d, int softmax, int reduction, int has_ignore, i64 ignore, int* err),
  (x, target, t_i32, weight, y, log_prob, n, c, d, softmax, reduction, has_ignore, ignore, err))

// ---- GatherElements: out[i] = data[c with c[axis] = idx[i]], c = i's coordinates in idx -------
template <typename E>
__device__ void gather_elements(const void* data, const void* idx, int idx_i32, void* out, i64 n, int rank,
                                Str8 ishape, Str8 dstride, int axis, i64 axis_len, int* err) {
  GRID_STRIDE(i, n) {
    i64 rem = i, off = 0;
    for (int k = rank - 1; k >= 0; --k) {
      i64 c = rem % ishape.s[k];
      rem /= ishape.s[k];
      if (k != axis) off += c * dstride.s[k];
    }
    i64 j = resolve_index(load_index(idx, idx_i32, i), axis_len, err);
    ((E*)out)[i] = j < 0 ? (E)0 : ((const E*)data)[off + j * dstride.s[axis]];
  }
}
#define GATHER_ELEMENTS_PARAMS const void* data, const void* idx, int idx_i32, void* out, i64 n, int rank, Str8 ishape, Str8 dstride, int axis, i64 axis_len, int* err
#define GATHER_ELEMENTS_ARGS data, idx, idx_i32, out, n, rank, ishape, dstride, axis, axis_len, err
KILN_BY_SIZE(gather_elements, (GATHER_ELEMENTS_PARAMS), (GATHER_ELEMENTS_ARGS))

// ---- GatherND -----------------------------------------------------------------------------------
// Index tuple t (k indices, the last axis of idx) addresses a block of `block` elements of data
// inside batch t / per_batch (batch_dims leading axes, `batch_size` elements per batch); the
// tuple's index a runs along data axis b + a. One thread per output element.
template <typename E>
__device__ void gather_nd(const void* data, const void* idx, int idx_i32, void* out, i64 n, i64 block, int k,
                          i64 per_batch, i64 batch_size, int b, Str8 dshape, Str8 dstride, int* err) {
  GRID_STRIDE(i, n) {
    i64 t = i / block;
    i64 off = (t / per_batch) * batch_size;
    bool ok = true;
    for (int a = 0; a < k && ok; ++a) {
      i64 v = resolve_index(load_index(idx, idx_i32, t * k + a), dshape.s[b + a], err);
      ok = v >= 0;
      off += v * dstride.s[b + a];
    }
    ((E*)out)[i] = ok ? ((const E*)data)[off + i % block] : (E)0;
  }
}
#define GATHER_ND_PARAMS const void* data, const void* idx, int idx_i32, void* out, i64 n, i64 block, int k, i64 per_batch, i64 batch_size, int b, Str8 dshape, Str8 dstride, int* err
#define GATHER_ND_ARGS data, idx, idx_i32, out, n, block, k, per_batch, batch_size, b, dshape, dstride, err
KILN_BY_SIZE(gather_nd, (GATHER_ND_PARAMS), (GATHER_ND_ARGS))

// ---- ScatterElements / ScatterND, on a copy of data already in out ------------------------------
// How an update lands: replaced (any dtype, by element size), or reduced into the old value
// (floats in the storage type; red 1 add, 2 mul, 3 max, 4 min with NaN propagating, as numpy).
template <typename E>
struct ScatterMove {
  __device__ void operator()(void* out, i64 dst, const void* upd, i64 src) const { ((E*)out)[dst] = ((const E*)upd)[src]; }
};
template <class S>
struct ScatterReduce {
  int red;
  __device__ void operator()(void* out, i64 dst, const void* upd, i64 src) const {
    float o = S::ld(out, dst), v = S::ld(upd, src);
    S::st(out, dst, red == 1 ? o + v : red == 2 ? o * v : red == 3 ? nan_max(o, v) : red == 4 ? nan_min(o, v) : v);
  }
};

// ScatterElements (updates shaped like idx): one thread per line of idx along `axis` (the other
// coordinates fixed), applying the line's updates in order. Only updates of one line can meet at
// an element of out, so duplicates resolve as in the reference (in order: the last one wins with
// no reduction) without atomics.
template <class Apply>
__device__ void scatter_elements(Apply apply, void* out, const void* idx, int idx_i32, const void* upd, i64 lines,
                                 int rank, Str8 ishape, Str8 dstride, int axis, i64 axis_len, int* err) {
  GRID_STRIDE(line, lines) {
    i64 rem = line, off = 0, ioff = 0, istride = 1, axis_istride = 1;
    for (int k = rank - 1; k >= 0; --k) {
      if (k == axis) {
        axis_istride = istride;
      } else {
        i64 c = rem % ishape.s[k];
        rem /= ishape.s[k];
        off += c * dstride.s[k];
        ioff += c * istride;
      }
      istride *= ishape.s[k];
    }
    for (i64 a = 0; a < ishape.s[axis]; ++a) {
      i64 src = ioff + a * axis_istride;
      i64 j = resolve_index(load_index(idx, idx_i32, src), axis_len, err);
      if (j >= 0) apply(out, off + j * dstride.s[axis], upd, src);
    }
  }
}
// (`red` is read by the reducing entry points only.)
#define SCATTER_ELEMENTS_PARAMS void* out, const void* idx, int idx_i32, const void* upd, i64 lines, int rank, Str8 ishape, Str8 dstride, int axis, i64 axis_len, int* err, int red
#define SCATTER_ELEMENTS_CALL(APPLY) scatter_elements(APPLY, out, idx, idx_i32, upd, lines, rank, ishape, dstride, axis, axis_len, err)
extern "C" __global__ void scatter_elements_1(SCATTER_ELEMENTS_PARAMS) { SCATTER_ELEMENTS_CALL(ScatterMove<KILN_BY_SIZE_TYPE_1>()); }
extern "C" __global__ void scatter_elements_2(SCATTER_ELEMENTS_PARAMS) { SCATTER_ELEMENTS_CALL(ScatterMove<KILN_BY_SIZE_TYPE_2>()); }
extern "C" __global__ void scatter_elements_4(SCATTER_ELEMENTS_PARAMS) { SCATTER_ELEMENTS_CALL(ScatterMove<KILN_BY_SIZE_TYPE_4>()); }
extern "C" __global__ void scatter_elements_8(SCATTER_ELEMENTS_PARAMS) { SCATTER_ELEMENTS_CALL(ScatterMove<KILN_BY_SIZE_TYPE_8>()); }
template <class S>
__device__ void scatter_elements_reduce(SCATTER_ELEMENTS_PARAMS) { SCATTER_ELEMENTS_CALL(ScatterReduce<S>{red}); }
KILN_INSTANTIATE(scatter_elements_reduce, (SCATTER_ELEMENTS_PARAMS),
                 (out, idx, idx_i32, upd, lines, rank, ishape, dstride, axis, axis_len, err, red))

// ScatterND: updates [T, block]; tuple t (k indices, the last axis of idx) addresses the block at
// sum idx[t, a] * dstride[a]. Blocks start at multiples of `block`, so only element j of
// different tuples can meet: one thread per j applies the T updates in order.
template <class Apply>
__device__ void scatter_nd(Apply apply, void* out, const void* idx, int idx_i32, const void* upd, i64 tuples, int k,
                           i64 block, Str8 dshape, Str8 dstride, int* err) {
  GRID_STRIDE(j, block) {
    for (i64 t = 0; t < tuples; ++t) {
      i64 off = 0;
      bool ok = true;
      for (int a = 0; a < k && ok; ++a) {
        i64 v = resolve_index(load_index(idx, idx_i32, t * k + a), dshape.s[a], err);
        ok = v >= 0;
        off += v * dstride.s[a];
      }
      if (ok) apply(out, off + j, upd, t * block + j);
    }
  }
}
#define SCATTER_ND_PARAMS void* out, const void* idx, int idx_i32, const void* upd, i64 tuples, int k, i64 block, Str8 dshape, Str8 dstride, int* err, int red
#define SCATTER_ND_CALL(APPLY) scatter_nd(APPLY, out, idx, idx_i32, upd, tuples, k, block, dshape, dstride, err)
extern "C" __global__ void scatter_nd_1(SCATTER_ND_PARAMS) { SCATTER_ND_CALL(ScatterMove<KILN_BY_SIZE_TYPE_1>()); }
extern "C" __global__ void scatter_nd_2(SCATTER_ND_PARAMS) { SCATTER_ND_CALL(ScatterMove<KILN_BY_SIZE_TYPE_2>()); }
extern "C" __global__ void scatter_nd_4(SCATTER_ND_PARAMS) { SCATTER_ND_CALL(ScatterMove<KILN_BY_SIZE_TYPE_4>()); }
extern "C" __global__ void scatter_nd_8(SCATTER_ND_PARAMS) { SCATTER_ND_CALL(ScatterMove<KILN_BY_SIZE_TYPE_8>()); }
template <class S>
__device__ void scatter_nd_reduce(SCATTER_ND_PARAMS) { SCATTER_ND_CALL(ScatterReduce<S>{red}); }
KILN_INSTANTIATE(scatter_nd_reduce, (SCATTER_ND_PARAMS), (out, idx, idx_i32, upd, tuples, k, block, dshape, dstride, err, red))

// ---- TensorScatter: update rows written into a copy of past_cache already in out -----------------
// past is [prefix, max_len, inner] around `axis`, the update [prefix, seq, inner]; row s of
// prefix p goes to position write_indices[p / per_batch] + s (modulo max_len when circular).
template <typename E>
__device__ void tensor_scatter(void* out, const void* upd, const void* writes, int w_i32, i64 n, i64 seq,
                               i64 max_len, i64 inner, i64 per_batch, int circular, int* err) {
  GRID_STRIDE(e, n) {
    i64 p = e / (seq * inner), s = (e / inner) % seq;
    i64 pos = (writes ? load_index(writes, w_i32, p / per_batch) : 0) + s;
    if (circular && max_len > 0) pos = ((pos % max_len) + max_len) % max_len;
    if (pos < 0 || pos >= max_len) {
      *err = INDEX_ERROR;
      continue;
    }
    ((E*)out)[(p * max_len + pos) * inner + e % inner] = ((const E*)upd)[e];
  }
}
#define TENSOR_SCATTER_PARAMS void* out, const void* upd, const void* writes, int w_i32, i64 n, i64 seq, i64 max_len, i64 inner, i64 per_batch, int circular, int* err
#define TENSOR_SCATTER_ARGS out, upd, writes, w_i32, n, seq, max_len, inner, per_batch, circular, err
KILN_BY_SIZE(tensor_scatter, (TENSOR_SCATTER_PARAMS), (TENSOR_SCATTER_ARGS))

// ---- ReverseSequence: the first lens[b] steps of each batch entry reversed, the rest kept ------
// Element i at batch coordinate (i / b_stride) % batch and time (i / t_stride) % time.
template <typename E>
__device__ void reverse_sequence(const void* x, const void* lens, int lens_i32, void* y, i64 n, i64 batch,
                                 i64 b_stride, i64 time, i64 t_stride, int* err) {
  GRID_STRIDE(i, n) {
    i64 b = (i / b_stride) % batch, t = (i / t_stride) % time;
    i64 len = load_index(lens, lens_i32, b);
    if (len < 0 || len > time) {
      *err = INDEX_ERROR;
      len = 0;
    }
    i64 src = t < len ? len - 1 - t : t;
    ((E*)y)[i] = ((const E*)x)[i + (src - t) * t_stride];
  }
}
#define REVERSE_SEQUENCE_PARAMS const void* x, const void* lens, int lens_i32, void* y, i64 n, i64 batch, i64 b_stride, i64 time, i64 t_stride, int* err
#define REVERSE_SEQUENCE_ARGS x, lens, lens_i32, y, n, batch, b_stride, time, t_stride, err
KILN_BY_SIZE(reverse_sequence, (REVERSE_SEQUENCE_PARAMS), (REVERSE_SEQUENCE_ARGS))

// ---- CumSum / CumProd along an axis --------------------------------------------------------------
// The axis is read on the device (an int32/int64 scalar, constant or computed): `shape` split
// around it as (outer, n, inner), or false (and *err set) when it is out of range.
__device__ bool split_at_axis(const void* axis_ptr, int axis_i32, int rank, const Str8& shape, i64* outer, i64* n,
                              i64* inner, int* err) {
  i64 a = resolve_index(load_index(axis_ptr, axis_i32, 0), rank, err);
  if (a < 0) return false;
  *outer = 1;
  *inner = 1;
  for (int k = 0; k < rank; ++k) {
    if (k < a) *outer *= shape.s[k];
    if (k > a) *inner *= shape.s[k];
  }
  *n = shape.s[a];
  return true;
}
// One thread per (outer, inner) line of n elements, walked in order (reverse: from the end);
// exclusive: each output omits its own element. Floats accumulate in double and integers in
// wrapping int64, as the reference does.
#define CUM_SCAN_PARAMS const void* x, void* y, const void* axis_ptr, int axis_i32, int rank, Str8 shape, int product, int exclusive, int reverse, int* err
template <class S>
__device__ void cum_scan(CUM_SCAN_PARAMS) {
  i64 outer, n, inner;
  if (!split_at_axis(axis_ptr, axis_i32, rank, shape, &outer, &n, &inner, err)) return;
  GRID_STRIDE(line, outer * inner) {
    i64 base = (line / inner) * n * inner + line % inner;
    double acc = product ? 1.0 : 0.0;
    for (i64 step = 0; step < n; ++step) {
      i64 at = base + (reverse ? n - 1 - step : step) * inner;
      double v = S::ld(x, at);
      if (exclusive) S::st(y, at, (float)acc);
      acc = product ? acc * v : acc + v;
      if (!exclusive) S::st(y, at, (float)acc);
    }
  }
}
KILN_INSTANTIATE(cum_scan, (CUM_SCAN_PARAMS), (x, y, axis_ptr, axis_i32, rank, shape, product, exclusive, reverse, err))
// Integers (T, accumulated in wrapping uint64: the casts are modular) and f64 (in double).
template <typename T, typename Acc>
__device__ void cum_scan_raw(CUM_SCAN_PARAMS) {
  i64 outer, n, inner;
  if (!split_at_axis(axis_ptr, axis_i32, rank, shape, &outer, &n, &inner, err)) return;
  GRID_STRIDE(line, outer * inner) {
    i64 base = (line / inner) * n * inner + line % inner;
    Acc acc = product ? (Acc)1 : (Acc)0;
    for (i64 step = 0; step < n; ++step) {
      i64 at = base + (reverse ? n - 1 - step : step) * inner;
      Acc v = (Acc)((const T*)x)[at];
      if (exclusive) ((T*)y)[at] = (T)acc;
      acc = product ? acc * v : acc + v;
      if (!exclusive) ((T*)y)[at] = (T)acc;
    }
  }
}
#define CUM_SCAN_ARGS x, y, axis_ptr, axis_i32, rank, shape, product, exclusive, reverse, err
extern "C" __global__ void cum_scan_i32(CUM_SCAN_PARAMS) { cum_scan_raw<int, unsigned long long>(CUM_SCAN_ARGS); }
extern "C" __global__ void cum_scan_i64(CUM_SCAN_PARAMS) { cum_scan_raw<i64, unsigned long long>(CUM_SCAN_ARGS); }
extern "C" __global__ void cum_scan_f64(CUM_SCAN_PARAMS) { cum_scan_raw<double, double>(CUM_SCAN_ARGS); }

// ---- Hardmax: 1 at the first maximum of each (outer, inner) line of n elements, 0 elsewhere ----
// A NaN counts as the maximum (numpy's argmax, as the reference).
template <class S>
__device__ void hardmax(const void* x, void* y, i64 outer, i64 n, i64 inner) {
  GRID_STRIDE(line, outer * inner) {
    i64 base = (line / inner) * n * inner + line % inner;
    float m = -INFINITY;
    i64 arg = 0;
    for (i64 k = 0; k < n; ++k) {
      float v = S::ld(x, base + k * inner);
      if (v > m || (v != v && m == m)) {
        m = v;
        arg = k;
      }
    }
    for (i64 k = 0; k < n; ++k) S::st(y, base + k * inner, k == arg ? 1.0f : 0.0f);
  }
}
KILN_INSTANTIATE(hardmax, (const void* x, void* y, i64 outer, i64 n, i64 inner), (x, y, outer, n, inner))

// ---- EyeLike: ones on diagonal k of a [rows, cols] matrix of type yt (cast_any's codes) --------
extern "C" __global__ void eye_like(void* y, int yt, i64 rows, i64 cols, i64 k) {
  GRID_STRIDE(e, rows * cols) {
    i64 i = e / cols, j = e % cols;
    store_any(y, e, yt, j - i == k ? 1.0 : 0.0);
  }
}

// ---- QuantizeLinear / DequantizeLinear -------------------------------------------------------------
// The scale (and zero point) of element i: the one (mode 0), one per index along an axis (mode 1:
// (i / inner) % dim), or one per block of `block` along it (mode 2: the params have `blocks`
// there, the other dims as x).
__device__ __forceinline__ i64 quant_param_index(i64 i, int mode, i64 inner, i64 dim, i64 block, i64 blocks) {
  if (mode == 0) return 0;
  i64 a = (i / inner) % dim;
  if (mode == 1) return a;
  return ((i / (dim * inner)) * blocks + a / block) * inner + i % inner;
}
#define QUANT_PARAMS const void* x, int xt, const void* scale, const void* zp, int zt, void* y, int yt, i64 n, int mode, i64 inner, i64 dim, i64 block, i64 blocks, double lo, double hi
#define QUANT_ARGS (x, xt, scale, zp, zt, y, yt, n, mode, inner, dim, block, blocks, lo, hi)
// QuantizeLinear: y = saturate(round_half_even(fp32(x / scale)) + zero_point) into [lo, hi]; NaN
// gives 0. x and y (and the zero point) of any type code of cast_any; the scale in storage type.
template <class S>
__device__ void quantize_linear(QUANT_PARAMS) {
  GRID_STRIDE(i, n) {
    i64 j = quant_param_index(i, mode, inner, dim, block, blocks);
    double q = rint((double)(float)(load_any(x, i, xt) / (double)S::ld(scale, j)));
    if (zp) q += load_any(zp, j, zt);
    store_any(y, i, yt, q != q ? 0.0 : fmin(fmax(q, lo), hi));
  }
}
KILN_INSTANTIATE(quantize_linear, (QUANT_PARAMS), QUANT_ARGS)
// DequantizeLinear: y = (x - zero_point) * scale, exact difference and one rounding into y (lo and
// hi unused).
template <class S>
__device__ void dequantize_linear(QUANT_PARAMS) {
  GRID_STRIDE(i, n) {
    i64 j = quant_param_index(i, mode, inner, dim, block, blocks);
    double v = load_any(x, i, xt) - (zp ? load_any(zp, j, zt) : 0.0);
    store_any(y, i, yt, v * (double)S::ld(scale, j));
  }
}
KILN_INSTANTIATE(dequantize_linear, (QUANT_PARAMS), QUANT_ARGS)

// ---- DynamicQuantizeLinear: uint8 with the scale and zero point taken from the data's range ----
// (which always includes 0), all in fp32 as the spec writes it. One block: the range, then the
// quantization.
template <class S>
__device__ void dynamic_quantize_linear(const void* x, unsigned char* y, void* scale_out, unsigned char* zp_out, i64 n) {
  float hi = 0.0f, lo = 0.0f;
  for (i64 i = threadIdx.x; i < n; i += blockDim.x) {
    float v = S::ld(x, i);
    hi = fmaxf(hi, v);
    lo = fminf(lo, v);
  }
  hi = block_reduce(hi, true);
  lo = -block_reduce(-lo, true);
  float scale = (hi == lo ? 1.0f : hi - lo) / 255.0f;
  float zp = rintf(fminf(fmaxf(0.0f - lo / scale, 0.0f), 255.0f));
  if (zp != zp) zp = 0.0f;
  for (i64 i = threadIdx.x; i < n; i += blockDim.x) {
    float q = rintf(S::ld(x, i) / scale) + zp;
    y[i] = q != q ? 0 : (unsigned char)fminf(fmaxf(q, 0.0f), 255.0f);
  }
  if (threadIdx.x == 0) {
    S::st(scale_out, 0, scale);
    zp_out[0] = (unsigned char)zp;
  }
}
KILN_INSTANTIATE(dynamic_quantize_linear, (const void* x, unsigned char* y, void* scale_out, unsigned char* zp_out, i64 n),
                 (x, y, scale_out, zp_out, n))

// ---- MaxUnpool: y (zeroed) gets x[i] at the flat index ind[i] --------------------------------------
// Where several elements name one index the last wins, as in the reference: each claims its
// target with atomicMax(owner, i + 1) (owner zeroed), then only the claiming element writes.
extern "C" __global__ void max_unpool_claim(const i64* ind, i64 n, i64 total, unsigned long long* owner, int* err) {
  GRID_STRIDE(i, n) {
    i64 k = ind[i];
    if (k < 0 || k >= total) {
      *err = INDEX_ERROR;
      continue;
    }
    atomicMax(owner + k, (unsigned long long)(i + 1));
  }
}
template <typename E>
__device__ void max_unpool_write(const void* x, const i64* ind, void* y, i64 n, i64 total, const unsigned long long* owner) {
  GRID_STRIDE(i, n) {
    i64 k = ind[i];
    if (k >= 0 && k < total && owner[k] == (unsigned long long)(i + 1)) ((E*)y)[k] = ((const E*)x)[i];
  }
}
#define MAX_UNPOOL_PARAMS const void* x, const i64* ind, void* y, i64 n, i64 total, const unsigned long long* owner
#define MAX_UNPOOL_ARGS x, ind, y, n, total, owner
extern "C" __global__ void max_unpool_write_2(MAX_UNPOOL_PARAMS) { max_unpool_write<KILN_BY_SIZE_TYPE_2>(MAX_UNPOOL_ARGS); }
extern "C" __global__ void max_unpool_write_4(MAX_UNPOOL_PARAMS) { max_unpool_write<KILN_BY_SIZE_TYPE_4>(MAX_UNPOOL_ARGS); }
extern "C" __global__ void max_unpool_write_8(MAX_UNPOOL_PARAMS) { max_unpool_write<KILN_BY_SIZE_TYPE_8>(MAX_UNPOOL_ARGS); }
