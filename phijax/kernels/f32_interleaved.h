// The f32 path of cpu_matmul.cc (included there) on Q4_K's, Q5_K's and Q6_K's codes in int8_dot.h's
// interleaved order (QuantArray.interleave = S, 32 for Q4_K and Q5_K, 16 for Q6_K), which the
// AVX-512 and AVX2 builds' default load keeps for them as the int8 mode does: in each group of 16
// sub-blocks of S codes, 64-byte step u holds in dword l the codes 8u ... 8u + 7 of sub-block l
// (byte j: code 8u + j low, 8u + 4 + j high); the high bits (Q5_K's fifth, Q6_K's fifth and sixth)
// are planes in 64 bytes per group, bit t * planes + p of byte 4l + j that of code 4t + j of
// sub-block l (quant._interleaved_planes). Q6_K's codes are stored plus 32 (0..63).
//
// Why: in row order a vector of 16 codes is widened from bytes, its nibbles looked up, and each
// block of 32 needs its own multiply by its scale. Here one load serves 8 vectors of codes
// (a shift and a lookup each), every lane sums a whole sub-block, and 16 sub-blocks take their
// scales and mins in one multiply: one-row tiles in L2, one thread, Intel Xeon (AVX-512),
// Q4_K 0.413 -> 0.326 and Q5_K 0.563 -> 0.477 ns per 8 weights (docs/benchmarks.md).
//
// Numerics are the row-order path's: the same terms (scale * sum(code * x), then the mins'
// sum(min * xsum) apart), summed in another fixed order; Q6_K's zero point is a min of 32 * scale
// (llama.cpp's Q6_K dot products subtract it the same way). Each lane's two partial sums, and
// then the lanes, are added in the same order whatever the tile, so results do not depend on
// the batch; with one non-zero x the sum is scale * code - min rounded once.

// Simd::lane_nibbles<4v> returns codes times 2^nibble_exponent(4v) (AVX2: the nibble masked
// where it lies); x's copy is scaled by 2^(kXExponent - that), so every product is code * x *
// 2^kXExponent exactly, and the tile scales its sums back at the end. Powers of two change no
// rounding while every value stays normal and finite (AVX2: |x| below about 2^94, where a lane's
// sum over a group, 32 codes below 32 or 16 below 64, times x * 2^24 stays under 2^128), so the
// sums are bit for bit the unscaled ones.
constexpr int kXExponent = [] {
  int most = 0;
  for (int v = 0; v < 8; ++v) most = std::max(most, Simd::nibble_exponent(4 * v));
  return most;
}();

// x's rows [m, cols] in the order of interleaved codes in sub-blocks of ``sub`` (16 or 32): in
// each group of 16 sub columns, vector v = 2j + h of step u holds, in lane l, column sub l + 8u +
// 4h + j (times 2^(kXExponent - nibble_exponent(4v))).
inline AlignedVector<float> interleaved_x(const float* x, int64_t m, int64_t cols, int64_t sub) {
  float scale[8];
  for (int v = 0; v < 8; ++v) scale[v] = std::ldexp(1.0f, kXExponent - Simd::nibble_exponent(4 * v));
  AlignedVector<float> out(m * cols);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t g = 0; g < cols; g += 16 * sub) {
      const float* src = x + r * cols + g;
      float* dst = out.data() + r * cols + g;
      for (int64_t u = 0; u < sub / 8; ++u) {
        for (int v = 0; v < 8; ++v) {
          for (int l = 0; l < 16; ++l) {
            dst[(u * 8 + v) * 16 + l] = src[sub * l + 8 * u + 4 * (v % 2) + v / 2] * scale[v];
          }
        }
      }
    }
  }
  return out;
}

