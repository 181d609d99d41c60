
// ==== generated values and axis maps (launch_values.rs) ==========================================

// ---- Window functions: Hann (kind 0), Hamming (1), Blackman (2), computed in double --------------
extern "C" __global__ void window_any(void* y, int yt, i64 n, int kind, double denom, int one_point) {
  const double pi = 3.14159265358979323846;
  GRID_STRIDE(i, n) {
    double x = (double)i, v;
    if (one_point) v = 1.0;
    else if (kind == 0) { double s = sin(pi * x / denom); v = s * s; }
    else if (kind == 1) { const double a = 25.0 / 46.0; v = a - cos(2.0 * pi * x / denom) * (1.0 - a); }
    else v = 0.42 - 0.5 * cos(2.0 * pi * x / denom) + 0.08 * cos(4.0 * pi * x / denom);
    store_any(y, i, yt, v);
  }
}

// ---- Output elements read from the input through a per-axis map (Tile, CenterCropPad) ----------
// Output coordinate o of axis k reads input coordinate (o % mod[k]) + shift[k]; outside the input
// the element is zero (all bits clear).
struct AxisMap8 { i64 out[8]; i64 mod[8]; i64 shift[8]; i64 in_dim[8]; i64 in_stride[8]; };
template <typename E>
__device__ void gather_axes(const E* x, E* y, i64 n, int rank, const AxisMap8& m) {
  GRID_STRIDE(i, n) {
    i64 rem = i, off = 0;
    bool inside = true;
    for (int k = rank - 1; k >= 0; --k) {
      i64 o = rem % m.out[k];
      rem /= m.out[k];
      i64 s = o % m.mod[k] + m.shift[k];
      if (s < 0 || s >= m.in_dim[k]) inside = false;
      off += s * m.in_stride[k];
    }
    y[i] = inside ? x[off] : (E)0;
  }
}
extern "C" __global__ void gather_axes_1(const unsigned char* x, unsigned char* y, i64 n, int rank, AxisMap8 m) { gather_axes(x, y, n, rank, m); }
extern "C" __global__ void gather_axes_2(const u16* x, u16* y, i64 n, int rank, AxisMap8 m) { gather_axes(x, y, n, rank, m); }
extern "C" __global__ void gather_axes_4(const unsigned* x, unsigned* y, i64 n, int rank, AxisMap8 m) { gather_axes(x, y, n, rank, m); }
extern "C" __global__ void gather_axes_8(const i64* x, i64* y, i64 n, int rank, AxisMap8 m) { gather_axes(x, y, n, rank, m); }

// ---- TopK: one thread per lane (the elements along the axis) ------------------------------------
// Order: by value (largest or smallest first; NaN above every number, as the CPU's total order),
// ties by the lower index. The r-th pick is the first element in that order after pick r-1, so
// no scratch memory is needed (k·dim comparisons per lane).
// -1, 0 or 1: element a against element b by value alone.
__device__ __forceinline__ int cmp_values(const void* x, i64 a, i64 b, int t) {
  if (t >= 4) {
    if (t == 12) {
      unsigned long long va = ((const unsigned long long*)x)[a], vb = ((const unsigned long long*)x)[b];
      return va < vb ? -1 : (va > vb ? 1 : 0);
    }
    i64 va = (i64)load_int(x, a, t), vb = (i64)load_int(x, b, t);
    return va < vb ? -1 : (va > vb ? 1 : 0);
  }
  double va = load_any(x, a, t), vb = load_any(x, b, t);
  bool na = va != va, nb = vb != vb;
  if (na || nb) return na == nb ? 0 : (na ? 1 : -1);
  return va < vb ? -1 : (va > vb ? 1 : 0);
}
extern "C" __global__ void topk_any(const void* x, int xt, int esize, void* vals, i64* idx, i64 lanes, i64 dim,
                                    i64 inner, i64 k, int largest) {
  GRID_STRIDE(lane, lanes) {
    i64 o = lane / inner, in = lane % inner;
    i64 base = o * dim * inner + in;
    i64 prev = -1;
    for (i64 r = 0; r < k; ++r) {
      i64 best = -1;
      for (i64 j = 0; j < dim; ++j) {
        if (prev >= 0) {
          // j must come after the previous pick.
          int c = cmp_values(x, base + j * inner, base + prev * inner, xt);
          if (largest) c = -c;
          if (c < 0 || (c == 0 && j <= prev)) continue;
        }
        if (best < 0) { best = j; continue; }
        int c = cmp_values(x, base + j * inner, base + best * inner, xt);
        if (largest) c = -c;
        if (c < 0) best = j;  // ties keep the lower index (j > best)
      }
      i64 dst = (o * k + r) * inner + in;
      i64 src = base + best * inner;
      if (vals) {
        switch (esize) {
          case 1: ((unsigned char*)vals)[dst] = ((const unsigned char*)x)[src]; break;
          case 2: ((u16*)vals)[dst] = ((const u16*)x)[src]; break;
          case 4: ((unsigned*)vals)[dst] = ((const unsigned*)x)[src]; break;
          default: ((i64*)vals)[dst] = ((const i64*)x)[src]; break;
        }
      }
      if (idx) idx[dst] = best;
      prev = best;
    }
  }
}

