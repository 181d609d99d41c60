
// ==== sequence kernels (see kernels/mod.rs: LIBRARY)

// ---- ONNX Attention: the softmax between the two products (launch_sequence.rs, attention) ------
// One block per score row (b, h, i) of `cols` keys, in place: the scaled scores Q·Kᵀ become the
// probabilities P (the reference kernel, crates/kiln-cpu/src/ops/rnn_attention/attention.rs, is
// the spec). Per key: softcap (cap·tanh(x/cap)), then the bias: the mask (mask_kind 1: additive
// in the storage type, 2: boolean, true = attend; strides mb/mh/mq per b/h/i, 0 where it
// broadcasts; keys at or past mask_len are masked out unless key_broadcast repeats key 0), -inf
// where the causal frontier, the sliding window or nonpad_kv_seqlen forbid the key. A row whose
// bias is -inf everywhere gets zero probabilities; NaN anywhere makes the row NaN. The query's
// position is i + offset: offset = past_len with a KV cache, nonpad[b] - sq with padding
// lengths, else 0. qk (optional, [B, H, Sq, cols]) receives the row at stage `mode`: 0 the
// scaled scores, 1 after softcap, 2 after the bias, 3 the probabilities.
struct AttnRules {
  i64 heads, sq;
  float softcap;
  int mask_kind, key_broadcast, causal, has_past;
  i64 mb, mh, mq, mask_len;
  i64 left, right, past_len;
};
template <class S>
__device__ void attention_softmax(void* scores, i64 cols, const void* mask, const i64* nonpad, void* qk, int mode,
                                  AttnRules r) {
  const float NEG_INF = -INFINITY;
  i64 row = blockIdx.x;
  i64 base = row * cols;
  i64 i = row % r.sq, h = (row / r.sq) % r.heads, b = row / (r.sq * r.heads);
  i64 valid = nonpad ? nonpad[b] : (i64)0x7fffffffffffffffLL;
  i64 pos = i + (r.has_past ? r.past_len : (nonpad ? nonpad[b] - r.sq : 0));
  i64 moff = b * r.mb + h * r.mh + i * r.mq;
  float m = NEG_INF, has_nan = 0.0f, attendable = 0.0f;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
    float x = S::ld(scores, base + j);
    if (qk && mode == 0) S::st(qk, base + j, x);
    if (r.softcap > 0.0f) x = r.softcap * tanhf(x / r.softcap);
    if (qk && mode == 1) S::st(qk, base + j, x);
    float bias = 0.0f;
    if (r.mask_kind != 0) {
      i64 at = r.key_broadcast ? moff : moff + j;
      if (!r.key_broadcast && j >= r.mask_len) bias = NEG_INF;
      else if (r.mask_kind == 2) bias = ((const unsigned char*)mask)[at] ? 0.0f : NEG_INF;
      else bias = S::ld(mask, at);
    }
    i64 diff = pos - j;
    bool allowed = !((r.causal && j > pos) || (r.left >= 0 && diff > r.left) || (r.right >= 0 && -diff > r.right) ||
                     j >= valid);
    if (!allowed) bias += NEG_INF;
    if (bias != NEG_INF) attendable = 1.0f;
    x += bias;
    if (qk && mode == 2) S::st(qk, base + j, x);
    if (x != x) has_nan = 1.0f;
    m = fmaxf(m, x);
    S::st(scores, base + j, x);
  }
  m = block_reduce(m, true);
  has_nan = block_reduce(has_nan, true);
  attendable = block_reduce(attendable, true);
  float shift = m == NEG_INF ? 0.0f : m;
  float s = 0.0f;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) s += expf(S::ld(scores, base + j) - shift);
  s = block_reduce(s, false);
  if (s == 0.0f) s = 1.0f;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
    float p = expf(S::ld(scores, base + j) - shift) / s;
    if (has_nan != 0.0f) p = __int_as_float(0x7fc00000);
    if (attendable == 0.0f) p = 0.0f;
    S::st(scores, base + j, p);
    if (qk && mode == 3) S::st(qk, base + j, p);
  }
}
KILN_INSTANTIATE(attention_softmax,
  (void* scores, i64 cols, const void* mask, const i64* nonpad, void* qk, int mode, AttnRules r),
  (scores, cols, mask, nonpad, qk, mode, r))

