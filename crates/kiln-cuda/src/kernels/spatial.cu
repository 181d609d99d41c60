
// ==== spatial kernels (see kernels/mod.rs: LIBRARY) ============================================
// Resampling (Resize, GridSample), transposed convolution, N-D pooling, softmax over any axis and
// the normalization variants. The CPU kernels (kiln-cpu/src/ops) are the spec; where they decide
// ties from exact float results (nearest-pixel rounding, cubic weights), the arithmetic below uses
// the _rn intrinsics, which the compiler never fuses into FMAs, so both round alike.

// ---- Resize: one separable pass over one axis -------------------------------------------------
// The tensor as [outer, in_w, inner] becomes [outer, out_w, inner]. x and y are either the storage
// type or f64 (x_f64 / y_f64: the intermediate passes keep f64, as the reference does). Codes:
// mode 0 nearest, 1 linear, 2 cubic; coord 0 half_pixel, 1 half_pixel_symmetric,
// 2 pytorch_half_pixel, 3 align_corners, 4 asymmetric, 5 tf_crop_and_resize,
// 6 tf_half_pixel_for_nn; nearest 0 round_prefer_floor, 1 round_prefer_ceil, 2 floor, 3 ceil.
struct ResizeWin {
  int mode, nearest, antialias;
  float a;
  double ratio, s;  // fractional position in (0, 1]; min(scale, 1) for antialiasing
  i64 n;            // taps
  double lo;        // antialiased kernels: offset of tap 0
  int f32_sum;      // antialiased cubic: normalize in f32 (every tap inside the kernel's support)
  float sum32;
  double sum64;
};

// Keys' cubic kernel in the reference's mixed precision; false outside |x| < 2.
__device__ bool resize_cubic_kernel(double x, float a, float* out) {
  x = fabs(x);
  double x2 = x * x, x3 = x * x2;
  float x1f = (float)x, x2f = (float)x2, x3f = (float)x3;
  if (x <= 1.0) {
    *out = __fadd_rn(__fsub_rn(__fmul_rn(__fadd_rn(a, 2.0f), x3f), __fmul_rn(__fadd_rn(a, 3.0f), x2f)), 1.0f);
    return true;
  }
  if (x < 2.0) {
    float t = __fsub_rn(__fmul_rn(a, x3f), __fmul_rn(__fmul_rn(5.0f, a), x2f));
    t = __fadd_rn(t, __fmul_rn(__fmul_rn(8.0f, a), x1f));
    *out = __fsub_rn(t, __fmul_rn(4.0f, a));
    return true;
  }
  return false;
}

// Coefficient of tap k before antialias normalization; *inside: within the kernel's support.
__device__ double resize_raw(const ResizeWin& w, i64 k, bool* inside) {
  *inside = true;
  if (w.mode == 0) {
    bool right = w.ratio == 1.0 || (w.nearest == 0 ? w.ratio > 0.5 : w.nearest == 1 ? w.ratio >= 0.5 : w.nearest == 3);
    return k == (right ? 1 : 0) ? 1.0 : 0.0;
  }
  if (w.mode == 1) {
    if (!w.antialias) return k == 0 ? 1.0 - w.ratio : w.ratio;
    double arg = __dmul_rn((w.lo + (double)k) - w.ratio, w.s);
    double c = 1.0 - fabs(arg);
    return c < 0.0 ? 0.0 : (c > 1.0 ? 1.0 : c);
  }
  if (w.antialias) {
    float c;
    if (resize_cubic_kernel(w.s * ((w.lo + (double)k) - w.ratio), w.a, &c)) return (double)c;
    *inside = false;
    return 0.0;
  }
  float a = w.a;
  float t;
  if (k == 0 || k == 3) {
    float r1 = k == 0 ? (float)(w.ratio + 1.0) : (float)((1.0 - w.ratio) + 1.0);
    t = __fsub_rn(__fmul_rn(a, r1), __fmul_rn(5.0f, a));
    t = __fadd_rn(__fmul_rn(t, r1), __fmul_rn(8.0f, a));
    t = __fsub_rn(__fmul_rn(t, r1), __fmul_rn(4.0f, a));
  } else {
    float r = k == 1 ? (float)w.ratio : (float)(1.0 - w.ratio);
    t = __fsub_rn(__fmul_rn(__fadd_rn(a, 2.0f), r), __fadd_rn(a, 3.0f));
    t = __fadd_rn(__fmul_rn(__fmul_rn(t, r), r), 1.0f);
  }
  return (double)t;
}

// Coefficient of tap k after the antialias normalization.
__device__ double resize_coeff(const ResizeWin& w, i64 k) {
  bool inside;
  double c = resize_raw(w, k, &inside);
  if (!w.antialias || w.mode == 0) return c;
  if (w.f32_sum) return (double)__fdiv_rn((float)c, w.sum32);
  return c / w.sum64;
}

__device__ double resize_source(int coord, double y, double scale, i64 in_w, i64 out_w, double roi_start,
                                double roi_end, bool* extrapolated) {
  double out_f = scale * (double)in_w, in_f = (double)in_w;
  switch (coord) {
    case 3: return out_f == 1.0 ? 0.0 : y * (in_f - 1.0) / (out_f - 1.0);
    case 4: return y / scale;
    case 5: {
      double x = out_f == 1.0 ? (roi_end - roi_start) * (in_f - 1.0) / 2.0
                              : y * (roi_end - roi_start) * (in_f - 1.0) / (out_f - 1.0);
      x = __dadd_rn(x, __dmul_rn(roi_start, in_f - 1.0));
      if (x < 0.0 || x > in_f - 1.0) *extrapolated = true;
      return x;
    }
    case 2: return out_f == 1.0 ? -0.5 : (y + 0.5) / scale - 0.5;
    case 0: return (y + 0.5) / scale - 0.5;
    case 1: {
      double adjustment = (double)out_w / out_f;
      double offset = __dmul_rn(in_f / 2.0, 1.0 - adjustment);
      return __dadd_rn(offset, (y + 0.5) / scale) - 0.5;
    }
    default: return (y + 0.5) / scale;
  }
}

