// The int8-activation path of cpu_matmul.cc (included there): x is quantized to int8 the
// way llama.cpp quantizes a row for its quantized dot products, and each weight block is
// multiplied in integers, then scaled in f32.
//
// A different numerical model from the f32 path, chosen to follow llama.cpp's:
// - kQ8K (k-quant weights): blocks of 256, ggml's quantize_row_q8_K: the value of largest
//   magnitude maps to -127, iscale = -127 / max, q = min(127, round(iscale * x)) with ties
//   to even, d = 1 / iscale.
// - kQ8_0 (the legacy types): blocks of 32, ggml's quantize_row_q8_0/q8_1: d = amax / 127
//   rounded to f16, q = round(x * 127 / amax).
// Then y = sum over weight sub-blocks j of dx * (scale_j * D_j - min_j * B_j), with
// D_j = sum(code * q) exact in int32 and B_j = sum(q). Codes must be unsigned for the
// u8 x s8 products (VNNI vpdpbusd): int8 codes get +128 and min_j += 128 * scale_j (AVX2
// multiplies them signed instead: kSignedInt8).
//
// Per output, 16 lanes of 4 codes are scaled and summed in f32 in a fixed order, and rows
// of x never share a sum: results do not depend on the batch.
//
// Interleaved weights (QuantArray.interleave = S, k-quants: phijax.quant.interleaved)
// hold, in each group of 16 sub-blocks of S codes, steps of 64 bytes in which lane l has 4
// codes of sub-block l; x is quantized into the same order. Each lane's integer sum then
// covers a whole sub-block (S / 4 dot products) before one f32 scaling per 16 sub-blocks,
// instead of one per 64 codes.

enum class Act : int64_t { kF32 = 0, kQ8K = 1, kQ8_0 = 2 };


// ggml's nearest_int: round to nearest, ties to even, for |f| < 2^22.
inline int32_t nearest_int(float f) {
  const float v = f + 12582912.0f;
  int32_t i;
  std::memcpy(&i, &v, sizeof i);
  return (i & 0x007FFFFF) - 0x00400000;
}

// f rounded to the nearest IEEE half (ties to even), as an f32 (what storing ggml's f16 d does).
inline float round_to_half(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  const uint32_t sign = b & 0x80000000u;
  uint32_t a = b ^ sign;
  if (a >= 0x7F800000u) return f;
  if (a >= 0x477FF000u) {  // 65520 and above round to infinity
    a = 0x7F800000u;
  } else if (a < 0x38800000u) {  // a half subnormal: multiples of 2^-24
    const float q = std::nearbyint(std::fabs(f) * 16777216.0f) / 16777216.0f;
    std::memcpy(&a, &q, sizeof a);
  } else {  // keep 10 bits of mantissa
    a = (a + 0xFFFu + ((a >> 13) & 1u)) & ~0x1FFFu;
  }
  a |= sign;
  float r;
  std::memcpy(&r, &a, sizeof r);
  return r;
}

// The largest |x[j]| of a block of n (a multiple of 16) and, in ``max``, the first x[j] that
// has it: ggml's loop (a strict comparison keeps the first; NaNs never compare), a vector at
// a time. The row quantizer's search was its scalar loop's bound: three quarters of
// quantize_rows' time, 3% of a 32-token int8 prefill.
inline float block_amax(const float* x, int64_t n, float* max) {
  float amax = 0.0f;
#if defined(__AVX512F__)
  __m512 m = _mm512_setzero_ps();  // max_ps returns its second operand where one is NaN
  for (int64_t j = 0; j < n; j += 16) m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + j)), m);
  amax = _mm512_reduce_max_ps(m);
  for (int64_t j = 0; amax > 0.0f && j < n; j += 16) {
    const __mmask16 at = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + j)), _mm512_set1_ps(amax), _CMP_EQ_OQ);
    if (at) {
      *max = x[j + __builtin_ctz(at)];
      return amax;
    }
  }
#elif defined(__AVX2__)
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), magnitude), m);
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
  for (int64_t j = 0; amax > 0.0f && j < n; j += 8) {
    const __m256 ax = _mm256_and_ps(_mm256_loadu_ps(x + j), magnitude);
    const int at = _mm256_movemask_ps(_mm256_cmp_ps(ax, _mm256_set1_ps(amax), _CMP_EQ_OQ));
    if (at) {
      *max = x[j + __builtin_ctz(at)];
      return amax;
    }
  }
#else
  for (int64_t j = 0; j < n; ++j) {
    const float ax = std::fabs(x[j]);
    if (ax > amax) {
      amax = ax;
      *max = x[j];
    }
  }
#endif
  return amax;
}

// Rows of x quantized to int8: ``q [m, cols]`` (in the weight's interleaved order if it has
// one); ``lane``, the scale (d) of the block each 4 consecutive codes belong to, ``[m, cols / 4]``
// (interleaved: of the block each sub-block belongs to, ``[m, cols / sub]``); ``sums
// [m, cols / sub]``, d * sum(q) over each weight sub-block of ``sub`` codes.
struct QuantX {
  AlignedVector<int8_t> q;  // read by whole-vector loads
  std::vector<float> lane, sums;
};