// ---- DFT: one thread per output element, the sum over the whole line in double ----------------
// Input lines [outer, n_in, inner, c] (c = 1 real, 2 complex), output [outer, n_out, inner, c_out].
// `herm`: an inverse of a one-sided spectrum, rebuilt as the CPU kernel does (numpy's irfft: the
// imaginary parts of the DC and Nyquist bins ignored, the upper half the conjugate mirror).
// The inverse is scaled by 1/length. Angles are reduced mod length so they stay exact.
__device__ void dft_input(const void* x, int xt, i64 base, i64 inner, int c, i64 n_in, i64 length, int herm, i64 m,
                          double* re, double* im) {
  *re = 0.0; *im = 0.0;
  if (herm) {
    i64 half = length / 2 + 1;
    bool mirror = m >= half;
    i64 src = mirror ? length - m : m;
    if (src >= n_in) return;
    *re = load_any(x, base + src * inner * c, xt);
    double v = c == 2 ? load_any(x, base + src * inner * c + 1, xt) : 0.0;
    if (src == 0 || (length % 2 == 0 && src == length / 2)) v = 0.0;
    *im = mirror ? -v : v;
  } else if (m < n_in) {
    *re = load_any(x, base + m * inner * c, xt);
    *im = c == 2 ? load_any(x, base + m * inner * c + 1, xt) : 0.0;
  }
}
extern "C" __global__ void dft_naive(const void* x, int xt, void* y, int yt, i64 outer, i64 inner, int c, i64 n_in,
                                     i64 length, i64 n_out, int c_out, int inverse, int herm) {
  const double two_pi = 6.28318530717958647692;
  i64 total = outer * n_out * inner;
  GRID_STRIDE(t, total) {
    i64 i = t % inner, k = (t / inner) % n_out, o = t / (inner * n_out);
    i64 base = o * n_in * inner * c + i * c;
    double sr = 0.0, si = 0.0;
    for (i64 m = 0; m < length; ++m) {
      double re, im;
      dft_input(x, xt, base, inner, c, n_in, length, herm, m, &re, &im);
      if (re == 0.0 && im == 0.0) continue;
      double a = two_pi * (double)((k * m) % length) / (double)length;
      double cs = cos(a), sn = inverse ? sin(a) : -sin(a);
      sr += re * cs - im * sn;
      si += re * sn + im * cs;
    }
    if (inverse) { sr /= (double)length; si /= (double)length; }
    i64 out = ((o * n_out + k) * inner + i) * c_out;
    store_any(y, out, yt, sr);
    if (c_out == 2) store_any(y, out + 1, yt, si);
  }
}

// ---- Compress: one thread per (outer, inner) lane walks the condition, keeping its own count ----
template <typename E>
__device__ void compress_lanes(const E* x, E* y, const unsigned char* cond, i64 cond_len, i64 outer, i64 dim,
                               i64 inner, i64 kept) {
  GRID_STRIDE(lane, outer * inner) {
    i64 o = lane / inner, i = lane % inner, c = 0;
    i64 len = cond_len < dim ? cond_len : dim;
    for (i64 j = 0; j < len; ++j) {
      if (!cond[j]) continue;
      y[(o * kept + c) * inner + i] = x[(o * dim + j) * inner + i];
      ++c;
    }
  }
}
extern "C" __global__ void compress_1(const unsigned char* x, unsigned char* y, const unsigned char* cond, i64 cond_len, i64 outer, i64 dim, i64 inner, i64 kept) { compress_lanes(x, y, cond, cond_len, outer, dim, inner, kept); }
extern "C" __global__ void compress_2(const u16* x, u16* y, const unsigned char* cond, i64 cond_len, i64 outer, i64 dim, i64 inner, i64 kept) { compress_lanes(x, y, cond, cond_len, outer, dim, inner, kept); }
extern "C" __global__ void compress_4(const unsigned* x, unsigned* y, const unsigned char* cond, i64 cond_len, i64 outer, i64 dim, i64 inner, i64 kept) { compress_lanes(x, y, cond, cond_len, outer, dim, inner, kept); }
extern "C" __global__ void compress_8(const i64* x, i64* y, const unsigned char* cond, i64 cond_len, i64 outer, i64 dim, i64 inner, i64 kept) { compress_lanes(x, y, cond, cond_len, outer, dim, inner, kept); }

// ---- OneHot: output [outer, depth, inner] of values[0] (off) or values[1] (on), moved as bytes --
extern "C" __global__ void one_hot_any(const void* idx, int it, const unsigned char* values, int esize,
                                       unsigned char* y, i64 outer, i64 depth, i64 inner) {
  GRID_STRIDE(t, outer * depth * inner) {
    i64 i = t % inner, d = (t / inner) % depth, o = t / (inner * depth);
    double v = trunc(load_any(idx, o * inner + i, it));
    if (v < 0.0) v += (double)depth;
    const unsigned char* src = values + ((v >= 0.0 && v < (double)depth && (i64)v == d) ? esize : 0);
    for (int b = 0; b < esize; ++b) y[t * esize + b] = src[b];
  }
}