template <class S>
__device__ __forceinline__ double resize_ld(const void* p, int is_f64, i64 i) {
  return is_f64 ? ((const double*)p)[i] : (double)S::ld(p, i);
}

template <class S>
__device__ void resize_axis(const void* x, int x_f64, void* y, int y_f64, i64 outer, i64 in_w, i64 out_w, i64 inner,
                            int mode, int coord, int nearest, float cubic_a, int exclude, int antialias, double scale,
                            double roi_start, double roi_end, double fill) {
  i64 total = outer * out_w * inner;
  GRID_STRIDE(e, total) {
    i64 in_i = e % inner, o = (e / inner) % out_w, b = e / (inner * out_w);
    bool extrapolated = false;
    double xs = resize_source(coord, (double)o, scale, in_w, out_w, roi_start, roi_end, &extrapolated);
    double v = fill;
    if (!extrapolated) {
      ResizeWin w;
      w.mode = mode; w.nearest = nearest; w.antialias = antialias && mode != 0; w.a = cubic_a;
      double x_int = floor(xs);
      w.ratio = xs == x_int ? 1.0 : xs - x_int;
      w.s = scale < 1.0 ? scale : 1.0;
      w.f32_sum = 0; w.sum32 = 0.0f; w.sum64 = 0.0; w.lo = 0.0;
      if (w.antialias && mode == 1) {
        w.lo = floor(-1.0 / w.s) + 1.0;
        w.n = (i64)(2.0 - 2.0 * w.lo);
      } else if (w.antialias) {
        i64 i_start = (i64)floor(-2.0 / w.s) + 1;
        w.lo = (double)i_start;
        w.n = (2 - i_start) - i_start;
      } else {
        w.n = mode == 2 ? 4 : 2;
      }
      if (w.antialias) {
        bool all_f32 = true;
        float s32 = 0.0f;
        double s64 = 0.0;
        for (i64 k = 0; k < w.n; ++k) {
          bool inside;
          double c = resize_raw(w, k, &inside);
          all_f32 = all_f32 && inside;
          s32 = __fadd_rn(s32, (float)c);
          s64 += c;
        }
        w.f32_sum = mode == 2 && all_f32;
        w.sum32 = s32;
        w.sum64 = s64;
      }
      // The window of n taps nearest to x (ties towards smaller indices), as the reference
      // finds it in its edge-padded coordinates.
      double pad = (double)((w.n + 1) / 2);
      double xp = xs + pad;
      double pp = floor(xp);
      double frac = xp - pp;
      double half = (double)(w.n / 2);
      double offset;
      if (w.n % 2 == 0) offset = frac == 0.0 ? -half : -half + 1.0;
      else {
        double base = -(double)((w.n - 1) / 2);
        offset = frac <= 0.5 ? base : base + 1.0;
      }
      double start = (pp + offset) - pad;
      double in_f = (double)in_w, last = in_f - 1.0 > 0.0 ? in_f - 1.0 : 0.0;
      double norm = 1.0;
      if (exclude) {
        double sum = 0.0;
        for (i64 k = 0; k < w.n; ++k) {
          double i = start + (double)k;
          if (!(i < 0.0 || i >= in_f)) sum += resize_coeff(w, k);
        }
        norm = sum == 0.0 ? 1.0 : sum;
      }
      const i64 row = b * in_w * inner + in_i;
      if (mode == 0) {
        // The tap whose weight is exactly 1 (the first tap when exclusion zeroed it).
        i64 pick = 0;
        for (i64 k = 0; k < w.n; ++k) {
          double i = start + (double)k;
          double c = resize_coeff(w, k);
          if (exclude) c = (i < 0.0 || i >= in_f) ? 0.0 : c / norm;
          if (c == 1.0) { pick = k; break; }
        }
        double i = start + (double)pick;
        i64 src = (i64)(i < 0.0 ? 0.0 : (i > last ? last : i));
        v = resize_ld<S>(x, x_f64, row + src * inner);
      } else {
        v = 0.0;
        for (i64 k = 0; k < w.n; ++k) {
          double i = start + (double)k;
          double c = resize_coeff(w, k);
          if (exclude) c = (i < 0.0 || i >= in_f) ? 0.0 : c / norm;
          i64 src = (i64)(i < 0.0 ? 0.0 : (i > last ? last : i));
          v += c * resize_ld<S>(x, x_f64, row + src * inner);
        }
      }
    }
    if (y_f64) ((double*)y)[e] = v;
    else S::st(y, e, (float)v);
  }
}
KILN_INSTANTIATE(resize_axis,
  (const void* x, int x_f64, void* y, int y_f64, i64 outer, i64 in_w, i64 out_w, i64 inner, int mode, int coord, int nearest, float cubic_a, int exclude, int antialias, double scale, double roi_start, double roi_end, double fill),
  (x, x_f64, y, y_f64, outer, in_w, out_w, inner, mode, coord, nearest, cubic_a, exclude, antialias, scale, roi_start, roi_end, fill))

// ---- GridSample (N-D, up to 6 spatial dims) ------------------------------------------------------
// x [N, C, D...], grid [N, P..., r] (coordinates in [-1, 1], the last axis listing dims in reverse:
// x = W first), y [N, C, P...]. mode 0 nearest, 1 linear, 2 cubic; padding 0 zeros, 1 border,
// 2 reflection. Coordinates are denormalized in f32 (the reference's float32 arithmetic decides
// nearest-mode ties), taps and weights in f64.
__device__ __forceinline__ bool gs_finite(double x) { return x - x == 0.0; }