inline void quantize_rows(const float* x, int64_t m, int64_t cols, Act act, int64_t sub, QuantX& out,
                          int64_t interleave = 0) {
  out.q.resize(m * cols);
  const int64_t per_lane = interleave ? sub : 4;
  out.lane.resize(m * cols / per_lane);
  out.sums.resize(m * cols / sub);
  const int64_t block = act == Act::kQ8K ? 256 : 32;
  std::vector<int8_t> row_order(interleave ? cols : 0);
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * cols;
    int8_t* qr = interleave ? row_order.data() : out.q.data() + r * cols;
    for (int64_t b = 0; b < cols; b += block) {
      float max = 0.0f;
      const float amax = block_amax(xr + b, block, &max);
      float d = 0.0f;
      if (amax == 0.0f) {
        std::fill(qr + b, qr + b + block, int8_t{0});
      } else if (act == Act::kQ8K) {
        const float iscale = -127.0f / max;
        for (int64_t j = b; j < b + block; ++j) qr[j] = static_cast<int8_t>(std::min(127, nearest_int(iscale * xr[j])));
        d = 1.0f / iscale;
      } else {
        const float id = 127.0f / amax;
        for (int64_t j = b; j < b + block; ++j) qr[j] = static_cast<int8_t>(nearest_int(xr[j] * id));
        d = round_to_half(amax / 127.0f);
      }
      std::fill(out.lane.begin() + (r * cols + b) / per_lane, out.lane.begin() + (r * cols + b + block) / per_lane,
                d);
    }
    for (int64_t j = 0; j < cols / sub; ++j) {
      int32_t s = 0;
      for (int64_t t = j * sub; t < (j + 1) * sub; ++t) s += qr[t];
      out.sums[r * (cols / sub) + j] = out.lane[(r * cols + j * sub) / per_lane] * static_cast<float>(s);
    }
    if (interleave) {  // step t of group g, lane l, byte j: code g * 16S + l * S + 4t + j
      int8_t* dst = out.q.data() + r * cols;
      for (int64_t g = 0; g < cols; g += 16 * sub) {
        for (int64_t t = 0; t < sub / 4; ++t) {
          for (int64_t l = 0; l < 16; ++l) std::memcpy(dst + g + 64 * t + 4 * l, qr + g + l * sub + 4 * t, 4);
        }
      }
    }
  }
}

// The 64 codes k ... k + 63 of a weight row (fifth bits in ``high``) as unsigned bytes
// (int8 codes + 128).
template <Codes kCodes>
inline void unsigned_codes(const uint8_t* row, const uint8_t* high, int64_t k, uint8_t* u) {
  if constexpr (kCodes == Codes::kInt8) {
    for (int i = 0; i < 64; ++i) u[i] = row[k + i] ^ 0x80u;
  } else {
    constexpr int group = kStep<kCodes>, half = group / 2;
    for (int h = 0; h < 64 / group; ++h) {
      const uint8_t* b = row + k / 2 + h * half;
      for (int i = 0; i < half; ++i) {
        u[h * group + i] = b[i] & 15u;
        u[h * group + half + i] = b[i] >> 4;
      }
    }
    if constexpr (has_fifth(kCodes)) {
      for (int i = 0; i < 64; ++i) u[i] |= ((high[(k + i) / 8] >> ((k + i) % 8)) & 1u) << 4;
    }
  }
}

constexpr int kInt8Rows = 4;  // rows of x per tile: each weight group is unpacked once for them

// Rows of x per interleaved tile where VNNI multiplies: each unpacked code vector serves 8 rows
// (the 8 x 2 tile's 32 sums and its codes need more than 32 registers, and a few sums go to
// the stack; still the fastest shape). bench_tiles.py on Intel Xeon (Emerald Rapids), ns per 8
// weights per row of x, 4 x 2 -> 8 x 2: Q4_K 0.045 -> 0.038, Q5_K 0.051 -> 0.042, Q6_K's 6-bit
// codes 0.072 -> 0.058, int8 codes 0.058 -> 0.057; 12 x 1, 12 x 2 and 16 x 1 slower. The
// maddubs tiles stay at 4 rows (16 registers): there 8 rows gained only on Q4_K (0.092 ->
// 0.083), were level on Q5_K and Q6_K and slower on int8 codes (0.152 -> 0.159).
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr int kGroupRows = 8;
#else
constexpr int kGroupRows = kInt8Rows;
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// Keeps a loaded vector of x in a register for both weight rows of a pair. Left to itself,
// GCC folds the load into each vpdpbusd as a memory operand and loads every x vector twice:
// as many 512-bit loads as products (Zen 4 loads two 256-bit halves, one such vector, a
// cycle; not measured there). bench_tiles.py on the Xeon, alternating builds, 8 x 2: Q4_K
// 0.0458 -> 0.0406 ns, Q5_K 0.0494 -> 0.0466, Q6_K's 6-bit codes 0.0657 -> 0.0623, int8 codes
// 0.0637 -> 0.0539.
#if defined(SIMDE_VERSION)  // emulated (scripts/check_avx512_emulated.sh): a struct, no register
inline void in_register(__m512i&) {}
#else
inline void in_register(__m512i& v) { __asm__("" : "+v"(v)); }
#endif