// y[r * ldy + c] = dot(x[r], w[n + c]) for r < kRows, c < kCols, where ``xp`` holds x's rows
// interleaved (interleaved_x, rows ldx apart) and ``xsums`` their sub-block sums in row order
// (block_sums): each vector of codes serves kRows rows of x, and each x vector kCols weight rows.
// kPlanes: 0 Q4_K's codes, 1 Q5_K's (fifth bits), 2 Q6_K's (6 bits, sub-blocks of 16).
//
// Each lane sums its sub-block's products in two partial sums (even and odd vectors), then the
// group's scales apply, group after group; the mins' terms follow in one pass. Two sums per
// lane were as fast as four at one row (each group's sums start afresh, so the out-of-order
// core overlaps consecutive groups), and leave registers for 4 x 2 tiles. With 8 lanes a group
// is two halves of 8 sub-blocks; the one-row tile sums both side by side, four chains in flight
// instead of two (in L2, one thread, AMD Zen 3: Q4_K 0.56 -> 0.45 ns per 8 weights).
template <int kPlanes, int kRows, int kCols>
void dot_tile_interleaved(const Weight& w, int64_t n, const float* xp, const float* xsums, int64_t ldx, float* y,
                          int64_t ldy) {
  constexpr bool kSix = kPlanes == 2;
  constexpr int kSub = kSix ? 16 : 32, kGroup = 16 * kSub, kSteps = kSub / 8;  // 64-byte steps per group
  // the two levels, row n + c's: Q4_K's and Q5_K's scales and mins, or Q6_K's signed scales
  using Scales = std::conditional_t<kSix, BlockScales<Codes::kInt8, 16, false, true>,
                                    BlockScales<Codes::kNibbles64, 32, true, true>>;
  constexpr int kHalves = 16 / kLanes;  // vectors of lanes per 16 sub-blocks
  constexpr int kTogether = kRows == 1 ? kHalves : 1;  // halves summed side by side
  const int64_t groups = w.cols / kGroup;
  const uint8_t* row[kCols];
  const uint8_t* plane[kCols];  // the high bits: 64 bytes per group
  Scales scales[kCols];
  for (int c = 0; c < kCols; ++c) {
    row[c] = w.codes + (n + c) * w.row_bytes;
    plane[c] = kPlanes ? w.high + (n + c) * (w.cols / 8 * kPlanes) : nullptr;
    scales[c].init(w, n + c);
    Scales::prefetch_row(w, n + c + kRowsAhead * kCols);
  }
  V acc[kRows][kCols];
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) acc[r][c] = Simd::zero();
  }
  for (int64_t g = 0; g < groups; ++g) {
    if constexpr (kRows == 1) {
      for (int line = 0; line < kGroup / 2; line += 64) prefetch(row[0] + g * kGroup / 2 + kAhead * 2 + line);
      if constexpr (kPlanes) prefetch(plane[0] + g * 64 + kAhead / 2);
    }
    for (int h0 = 0; h0 < kHalves; h0 += kTogether) {
      V part[kTogether][kRows][kCols][2];
      unrolled(std::make_integer_sequence<int, 8 * kSteps>{}, [&](auto i) {
        constexpr int u = decltype(i)::value / 8, v = decltype(i)::value % 8;
        for (int t = 0; t < kTogether; ++t) {
          const int h = h0 + t;
          V q[kCols];
          for (int c = 0; c < kCols; ++c) {
            const uint8_t* codes = row[c] + g * kGroup / 2 + u * 64 + h * kLanes * 4;
            if constexpr (kPlanes) {  // code 8u + 4 (v % 2) + v / 2: step 2u + v % 2, byte v / 2
              constexpr int kBit = 8 * (v / 2) + (2 * u + v % 2) * kPlanes;
              q[c] = Simd::lane_high_codes<4 * v, kBit, kPlanes>(codes, plane[c] + g * 64 + h * kLanes * 4);
            } else {
              q[c] = Simd::lane_nibbles<4 * v>(codes);
            }
          }
          for (int r = 0; r < kRows; ++r) {
            const V xv = Simd::load(xp + r * ldx + g * kGroup + (u * 8 + v) * 16 + h * kLanes);
            for (int c = 0; c < kCols; ++c) {
              V& sum = part[t][r][c][v % 2];
              sum = u == 0 && v < 2 ? Simd::mul(q[c], xv) : Simd::fmadd(q[c], xv, sum);
            }
          }
        }
      });
      for (int t = 0; t < kTogether; ++t) {
        const int64_t b = 16 * g + (h0 + t) * kLanes;  // lane l holds sub-block b + l
        for (int c = 0; c < kCols; ++c) {
          const V s = scales[c].scale_lanes(b);
          for (int r = 0; r < kRows; ++r) {
            acc[r][c] = Simd::fmadd(Simd::add(part[t][r][c][0], part[t][r][c][1]), s, acc[r][c]);
          }
        }
      }
    }
  }
  for (int c = 0; c < kCols; ++c) {
    V macc[kRows];
    for (int r = 0; r < kRows; ++r) macc[r] = Simd::zero();
    for (int64_t b = 0; b < w.groups; b += kLanes) {
      // Q6_K: sum(scale * xsum), times the zero point 32 below (a power of two: the same rounding)
      const V mins = kSix ? scales[c].scale_lanes(b) : scales[c].mins(b);
      for (int r = 0; r < kRows; ++r) macc[r] = Simd::fmadd(mins, Simd::load(xsums + r * w.groups + b), macc[r]);
    }
    const float unscale = std::ldexp(1.0f, -kXExponent), zero = kSix ? 32.0f : 1.0f;
    for (int r = 0; r < kRows; ++r) y[r * ldy + c] = Simd::sum(acc[r][c]) * unscale - Simd::sum(macc[r]) * zero;
  }
}