__device__ double gs_reflect(double x, double lo, double hi) {
  double range = hi - lo;
  if (range != range || range <= 0.0 || !gs_finite(x)) return lo;
  if (x < lo) {
    double dx = lo - x, n = trunc(dx / range), r = __dsub_rn(dx, __dmul_rn(n, range));
    return fmod(n, 2.0) == 0.0 ? lo + r : hi - r;
  }
  if (x > hi) {
    double dx = x - hi, n = trunc(dx / range), r = __dsub_rn(dx, __dmul_rn(n, range));
    return fmod(n, 2.0) == 0.0 ? hi - r : lo + r;
  }
  return x;
}

// The input index a tap at integer position i reads; -1 for a zero-padded tap.
__device__ i64 gs_pixel(double i, i64 d, double lo, double hi, int padding) {
  if (d == 0 || !gs_finite(i)) return -1;
  double last = (double)d - 1.0;
  if (padding == 0) return (i >= 0.0 && i <= last) ? (i64)i : -1;
  if (padding == 1) return (i64)(i < 0.0 ? 0.0 : (i > last ? last : i));
  double r = trunc(gs_reflect(i, lo, hi));
  return (i64)(r < 0.0 ? 0.0 : (r > last ? last : r));
}

template <class S>
__device__ void grid_sample(const void* x, const void* grid, void* y, i64 n, i64 c, int r, Str8 dims, i64 points,
                            int mode, int padding, int align_corners) {
  i64 plane = 1;
  for (int i = 0; i < r; ++i) plane *= dims.s[i];
  i64 total = n * c * points;
  GRID_STRIDE(e, total) {
    i64 p = e % points, bc = e / points, b = bc / c;
    i64 idx[6][4];
    double wt[6][4];
    int nt[6];
    for (int i = 0; i < r; ++i) {
      i64 d = dims.s[i];
      float g = S::ld(grid, (b * points + p) * r + (r - 1 - i));
      float lenf = (float)d;
      float v = align_corners ? __fmul_rn(__fdiv_rn(__fadd_rn(g, 1.0f), 2.0f), __fsub_rn(lenf, 1.0f))
                              : __fdiv_rn(__fsub_rn(__fmul_rn(__fadd_rn(g, 1.0f), lenf), 1.0f), 2.0f);
      double lo = align_corners ? 0.0 : -0.5, hi = align_corners ? (double)d - 1.0 : (double)d - 0.5;
      if (mode == 0) v = rintf(v);
      if ((double)v < lo || (double)v > hi) {
        if (padding == 1) { float top = (float)d - 1.0f; v = v < 0.0f ? 0.0f : (v > top ? top : v); }
        else if (padding == 2) v = (float)gs_reflect((double)v, lo, hi);
      }
      double vd = (double)v;
      if (mode == 0) {
        nt[i] = 1; idx[i][0] = gs_pixel(trunc(vd), d, lo, hi, padding); wt[i][0] = 1.0;
      } else if (mode == 1) {
        double x0 = floor(vd), t = vd - x0;
        nt[i] = 2;
        idx[i][0] = gs_pixel(x0, d, lo, hi, padding); wt[i][0] = 1.0 - t;
        idx[i][1] = gs_pixel(x0 + 1.0, d, lo, hi, padding); wt[i][1] = t;
      } else {
        const double A = -0.75;
        double x0 = floor(vd), t = fabs(vd - x0);
        double q = 1.0 - t;
        nt[i] = 4;
        wt[i][0] = ((A * (t + 1.0) - 5.0 * A) * (t + 1.0) + 8.0 * A) * (t + 1.0) - 4.0 * A;
        wt[i][1] = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
        wt[i][2] = ((A + 2.0) * q - (A + 3.0)) * q * q + 1.0;
        wt[i][3] = ((A * (2.0 - t) - 5.0 * A) * (2.0 - t) + 8.0 * A) * (2.0 - t) - 4.0 * A;
        for (int k = 0; k < 4; ++k) idx[i][k] = gs_pixel(x0 + (double)k - 1.0, d, lo, hi, padding);
      }
    }
    // The tensor product of the per-dim taps, the first dim outermost; zero-padded taps add nothing.
    i64 combos = 1;
    for (int i = 0; i < r; ++i) combos *= nt[i];
    const i64 base = bc * plane;
    double acc = 0.0;
    for (i64 t = 0; t < combos; ++t) {
      i64 rem = t, off = 0;
      double w = 1.0;
      bool skip = false;
      int k[6];
      for (int i = r - 1; i >= 0; --i) { k[i] = (int)(rem % nt[i]); rem /= nt[i]; }
      for (int i = 0; i < r; ++i) {
        i64 j = idx[i][k[i]];
        if (j < 0) { skip = true; break; }
        off = off * dims.s[i] + j;
        w *= wt[i][k[i]];
      }
      if (!skip) acc += w * (double)S::ld(x, base + off);
    }
    S::st(y, e, (float)acc);
  }
}
KILN_INSTANTIATE(grid_sample,
  (const void* x, const void* grid, void* y, i64 n, i64 c, int r, Str8 dims, i64 points, int mode, int padding, int align_corners),
  (x, grid, y, n, c, r, dims, points, mode, padding, align_corners))

// ---- ConvTranspose (N-D, groups): a gather over the taps that reach each output ----------------
// x [N, C, in...], w [C, M/G, k...], y [N, M, out...]. Output position o along a dim receives input
// i through tap k where o = i * stride + k * dilation - pad_begin (pad_begin may be negative).

// The flat input offset that output position o[] reads through kernel tap t (row-major over the
// kernel), or -1 where the tap misses the input grid.
__device__ i64 transposed_tap(const i64* o, i64 t, int r, const Str8& in, const Str8& kernel, const Str8& strides,
                              const Str8& dilations, const Str8& pad_begin) {
  i64 off = 0, scale = 1;
  for (int d = r - 1; d >= 0; --d) {
    i64 k = t % kernel.s[d];
    t /= kernel.s[d];
    i64 q = o[d] + pad_begin.s[d] - k * dilations.s[d];
    if (q < 0 || q % strides.s[d] != 0 || q / strides.s[d] >= in.s[d]) return -1;
    off += (q / strides.s[d]) * scale;
    scale *= in.s[d];
  }
  return off;
}