// ---- RotaryEmbedding: one thread per element of X ----------------------------------------------
// X is [B, H, S, D] (four_d) or [B, S, H·D]; the first `rot` elements of each head vector are
// rotated in pairs (i, i + rot/2), or (2i, 2i + 1) when interleaved, by the angle of cache row
// pos[b, s] (or b·S + s without position ids; caches [rows, rot/2]); the rest is copied. A
// position outside [0, rows) sets *err and writes zero.
template <class S>
__device__ void rotary_embedding(const void* x, void* y, const void* cosc, const void* sinc, const i64* pos, i64 n,
                                 i64 seq, i64 heads, i64 dim, i64 rot, int interleaved, int four_d, i64 rows, int* err) {
  GRID_STRIDE(e, n) {
    i64 c = e % dim, t = e / dim, s, b;
    if (four_d) { s = t % seq; b = t / (seq * heads); }
    else { s = (t / heads) % seq; b = t / (heads * seq); }
    if (c >= rot) { S::st(y, e, S::ld(x, e)); continue; }
    i64 row = pos ? pos[b * seq + s] : b * seq + s;
    if (row < 0 || row >= rows) { S::st(y, e, 0.0f); if (err) *err = 1; continue; }
    i64 half = rot / 2, i, first, second;
    if (interleaved) { i = c / 2; first = e - (c & 1); second = first + 1; }
    else { i = c < half ? c : c - half; first = e - c + i; second = first + half; }
    float co = S::ld(cosc, row * half + i), si = S::ld(sinc, row * half + i);
    float x1 = S::ld(x, first), x2 = S::ld(x, second);
    S::st(y, e, e == first ? co * x1 - si * x2 : si * x1 + co * x2);
  }
}
KILN_INSTANTIATE(rotary_embedding,
  (const void* x, void* y, const void* cosc, const void* sinc, const i64* pos, i64 n, i64 seq, i64 heads, i64 dim, i64 rot, int interleaved, int four_d, i64 rows, int* err),
  (x, y, cosc, sinc, pos, n, seq, heads, dim, rot, interleaved, four_d, rows, err))

// ---- Einsum: one thread per output element, summing products over the summed labels ---------
// (einsum.rs plans the loops: per output dim and per summed label its size and each operand's
// stride.) Up to 4 operands; products and the sum in fp64, so f64 graphs (einsum_f64) keep
// their precision.
struct EinsumLoops { i64 out_shape[8]; i64 out_stride[4][8]; i64 sum_shape[8]; i64 sum_stride[4][8]; };
struct EinsumF64 {
  static __device__ __forceinline__ double ld(const void* p, i64 i) { return ((const double*)p)[i]; }
  static __device__ __forceinline__ void st(void* p, i64 i, double v) { ((double*)p)[i] = v; }
};
template <class S>
__device__ void einsum(const void* x0, const void* x1, const void* x2, const void* x3, void* y, i64 n, int n_ops,
                       int out_rank, int sum_rank, i64 n_sum, EinsumLoops L) {
  const void* xs[4] = {x0, x1, x2, x3};
  GRID_STRIDE(o, n) {
    i64 base[4] = {0, 0, 0, 0};
    i64 rem = o;
    for (int k = out_rank - 1; k >= 0; --k) {
      i64 c = rem % L.out_shape[k];
      rem /= L.out_shape[k];
      for (int p = 0; p < n_ops; ++p) base[p] += c * L.out_stride[p][k];
    }
    double acc = 0.0;
    for (i64 r = 0; r < n_sum; ++r) {
      i64 off[4] = {base[0], base[1], base[2], base[3]};
      i64 rr = r;
      for (int k = sum_rank - 1; k >= 0; --k) {
        i64 c = rr % L.sum_shape[k];
        rr /= L.sum_shape[k];
        for (int p = 0; p < n_ops; ++p) off[p] += c * L.sum_stride[p][k];
      }
      double prod = 1.0;
      for (int p = 0; p < n_ops; ++p) prod *= (double)S::ld(xs[p], off[p]);
      acc += prod;
    }
    S::st(y, o, acc);
  }
}
KILN_INSTANTIATE(einsum,
  (const void* x0, const void* x1, const void* x2, const void* x3, void* y, i64 n, int n_ops, int out_rank, int sum_rank, i64 n_sum, EinsumLoops L),
  (x0, x1, x2, x3, y, n, n_ops, out_rank, sum_rank, n_sum, L))