// Tiles of up to kInterleavedRows<kPlanes> rows of x by two weight rows beyond one row of x (one
// by one at one: a batch-1 decode streams each weight row once). The shape changes only the
// speed: every output is summed the same way. AVX-512's 32 registers hold 4 x 2 (ns per 8
// weights per row of x in L2, one thread, Intel Xeon, tiles 1 x 1 / 2 x 1 / 4 x 1 / 4 x 2:
// 0.278 / 0.182 / 0.154 / 0.157; two-level scales in row order 0.354 / 0.253 / 0.190 / 0.190).
// AVX2's 16 registers hold Q4_K's 2 x 2 and spill less at Q5_K's 4 x 2 than at 4 x 1, whose x
// loads each serve one weight row (AMD Zen 3, 32 rows of x, [16384, 3072] Q4_K from memory:
// 4 x 1 49-51 ms, 2 x 2 39 ms; Q5_K's 4 x 2 level with its row order, 4 x 1 12-19% slower).
template <int kPlanes>
constexpr int kInterleavedRows = kLanes == 8 && kPlanes == 0 ? 2 : 4;
constexpr int kInterleavedCols = 2;

template <int kPlanes, int kRows>
void interleaved_rows(const Problem& p, int64_t m0, int64_t n0, int64_t n1) {
  constexpr int kCols = kRows == 1 ? 1 : kInterleavedCols;
  const int64_t cols = p.w.cols;
  const float* x = p.x + m0 * cols;
  const float* xsums = p.xsums + m0 * p.w.groups;
  float* y = p.y + m0 * p.w.rows;
  int64_t n = n0;
  for (; n + kCols <= n1; n += kCols) {
    dot_tile_interleaved<kPlanes, kRows, kCols>(p.w, n, x, xsums, cols, y + n, p.w.rows);
  }
  for (; n < n1; ++n) dot_tile_interleaved<kPlanes, kRows, 1>(p.w, n, x, xsums, cols, y + n, p.w.rows);
}

template <int kPlanes, int... R>
constexpr std::array<Tile, sizeof...(R)> interleaved_table(std::integer_sequence<int, R...>) {
  return {&interleaved_rows<kPlanes, R + 1>...};
}

// Output columns [n0, n1) for every row of x (Problem::x interleaved), in tiles of up to
// kInterleavedRows rows; kPlanes: 0 Q4_K's codes, 1 Q5_K's, 2 Q6_K's.
template <int kPlanes>
void columns_interleaved(const Problem& p, int64_t n0, int64_t n1) {
  constexpr int kMost = kInterleavedRows<kPlanes>;
  static constexpr auto tiles = interleaved_table<kPlanes>(std::make_integer_sequence<int, kMost>{});
  for (int64_t m0 = 0; m0 < p.m; m0 += kMost) {
    tiles[std::min<int64_t>(kMost, p.m - m0) - 1](p, m0, n0, n1);
  }
}