template <class S>
__device__ void conv_transpose(const void* x, const void* w, const void* bias, void* y, i64 n, i64 c, i64 m, i64 group,
                               int r, Str8 in, Str8 out, Str8 kernel, Str8 strides, Str8 dilations, Str8 pad_begin) {
  i64 is = 1, os = 1, ks = 1;
  for (int d = 0; d < r; ++d) { is *= in.s[d]; os *= out.s[d]; ks *= kernel.s[d]; }
  const i64 cg = c / group, mg = m / group;
  i64 total = n * m * os;
  GRID_STRIDE(e, total) {
    i64 sp = e % os, ch = (e / os) % m, b = e / (os * m);
    i64 g = ch / mg, mm = ch % mg;
    i64 o[6];
    i64 rem = sp;
    for (int d = r - 1; d >= 0; --d) { o[d] = rem % out.s[d]; rem /= out.s[d]; }
    float acc = 0.0f;
    for (i64 t = 0; t < ks; ++t) {
      i64 off = transposed_tap(o, t, r, in, kernel, strides, dilations, pad_begin);
      if (off < 0) continue;
      for (i64 ci = 0; ci < cg; ++ci) {
        i64 ic = g * cg + ci;
        acc += S::ld(x, (b * c + ic) * is + off) * S::ld(w, (ic * mg + mm) * ks + t);
      }
    }
    if (bias) acc += S::ld(bias, ch);
    S::st(y, e, acc);
  }
}
KILN_INSTANTIATE(conv_transpose,
  (const void* x, const void* w, const void* bias, void* y, i64 n, i64 c, i64 m, i64 group, int r, Str8 in, Str8 out, Str8 kernel, Str8 strides, Str8 dilations, Str8 pad_begin),
  (x, w, bias, y, n, c, m, group, r, in, out, kernel, strides, dilations, pad_begin))

// ---- DeformConv (N-D): each tap samples x bilinearly at its regular position plus an offset ------
// x [N, C, in...], w [M, C/G, k...], offset [N, og * ks * r, out...], mask (optional) [N, og * ks,
// out...], y [N, M, out...]. Corners outside the input (or of weight 0) add nothing.
template <class S>
__device__ void deform_conv(const void* x, const void* w, const void* offset, const void* bias, const void* mask,
                            void* y, i64 n, i64 c, i64 m, i64 group, i64 offset_groups, int r, Str8 in, Str8 out,
                            Str8 kernel, Str8 strides, Str8 dilations, Str8 pad_begin) {
  i64 is = 1, os = 1, ks = 1;
  for (int d = 0; d < r; ++d) { is *= in.s[d]; os *= out.s[d]; ks *= kernel.s[d]; }
  const i64 cg = c / group, mg = m / group, c_per_og = c / offset_groups;
  i64 total = n * m * os;
  GRID_STRIDE(e, total) {
    i64 sp = e % os, ch_out = (e / os) % m, b = e / (os * m);
    i64 g = ch_out / mg;
    i64 o[6];
    i64 rem = sp;
    for (int d = r - 1; d >= 0; --d) { o[d] = rem % out.s[d]; rem /= out.s[d]; }
    float acc = bias ? S::ld(bias, ch_out) : 0.0f;
    for (i64 ci = 0; ci < cg; ++ci) {
      const i64 ch = g * cg + ci, ogi = ch / c_per_og;
      const i64 xbase = (b * c + ch) * is;
      for (i64 t = 0; t < ks; ++t) {
        double pos[6];
        i64 trem = t;
        for (int d = r - 1; d >= 0; --d) {
          i64 k = trem % kernel.s[d];
          trem /= kernel.s[d];
          double regular = (double)(o[d] * strides.s[d] + k * dilations.s[d]) - (double)pad_begin.s[d];
          pos[d] = regular + (double)S::ld(offset, (((b * offset_groups + ogi) * ks + t) * r + d) * os + sp);
        }
        double v = 0.0;
        for (int corner = 0; corner < (1 << r); ++corner) {
          double weight = 1.0;
          i64 off = 0, scale = 1;
          bool use = true;
          for (int d = r - 1; d >= 0 && use; --d) {
            double f = floor(pos[d]);
            bool hi = (corner >> d) & 1;
            double cc = hi ? f + 1.0 : f;
            double wgt = hi ? pos[d] - f : 1.0 - (pos[d] - f);
            if (!(cc >= 0.0 && cc < (double)in.s[d]) || wgt == 0.0) { use = false; break; }
            off += (i64)cc * scale;
            scale *= in.s[d];
          }
          if (!use) continue;
          for (int d = 0; d < r; ++d) {
            double f = floor(pos[d]);
            weight *= ((corner >> d) & 1) ? pos[d] - f : 1.0 - (pos[d] - f);
          }
          v += weight * (double)S::ld(x, xbase + off);
        }
        if (mask) v *= (double)S::ld(mask, ((b * offset_groups + ogi) * ks + t) * os + sp);
        acc += S::ld(w, (ch_out * cg + ci) * ks + t) * (float)v;
      }
    }
    S::st(y, e, acc);
  }
}
KILN_INSTANTIATE(deform_conv,
  (const void* x, const void* w, const void* offset, const void* bias, const void* mask, void* y, i64 n, i64 c, i64 m, i64 group, i64 offset_groups, int r, Str8 in, Str8 out, Str8 kernel, Str8 strides, Str8 dilations, Str8 pad_begin),
  (x, w, offset, bias, mask, y, n, c, m, group, offset_groups, r, in, out, kernel, strides, dilations, pad_begin))