extern "C" __global__ void einsum_f64(const void* x0, const void* x1, const void* x2, const void* x3, void* y, i64 n,
                                      int n_ops, int out_rank, int sum_rank, i64 n_sum, EinsumLoops L) {
  einsum<EinsumF64>(x0, x1, x2, x3, y, n, n_ops, out_rank, sum_rank, n_sum, L);
}

// ---- MatMulInteger / QLinearMatMul: exact integer products, one thread per output element ----
// A [.., M, K] and B [.., K, N] are int8 (signed) or uint8, centred by their zero points (none,
// a scalar, one per row of A / per column of B). y_kind 5 (int32): the sum itself
// (MatMulInteger). y_kind 7/8 (int8/uint8): requantized as the reference does: the multiplier
// a_scale·b_scale/y_scale rounded to the scales' type after each step (scale_round: dtype
// code), rint(sum · multiplier) + y_zero_point, saturated. Scales hold 1 or N values.
struct QMatDims { i64 m, n, k; int nb; i64 batch[8]; i64 a_stride[8]; i64 b_stride[8]; };
__device__ __forceinline__ i64 load_q8(const void* p, i64 i, int is_signed) {
  return is_signed ? (i64)((const signed char*)p)[i] : (i64)((const unsigned char*)p)[i];
}
__device__ __forceinline__ double round_to(double x, int code) {
  switch (code) {
    case 0: return (double)(float)x;
    case 1: return (double)h2f(f2h((float)x));
    case 2: return (double)b2f(f2b((float)x));
    default: return x;
  }
}
// The output side of a quantized product: y_kind 5 (int32) stores the sum; 7/8 (int8/uint8)
// requantize it with the multiplier of output channel `ch` (scales of 1 or N values).
struct QOut {
  const void* a_scale; const void* b_scale; const void* y_scale; const void* y_zp;
  i64 a_sn, b_sn, y_sn;
  int scale_load, scale_round, y_kind;
};
__device__ __forceinline__ void store_quantized(void* y, i64 o, i64 acc, i64 ch, const QOut& q) {
  if (q.y_kind == 5) { ((int*)y)[o] = (int)acc; return; }
  double mult = load_any(q.a_scale, q.a_sn == 1 ? 0 : ch, q.scale_load);
  mult = round_to(mult * load_any(q.b_scale, q.b_sn == 1 ? 0 : ch, q.scale_load), q.scale_round);
  mult = round_to(mult / load_any(q.y_scale, q.y_sn == 1 ? 0 : ch, q.scale_load), q.scale_round);
  double r = rint((double)acc * mult) + (q.y_zp ? (double)load_q8(q.y_zp, 0, q.y_kind == 7) : 0.0);
  double lo = q.y_kind == 7 ? -128.0 : 0.0, hi = q.y_kind == 7 ? 127.0 : 255.0;
  r = r != r ? 0.0 : fmin(fmax(r, lo), hi);
  if (q.y_kind == 7) ((signed char*)y)[o] = (signed char)r;
  else ((unsigned char*)y)[o] = (unsigned char)r;
}
extern "C" __global__ void quant_matmul(const void* a, int a_signed, const void* a_zp, i64 a_zp_len, const void* b,
                                        int b_signed, const void* b_zp, i64 b_zp_len, void* y, i64 total, QMatDims d,
                                        QOut q) {
  GRID_STRIDE(o, total) {
    i64 col = o % d.n, row = (o / d.n) % d.m, rem = o / (d.n * d.m), a_off = 0, b_off = 0;
    for (int j = d.nb - 1; j >= 0; --j) {
      i64 c = rem % d.batch[j];
      rem /= d.batch[j];
      a_off += c * d.a_stride[j];
      b_off += c * d.b_stride[j];
    }
    i64 za = a_zp ? load_q8(a_zp, a_zp_len == 1 ? 0 : row, a_signed) : 0;
    i64 zb = b_zp ? load_q8(b_zp, b_zp_len == 1 ? 0 : col, b_signed) : 0;
    i64 acc = 0;
    for (i64 kk = 0; kk < d.k; ++kk) {
      acc += (load_q8(a, a_off + row * d.k + kk, a_signed) - za) * (load_q8(b, b_off + kk * d.n + col, b_signed) - zb);
    }
    store_quantized(y, o, acc, col, q);
  }
}