template <Codes kCodes>
inline __m512i unsigned_codes_512(const uint8_t* row, const uint8_t* high, int64_t k) {
  if constexpr (kCodes == Codes::kInt8) {
    return _mm512_xor_si512(_mm512_loadu_si512(row + k), _mm512_set1_epi8(static_cast<char>(0x80)));
  } else {
    const __m512i b = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k / 2)));
    // 64-code groups: [bytes 0-31 low | bytes 0-31 high]; 32-code groups: per 16 bytes, low then high
    constexpr bool k64 = kStep<kCodes> == 64;
    const __m512i lanes = k64 ? _mm512_shuffle_i64x2(b, b, 0x44) : _mm512_shuffle_i64x2(b, b, 0x50);
    const __m512i shifted = _mm512_srli_epi16(lanes, 4);
    const __m512i mixed = _mm512_mask_blend_epi64(k64 ? 0xF0 : 0xCC, lanes, shifted);
    const __m512i codes = _mm512_and_si512(mixed, _mm512_set1_epi8(15));
    if constexpr (!has_fifth(kCodes)) return codes;
    uint64_t fifth;  // byte i of the vector is code k + i
    std::memcpy(&fifth, high + k / 8, sizeof fifth);
    return _mm512_mask_add_epi8(codes, _cvtu64_mask64(fifth), codes, _mm512_set1_epi8(16));
  }
}
#elif defined(__AVX2__)
// AVX2 without VNNI: llama.cpp's maddubs path. Per int32 lane, the sum of 4 products of codes u
// and int8 activations q (-127..127): maddubs multiplies unsigned by signed bytes and adds pairs
// into int16, exact while |u| <= 128 (2 · 128 · 127 < 2^15). 4- to 6-bit codes go as they are;
// int8 codes go signed, as llama.cpp's Q8_0 products do: their magnitudes by the activations
// with the codes' signs (vpsignb), so no +128 offset (zero_point) and one product, not two.
template <Codes kCodes>
inline __m256i dot4_256(__m256i u, __m256i q) {
  const __m256i pairs = kCodes == Codes::kInt8 ? _mm256_maddubs_epi16(_mm256_abs_epi8(u), _mm256_sign_epi8(q, u))
                                               : _mm256_maddubs_epi16(u, q);
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

// v plus 16 in the bytes whose bit is set in m.
inline __m256i add_fifth(__m256i v, uint32_t m) {
  return _mm256_add_epi8(v, _mm256_and_si256(bytes_from_bits(m), _mm256_set1_epi8(16)));
}

// unsigned_codes in two vectors (codes k ... k + 31, k + 32 ... k + 63), int8 codes signed.
template <Codes kCodes>
inline void unsigned_codes_256(const uint8_t* row, const uint8_t* high, int64_t k, __m256i* u) {
  if constexpr (kCodes == Codes::kInt8) {
    for (int h = 0; h < 2; ++h) u[h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k + 32 * h));
  } else {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k / 2));
    const __m256i lo = _mm256_and_si256(b, _mm256_set1_epi8(15));
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), _mm256_set1_epi8(15));
    if constexpr (kStep<kCodes> == 64) {  // bytes 0-31: low nibbles codes 0-31, high 32-63
      u[0] = lo;
      u[1] = hi;
    } else {  // per 16 bytes: low nibbles, then high
      u[0] = _mm256_permute2x128_si256(lo, hi, 0x20);
      u[1] = _mm256_permute2x128_si256(lo, hi, 0x31);
    }
    if constexpr (has_fifth(kCodes)) {
      uint32_t fifth[2];  // bit i: code k + 32h + i
      std::memcpy(fifth, high + k / 8, sizeof fifth);
      for (int h = 0; h < 2; ++h) u[h] = add_fifth(u[h], fifth[h]);
    }
  }
}

// Marks v as computed here: the compiler may not fold the integer additions before this point
// into those after it. Without it, GCC sums a 4-bit tile's unrolled steps as a tree, which
// keeps every step's products live at once: 327 of the 4 x 2 tile's instructions (a group of
// 16 sub-blocks a pass) moved vectors to or from the stack, 119 with it (Zen 3, kernel alone,
// Q4_K [8192, 3072], alternating builds: 32 rows 8.5-10.2 -> 6.2-7.9 ms). Not for codes with
// planes: their tiles measured slower.
inline void summed_in_order(__m256i& v) { __asm__("" : "+x"(v)); }

#endif

#if defined(__AVX2__)
// The sum of 16 lanes (8 in each of lo and hi) in the portable loops' order: halves, quarters, ...
inline float reduce_16(__m256 lo, __m256 hi) {
  const __m256 v = _mm256_add_ps(lo, hi);
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}
#endif

// y[r * ldy] = sum[r] - the mins (and the +128 of unsigned int8 codes): sum_j (min_j + zero_point
// scale_j) * d_j * B_j over the sub-blocks j of weight row n, in 16 lanes (lane j % 16), summed as
// reduce_16 sums. The vector builds keep the 16 lanes in two registers: summed through the stack,
// the scalar stores of the tail stalled the vector loads after them (Zen 3, SmolLM2's Q4_1 int8
// decode: 15% of the time in this function).
template <Codes kCodes, int kSub, int kRows>
void subtract_offsets(const Weight& w, int64_t n, const QuantX& xq, int64_t m0, const float* sum, float* y,
                      int64_t ldy) {
  const float* scales = w.scales + n * w.groups;
  const float* mins = w.mins ? w.mins + n * w.groups : nullptr;
  if (zero_point(kCodes) == 0 && !mins) {  // nothing to subtract (signed int8 codes without mins: Q8_0)
    for (int r = 0; r < kRows; ++r) y[r * ldy] = sum[r];
    return;
  }
  const int64_t groups = w.cols / kSub;
#if defined(__AVX2__)
  // min_j + zero_point scale_j for 8 sub-blocks from j (two roundings, the order QuantArray's
  // weights have); zero in the lanes outside `in`
  const auto offsets = [&](int64_t j, __m256i in) {
    const __m256 m = mins ? _mm256_maskload_ps(mins + j, in) : _mm256_setzero_ps();
    if constexpr (zero_point(kCodes) == 0) return m;
    const __m256 o = _mm256_mul_ps(_mm256_set1_ps(static_cast<float>(zero_point(kCodes))),
                                   _mm256_maskload_ps(scales + j, in));
    return mins ? _mm256_add_ps(o, m) : o;
  };
  // v plus offsets times sums in the lanes of sub-blocks j .. j + count - 1 (the others
  // unchanged, not plus zero: -0 + 0 is +0)
  const auto add = [&](__m256 v, const float* xs, int64_t j, int64_t count) {
    const __m256i in =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 t = _mm256_add_ps(v, _mm256_mul_ps(offsets(j, in), _mm256_maskload_ps(xs + j, in)));
    return count == 8 ? t : _mm256_blendv_ps(v, t, _mm256_castsi256_ps(in));
  };
  for (int r = 0; r < kRows; ++r) {
    const float* xs = xq.sums.data() + (m0 + r) * groups;
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= groups; j += 16) {
      lo = add(lo, xs, j, 8);
      hi = add(hi, xs, j + 8, 8);
    }
    if (j < groups) {
      lo = add(lo, xs, j, std::min<int64_t>(groups - j, 8));
      if (j + 8 < groups) hi = add(hi, xs, j + 8, groups - j - 8);
    }
    y[r * ldy] = sum[r] - reduce_16(lo, hi);
  }