// ---- CausalConvWithState: depthwise causal 1-D convolution over [past_state | x] ---------------
// x [B, C, L], w [C, 1, K], bias [C] and past [B, C, K-1] optional; y [B, C, L] (SiLU optional) and
// state [B, C, K-1] = the last K-1 positions of [past | x] (optional output). Elements below nbc * l
// are y's, the rest the state's.
template <class S>
__device__ __forceinline__ float causal_padded(const void* x, const void* past, i64 bc, i64 l, i64 k, i64 j) {
  if (j < k - 1) return past ? S::ld(past, bc * (k - 1) + j) : 0.0f;
  return S::ld(x, bc * l + j - (k - 1));
}

template <class S>
__device__ void causal_conv_state(const void* x, const void* w, const void* bias, const void* past, void* y,
                                  void* state, i64 nbc, i64 c, i64 l, i64 k, int silu) {
  const i64 ny = nbc * l, total = ny + (state ? nbc * (k - 1) : 0);
  GRID_STRIDE(e, total) {
    if (e >= ny) {
      i64 j = (e - ny) % (k - 1), bc = (e - ny) / (k - 1);
      S::st(state, e - ny, causal_padded<S>(x, past, bc, l, k, l + j));
      continue;
    }
    i64 t = e % l, bc = e / l, ch = bc % c;
    float v = bias ? S::ld(bias, ch) : 0.0f;
    for (i64 i = 0; i < k; ++i) v += S::ld(w, ch * k + i) * causal_padded<S>(x, past, bc, l, k, t + i);
    S::st(y, e, silu ? v / (1.0f + expf(-v)) : v);
  }
}
KILN_INSTANTIATE(causal_conv_state,
  (const void* x, const void* w, const void* bias, const void* past, void* y, void* state, i64 nbc, i64 c, i64 l, i64 k, int silu),
  (x, w, bias, past, y, state, nbc, c, l, k, silu))

// ---- Col2Im: the sum of the block columns that cover each image position --------------------------
// x [N, C * prod(block), L] (L = prod(grid) block positions), y [N, C, image...]; the geometry is
// ConvTranspose's with the grid as its input.
template <class S>
__device__ void col2im(const void* x, void* y, i64 n, i64 c, int r, Str8 grid, Str8 image, Str8 block, Str8 strides,
                       Str8 dilations, Str8 pad_begin) {
  i64 gs = 1, is = 1, ks = 1;
  for (int d = 0; d < r; ++d) { gs *= grid.s[d]; is *= image.s[d]; ks *= block.s[d]; }
  i64 total = n * c * is;
  GRID_STRIDE(e, total) {
    i64 sp = e % is, bc = e / is;
    i64 o[6];
    i64 rem = sp;
    for (int d = r - 1; d >= 0; --d) { o[d] = rem % image.s[d]; rem /= image.s[d]; }
    float acc = 0.0f;
    for (i64 t = 0; t < ks; ++t) {
      i64 off = transposed_tap(o, t, r, grid, block, strides, dilations, pad_begin);
      if (off >= 0) acc += S::ld(x, (bc * ks + t) * gs + off);
    }
    S::st(y, e, acc);
  }
}
KILN_INSTANTIATE(col2im,
  (const void* x, void* y, i64 n, i64 c, int r, Str8 grid, Str8 image, Str8 block, Str8 strides, Str8 dilations, Str8 pad_begin),
  (x, y, n, c, r, grid, image, block, strides, dilations, pad_begin))

// ---- AffineGrid: theta [N, r, r+1] applied to the normalized coordinates of each output point ----
// y [N, D..., r]; the homogeneous point is (x, y[, z], 1) with x along the last spatial dim.
__device__ double affine_base(i64 i, i64 size, int align_corners) {
  if (align_corners) return size == 1 ? -1.0 : __dadd_rn(-1.0, __dmul_rn((double)i, 2.0 / ((double)size - 1.0)));
  double step = 2.0 / (double)size;
  return __dadd_rn(-1.0 + step / 2.0, __dmul_rn((double)i, step));
}

template <class S>
__device__ void affine_grid(const void* theta, void* y, i64 n, int r, Str8 size, int align_corners) {
  i64 points = 1;
  for (int d = 0; d < r; ++d) points *= size.s[d];
  i64 total = n * points * r;
  GRID_STRIDE(e, total) {
    i64 row = e % r, p = (e / r) % points, b = e / (r * points);
    i64 idx[3];
    i64 rem = p;
    for (int d = r - 1; d >= 0; --d) { idx[d] = rem % size.s[d]; rem /= size.s[d]; }
    const i64 t = (b * r + row) * (r + 1);
    double acc = 0.0;
    for (int k = 0; k < r; ++k)
      acc = __dadd_rn(acc, __dmul_rn((double)S::ld(theta, t + k), affine_base(idx[r - 1 - k], size.s[r - 1 - k], align_corners)));
    acc = __dadd_rn(acc, (double)S::ld(theta, t + r));
    S::st(y, e, (float)acc);
  }
}
KILN_INSTANTIATE(affine_grid, (const void* theta, void* y, i64 n, int r, Str8 size, int align_corners),
  (theta, y, n, r, size, align_corners))