// ---- ConvInteger / QLinearConv: exact integer convolution, one thread per output element -------
// X [N, C, spatial..] and W [M, C/group, kernel..] of 8 bits, centred by their zero points (X:
// a scalar; W: a scalar or one per output channel); padding contributes zero (the zero point).
// QLinearConv adds its int32 bias and requantizes per output channel (store_quantized).
struct QConvGeom {
  int nsp;
  i64 n, c, m, group;
  i64 in[3], out[3], k[3], stride[3], pad[3], dil[3];
};
extern "C" __global__ void quant_conv(const void* x, int x_signed, const void* x_zp, const void* w, int w_signed,
                                      const void* w_zp, i64 w_zp_len, const int* bias, void* y, i64 total, QConvGeom g,
                                      QOut q) {
  i64 out_size = 1, in_size = 1, k_size = 1;
  for (int s = 0; s < g.nsp; ++s) { out_size *= g.out[s]; in_size *= g.in[s]; k_size *= g.k[s]; }
  i64 cg = g.c / g.group, mg = g.m / g.group;
  GRID_STRIDE(o, total) {
    i64 sp = o % out_size, m = (o / out_size) % g.m, n = o / (out_size * g.m), grp = m / mg;
    i64 oc[3] = {0, 0, 0}, rem = sp;
    for (int s = g.nsp - 1; s >= 0; --s) { oc[s] = rem % g.out[s]; rem /= g.out[s]; }
    i64 zx = x_zp ? load_q8(x_zp, 0, x_signed) : 0;
    i64 zw = w_zp ? load_q8(w_zp, w_zp_len == 1 ? 0 : m, w_signed) : 0;
    i64 acc = bias ? (i64)bias[m] : 0;
    for (i64 ci = 0; ci < cg; ++ci) {
      i64 x_base = (n * g.c + grp * cg + ci) * in_size, w_base = (m * cg + ci) * k_size;
      for (i64 kk = 0; kk < k_size; ++kk) {
        i64 r = kk, off = 0, stride = 1;
        bool inside = true;
        for (int s = g.nsp - 1; s >= 0; --s) {
          i64 kc = r % g.k[s];
          r /= g.k[s];
          i64 ic = oc[s] * g.stride[s] - g.pad[s] + kc * g.dil[s];
          if (ic < 0 || ic >= g.in[s]) { inside = false; break; }
          off += ic * stride;
          stride *= g.in[s];
        }
        if (inside) acc += (load_q8(x, x_base + off, x_signed) - zx) * (load_q8(w, w_base + kk, w_signed) - zw);
      }
    }
    store_quantized(y, o, acc, m, q);
  }
}

// ---- LinearAttention: the recurrent form, one thread per (batch, kv head, value column) --------
// Column c of a kv head's state S (d_k × d_v, fp32 in `state`, rows dv apart) depends on nothing
// else, so each thread runs the whole sequence for its column: gating (S ·= exp(g), g per head
// or per key dim), delta correction (v ← β (v − Sᵀk)), the write S += k vᵀ, and the read
// y = scale · qᵀS for each query head of the group. Inputs are packed [B, T, H·D]; past
// (optional) and present (optional) are [B, Hkv, dk, dv].
template <class S>
__device__ void linear_attention(const void* q, const void* k, const void* v, const void* past, const void* decay,
                                 const void* beta, void* y, void* present, float* state, i64 nb, i64 t, i64 hq,
                                 i64 hkv, i64 dk, i64 dv, i64 gw, i64 hb, int gating, int delta, float scale) {
  GRID_STRIDE(idx, nb * hkv * dv) {
    i64 c = idx % dv, h = (idx / dv) % hkv, b = idx / (dv * hkv), group = hq / hkv;
    i64 sbase = (b * hkv + h) * dk * dv + c;
    float* s = state + sbase;
    for (i64 d = 0; d < dk; ++d) s[d * dv] = past ? S::ld(past, sbase + d * dv) : 0.0f;
    for (i64 ti = 0; ti < t; ++ti) {
      i64 row = b * t + ti, kb = row * hkv * dk + h * dk;
      float vt = S::ld(v, row * hkv * dv + h * dv + c);
      if (gating)
        for (i64 d = 0; d < dk; ++d) s[d * dv] *= expf(S::ld(decay, row * hkv * gw + h * gw + (gw == 1 ? 0 : d)));
      if (delta) {
        float r = 0.0f;
        for (i64 d = 0; d < dk; ++d) r += S::ld(k, kb + d) * s[d * dv];
        vt = S::ld(beta, row * hb + (hb == 1 ? 0 : h)) * (vt - r);
      }
      for (i64 d = 0; d < dk; ++d) s[d * dv] += S::ld(k, kb + d) * vt;
      for (i64 hh = h * group; hh < (h + 1) * group; ++hh) {
        float o = 0.0f;
        for (i64 d = 0; d < dk; ++d) o += S::ld(q, row * hq * dk + hh * dk + d) * s[d * dv];
        S::st(y, (row * hq + hh) * dv + c, o * scale);
      }
    }
    if (present)
      for (i64 d = 0; d < dk; ++d) S::st(present, sbase + d * dv, s[d * dv]);
  }
}
KILN_INSTANTIATE(linear_attention,
  (const void* q, const void* k, const void* v, const void* past, const void* decay, const void* beta, void* y, void* present, float* state, i64 nb, i64 t, i64 hq, i64 hkv, i64 dk, i64 dv, i64 gw, i64 hb, int gating, int delta, float scale),
  (q, k, v, past, decay, beta, y, present, state, nb, t, hq, hkv, dk, dv, gw, hb, gating, delta, scale))