#else
  // min_j + zero_point scale_j (two roundings, the order QuantArray's weights have), per use: a
  // thread_local buffer cost a TLS lookup per weight row in the shared object
  const auto offset = [&](int64_t j) {
    if constexpr (zero_point(kCodes) == 0) return mins[j];
    const float o = static_cast<float>(zero_point(kCodes)) * scales[j];
    return mins ? o + mins[j] : o;
  };
  for (int r = 0; r < kRows; ++r) {
    const float* xs = xq.sums.data() + (m0 + r) * groups;
    float lanes[16] = {};
    int64_t j = 0;
    for (; j + 16 <= groups; j += 16) {
      for (int l = 0; l < 16; ++l) lanes[l] += offset(j + l) * xs[j + l];
    }
    for (; j < groups; ++j) lanes[j % 16] += offset(j) * xs[j];
    for (int width = 8; width > 0; width /= 2) {
      for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
    }
    y[r * ldy] = sum[r] - lanes[0];
  }
#endif
}

// y[r * ldy] = x_r . w_n for kRows rows of quantized x from row m0; kSub codes per weight scale.
template <Codes kCodes, int kSub, int kRows>
void int8_tile(const Weight& w, int64_t n, const QuantX& xq, int64_t m0, float* y, int64_t ldy) {
  const uint8_t* row = w.codes + n * w.row_bytes;
  const uint8_t* high = w.high ? w.high + n * (w.cols / 8) : nullptr;
  const float* scales = w.scales + n * w.groups;
  const float* mins = w.mins ? w.mins + n * w.groups : nullptr;
  const int64_t cols = w.cols;
  // row m0 of x's int8 codes, and their scales (one per 4 codes)
  const int8_t* q = xq.q.data() + m0 * cols;
  const float* lane = xq.lane.data() + m0 * (cols / 4);
  float sum[kRows];
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  // lane l of a 64-code group holds codes 4l..4l+3: sub-block l / (kSub / 4)
  const __m512i which = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          kSub == 32 ? 3 : 2);
  __m512 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < cols; k += 64) {
    if (m0 == 0) prefetch_ahead<kCodes, kSub>(row, scales, mins, high, k);
    const __m512i u = unsigned_codes_512<kCodes>(row, high, k);
    const __m512 s = _mm512_permutexvar_ps(which, _mm512_maskz_loadu_ps(kSub == 32 ? 0x3 : 0xF, scales + k / kSub));
    for (int r = 0; r < kRows; ++r) {
      const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, _mm512_loadu_si512(q + r * cols + k));
      const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_loadu_ps(lane + r * (cols / 4) + k / 4));
      acc[r] = _mm512_fmadd_ps(f, s, acc[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) sum[r] = _mm512_reduce_add_ps(acc[r]);
#elif defined(__AVX2__)
  __m256 acc[kRows][2];
  for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < cols; k += 64) {
    if (m0 == 0) prefetch_ahead<kCodes, kSub>(row, scales, mins, high, k);
    __m256i u[2];
    unsigned_codes_256<kCodes>(row, high, k, u);
    const float* sc = scales + k / kSub;  // lane l: scale (k + 4l) / kSub
    const __m256 s[2] = {
        kSub == 32 ? _mm256_set1_ps(sc[0]) : _mm256_set_m128(_mm_set1_ps(sc[1]), _mm_set1_ps(sc[0])),
        kSub == 32 ? _mm256_set1_ps(sc[1]) : _mm256_set_m128(_mm_set1_ps(sc[3]), _mm_set1_ps(sc[2]))};
    for (int r = 0; r < kRows; ++r) {
      for (int h = 0; h < 2; ++h) {
        const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + r * cols + k + 32 * h));
        const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(dot4_256<kCodes>(u[h], qh)),
                                       _mm256_loadu_ps(lane + r * (cols / 4) + k / 4 + 8 * h));
        acc[r][h] = _mm256_fmadd_ps(f, s[h], acc[r][h]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r) sum[r] = reduce_16(acc[r][0], acc[r][1]);
