// One tile of phijax's CPU kernel (``dot_tile`` in phijax/kernels/cpu_matmul.cc) timed on
// weights held in L2, on the calling thread: what a loop costs without memory or threads
// in the way. Built and called by bench_tiles.py (a shared library, loaded with ctypes).

#include "cpu_matmul.cc"

#include <chrono>
#include <random>

namespace {

template <Codes kCodes, int kBlock, bool kMins, bool kUnits, int kRows, int kCols>
double time_tile(int64_t rows, int64_t cols, int reps) {
  std::mt19937 g(0);
  const int64_t groups = cols / kBlock;
  std::vector<uint8_t> codes(rows * cols * 2), high(rows * cols / 8);
  std::vector<float> scales(rows * groups), mins(rows * groups), x(kRows * cols), y(kRows * rows);
  std::vector<uint8_t> scale_codes(rows * groups), min_codes(rows * groups);
  std::vector<float> units(rows * cols / 256 * 2);
  for (auto& c : scale_codes) c = g() & 0x3f;
  for (auto& c : min_codes) c = g() & 0x3f;
  for (auto& u : units) u = (g() % 64) / 4096.0f;
  for (auto& c : codes) c = g() & 0x3f;  // bf16: small finite values; int8: codes of 6 bits
  for (auto& c : high) c = g();
  for (auto& s : scales) s = (g() % 64) / 64.0f;
  for (auto& s : mins) s = (g() % 64) / 64.0f;
  for (auto& v : x) v = (g() % 1000) / 1000.0f;
  const bool bf16 = kCodes == Codes::kBf16, nibbles = is_nibbles(kCodes);
  Weight w{codes.data(), bf16 || kUnits ? nullptr : scales.data(), kMins && !kUnits ? mins.data() : nullptr,
           rows, cols, bf16 ? 2 * cols : nibbles ? cols / 2 : cols, bf16 ? 0 : groups,
           has_fifth(kCodes) ? high.data() : nullptr, 0};
  if (kUnits) {  // the file's two levels: integer codes per block, d (and dmin) per 256
    w.scale_codes = scale_codes.data();
    w.min_codes = kMins ? min_codes.data() : nullptr;
    w.units = units.data();
  }
  const std::vector<float> xsums = block_sums(x.data(), kRows, cols, kBlock);
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    for (int64_t n = 0; n + kCols <= rows; n += kCols) {
      dot_tile<kCodes, kBlock, kMins, kUnits, kRows, kCols>(w, n, x.data(), xsums.data(), cols, y.data() + n, rows);
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best * 1e9 / (static_cast<double>(rows) * cols / 8);  // ns per 8 weights
}

template <Codes kCodes, int kBlock, bool kMins, bool kUnits = false>
double by_shape(int tile_rows, int tile_cols, int64_t rows, int64_t cols, int reps) {
  switch (tile_rows * 10 + tile_cols) {
    case 11: return time_tile<kCodes, kBlock, kMins, kUnits, 1, 1>(rows, cols, reps);
    case 21: return time_tile<kCodes, kBlock, kMins, kUnits, 2, 1>(rows, cols, reps);
    case 22: return time_tile<kCodes, kBlock, kMins, kUnits, 2, 2>(rows, cols, reps);
    case 41: return time_tile<kCodes, kBlock, kMins, kUnits, 4, 1>(rows, cols, reps);
    case 42: return time_tile<kCodes, kBlock, kMins, kUnits, 4, 2>(rows, cols, reps);
    default: return -1;
  }
}

}  // namespace

// ns per 8 weights of one tile of ``tile_rows`` rows of x by ``tile_cols`` weight rows, over
// a weight [rows, cols] of ``layout`` (0 Q4_K's 4-bit codes with mins, 1 Q5_K's with fifth
// bits, 2 int8 codes in blocks of 16 (Q6_K), 3 bf16; 4-6: 0-2 with the file's two-level
// scales); the best of ``reps``. -1: no such tile.
extern "C" __attribute__((visibility("default"))) double phijax_time_tile(int layout, int tile_rows, int tile_cols, int64_t rows, int64_t cols, int reps) {
  switch (layout) {
    case 0: return by_shape<Codes::kNibbles64, 32, true>(tile_rows, tile_cols, rows, cols, reps);
    case 1: return by_shape<Codes::kNibbles64H, 32, true>(tile_rows, tile_cols, rows, cols, reps);
    case 2: return by_shape<Codes::kInt8, 16, false>(tile_rows, tile_cols, rows, cols, reps);
    case 3: return by_shape<Codes::kBf16, 32, false>(tile_rows, tile_cols, rows, cols, reps);
    case 4: return by_shape<Codes::kNibbles64, 32, true, true>(tile_rows, tile_cols, rows, cols, reps);
    case 5: return by_shape<Codes::kNibbles64H, 32, true, true>(tile_rows, tile_cols, rows, cols, reps);
    case 6: return by_shape<Codes::kInt8, 16, false, true>(tile_rows, tile_cols, rows, cols, reps);
    default: return -1;
  }
}