// ---- RNN / GRU / LSTM: one block per (direction, batch entry), threads over hidden units -------
// Each step computes the gates' pre-activations X_t·Wᵀ + Wb + H·Rᵀ + Rb row by row (the block
// syncs between reading the old state and writing the new one). Steps past a batch entry's
// sequence length leave its state alone and its Y rows zero (Y is zeroed first); reverse runs
// from the last valid step. Gate orders as ONNX: GRU z, r, h; LSTM i, o, f, c. Activation
// codes: 0 Relu, 1 Tanh, 2 Sigmoid, 3 Affine, 4 LeakyRelu, 5 ThresholdedRelu, 6 ScaledTanh,
// 7 HardSigmoid, 8 Elu, 9 Softsign, 10 Softplus (per direction: f, g, h).
struct RnnActs { int code[6]; float alpha[6]; float beta[6]; };
struct RnnDims {
  i64 seq, batch, input, hidden, dirs;
  int cell, linear_before_reset, input_forget, layout, reverse, lens_i32;
  float clip;
};
__device__ __forceinline__ float rnn_act(const RnnActs& a, int i, float x) {
  float al = a.alpha[i], be = a.beta[i];
  switch (a.code[i]) {
    case 0: return x > 0.0f ? x : 0.0f;
    case 1: return tanhf(x);
    case 2: return 1.0f / (1.0f + expf(-x));
    case 3: return al * x + be;
    case 4: return x >= 0.0f ? x : al * x;
    case 5: return x > al ? x : 0.0f;
    case 6: return al * tanhf(be * x);
    case 7: return fminf(fmaxf(al * x + be, 0.0f), 1.0f);
    case 8: return x >= 0.0f ? x : al * (expf(x) - 1.0f);
    case 9: return x / (1.0f + fabsf(x));
    default: return (float)log1p(exp((double)x));
  }
}
template <class S>
__device__ void recurrent(const void* x, const void* w, const void* r, const void* bias, const void* lens,
                          const void* h0, const void* c0, const void* peep, void* y, void* yh, void* yc, float* scratch,
                          int* err, RnnDims d, RnnActs acts) {
  const i64 H = d.hidden, I = d.input, B = d.batch;
  const int gates = d.cell == 0 ? 1 : (d.cell == 1 ? 3 : 4);
  const i64 GH = gates * H;
  i64 dir = blockIdx.x / B, b = blockIdx.x % B;
  const int a0 = (int)dir * 3;
  bool reverse = d.reverse || dir == 1;
  // State index of (dir, b, k) in H0/C0/Y_h/Y_c, in either layout.
  i64 sbase = (d.layout == 0 ? dir * B + b : b * d.dirs + dir) * H;
  i64 n_state = d.dirs * B * H, own = (dir * B + b) * H;
  float* h = scratch + own;
  float* c = scratch + n_state + own;
  float* hn = scratch + 2 * n_state + own;
  float* rh = scratch + 3 * n_state + own;
  i64 len = d.seq;
  if (lens) {
    len = d.lens_i32 ? (i64)((const int*)lens)[b] : ((const i64*)lens)[b];
    if (len < 0 || len > d.seq) { if (err) *err = 1; len = 0; }
  }
  i64 w_off = dir * GH * I, r_off = dir * GH * H, b_off = dir * 2 * GH, p_off = dir * 3 * H;
  for (i64 k = threadIdx.x; k < H; k += blockDim.x) {
    h[k] = h0 ? S::ld(h0, sbase + k) : 0.0f;
    c[k] = c0 ? S::ld(c0, sbase + k) : 0.0f;
  }
  __syncthreads();
  auto clampv = [&](float v) { return d.clip > 0.0f ? fminf(fmaxf(v, -d.clip), d.clip) : v; };
  // Pre-activation of gate g for unit k at time t: X_t·W_gᵀ + Wb (xpart) and H·R_gᵀ + Rb (hpart).
  auto xpart = [&](i64 t, int g, i64 k) {
    i64 xrow = d.layout == 0 ? (t * B + b) * I : (b * d.seq + t) * I;
    float s = bias ? S::ld(bias, b_off + g * H + k) : 0.0f;
    for (i64 i = 0; i < I; ++i) s += S::ld(x, xrow + i) * S::ld(w, w_off + (g * H + k) * I + i);
    return s;
  };
  auto hpart = [&](const float* hv, int g, i64 k) {
    float s = bias ? S::ld(bias, b_off + GH + g * H + k) : 0.0f;
    for (i64 j = 0; j < H; ++j) s += hv[j] * S::ld(r, r_off + (g * H + k) * H + j);
    return s;
  };
  for (i64 step = 0; step < len; ++step) {
    i64 t = reverse ? len - 1 - step : step;
    if (d.cell == 1 && !d.linear_before_reset) {
      for (i64 k = threadIdx.x; k < H; k += blockDim.x)
        rh[k] = rnn_act(acts, a0, clampv(xpart(t, 1, k) + hpart(h, 1, k))) * h[k];
      __syncthreads();
    }
    for (i64 k = threadIdx.x; k < H; k += blockDim.x) {
      float hv;
      if (d.cell == 0) {
        hv = rnn_act(acts, a0, clampv(xpart(t, 0, k) + hpart(h, 0, k)));
      } else if (d.cell == 1) {
        float z = rnn_act(acts, a0, clampv(xpart(t, 0, k) + hpart(h, 0, k)));
        float pre;
        if (d.linear_before_reset) {
          float rg = rnn_act(acts, a0, clampv(xpart(t, 1, k) + hpart(h, 1, k)));
          pre = xpart(t, 2, k) + rg * hpart(h, 2, k);
        } else {
          pre = xpart(t, 2, k) + hpart(rh, 2, k);
        }
        float cand = rnn_act(acts, a0 + 1, clampv(pre));
        hv = (1.0f - z) * cand + z * h[k];
      } else {
        float cp = c[k];
        float pi = peep ? S::ld(peep, p_off + k) : 0.0f, po = peep ? S::ld(peep, p_off + H + k) : 0.0f;
        float pf = peep ? S::ld(peep, p_off + 2 * H + k) : 0.0f;
        float ig = rnn_act(acts, a0, clampv(xpart(t, 0, k) + hpart(h, 0, k) + pi * cp));
        float fg = d.input_forget ? 1.0f - ig : rnn_act(acts, a0, clampv(xpart(t, 2, k) + hpart(h, 2, k) + pf * cp));
        float cand = rnn_act(acts, a0 + 1, clampv(xpart(t, 3, k) + hpart(h, 3, k)));
        float cn = fg * cp + ig * cand;
        float o = rnn_act(acts, a0, clampv(xpart(t, 1, k) + hpart(h, 1, k) + po * cn));
        rh[k] = cn;  // the new cell state, committed after the sync
        hv = o * rnn_act(acts, a0 + 2, cn);
      }
      hn[k] = hv;
    }
    __syncthreads();
    for (i64 k = threadIdx.x; k < H; k += blockDim.x) {
      h[k] = hn[k];
      if (d.cell == 2) c[k] = rh[k];
      i64 yi = d.layout == 0 ? ((t * d.dirs + dir) * B + b) * H + k : ((b * d.seq + t) * d.dirs + dir) * H + k;
      if (y) S::st(y, yi, hn[k]);
    }
    __syncthreads();
  }
  for (i64 k = threadIdx.x; k < H; k += blockDim.x) {
    if (yh) S::st(yh, sbase + k, h[k]);
    if (yc) S::st(yc, sbase + k, c[k]);
  }
}
KILN_INSTANTIATE(recurrent,
  (const void* x, const void* w, const void* r, const void* bias, const void* lens, const void* h0, const void* c0, const void* peep, void* y, void* yh, void* yc, float* scratch, int* err, RnnDims d, RnnActs acts),
  (x, w, r, bias, lens, h0, c0, peep, y, yh, yc, scratch, err, d, acts))