#else
  float acc[kRows][16] = {};
  for (int64_t k = 0; k < cols; k += 64) {
    if (m0 == 0) prefetch_ahead<kCodes, kSub>(row, scales, mins, high, k);
    uint8_t u[64];
    unsigned_codes<kCodes>(row, high, k, u);
    float s[16];
    for (int l = 0; l < 16; ++l) s[l] = scales[(k + 4 * l) / kSub];
    for (int r = 0; r < kRows; ++r) {
      const int8_t* qr = q + r * cols + k;
      const float* lr = lane + r * (cols / 4) + k / 4;
      for (int l = 0; l < 16; ++l) {
        int32_t d = 0;
        for (int t = 4 * l; t < 4 * l + 4; ++t) d += static_cast<int32_t>(u[t]) * qr[t];
        acc[r][l] += static_cast<float>(d) * lr[l] * s[l];
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    float a[16];
    std::copy(acc[r], acc[r] + 16, a);
    for (int width = 8; width > 0; width /= 2) {
      for (int l = 0; l < width; ++l) a[l] += a[l + width];
    }
    sum[r] = a[0];
  }
#endif
  subtract_offsets<kCodes, kSub, kRows>(w, n, xq, m0, sum, y, ldy);
}

// Step t of group g of an interleaved weight row as 64 unsigned codes (lane l, byte j: code
// l * kSub + 4t + j of the group, plus zero_point(kCodes)).
template <Codes kCodes, int kSub>
inline void unsigned_step(const uint8_t* row, const uint8_t* high, int64_t g, int t, uint8_t* u) {
  constexpr int64_t kGroup = 16 * kSub;
  if constexpr (kCodes == Codes::kInt8) {
    const uint8_t* b = row + g * kGroup + 64 * t;
    for (int i = 0; i < 64; ++i) u[i] = b[i] ^ 0x80u;
  } else {
    const uint8_t* b = row + g * kGroup / 2 + 64 * (t / 2);  // steps 2u and 2u + 1 share 64 bytes
    for (int i = 0; i < 64; ++i) u[i] = t % 2 ? b[i] >> 4 : b[i] & 15u;
    constexpr int kPlanes = high_planes(kCodes);
    const uint8_t* h = high + g * 64;  // the group's plane bytes (with_planes)
    for (int p = 0; p < kPlanes; ++p) {
      for (int i = 0; i < 64; ++i) u[i] |= ((h[i] >> (t * kPlanes + p)) & 1u) << (4 + p);
    }
  }
}

// Whether two-level scales are Q6_K's (int8 scale codes, d only: int8 or 6-bit codes in
// sub-blocks of 16) rather than Q4_K's or Q5_K's (uint8 scale and min codes, d and dmin).
template <Codes kCodes>
constexpr bool kQ6Scales = kCodes == Codes::kInt8 || kCodes == Codes::kNibbles64H2;

// The 16 scales and offsets (mins, plus zero_point · scale) of group g of weight
// row n of an interleaved weight: f32 as stored, or (w.units) integer codes times their
// super-block's d and dmin (f16, exact in f32), the f32 products QuantArray.scale_values() makes.
template <Codes kCodes, int kSub>
inline void group_scales(const Weight& w, int64_t n, int64_t g, float* s, float* off) {
  const int64_t at = n * w.groups + g * 16;
  for (int l = 0; l < 16; ++l) {
    if (w.units) {
      const uint16_t* u = w.units_of<kSub>(n, g * 16 + l);
      const uint8_t code = w.scale_codes[at + l];
      s[l] = half_to_float(u[0]) *
             (kQ6Scales<kCodes> ? static_cast<float>(static_cast<int8_t>(code)) : static_cast<float>(code));
      off[l] = w.min_codes ? half_to_float(u[1]) * static_cast<float>(w.min_codes[at + l]) : 0.0f;
    } else {
      s[l] = w.scales[at + l];
      off[l] = w.mins ? w.mins[at + l] : 0.0f;
    }
    if constexpr (zero_point(kCodes) != 0) off[l] += static_cast<float>(zero_point(kCodes)) * s[l];
  }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// group_scales in two vectors. Two levels: int8 and 6-bit codes are Q6_K's (sub-blocks of 16:
// the group is super-block g, d only), 4- and 5-bit codes Q4_K's or Q5_K's (sub-blocks of 32:
// lanes 0-7 of super-block 2g, 8-15 of 2g + 1, d and dmin each).
template <Codes kCodes, int kSub>
inline void group_scales_512(const Weight& w, int64_t n, int64_t g, __m512& s, __m512& off) {
  const int64_t at = n * w.groups + g * 16;
  if (w.units) {
    const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scale_codes + at));
    if constexpr (kQ6Scales<kCodes>) {
      s = _mm512_mul_ps(_mm512_set1_ps(half_to_float(*w.units_of<kSub>(n, g * 16))),
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)));
      off = _mm512_setzero_ps();
    } else {
      // d, dmin of super-blocks 2g and 2g + 1 in lanes 0-3
      const __m512 u = _mm512_zextps128_ps512(
          _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.units_of<kSub>(n, g * 16)))));
      const __m512i d = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
      const __m512i dmin = _mm512_add_epi32(d, _mm512_set1_epi32(1));
      const __m128i mn = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.min_codes + at));
      s = _mm512_mul_ps(_mm512_permutexvar_ps(d, u), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc)));
      off = _mm512_mul_ps(_mm512_permutexvar_ps(dmin, u), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(mn)));
    }
  } else {
    s = _mm512_loadu_ps(w.scales + at);
    off = w.mins ? _mm512_loadu_ps(w.mins + at) : _mm512_setzero_ps();
  }
  if constexpr (zero_point(kCodes) != 0) {
    off = _mm512_fmadd_ps(_mm512_set1_ps(static_cast<float>(zero_point(kCodes))), s, off);
  }
}
#elif defined(__AVX2__)
// Lanes 8h ... 8h + 7 of group_scales, computed as group_scales computes them (a product, then
// the zero point's product added): the scalar loop's units lookups were the int8 decode's
// bound (Q4_K [8192, 3072] at one row, AMD EPYC Zen 3: 1.2 -> 0.6 ms).
template <Codes kCodes, int kSub>
inline void group_scales_256(const Weight& w, int64_t n, int64_t g, int h, __m256& s, __m256& off) {
  const int64_t at = n * w.groups + g * 16 + 8 * h;
  const auto eight = [](const uint8_t* p) { return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)); };
  if (w.units) {
    const uint16_t* u = w.units_of<kSub>(n, g * 16);
    if constexpr (kQ6Scales<kCodes>) {  // one super-block: d
      s = _mm256_mul_ps(_mm256_set1_ps(half_to_float(u[0])),
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(eight(w.scale_codes + at))));
      off = _mm256_setzero_ps();
    } else {  // lanes 0-7 of super-block 2g, 8-15 of 2g + 1: d and dmin each
      s = _mm256_mul_ps(_mm256_set1_ps(half_to_float(u[2 * h])),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(eight(w.scale_codes + at))));
      off = _mm256_mul_ps(_mm256_set1_ps(half_to_float(u[2 * h + 1])),
                          _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(eight(w.min_codes + at))));
    }
  } else {
    s = _mm256_loadu_ps(w.scales + at);
    off = w.mins ? _mm256_loadu_ps(w.mins + at) : _mm256_setzero_ps();
  }
  if constexpr (zero_point(kCodes) != 0) {
    off = _mm256_add_ps(off, _mm256_mul_ps(_mm256_set1_ps(static_cast<float>(zero_point(kCodes))), s));
  }
}
#endif