// ---- Pooling over any number of spatial dims ------------------------------------------------------
// kind 0 max (indices optional: int64, flat over the input, column-major within the plane when
// col_major), 1 average (count_include_pad: divide by the taps inside the explicitly padded extent,
// never those ceil_mode adds beyond it), 2 Lp ((sum |x|^p)^(1/p)). Tap k of output o reads input
// o * stride + k * dilation - pad_begin; outside the input it is padding and never counts.
template <class S>
__device__ void pool_nd(const void* x, void* y, i64* indices, i64 planes, int r, Str8 in, Str8 out, Str8 kernel,
                        Str8 strides, Str8 dilations, Str8 pad_begin, Str8 pad_end, int kind, float p,
                        int count_include_pad, int col_major) {
  i64 is = 1, os = 1, ks = 1;
  for (int d = 0; d < r; ++d) { is *= in.s[d]; os *= out.s[d]; ks *= kernel.s[d]; }
  i64 total = planes * os;
  GRID_STRIDE(e, total) {
    i64 sp = e % os, plane = e / os;
    i64 o[6];
    i64 rem = sp;
    for (int d = r - 1; d >= 0; --d) { o[d] = rem % out.s[d]; rem /= out.s[d]; }
    const i64 base = plane * is;
    double acc = 0.0, best = -INFINITY;
    bool found = false;
    i64 best_off = 0, valid = 0;
    for (i64 t = 0; t < ks; ++t) {
      i64 trem = t, off = 0, scale = 1;
      bool inside = true;
      for (int d = r - 1; d >= 0; --d) {
        i64 k = trem % kernel.s[d];
        trem /= kernel.s[d];
        i64 q = o[d] * strides.s[d] + k * dilations.s[d] - pad_begin.s[d];
        if (q < 0 || q >= in.s[d]) { inside = false; break; }
        off += q * scale;
        scale *= in.s[d];
      }
      if (!inside) continue;
      double v = (double)S::ld(x, base + off);
      if (kind == 0) {
        // Strictly greater: the first maximum wins.
        if (!found || v > best) { best = v; best_off = off; found = true; }
      } else if (kind == 1) {
        acc += v;
      } else {
        acc += pow(fabs(v), (double)p);
      }
      ++valid;
    }
    double res;
    if (kind == 0) {
      res = best;
      if (indices) {
        i64 within = best_off;
        if (col_major) {
          i64 rm = best_off, cm = 0, sc = 1, c[6];
          for (int d = r - 1; d >= 0; --d) { c[d] = rm % in.s[d]; rm /= in.s[d]; }
          for (int d = 0; d < r; ++d) { cm += c[d] * sc; sc *= in.s[d]; }
          within = cm;
        }
        indices[e] = plane * is + within;
      }
    } else if (kind == 1) {
      i64 div = valid;
      if (count_include_pad) {
        div = 1;
        for (int d = 0; d < r; ++d) {
          i64 limit = in.s[d] + pad_begin.s[d] + pad_end.s[d], cnt = 0;
          for (i64 k = 0; k < kernel.s[d]; ++k) cnt += (o[d] * strides.s[d] + k * dilations.s[d] < limit);
          div *= cnt;
        }
      }
      res = acc / (double)div;
    } else {
      res = pow(acc, 1.0 / (double)p);
    }
    S::st(y, e, (float)res);
  }
}
KILN_INSTANTIATE(pool_nd,
  (const void* x, void* y, i64* indices, i64 planes, int r, Str8 in, Str8 out, Str8 kernel, Str8 strides, Str8 dilations, Str8 pad_begin, Str8 pad_end, int kind, float p, int count_include_pad, int col_major),
  (x, y, indices, planes, r, in, out, kernel, strides, dilations, pad_begin, pad_end, kind, p, count_include_pad, col_major))

// MaxPool over 8-bit integers (exact in float); a window without taps gives 0, as the reference's
// saturating conversion of -inf does.
struct U8 {
  static __device__ __forceinline__ float ld(const void* p, i64 i) { return ((const unsigned char*)p)[i]; }
  static __device__ __forceinline__ void st(void* p, i64 i, float v) {
    ((unsigned char*)p)[i] = (unsigned char)(v > 0.0f ? (v < 255.0f ? v : 255.0f) : 0.0f);
  }
};
struct I8 {
  static __device__ __forceinline__ float ld(const void* p, i64 i) { return ((const signed char*)p)[i]; }
  static __device__ __forceinline__ void st(void* p, i64 i, float v) {
    ((signed char*)p)[i] = (signed char)(v > -128.0f ? (v < 127.0f ? v : 127.0f) : -128.0f);
  }
};
extern "C" __global__ void pool_nd_u8(const void* x, void* y, i64* indices, i64 planes, int r, Str8 in, Str8 out, Str8 kernel, Str8 strides, Str8 dilations, Str8 pad_begin, Str8 pad_end, int kind, float p, int count_include_pad, int col_major) {
  pool_nd<U8>(x, y, indices, planes, r, in, out, kernel, strides, dilations, pad_begin, pad_end, kind, p, count_include_pad, col_major);
}
extern "C" __global__ void pool_nd_i8(const void* x, void* y, i64* indices, i64 planes, int r, Str8 in, Str8 out, Str8 kernel, Str8 strides, Str8 dilations, Str8 pad_begin, Str8 pad_end, int kind, float p, int count_include_pad, int col_major) {
  pool_nd<I8>(x, y, indices, planes, r, in, out, kernel, strides, dilations, pad_begin, pad_end, kind, p, count_include_pad, col_major);
}

// ---- Softmax / LogSoftmax over an axis that is not the last: one thread per (outer, inner) -------
// A NaN is taken as the maximum (it poisons its slice, as in the reference).
template <class S>
__device__ void softmax_axis(const void* x, void* y, i64 outer, i64 n, i64 inner, int log_out) {
  i64 total = outer * inner;
  GRID_STRIDE(e, total) {
    i64 i = e % inner, o = e / inner;
    i64 base = o * n * inner + i;
    float m = -INFINITY;
    for (i64 k = 0; k < n; ++k) {
      float v = S::ld(x, base + k * inner);
      if (v > m || (v != v && m == m)) m = v;
    }
    float s = 0.0f;
    for (i64 k = 0; k < n; ++k) s += expf(S::ld(x, base + k * inner) - m);
    if (log_out) {
      float ls = logf(s);
      for (i64 k = 0; k < n; ++k) S::st(y, base + k * inner, S::ld(x, base + k * inner) - m - ls);
    } else {
      float inv = 1.0f / s;
      for (i64 k = 0; k < n; ++k) S::st(y, base + k * inner, expf(S::ld(x, base + k * inner) - m) * inv);
    }
  }
}
KILN_INSTANTIATE(softmax_axis, (const void* x, void* y, i64 outer, i64 n, i64 inner, int log_out), (x, y, outer, n, inner, log_out))

