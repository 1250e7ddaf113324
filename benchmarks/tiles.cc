// One tile of phijax's CPU kernel (``dot_tile`` in phijax/kernels/cpu_matmul.cc, and the
// int8 path's ``int8_group_tile`` in int8_dot.h) timed on weights held in L2, on the calling
// thread: what a loop costs without memory or threads in the way. Built and called by
// bench_tiles.py (a shared library, loaded with ctypes).

#include "cpu_matmul.cc"

#include <chrono>
#include <random>

namespace {

// Random two-level scales of a weight [rows, cols] in ``groups`` blocks a row, as the file keeps
// them: 6-bit scale and min codes per block, small positive f16 units (d, dmin) per 256.
struct TwoLevel {
  std::vector<uint8_t> scale_codes, min_codes;
  std::vector<uint16_t> units;
  TwoLevel(std::mt19937& g, int64_t rows, int64_t cols, int64_t groups)
      : scale_codes(rows * groups), min_codes(rows * groups), units(rows * cols / 256 * 2) {
    for (auto& c : scale_codes) c = g() & 0x3f;
    for (auto& c : min_codes) c = g() & 0x3f;
    for (auto& u : units) u = static_cast<uint16_t>(0x1000 + g() % 64);
  }
  void attach(Weight& w, bool mins) const {
    w.scale_codes = scale_codes.data();
    w.min_codes = mins ? min_codes.data() : nullptr;
    w.units = units.data();
  }
};

template <Codes kCodes, int kBlock, bool kMins, bool kUnits, int kRows, int kCols, bool kInterleaved = false>
double time_tile(int64_t rows, int64_t cols, int reps) {
  std::mt19937 g(0);
  const int64_t groups = cols / kBlock;
  // codes and x 64-byte aligned, as XLA's buffers are: a vector load across two cache lines costs more
  AlignedVector<uint8_t> codes(rows * cols * 2);
  AlignedVector<float> x(kRows * cols);
  std::vector<uint8_t> high(rows * cols / 4);  // up to two planes
  std::vector<float> scales(rows * groups), mins(rows * groups), y(kRows * rows);
  const TwoLevel two_level(g, rows, cols, groups);
  for (auto& c : codes) c = g() & 0x3f;  // bf16: small finite values; int8: 6-bit codes
  for (auto& c : high) c = g();
  for (auto& s : scales) s = (g() % 64) / 64.0f;
  for (auto& s : mins) s = (g() % 64) / 64.0f;
  for (auto& v : x) v = (g() % 1000) / 1000.0f;
  const bool bf16 = kCodes == Codes::kBf16, nibbles = is_nibbles(kCodes);
  Weight w{codes.data(), bf16 || kUnits ? nullptr : scales.data(), kMins && !kUnits ? mins.data() : nullptr,
           rows, cols, bf16 ? 2 * cols : nibbles ? cols / 2 : cols, bf16 ? 0 : groups,
           high_planes(kCodes) ? high.data() : nullptr, 0};
  w.planes = high_planes(kCodes);
  if (kUnits) two_level.attach(w, kMins);  // the file's two levels
  const std::vector<float> xsums = block_sums(x.data(), kRows, cols, kBlock);
  // interleaved: the same codes read in f32_interleaved.h's order, x permuted to match
  const AlignedVector<float> xp = kInterleaved ? interleaved_x(x.data(), kRows, cols, kBlock) : AlignedVector<float>();
  if (kInterleaved) w.interleave = kBlock;
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    for (int64_t n = 0; n + kCols <= rows; n += kCols) {
      if constexpr (kInterleaved) {
        dot_tile_interleaved<high_planes(kCodes), kRows, kCols>(w, n, xp.data(), xsums.data(), cols, y.data() + n, rows);
      } else {
        dot_tile<kCodes, kBlock, kMins, kUnits, kRows, kCols>(w, n, x.data(), xsums.data(), cols, y.data() + n, rows);
      }
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best * 1e9 / (static_cast<double>(rows) * cols / 8);  // ns per 8 weights
}

template <Codes kCodes, int kBlock, bool kMins, bool kUnits = false, bool kIl = false>
double by_shape(int tile_rows, int tile_cols, int64_t rows, int64_t cols, int reps) {
  switch (tile_rows * 10 + tile_cols) {
    case 11: return time_tile<kCodes, kBlock, kMins, kUnits, 1, 1, kIl>(rows, cols, reps);
    case 21: return time_tile<kCodes, kBlock, kMins, kUnits, 2, 1, kIl>(rows, cols, reps);
    case 22: return time_tile<kCodes, kBlock, kMins, kUnits, 2, 2, kIl>(rows, cols, reps);
    case 41: return time_tile<kCodes, kBlock, kMins, kUnits, 4, 1, kIl>(rows, cols, reps);
    case 42: return time_tile<kCodes, kBlock, kMins, kUnits, 4, 2, kIl>(rows, cols, reps);
    default: return -1;
  }
}

// The int8 path's tile for interleaved k-quant codes (QuantArray.interleave == kSub, two-level
// scales, x rounded in blocks of 256), kRows rows of x by kCols weight rows.
template <Codes kCodes, int kSub, int kRows, int kCols>
double time_int8_tile(int64_t rows, int64_t cols, int reps) {
  std::mt19937 g(0);
  const int64_t groups = cols / kSub;
  AlignedVector<uint8_t> codes(rows * cols), high(rows * cols / 4);
  for (auto& c : codes) c = g();  // any bytes are valid codes and plane bits
  for (auto& c : high) c = g();
  const TwoLevel two_level(g, rows, cols, groups);
  std::vector<float> x(kRows * cols), y(kRows * rows);
  for (auto& v : x) v = (g() % 1000) / 1000.0f - 0.5f;
  Weight w{codes.data(), nullptr, nullptr, rows, cols, kCodes == Codes::kInt8 ? cols : cols / 2, groups,
           high_planes(kCodes) ? high.data() : nullptr, kSub};
  two_level.attach(w, !kQ6Scales<kCodes>);
  w.planes = high_planes(kCodes);
  QuantX xq;
  quantize_rows(x.data(), kRows, cols, Act::kQ8K, kSub, xq, kSub);
  // called through a pointer, as int8_columns calls it: inlined here, its registers differ
  const Int8Tile volatile tile = &int8_group_tile<kCodes, kSub, kRows, kCols>;
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    for (int64_t n = 0; n + kCols <= rows; n += kCols) tile(w, n, xq, 0, y.data() + n, rows);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best * 1e9 / (static_cast<double>(rows) * cols / 8);  // ns per 8 weights
}

template <Codes kCodes, int kSub>
double int8_by_shape(int tile_rows, int tile_cols, int64_t rows, int64_t cols, int reps) {
  switch (tile_rows * 10 + tile_cols) {
    case 11: return time_int8_tile<kCodes, kSub, 1, 1>(rows, cols, reps);
    case 41: return time_int8_tile<kCodes, kSub, 4, 1>(rows, cols, reps);
    case 42: return time_int8_tile<kCodes, kSub, 4, 2>(rows, cols, reps);
    case 81: return time_int8_tile<kCodes, kSub, 8, 1>(rows, cols, reps);
    case 82: return time_int8_tile<kCodes, kSub, 8, 2>(rows, cols, reps);
    default: return -1;
  }
}

}  // namespace

// ns per 8 weights of one tile of ``tile_rows`` rows of x by ``tile_cols`` weight rows, over
// a weight [rows, cols] of ``layout`` (0 Q4_K's 4-bit codes with mins, 1 Q5_K's with fifth
// bits, 2 int8 codes in blocks of 16 (Q6_K), 3 bf16; 4-6: 0-2 with the file's two-level
// scales; 7, 8: 4, 5 interleaved, f32_interleaved.h; 9: Q6_K's 6-bit codes interleaved there, two
// planes, two-level scales); the best of ``reps``. -1: no such tile.
extern "C" __attribute__((visibility("default"))) double phijax_time_tile(int layout, int tile_rows, int tile_cols, int64_t rows, int64_t cols, int reps) {
  switch (layout) {
    case 0: return by_shape<Codes::kNibbles64, 32, true>(tile_rows, tile_cols, rows, cols, reps);
    case 1: return by_shape<Codes::kNibbles64H, 32, true>(tile_rows, tile_cols, rows, cols, reps);
    case 2: return by_shape<Codes::kInt8, 16, false>(tile_rows, tile_cols, rows, cols, reps);
    case 3: return by_shape<Codes::kBf16, 32, false>(tile_rows, tile_cols, rows, cols, reps);
    case 4: return by_shape<Codes::kNibbles64, 32, true, true>(tile_rows, tile_cols, rows, cols, reps);
    case 5: return by_shape<Codes::kNibbles64H, 32, true, true>(tile_rows, tile_cols, rows, cols, reps);
    case 6: return by_shape<Codes::kInt8, 16, false, true>(tile_rows, tile_cols, rows, cols, reps);
    case 7: return by_shape<Codes::kNibbles64, 32, true, true, true>(tile_rows, tile_cols, rows, cols, reps);
    case 8: return by_shape<Codes::kNibbles64H, 32, true, true, true>(tile_rows, tile_cols, rows, cols, reps);
    case 9: return by_shape<Codes::kNibbles64H2, 16, false, true, true>(tile_rows, tile_cols, rows, cols, reps);
    default: return -1;
  }
}

// The same for the int8 path's interleaved tiles (int8_dot.h), layout 0 Q4_K's 4-bit codes,
// 1 Q5_K's (a plane of fifth bits), 2 Q6_K's 6-bit codes (two planes), 3 int8 codes in blocks
// of 16; tile_rows 1, 4 or 8, tile_cols 1 or 2.
extern "C" __attribute__((visibility("default"))) double phijax_time_int8_tile(int layout, int tile_rows, int tile_cols, int64_t rows, int64_t cols, int reps) {
  switch (layout) {
    case 0: return int8_by_shape<Codes::kNibbles64, 32>(tile_rows, tile_cols, rows, cols, reps);
    case 1: return int8_by_shape<Codes::kNibbles64H, 32>(tile_rows, tile_cols, rows, cols, reps);
    case 2: return int8_by_shape<Codes::kNibbles64H2, 16>(tile_rows, tile_cols, rows, cols, reps);
    case 3: return int8_by_shape<Codes::kInt8, 16>(tile_rows, tile_cols, rows, cols, reps);
    default: return -1;
  }
}