// The nibbles of step t of an interleaved group with their bits 4 (and 5) added: bit
// t * kPlanes + p of each of the group's plane bytes (phijax.quant's _interleaved_planes).
// AVX-512 tests each plane into a mask, one instruction as loading the mask of the bits in
// code order was, and keeps the loop over steps (unrolled at compile time, 81 of the 2-column
// Q5_K tile's instructions moved vectors to or from the stack, not 24). The maddubs builds
// mask and shift them into place, two instructions per vector for both planes where the bits
// in code order took a broadcast, a shuffle, a compare and a mask per plane (Zen 3, kernel
// alone, [8192, 3072], alternating builds: Q5_K at 32 rows 9.2-9.6 -> 8.0-8.6 ms, Q6_K
// 11.3-11.5 -> 9.0-9.6 ms, and at one row 0.95-1.04 -> 0.60 ms).
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
template <int kPlanes>
inline __m512i with_planes(__m512i nibbles, __m512i planes, int t) {
  for (int p = 0; p < kPlanes; ++p) {
    const __mmask64 set = _mm512_test_epi8_mask(planes, _mm512_set1_epi8(static_cast<char>(1 << (t * kPlanes + p))));
    nibbles = _mm512_mask_add_epi8(nibbles, set, nibbles, _mm512_set1_epi8(static_cast<char>(16 << p)));
  }
  return nibbles;
}
#elif defined(__AVX2__)
template <int kPlanes, int kT>
inline __m256i with_planes(__m256i nibbles, __m256i planes) {
  constexpr int kAt = kT * kPlanes;
  __m256i b = _mm256_and_si256(planes, _mm256_set1_epi8(static_cast<char>(((1 << kPlanes) - 1) << kAt)));
  if constexpr (kAt < 4) b = _mm256_slli_epi16(b, 4 - kAt);  // a byte's bits stay in it
  if constexpr (kAt > 4) b = _mm256_srli_epi16(b, kAt - 4);
  return _mm256_add_epi8(nibbles, b);
}
#endif

// int8_tile for an interleaved weight (QuantArray.interleave == kSub), weight rows n ...
// n + kCols - 1 at once (each x vector serves kCols rows): per group of 16 sub-blocks, one
// integer sum per sub-block, row of x and weight row, scaled once; the group's 16 offsets
// (mins, and the +128 of int8 codes) are one vector, subtracted in the same loop. Each
// output's operations do not depend on kRows or kCols.
template <Codes kCodes, int kSub, int kRows, int kCols>
void int8_group_tile(const Weight& w, int64_t n, const QuantX& xq, int64_t m0, float* y, int64_t ldy) {
  constexpr int64_t kGroup = 16 * kSub, kSteps = kSub / 4;
  constexpr int64_t kGroupBytes = kCodes == Codes::kInt8 ? kGroup : kGroup / 2;
  constexpr int64_t kGroupsAhead = (kAhead + kGroupBytes - 1) / kGroupBytes;
  constexpr int kPlanes = high_planes(kCodes);
  static_assert(kPlanes == 0 || kSteps * kPlanes == 8, "a group's plane bytes hold 8 bits per code position");
  const int64_t cols = w.cols, subs = w.groups, groups = cols / kGroup;
  const uint8_t* row[kCols];
  const uint8_t* high[kCols];
  for (int c = 0; c < kCols; ++c) {
    row[c] = w.codes + (n + c) * w.row_bytes;
    high[c] = w.high ? w.high + (n + c) * (cols / 8 * kPlanes) : nullptr;
  }
  // kAhead bytes of codes ahead. Inlined by force: GCC took the lambda for a pure function (a
  // prefetch has no side effects it models) and deleted its calls, and with them every prefetch.
  [[maybe_unused]] const auto prefetch_group = [&](int64_t g) __attribute__((always_inline)) {
    for (int c = 0; c < kCols; ++c) {
      for (int64_t b = 0; b < kGroupBytes; b += 64) prefetch(row[c] + g * kGroupBytes + b + kAhead);
      const int64_t at = (n + c) * subs + (g + kGroupsAhead) * 16;
      if (w.units) {
        prefetch(w.scale_codes + at);
        if (w.min_codes) prefetch(w.min_codes + at);
        prefetch(w.units_of<kSub>(n + c, (g + kGroupsAhead) * 16));
      } else {
        prefetch(w.scales + at);
        if (w.mins) prefetch(w.mins + at);
      }
      if constexpr (kPlanes > 0) prefetch(high[c] + (g + kGroupsAhead) * kGroup / 8 * kPlanes);
    }
  };
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  __m512 acc[kRows][kCols];
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < groups; ++g) {
    if (m0 == 0) prefetch_group(g);
    const int8_t* xg = xq.q.data() + m0 * cols + g * kGroup;
    __m512i d[kRows][kCols];
    for (int r = 0; r < kRows; ++r) {
      for (int c = 0; c < kCols; ++c) d[r][c] = _mm512_setzero_si512();
    }
    if constexpr (kCodes == Codes::kInt8) {
      for (int t = 0; t < kSteps; ++t) {
        __m512i u[kCols];
        for (int c = 0; c < kCols; ++c) {
          u[c] = _mm512_xor_si512(_mm512_loadu_si512(row[c] + g * kGroupBytes + 64 * t),
                                  _mm512_set1_epi8(static_cast<char>(0x80)));
        }
        for (int r = 0; r < kRows; ++r) {
          __m512i xv = _mm512_loadu_si512(xg + r * cols + 64 * t);
          if constexpr (kCols > 1) in_register(xv);
          for (int c = 0; c < kCols; ++c) d[r][c] = _mm512_dpbusd_epi32(d[r][c], u[c], xv);
        }
      }
    } else {
      const auto step = [&](int t) {  // codes 64t ... 64t + 127 of the group: low, then high nibbles
        __m512i lo[kCols], hi[kCols];
        for (int c = 0; c < kCols; ++c) {
          const __m512i b = _mm512_loadu_si512(row[c] + g * kGroupBytes + 32 * t);
          lo[c] = _mm512_and_si512(b, _mm512_set1_epi8(15));
          hi[c] = _mm512_and_si512(_mm512_srli_epi16(b, 4), _mm512_set1_epi8(15));
          if constexpr (kPlanes > 0) {
            const __m512i planes = _mm512_loadu_si512(high[c] + g * 64);
            lo[c] = with_planes<kPlanes>(lo[c], planes, t);
            hi[c] = with_planes<kPlanes>(hi[c], planes, t + 1);
          }
        }
        for (int r = 0; r < kRows; ++r) {
          __m512i x0 = _mm512_loadu_si512(xg + r * cols + 64 * t);
          __m512i x1 = _mm512_loadu_si512(xg + r * cols + 64 * t + 64);
          if constexpr (kCols > 1) {
            in_register(x0);
            in_register(x1);
          }
          for (int c = 0; c < kCols; ++c) {
            d[r][c] = _mm512_dpbusd_epi32(d[r][c], lo[c], x0);
            d[r][c] = _mm512_dpbusd_epi32(d[r][c], hi[c], x1);
          }
        }
      };
      if constexpr (kPlanes > 0) {
        for (int t = 0; t < kSteps; t += 2) step(t);
      } else {  // unrolled, the plain 4-bit loop spills registers: 1.2-1.25x slower at 32 rows
#pragma GCC unroll 1
        for (int t = 0; t < kSteps; t += 2) step(t);
      }
    }
    __m512 s[kCols], off[kCols];
    for (int c = 0; c < kCols; ++c) group_scales_512<kCodes, kSub>(w, n + c, g, s[c], off[c]);
    for (int r = 0; r < kRows; ++r) {
      const int64_t at = (m0 + r) * subs + g * 16;
      const __m512 dx = _mm512_loadu_ps(xq.lane.data() + at), xs = _mm512_loadu_ps(xq.sums.data() + at);
      for (int c = 0; c < kCols; ++c) {
        acc[r][c] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d[r][c]), dx), s[c], acc[r][c]);
        acc[r][c] = _mm512_fnmadd_ps(off[c], xs, acc[r][c]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) y[r * ldy + c] = _mm512_reduce_add_ps(acc[r][c]);
  }