// ---- Normalizations with statistics over a set of axes: one block per kept position ------------
// Block b normalizes the elements at bcast_offset(b, kept...) + bcast_offset(r, red...), r < n_red
// (reduce_axes' scheme). kind 0: (x - mean) / sqrt(var + eps) (Instance/GroupNormalization,
// BatchNormalization's batch statistics); 1: (x - mean) / (sqrt(var) + 1e-9) (MVN); 2: x / sum |x|;
// 3: x / sqrt(sum x^2) (LpNormalization; a zero norm gives zeros). scale/bias (optional, storage
// type) per channel: index ((offset / ch_stride) % channels) / ch_div. Statistics in fp32.
// BatchNormalization in training mode also mixes the running statistics (one channel per block):
// run_*_out = run_*_in * momentum + batch * (1 - momentum).
template <class S>
__device__ void norm_axes(const void* x, void* y, int kept_rank, Str8 kept_shape, Str8 kept_stride, int red_rank,
                          Str8 red_shape, Str8 red_stride, i64 n_red, int kind, float eps, const void* scale,
                          const void* bias, i64 ch_stride, i64 channels, i64 ch_div, const void* run_mean_in,
                          const void* run_var_in, void* run_mean_out, void* run_var_out, float momentum) {
  const i64 base = bcast_offset(blockIdx.x, kept_rank, kept_shape, kept_stride);
  // y = (x - mean) * inv (kind 0) or (x - mean) / den (the others), as the reference computes.
  float mean = 0.0f, inv = 1.0f, den = 1.0f;
  if (kind <= 1) {
    float s = 0.0f;
    for (i64 r = threadIdx.x; r < n_red; r += blockDim.x) s += S::ld(x, base + bcast_offset(r, red_rank, red_shape, red_stride));
    mean = block_reduce(s, false) / (float)n_red;
    float q = 0.0f;
    for (i64 r = threadIdx.x; r < n_red; r += blockDim.x) {
      float d = S::ld(x, base + bcast_offset(r, red_rank, red_shape, red_stride)) - mean;
      q += d * d;
    }
    float var = block_reduce(q, false) / (float)n_red;
    if (kind == 0) inv = 1.0f / sqrtf(var + eps);
    else den = sqrtf(var) + 1e-9f;
    if (threadIdx.x == 0 && run_mean_out)
      S::st(run_mean_out, blockIdx.x, S::ld(run_mean_in, blockIdx.x) * momentum + mean * (1.0f - momentum));
    if (threadIdx.x == 0 && run_var_out)
      S::st(run_var_out, blockIdx.x, S::ld(run_var_in, blockIdx.x) * momentum + var * (1.0f - momentum));
  } else {
    float s = 0.0f;
    for (i64 r = threadIdx.x; r < n_red; r += blockDim.x) {
      float v = S::ld(x, base + bcast_offset(r, red_rank, red_shape, red_stride));
      s += kind == 2 ? fabsf(v) : v * v;
    }
    float norm = block_reduce(s, false);
    if (kind == 3) norm = sqrtf(norm);
    if (norm == 0.0f) inv = 0.0f;  // an all-zero slice normalizes to zeros, not 0/0
    else den = norm;
  }
  for (i64 r = threadIdx.x; r < n_red; r += blockDim.x) {
    i64 off = base + bcast_offset(r, red_rank, red_shape, red_stride);
    float v = kind == 0 ? (S::ld(x, off) - mean) * inv : (S::ld(x, off) - mean) * inv / den;
    i64 ch = ((off / ch_stride) % channels) / ch_div;
    if (scale) v *= S::ld(scale, ch);
    if (bias) v += S::ld(bias, ch);
    S::st(y, off, v);
  }
}
KILN_INSTANTIATE(norm_axes,
  (const void* x, void* y, int kept_rank, Str8 kept_shape, Str8 kept_stride, int red_rank, Str8 red_shape, Str8 red_stride, i64 n_red, int kind, float eps, const void* scale, const void* bias, i64 ch_stride, i64 channels, i64 ch_div, const void* run_mean_in, const void* run_var_in, void* run_mean_out, void* run_var_out, float momentum),
  (x, y, kept_rank, kept_shape, kept_stride, red_rank, red_shape, red_stride, n_red, kind, eps, scale, bias, ch_stride, channels, ch_div, run_mean_in, run_var_in, run_mean_out, run_var_out, momentum))

// ---- BatchNormalization with given statistics: y = (x - mean) * scale / sqrt(var + eps) + bias ---
template <class S>
__device__ void batch_norm(const void* x, void* y, i64 n, i64 channels, i64 spatial, const void* scale,
                           const void* bias, const void* mean, const void* var, float eps) {
  GRID_STRIDE(e, n) {
    i64 ch = (e / spatial) % channels;
    float k = S::ld(scale, ch) / sqrtf(S::ld(var, ch) + eps);
    S::st(y, e, (S::ld(x, e) - S::ld(mean, ch)) * k + S::ld(bias, ch));
  }
}
KILN_INSTANTIATE(batch_norm,
  (const void* x, void* y, i64 n, i64 channels, i64 spatial, const void* scale, const void* bias, const void* mean, const void* var, float eps),
  (x, y, n, channels, spatial, scale, bias, mean, var, eps))