#elif defined(__AVX2__)
  // Lanes 0-7, then 8-15 of each group: 8 integer sums per row of x and weight row at a time.
  const auto load = [](const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); };
  __m256 acc[kRows][kCols][2];
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) acc[r][c][0] = acc[r][c][1] = _mm256_setzero_ps();
  }
  for (int64_t g = 0; g < groups; ++g) {
    if (m0 == 0) prefetch_group(g);
    const int8_t* xg = xq.q.data() + m0 * cols + g * kGroup;
#pragma GCC unroll 2  // h indexes the accumulators: as a loop, it kept them in memory (Q5_K 1.5x slower)
    for (int h = 0; h < 2; ++h) {
      __m256i d[kRows][kCols];
      for (int r = 0; r < kRows; ++r) {
        for (int c = 0; c < kCols; ++c) d[r][c] = _mm256_setzero_si256();
      }
      if constexpr (kCodes == Codes::kInt8) {
        for (int t = 0; t < kSteps; ++t) {
          __m256i u[kCols];
          for (int c = 0; c < kCols; ++c) {
            u[c] = load(row[c] + g * kGroupBytes + 64 * t + 32 * h);  // signed (dot4_256)
          }
          for (int r = 0; r < kRows; ++r) {
            const __m256i xv = load(xg + r * cols + 64 * t + 32 * h);
            for (int c = 0; c < kCols; ++c) d[r][c] = _mm256_add_epi32(d[r][c], dot4_256<kCodes>(u[c], xv));
          }
        }
      } else {
        // maddubs' int16 pairs are summed in int16 while they cannot overflow (codes below
        // 16 << kPlanes times |q| <= 127), then widened by one madd: Q4_K's 8 steps need one.
        constexpr int kMaxCode = (16 << kPlanes) - 1;
        constexpr int kPerWiden = std::min<int>(kSteps, 32767 / (2 * 127 * kMaxCode) / 2 * 2);
        static_assert(kPerWiden >= 2 && kSteps % kPerWiden == 0, "whole step pairs per widening");
        // steps t and t + 1 = codes 64t ... 64t + 127 (low nibbles, then high), unrolled at
        // compile time: where the sums widen is no branch, and each step's planes are constants
        unrolled(std::make_integer_sequence<int, kSteps / kPerWiden>{}, [&](auto widening) {
          constexpr int t0 = decltype(widening)::value * kPerWiden;
          __m256i p16[kRows][kCols];
          unrolled(std::make_integer_sequence<int, kPerWiden / 2>{}, [&](auto i) {
            constexpr int kI = decltype(i)::value;
            constexpr int t = t0 + 2 * kI;
            __m256i lo[kCols], hi[kCols];
            for (int c = 0; c < kCols; ++c) {
              const __m256i b = load(row[c] + g * kGroupBytes + 32 * t + 32 * h);
              lo[c] = _mm256_and_si256(b, _mm256_set1_epi8(15));
              hi[c] = _mm256_and_si256(_mm256_srli_epi16(b, 4), _mm256_set1_epi8(15));
              if constexpr (kPlanes > 0) {  // the plane bytes of lanes 8h ... 8h + 7
                const __m256i planes = load(high[c] + g * 64 + 32 * h);
                lo[c] = with_planes<kPlanes, t>(lo[c], planes);
                hi[c] = with_planes<kPlanes, t + 1>(hi[c], planes);
              }
            }
            for (int r = 0; r < kRows; ++r) {
              const __m256i x0 = load(xg + r * cols + 64 * t + 32 * h);
              const __m256i x1 = load(xg + r * cols + 64 * t + 64 + 32 * h);
              for (int c = 0; c < kCols; ++c) {
                const __m256i pair =
                    _mm256_add_epi16(_mm256_maddubs_epi16(lo[c], x0), _mm256_maddubs_epi16(hi[c], x1));
                p16[r][c] = kI ? _mm256_add_epi16(p16[r][c], pair) : pair;
                if constexpr (kPlanes == 0) summed_in_order(p16[r][c]);
              }
            }
          });
          for (int r = 0; r < kRows; ++r) {
            for (int c = 0; c < kCols; ++c) {
              d[r][c] = _mm256_add_epi32(d[r][c], _mm256_madd_epi16(p16[r][c], _mm256_set1_epi16(1)));
            }
          }
        });
      }
      for (int c = 0; c < kCols; ++c) {
        __m256 s, off;
        group_scales_256<kCodes, kSub>(w, n + c, g, h, s, off);
        for (int r = 0; r < kRows; ++r) {
          const int64_t at = (m0 + r) * subs + g * 16 + 8 * h;
          const __m256 sd = _mm256_mul_ps(_mm256_cvtepi32_ps(d[r][c]), _mm256_loadu_ps(xq.lane.data() + at));
          const __m256 a = _mm256_fmadd_ps(sd, s, acc[r][c][h]);
          acc[r][c][h] = _mm256_fnmadd_ps(off, _mm256_loadu_ps(xq.sums.data() + at), a);
        }
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) y[r * ldy + c] = reduce_16(acc[r][c][0], acc[r][c][1]);
  }
#else
  for (int c = 0; c < kCols; ++c) {
    float acc[kRows][16] = {};
    for (int64_t g = 0; g < groups; ++g) {
      int32_t d[kRows][16] = {};
      for (int t = 0; t < kSteps; ++t) {
        uint8_t u[64];
        unsigned_step<kCodes, kSub>(row[c], high[c], g, t, u);
        for (int r = 0; r < kRows; ++r) {
          const int8_t* q = xq.q.data() + (m0 + r) * cols + g * kGroup + 64 * t;
          for (int i = 0; i < 64; ++i) d[r][i / 4] += static_cast<int32_t>(u[i]) * q[i];
        }
      }
      float s[16], off[16];
      group_scales<kCodes, kSub>(w, n + c, g, s, off);
      for (int r = 0; r < kRows; ++r) {
        const float* dx = xq.lane.data() + (m0 + r) * subs + g * 16;
        const float* xs = xq.sums.data() + (m0 + r) * subs + g * 16;
        for (int l = 0; l < 16; ++l) {
          acc[r][l] += static_cast<float>(d[r][l]) * dx[l] * s[l];
          acc[r][l] -= off[l] * xs[l];
        }
      }
    }
    for (int r = 0; r < kRows; ++r) {
      for (int width = 8; width > 0; width /= 2) {
        for (int l = 0; l < width; ++l) acc[r][l] += acc[r][l + width];
      }
      y[r * ldy + c] = acc[r][0];
    }
  }
#endif
}