// ---- LRN across channels: y = x / (bias + alpha / size * sum of squares in the window)^beta ------
// The window of channel ch is [ch - floor((size-1)/2), ch + ceil((size-1)/2)], clipped.
template <class S>
__device__ void lrn(const void* x, void* y, i64 n, i64 channels, i64 spatial, i64 size, float alpha, float beta,
                    float bias) {
  const i64 before = (size - 1) / 2, after = size - 1 - before;
  GRID_STRIDE(e, n) {
    i64 s = e % spatial, ch = (e / spatial) % channels, b = e / (spatial * channels);
    i64 lo = ch - before < 0 ? 0 : ch - before, hi = ch + after + 1 < channels ? ch + after + 1 : channels;
    float sq = 0.0f;
    for (i64 j = lo; j < hi; ++j) { float v = S::ld(x, (b * channels + j) * spatial + s); sq += v * v; }
    S::st(y, e, S::ld(x, e) / powf(bias + alpha / (float)size * sq, beta));
  }
}
KILN_INSTANTIATE(lrn,
  (const void* x, void* y, i64 n, i64 channels, i64 spatial, i64 size, float alpha, float beta, float bias),
  (x, y, n, channels, spatial, size, alpha, beta, bias))

// ---- RoiAlign over NCHW: one thread per (roi, channel, bin) --------------------------------------
// Bins of gh x gw bilinear samples (sampling_ratio, or ceil of the bin size); samples more than one
// pixel outside the image contribute nothing. avg: mean over the samples; max: ONNX Runtime's max
// over samples of the largest weighted corner. A batch index out of range sets *err.
template <class S>
__device__ void roi_align(const void* x, const void* rois, const void* batch, int batch_i32, void* y, i64 n, i64 c,
                          i64 h, i64 w, i64 num_rois, i64 oh, i64 ow, i64 sampling_ratio, double spatial_scale,
                          int half_pixel, int max_mode, int* err) {
  i64 total = num_rois * c * oh * ow;
  GRID_STRIDE(e, total) {
    i64 pw = e % ow, ph = (e / ow) % oh, ch = (e / (ow * oh)) % c, r = e / (ow * oh * c);
    i64 b = batch_i32 ? (i64)((const int*)batch)[r] : ((const i64*)batch)[r];
    if (b < 0 || b >= n) { if (err) *err = 1; S::st(y, e, 0.0f); continue; }
    double off = half_pixel ? 0.5 : 0.0;
    double start_w = (double)S::ld(rois, r * 4) * spatial_scale - off;
    double start_h = (double)S::ld(rois, r * 4 + 1) * spatial_scale - off;
    double end_w = (double)S::ld(rois, r * 4 + 2) * spatial_scale - off;
    double end_h = (double)S::ld(rois, r * 4 + 3) * spatial_scale - off;
    double roi_w = end_w - start_w, roi_h = end_h - start_h;
    if (!half_pixel) { roi_w = fmax(roi_w, 1.0); roi_h = fmax(roi_h, 1.0); }
    double bin_h = roi_h / (double)oh, bin_w = roi_w / (double)ow;
    i64 grid_h = sampling_ratio > 0 ? sampling_ratio : (i64)ceil(bin_h);
    i64 grid_w = sampling_ratio > 0 ? sampling_ratio : (i64)ceil(bin_w);
    double count = grid_h * grid_w > 1 ? (double)(grid_h * grid_w) : 1.0;
    const i64 base = (b * c + ch) * h * w;
    double acc = 0.0, best = -INFINITY;
    bool any = false;
    for (i64 iy = 0; iy < grid_h; ++iy) {
      double yy = start_h + (double)ph * bin_h + ((double)iy + 0.5) * bin_h / (double)grid_h;
      for (i64 ix = 0; ix < grid_w; ++ix) {
        double xx = start_w + (double)pw * bin_w + ((double)ix + 0.5) * bin_w / (double)grid_w;
        i64 pos[4] = {0, 0, 0, 0};
        double wt[4] = {0.0, 0.0, 0.0, 0.0};
        if (!(yy < -1.0 || yy > (double)h || xx < -1.0 || xx > (double)w)) {
          double ys = yy > 0.0 ? yy : 0.0, xs = xx > 0.0 ? xx : 0.0;
          i64 y_lo = (i64)ys, x_lo = (i64)xs, y_hi, x_hi;
          if (y_lo >= h - 1) { y_lo = h - 1; ys = (double)y_lo; y_hi = y_lo; } else y_hi = y_lo + 1;
          if (x_lo >= w - 1) { x_lo = w - 1; xs = (double)x_lo; x_hi = x_lo; } else x_hi = x_lo + 1;
          double ly = ys - (double)y_lo, lx = xs - (double)x_lo, hy = 1.0 - ly, hx = 1.0 - lx;
          pos[0] = y_lo * w + x_lo; pos[1] = y_lo * w + x_hi; pos[2] = y_hi * w + x_lo; pos[3] = y_hi * w + x_hi;
          wt[0] = hy * hx; wt[1] = hy * lx; wt[2] = ly * hx; wt[3] = ly * lx;
        }
        if (max_mode) {
          double v = -INFINITY;
          for (int k = 0; k < 4; ++k) v = fmax(v, wt[k] * (double)S::ld(x, base + pos[k]));
          best = any ? fmax(best, v) : v;
          any = true;
        } else {
          double s = 0.0;
          for (int k = 0; k < 4; ++k) s += wt[k] * (double)S::ld(x, base + pos[k]);
          acc += s;
        }
      }
    }
    S::st(y, e, (float)(max_mode ? (any ? best : 0.0) : acc / count));
  }
}
KILN_INSTANTIATE(roi_align,
  (const void* x, const void* rois, const void* batch, int batch_i32, void* y, i64 n, i64 c, i64 h, i64 w, i64 num_rois, i64 oh, i64 ow, i64 sampling_ratio, double spatial_scale, int half_pixel, int max_mode, int* err),
  (x, rois, batch, batch_i32, y, n, c, h, w, num_rois, oh, ow, sampling_ratio, spatial_scale, half_pixel, max_mode, err))