using Int8Tile = void (*)(const Weight&, int64_t, const QuantX&, int64_t, float*, int64_t);

template <Codes kCodes, int kSub, bool kInterleaved, int kCols, int... R>
constexpr std::array<Int8Tile, sizeof...(R)> int8_tiles(std::integer_sequence<int, R...>) {
  if constexpr (kInterleaved) {
    return {&int8_group_tile<kCodes, kSub, R + 1, kCols>...};
  } else {
    return {&int8_tile<kCodes, kSub, R + 1>...};
  }
}

struct Int8Problem {
  Weight w;
  QuantX x;
  float* y;
  int64_t m;
};

// Whether interleaved weights go two weight rows at a time from 2 rows of x on (one row of x
// streams each weight row alone, as the f32 path does). Not codes with bit planes (Q5_K, Q6_K's
// 6-bit codes) in the maddubs tiles (kSignedInt8's builds): there the planes' registers made
// the 2-column tiles spill. Zen 3, kernel alone, [8192, 3072] at 8 / 32 rows, four alternating
// rounds: Q5_K 2.62-3.03 / 10.4-11.3 ms in 4 x 2 tiles, 2.28-2.43 / 8.8-9.5 ms in 4 x 1; Q6_K
// 3.08-3.87 / 10.7-11.2 against 2.74-3.12 / 10.2-11.7 ms; Q4_K faster in pairs at 32 rows.
template <Codes kCodes, bool kInterleaved>
constexpr bool kInt8Pairs = kInterleaved && !(kSignedInt8 && high_planes(kCodes) > 0);

// Output columns [n0, n1) for every row of x.
template <Codes kCodes, int kSub, bool kInterleaved = false>
void int8_columns(const Int8Problem& p, int64_t n0, int64_t n1) {
  constexpr int kRows = kInterleaved ? kGroupRows : kInt8Rows;
  using Rows = std::make_integer_sequence<int, kRows>;
  static constexpr auto singles = int8_tiles<kCodes, kSub, kInterleaved, 1>(Rows{});
  static constexpr auto pairs = int8_tiles<kCodes, kSub, kInterleaved, 2>(Rows{});
  for (int64_t m0 = 0; m0 < p.m; m0 += kRows) {
    const int64_t rows = std::min<int64_t>(kRows, p.m - m0);
    float* y = p.y + m0 * p.w.rows;
    int64_t n = n0;
    if constexpr (kInt8Pairs<kCodes, kInterleaved>) {
      if (rows > 1) {
        for (; n + 2 <= n1; n += 2) pairs[rows - 1](p.w, n, p.x, m0, y + n, p.w.rows);
      }
    }
    for (; n < n1; ++n) singles[rows - 1](p.w, n, p.x, m0, y + n, p.w.rows);
  }
}

using Int8Fn = void (*)(const Int8Problem&, int64_t, int64_t);

// Codes in groups of 64 (int8, or 4-bit in groups of 32 or 64, with or without fifth bits) with
// a scale per 16 or 32; interleaved (kSub = the scale's block) or in row order.
inline Int8Fn pick_int8(int64_t nibbles, int64_t planes, int64_t sub, bool interleaved) {
  const bool fifth = planes == 1;
  if (interleaved) {  // nibbles in groups of 64 with blocks of 32, 6-bit codes in blocks of 16, or int8 codes
    if (nibbles) {
      if (planes == 2) return &int8_columns<Codes::kNibbles64H2, 16, true>;
      return fifth ? &int8_columns<Codes::kNibbles64H, 32, true> : &int8_columns<Codes::kNibbles64, 32, true>;
    }
    return sub == 16 ? &int8_columns<Codes::kInt8, 16, true> : &int8_columns<Codes::kInt8, 32, true>;
  }
  if (nibbles == 64) return fifth ? &int8_columns<Codes::kNibbles64H, 32> : &int8_columns<Codes::kNibbles64, 32>;
  if (nibbles == 32) return fifth ? &int8_columns<Codes::kNibbles32H, 32> : &int8_columns<Codes::kNibbles32, 32>;
  return sub == 16 ? &int8_columns<Codes::kInt8, 16> : &int8_columns<Codes::kInt8, 32>;
}
