// y[m, n] = sum_k x[m, k] * w[n, k] for a packed weight (phijax.quant.QuantArray:
// w = scales * codes - mins per block of a row) or a bf16 weight, decoded in registers and
// multiplied in f32.
//
// One source, built four times (setup.py): with -mavx512f (16 lanes), the same with integer
// dot products (-mavx512vnni, for int8 activations: int8_dot.h), with -mavx2 -mfma (8 lanes; every
// vector build also has -mf16c, for the f16 units of two-level scales)
// and with no flags (portable loops). The portable build also reports the CPU's features, so
// Python imports a vector build only on a CPU that runs it.
//
// Exactness: a code times its scale is exact in f32 (phijax.gguf.dequant). The products are
// summed per block and scaled once, the mins' part apart (dot_tile), so the weights are the
// f32 mode's, bit for bit (one non-zero x gives scale * code - min, rounded once, as
// QuantArray.dequantize rounds it), and the sums differ from its product by rounding alone.
// Each output is computed the same way whatever the number of rows, so results do not
// depend on the batch.
//
// Stacks: every weight operand may carry a leading axis of layers; the call then reads the
// layer its int32 operand names, in place (XLA:CPU copies a slice of a stack, so a scan over
// layers would copy every layer's weights once per step).
//
// Work: output columns are split into chunks claimed from an atomic counter by the caller
// and by tasks on XLA's intra-op thread pool; the caller finishes any chunk left unclaimed,
// so a busy or absent pool only costs parallelism, never progress.
//
// The same library registers a second target, decode attention over the KV cache in place
// (decode_attention.h).

#include <Python.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(PHIJAX_AVX512) || defined(PHIJAX_AVX2)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX2__)
// 0xFF in byte i where bit i of m is set (llama.cpp's bytes_from_bits_32).
inline __m256i bytes_from_bits(uint32_t m) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(m)),
      _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201));
  return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}
#endif

#if defined(PHIJAX_AVX512)
#if defined(__AVX512VNNI__)
constexpr const char* kIsa = "avx512vnni";
#else
constexpr const char* kIsa = "avx512";
#endif
struct Simd {
  using V = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kMaxRows = 4, kCols = 2;  // 4 rows x 2 columns x 2 accumulators of the 32 registers
  static constexpr int kBf16Cols = kCols;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float v) { return _mm512_set1_ps(v); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(V a) { return _mm512_reduce_add_ps(a); }
  static V int8s(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static V uint8s(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static V halves(float lo, float hi) {  // lanes 0-7: lo, 8-15: hi
    return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(lo), _mm512_set1_ps(hi));
  }
  static V bf16s(const uint8_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  template <int kShift>  // each lane's 4 bits from bit kShift as a float: a permute of 0..15 by
  static V low_nibble(__m512i b) {  // the lane's low 4 bits is a mask and a convert in one
    if (kShift) b = _mm512_srli_epi32(b, kShift);
    return _mm512_permutexvar_ps(b, _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  }
  template <int kShift>
  static V nibbles(const uint8_t* p) {
    return low_nibble<kShift>(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // With a fifth bit per lane from the 16 bits at ``bits``: 16 added where it is set, one masked
  // add after nibbles (Q5_K's one-row tile in L2 took 0.53 -> 0.47 ns per 8 weights on Zen 4,
  // against masking, merging the bit and converting).
  template <int kShift>
  static V nibbles5(const uint8_t* p, const uint8_t* bits) {
    uint16_t m;
    std::memcpy(&m, bits, sizeof m);
    return plus16(nibbles<kShift>(p), m);
  }
  static V plus16(V v, __mmask16 where) { return _mm512_mask_add_ps(v, where, v, _mm512_set1_ps(16.0f)); }
  static constexpr bool kBytes5 = false;  // the masked add of nibbles5 is one operation
  static constexpr int nibble_exponent(int) { return 0; }  // the permute converts the code itself
  template <int kShift>  // the nibble at bit kShift of each of the 16 dwords at p (interleaved codes)
  static V lane_nibbles(const uint8_t* p) {
    return low_nibble<kShift>(_mm512_loadu_si512(p));
  }
  // With kPlanes high bits: 16 << q added where bit kBit + q of the dword at ``plane`` is set.
  template <int kShift, int kBit, int kPlanes>
  static V lane_high_codes(const uint8_t* p, const uint8_t* plane) {
    const __m512i bits = _mm512_loadu_si512(plane);
    V v = lane_nibbles<kShift>(p);
    for (int q = 0; q < kPlanes; ++q) {
      const __mmask16 set = _mm512_test_epi32_mask(bits, _mm512_set1_epi32(1 << (kBit + q)));
      v = _mm512_mask_add_ps(v, set, v, _mm512_set1_ps(static_cast<float>(16 << q)));
    }
    return v;
  }
};
#elif defined(PHIJAX_AVX2)
constexpr const char* kIsa = "avx2";
struct Simd {
  using V = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kMaxRows = 4, kCols = 1;  // 4 rows x 2 accumulators of the 16 registers
  // bf16 weights (a shift to decode) from 3 rows: 2 columns, each x vector serving two
  // weight rows, though 16 accumulators leave no register for the rest. Weights in L2, one
  // thread, Zen 3, cycles per 8 weights per row of x at 4 rows: bf16 1.09 -> 0.83 (int8 codes
  // 1.21 -> 1.07, 4-bit codes 1.01 -> 1.30); [8192, 3072] from memory at 3 / 4 rows: bf16
  // 2.41-3.07 / 3.13-3.54 -> 2.23-2.65 / 2.75-3.10 ms, while Q6_K's int8 codes were slower
  // from 2 to 8 rows with two weight streams per tile (and at 2 rows bf16 too).
  static constexpr int kBf16Cols = 2;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float v) { return _mm256_set1_ps(v); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static V int8s(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static V uint8s(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // lanes 0-7: lo (8 lanes: one unit; BlockScales names it in every build)
  static V halves(float lo, float) { return set1(lo); }
  static V bf16s(const uint8_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  template <int kShift>  // a widened byte's high nibble is its shift alone
  static V nibbles(const uint8_t* p) {
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    return _mm256_cvtepi32_ps(kShift ? _mm256_srli_epi32(b, kShift) : _mm256_and_si256(b, _mm256_set1_epi32(15)));
  }
  template <int kShift>  // with a fifth bit per lane from the byte at ``bits``
  static V nibbles5(const uint8_t* p, const uint8_t* bits) {
    __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    if (kShift) b = _mm256_srli_epi32(b, kShift);
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(*bits), lane_bit), lane_bit);
    b = _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(15)), _mm256_and_si256(set, _mm256_set1_epi32(16)));
    return _mm256_cvtepi32_ps(b);
  }
  // Half of a 64-code group with fifth bits (kShift 0: the bytes' low nibbles, codes 0-31; 4:
  // the high ones, codes 32-63) as 32 bytes, the 32 fifth bits at ``bits`` merged in bytes
  // (0xFF in byte j where bit j is set, as llama.cpp spreads them): the half's four vectors
  // share it, where nibbles5 spent a broadcast, a compare and three logic operations on each.
  static constexpr bool kBytes5 = true;
  template <int kShift>
  static __m256i bytes5(const uint8_t* p, const uint8_t* bits) {
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if (kShift) b = _mm256_srli_epi16(b, kShift);
    uint32_t m;
    std::memcpy(&m, bits, sizeof m);
    const __m256i fifth = _mm256_and_si256(bytes_from_bits(m), _mm256_set1_epi8(16));
    return _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi8(15)), fifth);
  }
  template <int kQuarter>  // bytes 8 kQuarter ... 8 kQuarter + 7 as floats
  static V widen(__m256i bytes) {
    __m128i q = kQuarter < 2 ? _mm256_castsi256_si128(bytes) : _mm256_extracti128_si256(bytes, 1);
    if (kQuarter % 2) q = _mm_srli_si128(q, 8);
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
  }
  // Interleaved codes: lane_nibbles<kShift> returns each lane's nibble at bit kShift times
  // 2^nibble_exponent(kShift). A nibble masked where it lies is the code times a power of two,
  // exact as a float, which saves the shift on all but the top nibble (whose mask would make
  // the dword negative); f32_interleaved.h scales x's copy to match.
  static constexpr int nibble_exponent(int shift) { return shift < 28 ? shift : 0; }
  template <int kShift>  // as integers
  static __m256i lane_codes(const uint8_t* p) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (kShift == 28) return _mm256_srli_epi32(b, 28);
    return _mm256_and_si256(b, _mm256_set1_epi32(15 << kShift));
  }
  template <int kShift>
  static V lane_nibbles(const uint8_t* p) {
    return _mm256_cvtepi32_ps(lane_codes<kShift>(p));
  }
  // With kPlanes high bits (Q5_K's fifth bit; Q6_K's bits 4 and 5), bits kBit ... of the dword
  // at ``plane``, just above the nibble (the top nibble's: at 4). Within a 64-byte step one shift
  // of the planes puts every even nibble's high bits above it, and another every odd one's (in
  // the next byte, which the odd word leaves free), so each parity's codes and high bits are
  // merged once into a word (the compiler computes it once per step), and a vector is a mask of
  // that word: at most 6 bits below bit 30, exact and positive as floats.
  template <int kShift, int kBit, int kPlanes>
  static V lane_high_codes(const uint8_t* p, const uint8_t* plane) {
    constexpr int kAt = nibble_exponent(kShift) + 4;  // where the high bits go
    constexpr uint32_t kHigh = (1u << kPlanes) - 1;
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(plane));
    const __m256i moved = kBit >= kAt ? _mm256_srli_epi32(bits, kBit - kAt) : _mm256_slli_epi32(bits, kAt - kBit);
    if constexpr (kShift == 28) {
      const __m256i high = _mm256_and_si256(moved, _mm256_set1_epi32(static_cast<int>(kHigh << 4)));
      return _mm256_cvtepi32_ps(_mm256_or_si256(lane_codes<28>(p), high));
    }
    constexpr bool kOdd = kShift / 4 % 2;
    constexpr uint32_t kCodes = kOdd ? 0xF0F0F0F0u : 0x0F0F0F0Fu;
    constexpr uint32_t kHighs = (kOdd ? 0x01010100u : 0x10101010u) * kHigh;
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i word = _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(static_cast<int>(kCodes))),
                                         _mm256_and_si256(moved, _mm256_set1_epi32(static_cast<int>(kHighs))));
    return _mm256_cvtepi32_ps(_mm256_and_si256(word, _mm256_set1_epi32(static_cast<int>(((16u << kPlanes) - 1) << kShift))));
  }
};
#else
constexpr const char* kIsa = "generic";
struct Simd {  // plain loops over 8 lanes: the compiler's own vectorizer, any CPU
  struct V {
    float v[8];
  };
  static constexpr int kLanes = 8;
  static constexpr int kMaxRows = 4, kCols = 1;
  static constexpr int kBf16Cols = kCols;
  template <typename F>
  static V map(F f) {
    V r;
    for (int i = 0; i < 8; ++i) r.v[i] = f(i);
    return r;
  }
  static V zero() { return set1(0.0f); }
  static V set1(float x) { return map([&](int) { return x; }); }
  static V load(const float* p) { return map([&](int i) { return p[i]; }); }
  static void store(float* p, V v) { std::memcpy(p, v.v, sizeof v.v); }
  static V add(V a, V b) { return map([&](int i) { return a.v[i] + b.v[i]; }); }
  static V mul(V a, V b) { return map([&](int i) { return a.v[i] * b.v[i]; }); }
  static V fmadd(V a, V b, V c) { return map([&](int i) { return a.v[i] * b.v[i] + c.v[i]; }); }
  static float sum(V a) {
    return ((a.v[0] + a.v[4]) + (a.v[2] + a.v[6])) + ((a.v[1] + a.v[5]) + (a.v[3] + a.v[7]));
  }
  static V int8s(const uint8_t* p) {
    return map([&](int i) { return static_cast<float>(static_cast<int8_t>(p[i])); });
  }
  static V uint8s(const uint8_t* p) {
    return map([&](int i) { return static_cast<float>(p[i]); });
  }
  // lanes 0-7: lo (8 lanes: one unit; BlockScales names it in every build)
  static V halves(float lo, float) { return set1(lo); }
  static V bf16s(const uint8_t* p) {
    return map([&](int i) {
      const uint32_t bits = static_cast<uint32_t>(p[2 * i] | (p[2 * i + 1] << 8)) << 16;
      float f;
      std::memcpy(&f, &bits, sizeof f);
      return f;
    });
  }
  template <int kShift>
  static V nibbles(const uint8_t* p) {
    return map([&](int i) { return static_cast<float>((p[i] >> kShift) & 15); });
  }
  template <int kShift>  // with a fifth bit per lane from the byte at ``bits``
  static V nibbles5(const uint8_t* p, const uint8_t* bits) {
    return map([&](int i) { return static_cast<float>(((p[i] >> kShift) & 15) | (((*bits >> i) & 1) << 4)); });
  }
  static constexpr bool kBytes5 = false;
  static constexpr int nibble_exponent(int) { return 0; }
  template <int kShift>  // the nibble at bit kShift of each of the 8 little-endian dwords at p
  static V lane_nibbles(const uint8_t* p) {
    return map([&](int i) { return static_cast<float>((p[4 * i + kShift / 8] >> (kShift % 8)) & 15); });
  }
  template <int kShift, int kBit, int kPlanes>  // bits kBit + q of the dword at ``plane`` as bit 4 + q
  static V lane_high_codes(const uint8_t* p, const uint8_t* plane) {
    const V low = lane_nibbles<kShift>(p);
    return map([&](int i) {
      float v = low.v[i];
      for (int q = 0; q < kPlanes; ++q) {
        v += static_cast<float>(((plane[4 * i + (kBit + q) / 8] >> ((kBit + q) % 8)) & 1) * (16 << q));
      }
      return v;
    });
  }
};
#endif

using V = Simd::V;
constexpr int kLanes = Simd::kLanes;

// Allocates on 64-byte boundaries, as XLA's buffers are: the kernel's own copies of x (int8
// rows, f32 rows in an interleaved order) are read by whole-vector loads, and a load that
// straddles two cache lines costs more (f32 products of 32 rows by interleaved Q4_K 20-30%).
template <typename T>
struct CacheAligned {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheAligned() = default;
  template <typename U>
  CacheAligned(const CacheAligned<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlign); }
  template <typename U>
  bool operator==(const CacheAligned<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CacheAligned<U>&) const { return false; }
};
template <typename T>
using AlignedVector = std::vector<T, CacheAligned<T>>;

// How a row's codes are stored: one int8 per code, or two codes per byte in groups of
// 32 or 64 (byte j of a group holds code j in its low half and code j + group/2 in its high),
// the same with a fifth bit per code in a bit plane (H: Q5_K, Q5_1), or with bits 4 and 5 in
// two planes and a zero point of 32 (H2: Q6_K's 6-bit codes, interleaved only); or a dense
// bf16 weight (no scales: the code is the weight).
enum class Codes { kInt8, kNibbles32, kNibbles64, kNibbles32H, kNibbles64H, kNibbles64H2, kBf16 };

constexpr bool is_nibbles(Codes c) {
  return c == Codes::kNibbles32 || c == Codes::kNibbles64 || c == Codes::kNibbles32H || c == Codes::kNibbles64H ||
         c == Codes::kNibbles64H2;
}
constexpr bool has_fifth(Codes c) { return c == Codes::kNibbles32H || c == Codes::kNibbles64H; }
// Bit planes above the nibbles: per 64 codes, 8 bytes of each (bit 4, then bit 5).
constexpr int high_planes(Codes c) { return c == Codes::kNibbles64H2 ? 2 : has_fifth(c) ? 1 : 0; }
// Whether the int8 path multiplies int8 codes signed (AVX2's maddubs: int8_dot.h's dot4_256)
// rather than offset by 128 to unsigned (VNNI's u8 x s8 product, and the portable loops).
#if defined(__AVX2__) && !(defined(__AVX512VNNI__) && defined(__AVX512BW__))
constexpr bool kSignedInt8 = true;
#else
constexpr bool kSignedInt8 = false;
#endif
// What the codes the int8 path multiplies exceed the codes by: 128 for unsigned int8 codes, 32
// for Q6_K's 6-bit codes.
constexpr int zero_point(Codes c) {
  return c == Codes::kInt8 ? (kSignedInt8 ? 0 : 128) : c == Codes::kNibbles64H2 ? 32 : 0;
}

template <Codes kCodes>
constexpr int kStep = kCodes == Codes::kNibbles64 || kCodes == Codes::kNibbles64H || kCodes == Codes::kNibbles64H2
                          ? 64
                          : 32;  // codes per loop step

// An IEEE half's value, exactly (a k-quant's d or dmin, kept as the file stores it).
inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  float f;
  if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in f32
    f = std::ldexp(static_cast<float>(man), -24);
    return h & 0x8000u ? -f : f;
  }
  const uint32_t bits = (static_cast<uint32_t>(h & 0x8000u) << 16) |
                        (exp == 31 ? 0x7F800000u : (exp + 112) << 23) | (man << 13);
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// halves[0 .. n) as f32 into out (exact).
inline void halves_to_floats(const uint16_t* halves, int64_t n, float* out) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(halves + i))));
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(halves + i))));
  }
#endif
  for (; i < n; ++i) out[i] = half_to_float(halves[i]);
}

// Two-level scales take rows of at most this many super-blocks (65536 codes): BlockScales
// holds a row's units as f32 (phijax.kernels.fits checks it too).
constexpr int64_t kMaxSupers = 256;

struct Weight {
  const uint8_t* codes;  // [rows, row_bytes]
  const float* scales;   // [rows, groups]
  const float* mins;     // [rows, groups], or null
  int64_t rows, cols, row_bytes, groups;
  const uint8_t* high = nullptr;  // [rows, cols / 8 * planes]: high bits of the codes (planes)
  int64_t interleave = 0;         // 0: codes in row order; else int8_dot.h's order, sub-blocks of this
  // Two-level k-quant scales (scales and mins then null): integer codes
  // [rows, groups] (u8; Q6_K's scales s8) and f16 units [rows, cols / 256, 1 or 2] (d, dmin),
  // read by half_to_float.
  const uint8_t* scale_codes = nullptr;
  const uint8_t* min_codes = nullptr;
  const uint16_t* units = nullptr;
  // High-bit planes: 0, 1 (fifth bits) or 2 (bits 4 and 5 of 6-bit codes with zero point 32;
  // interleaved, sub-blocks of 16: Q6_K), 8 bytes of each per 64 codes. In row order, bit i of
  // byte b is the fifth bit of code 8b + i; interleaved, bit t * planes + p of byte i of a
  // group's 64 bytes is plane p of code i of step t (int8_dot.h's with_planes).
  int64_t planes = 0;

  // The units (d, then dmin if any) of the super-block of 256 that holds sub-block j of row n
  // (sub-blocks of kSub codes: compile-time shifts, no division in the loops).
  template <int kSub>
  const uint16_t* units_of(int64_t n, int64_t j) const {
    return units + (n * (cols / 256) + j / (256 / kSub)) * (min_codes ? 2 : 1);
  }
};

struct Problem {
  Weight w;
  const float* x;      // [m, cols]
  float* y;            // [m, rows]
  int64_t m;
  const float* xsums;  // [m, groups]: block_sums(x), where the weight has mins
};

// Software prefetch of a weight stream this many bytes of codes ahead: the hardware prefetcher
// alone left the loops waiting on memory (per Q4_K [16384, 3072] product, AMD EPYC Zen 4: int8
// activations at 4 rows 4.0 -> 2.3 ms; 512 and 8192 bytes measured slower). The f32 path
// prefetches in one-row tiles only (batch-1 decode): in its 4 x 2 tiles the prefetch's
// registers made int8-code weights (Q5_K, Q6_K) spill, 1.8x slower at 32 rows; and only the
// codes (the scales, read once per block, gained nothing: Q4_K from memory 0.49 -> 0.47 ns per
// 8 weights without them). The int8 path prefetches in the first tile of rows (later tiles
// find the chunk in cache).
constexpr int64_t kAhead = 2048;

// Prefetches are inlined by force: GCC takes a function that only prefetches for one without
// side effects and deletes the calls it does not inline, and with them the prefetches (the
// f32 one-row tiles and the int8 row-order tiles of fifth-bit codes, Q5_K and Q5_1, had none).
#if defined(__GNUC__) || defined(__clang__)
#define PHIJAX_PREFETCH_INLINE inline __attribute__((always_inline))
#else
#define PHIJAX_PREFETCH_INLINE inline
#endif

PHIJAX_PREFETCH_INLINE void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p);
#else
  (void)p;
#endif
}

// Prefetch every cache line of ``bytes`` bytes from ``start``.
PHIJAX_PREFETCH_INLINE void prefetch_lines(const void* start, int64_t bytes) {
  const auto* p = static_cast<const uint8_t*>(start);
  for (int64_t i = 0; i < bytes; i += 64) prefetch(p + i);
  prefetch(p + bytes - 1);
}

// Prefetch the codes, scales and mins of a weight row kAhead bytes of codes past code k
// (kBlock codes per scale; every offset a compile-time shift, no division in the loop).
template <Codes kCodes, int kBlock>
PHIJAX_PREFETCH_INLINE void prefetch_ahead(const uint8_t* row, const float* scales, const float* mins, const uint8_t* high,
                           int64_t k) {
  constexpr int64_t kHalves = kCodes == Codes::kBf16 ? 4 : kCodes == Codes::kInt8 ? 2 : 1;  // bytes x 2
  constexpr int64_t kCodesAhead = kAhead * 2 / kHalves;
  prefetch(row + k * kHalves / 2 + kAhead);
  if (scales) prefetch(scales + (k + kCodesAhead) / kBlock);
  if (mins) prefetch(mins + (k + kCodesAhead) / kBlock);
  if constexpr (has_fifth(kCodes)) prefetch(high + (k + kCodesAhead) / 8);
}

template <int... I, typename F>
inline void unrolled(std::integer_sequence<int, I...>, F&& f) {
  (f(std::integral_constant<int, I>{}), ...);
}

// Codes k + kI * kLanes ... of a 64-code group with fifth bits, by Simd::bytes5 (the builds
// that have it): the compiler computes each half's bytes once for its four vectors.
template <int kI>
V fifth_bit_codes(const uint8_t* row, const uint8_t* high, int64_t k);

#if defined(PHIJAX_AVX2)
template <int kI>
V fifth_bit_codes(const uint8_t* row, const uint8_t* high, int64_t k) {
  constexpr int h = kI * kLanes / 32;
  return Simd::widen<kI * kLanes % 32 / kLanes>(Simd::bytes5<4 * h>(row + k / 2, high + (k + 32 * h) / 8));
}
#endif

// Codes k + i * kLanes ... of a row (fifth bits in ``high``) as floats; k is a multiple of kStep.
template <Codes kCodes, int kI>
inline V decode(const uint8_t* row, const uint8_t* high, int64_t k) {
  constexpr int off = kI * kLanes;
  if constexpr (kCodes == Codes::kInt8) {
    return Simd::int8s(row + k + off);
  } else if constexpr (kCodes == Codes::kBf16) {
    return Simd::bf16s(row + 2 * (k + off));
  } else {
    constexpr int half = kStep<kCodes> / 2;
    if constexpr (kCodes == Codes::kNibbles64H && Simd::kBytes5) {
      return fifth_bit_codes<kI>(row, high, k);
    } else if constexpr (has_fifth(kCodes)) {
      return Simd::nibbles5<(off < half ? 0 : 4)>(row + k / 2 + off % half, high + (k + off) / 8);
    } else {
      return Simd::nibbles<(off < half ? 0 : 4)>(row + k / 2 + off % half);
    }
  }
}

// Sums of x over each block of ``block`` columns: [m, cols / block], each the block's vectors
// added in order, then Simd::sum. They carry the mins' part of every product (below), and
// depend on x alone, so one call computes them once for all weight rows.
std::vector<float> block_sums(const float* x, int64_t m, int64_t cols, int64_t block) {
  std::vector<float> out(m * (cols / block));
  for (int64_t i = 0; i < static_cast<int64_t>(out.size()); ++i) {
    const float* p = x + i * block;
    V s = Simd::load(p);
    for (int64_t j = kLanes; j < block; j += kLanes) s = Simd::add(s, Simd::load(p + j));
    out[i] = Simd::sum(s);
  }
  return out;
}

// Weight rows ahead whose two-level scales a tile prefetches (BlockScales::prefetch_row).
constexpr int64_t kRowsAhead = 4;

// Codes per segment of a row whose two-level scales are formed at once (BlockScales::form): a
// whole number of super-blocks and of passes.
constexpr int64_t kSegment = 4096;

// The scales and mins of one weight row's blocks of kBlock codes: f32 values, or (kUnits) the
// file's two levels, an integer code per block (Q4_K, Q5_K: uint8 scales and mins; Q6_K's int8
// codes: int8 scales) times its super-block's unit, d or dmin. Those products are exact in f32
// and are the values QuantArray.scale_values() gives, so either form gives the same sums, bit
// for bit, while the two levels read 0.08 instead of 0.25 bytes per weight (Q4_K: 0.58 bytes a
// weight in all, not 0.75). Two-level scales are formed a segment at a time, a vector of
// blocks per multiply, into a buffer that the loop then reads as it reads f32 scales (one
// scale per block, in the loop, cost Q4_K's one-row tile in L2 28% more time; Zen 4).
template <Codes kCodes, int kBlock, bool kMins, bool kUnits>
struct BlockScales {
  static constexpr int kPerSuper = 256 / kBlock;
  static constexpr int kUnitsPer = kMins ? 2 : 1;  // d (, dmin) per super-block
  const float* scales = nullptr;
  const float* min_values = nullptr;
  const uint8_t* scale_codes = nullptr;
  const uint8_t* min_codes = nullptr;
  int64_t first = 0;                             // the block whose scale formed[0] holds
  float formed[kUnits ? kSegment / kBlock : 1];  // two levels: the scales of blocks first, ...
  // Two levels: the row's units (d, dmin per super-block) as f32, converted once per row: a
  // conversion per use cost Q4_K's one-row product 7% (1.33-1.37 -> 1.43-1.48 ms, [16384, 3072]).
  float units[kUnits ? kMaxSupers * kUnitsPer : 1];

  // Set up for weight row n, in place (a copy would move the buffers above).
  void init(const Weight& w, int64_t n) {
    if constexpr (kUnits) {
      scale_codes = w.scale_codes + n * w.groups;
      min_codes = kMins ? w.min_codes + n * w.groups : nullptr;
      halves_to_floats(w.units_of<kBlock>(n, 0), w.cols / 256 * kUnitsPer, units);
    } else {
      scales = w.scales + n * w.groups;
      min_values = kMins ? w.mins + n * w.groups : nullptr;
    }
  }
  // Two levels: prefetch row n's scale and min codes and units (its codes are prefetched as
  // they are read). Each is a few cache lines per row, read at its start and end, which the
  // hardware prefetcher did not fetch in time.
  PHIJAX_PREFETCH_INLINE static void prefetch_row(const Weight& w, int64_t n) {
    if (n >= w.rows) return;
    prefetch_lines(w.scale_codes + n * w.groups, w.groups);
    if constexpr (kMins) prefetch_lines(w.min_codes + n * w.groups, w.groups);
    prefetch_lines(w.units_of<kBlock>(n, 0), w.cols / 256 * kUnitsPer * 2);
  }
  // The unit (j = 0: d, 1: dmin) of block g's super-block.
  float unit(int64_t g, int j) const { return units[g / kPerSuper * kUnitsPer + j]; }
  // A scale code's value (Q6_K's are signed).
  static float code(uint8_t c) {
    return kCodes == Codes::kInt8 ? static_cast<float>(static_cast<int8_t>(c)) : static_cast<float>(c);
  }
  // Lane l: the unit of block g + l's super-block (g a multiple of kLanes).
  V unit_lanes(int64_t g, int j) const {
    if constexpr (kPerSuper >= kLanes) return Simd::set1(unit(g, j));
    return Simd::halves(unit(g, j), unit(g + kPerSuper, j));
  }
  // Two levels: the scales of blocks g ... g + kLanes - 1 (g a multiple of kLanes).
  V scale_lanes(int64_t g) const {
    const V codes = kCodes == Codes::kInt8 ? Simd::int8s(scale_codes + g) : Simd::uint8s(scale_codes + g);
    return Simd::mul(codes, unit_lanes(g, 0));
  }
  // Two levels: the scales of blocks [g0, g1) (whole super-blocks, at most kSegment codes).
  void form(int64_t g0, int64_t g1) {
    first = g0;
    int64_t g = g0;
    for (; g + kLanes <= g1; g += kLanes) Simd::store(formed + (g - g0), scale_lanes(g));
    for (; g < g1; ++g) formed[g - g0] = unit(g, 0) * code(scale_codes[g]);
  }
  float scale(int64_t g) const {
    if constexpr (kUnits) return formed[g - first];
    return scales[g];
  }
  float min(int64_t g) const {
    if constexpr (kUnits) return unit(g, 1) * static_cast<float>(min_codes[g]);
    return min_values[g];
  }
  V mins(int64_t g) const {  // of blocks g ... g + kLanes - 1 (g a multiple of kLanes)
    if constexpr (kUnits) return Simd::mul(Simd::uint8s(min_codes + g), unit_lanes(g, 1));
    return Simd::load(min_values + g);
  }
};

// y[r * ldy + c] = dot(x[r * ldx, :], w[n + c, :]) for r < kRows, c < kCols: each block of
// a weight row is decoded once for kRows rows of x, and each x vector serves kCols weight rows.
//
// The sum is factored as llama.cpp's is, w = scale * code - min per block:
//   y = sum_b scale_b * (sum_{j in b} code_j x_j) - sum_b min_b * xsum_b,
// with xsum_b = block_sums(x). Per vector of codes that is a convert and a fused multiply-add,
// where forming the weights cost a fused multiply-subtract more; and the chains of dependent
// adds advance once per block, not per vector, so one row of x is no longer bound by their
// latency (one thread, Zen 3, cycles per 8 weights at one row in L2: Q4_K 1.93 -> 1.34, Q5_K
// 2.99 -> 2.74, Q6_K 1.88 -> 1.29; docs/benchmarks.md, nineteenth step). Each block's sum goes
// to one of two accumulators by the block's parity, the mins' terms are summed apart, and
// every tile does the same, so results do not depend on the batch. With one non-zero x the
// sum is scale * code - min, rounded once, as QuantArray.dequantize rounds it.
template <Codes kCodes, int kBlock, bool kMins, bool kUnits, int kRows, int kCols>
void dot_tile(const Weight& w, int64_t n, const float* x, const float* xsums, int64_t ldx, float* y, int64_t ldy) {
  const uint8_t* row[kCols];
  const uint8_t* high[kCols];
  BlockScales<kCodes, kBlock, kMins, kUnits> scales[kCols];
  for (int c = 0; c < kCols; ++c) {
    row[c] = w.codes + (n + c) * w.row_bytes;
    high[c] = w.high ? w.high + (n + c) * (w.cols / 8) : nullptr;
    if constexpr (kCodes != Codes::kBf16) scales[c].init(w, n + c);
    if constexpr (kUnits) BlockScales<kCodes, kBlock, kMins, kUnits>::prefetch_row(w, n + c + kRowsAhead * kCols);
  }
  V acc[kRows][kCols][2];
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) acc[r][c][0] = acc[r][c][1] = Simd::zero();
  }
  constexpr int kStepVectors = kStep<kCodes> / kLanes;
  if constexpr (kCodes == Codes::kBf16) {  // the code is the weight: even and odd vectors alternate
    for (int64_t k = 0; k < w.cols; k += kStep<kCodes>) {
      if constexpr (kRows == 1) {
        for (int c = 0; c < kCols; ++c) prefetch_ahead<kCodes, kBlock>(row[c], nullptr, nullptr, nullptr, k);
      }
      unrolled(std::make_integer_sequence<int, kStepVectors>{}, [&](auto i) {
        constexpr int kI = decltype(i)::value;
        for (int r = 0; r < kRows; ++r) {
          const V xv = Simd::load(x + r * ldx + k + kI * kLanes);
          for (int c = 0; c < kCols; ++c) {
            acc[r][c][kI % 2] = Simd::fmadd(decode<kCodes, kI>(row[c], high[c], k), xv, acc[r][c][kI % 2]);
          }
        }
      });
    }
  } else {
    constexpr int kBlockVectors = kBlock / kLanes;
    // Codes per pass: two whole steps of the layout and an even number of blocks, so a block's
    // parity is known at compile time (two steps: Q6_K from memory 0.63 -> 0.56 ns per 8
    // weights). A row's last codes that fill no pass go one step at a time.
    constexpr int kPass = 2 * std::max(kStep<kCodes>, 2 * kBlock);
    const auto pass = [&](int64_t k, auto vectors) {
      constexpr int kBlocks = decltype(vectors)::value / kBlockVectors;
      if constexpr (kRows == 1) {
        for (int64_t s = 0; s < decltype(vectors)::value * kLanes; s += kStep<kCodes>) {
          for (int c = 0; c < kCols; ++c) prefetch_ahead<kCodes, kBlock>(row[c], nullptr, nullptr, high[c], k + s);
        }
      }
      unrolled(std::make_integer_sequence<int, kBlocks>{}, [&](auto b) {
        constexpr int kB = decltype(b)::value;
        V part[kRows][kCols];
        unrolled(std::make_integer_sequence<int, kBlockVectors>{}, [&](auto v) {
          constexpr int kI = kB * kBlockVectors + decltype(v)::value;  // vector of the pass
          V q[kCols];
          for (int c = 0; c < kCols; ++c) {
            q[c] = decode<kCodes, kI % kStepVectors>(row[c], high[c], k + kI / kStepVectors * kStep<kCodes>);
          }
          for (int r = 0; r < kRows; ++r) {
            const V xv = Simd::load(x + r * ldx + k + kI * kLanes);
            for (int c = 0; c < kCols; ++c) {
              part[r][c] = decltype(v)::value == 0 ? Simd::mul(q[c], xv) : Simd::fmadd(q[c], xv, part[r][c]);
            }
          }
        });
        const int64_t g = k / kBlock + kB;
        for (int c = 0; c < kCols; ++c) {
          const V s = Simd::set1(scales[c].scale(g));
          for (int r = 0; r < kRows; ++r) acc[r][c][kB % 2] = Simd::fmadd(part[r][c], s, acc[r][c][kB % 2]);
        }
      });
    };
    static_assert(!kUnits || (kSegment % kPass == 0 && kSegment % 256 == 0), "segments of whole passes");
    int64_t k = 0;
    for (int64_t end = 0; end < w.cols;) {  // one segment of two-level scales, or the whole row
      end = kUnits ? std::min(w.cols, end + kSegment) : w.cols;
      if constexpr (kUnits) {
        for (int c = 0; c < kCols; ++c) scales[c].form(k / kBlock, end / kBlock);
      }
      for (; k + kPass <= end; k += kPass) pass(k, std::integral_constant<int, kPass / kLanes>{});
      for (; k < end; k += kStep<kCodes>) pass(k, std::integral_constant<int, kStepVectors>{});
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) {
      float off = 0.0f;
      if constexpr (kMins) {  // sum_b min_b * xsum_b: lanes of kLanes blocks, then the rest in order
        const float* xs = xsums + r * w.groups;
        V m = Simd::zero();
        int64_t g = 0;
        for (; g + kLanes <= w.groups; g += kLanes) m = Simd::fmadd(scales[c].mins(g), Simd::load(xs + g), m);
        off = Simd::sum(m);
        for (; g < w.groups; ++g) off += scales[c].min(g) * xs[g];
      }
      y[r * ldy + c] = Simd::sum(Simd::add(acc[r][c][0], acc[r][c][1])) - off;
    }
  }
}

#include "int8_dot.h"

using RowsFn = void (*)(const Problem&, int64_t, int64_t);

// Weight rows per tile of kRows rows of x: one at one row of x (a batch-1 decode streams each
// weight row once, and fewer concurrent streams measured faster: Phi-3-mini 4.5-5.4 tok/s
// against 3.7-4.3 with two), else the build's choice (bf16 from 3 rows: kBf16Cols). Every
// tile sums in the same order, so the shape changes only the speed.
template <Codes kCodes, int kRows>
constexpr int kTileCols = kRows == 1 ? 1 : kCodes == Codes::kBf16 && kRows > 2 ? Simd::kBf16Cols : Simd::kCols;

// Output columns [n0, n1) for rows [m0, m0 + kRows) of x.
template <Codes kCodes, int kBlock, bool kMins, bool kUnits, int kRows>
void tile_columns(const Problem& p, int64_t m0, int64_t n0, int64_t n1) {
  constexpr int kCols = kTileCols<kCodes, kRows>;
  const int64_t cols = p.w.cols, rows = p.w.rows;
  const float* x = p.x + m0 * cols;
  const float* xsums = kMins ? p.xsums + m0 * p.w.groups : nullptr;
  float* y = p.y + m0 * rows;
  int64_t n = n0;
  for (; n + kCols <= n1; n += kCols) {
    dot_tile<kCodes, kBlock, kMins, kUnits, kRows, kCols>(p.w, n, x, xsums, cols, y + n, rows);
  }
  for (; n < n1; ++n) dot_tile<kCodes, kBlock, kMins, kUnits, kRows, 1>(p.w, n, x, xsums, cols, y + n, rows);
}

using Tile = void (*)(const Problem&, int64_t, int64_t, int64_t);

template <Codes kCodes, int kBlock, bool kMins, bool kUnits, int... R>
constexpr std::array<Tile, sizeof...(R)> tile_table(std::integer_sequence<int, R...>) {
  return {&tile_columns<kCodes, kBlock, kMins, kUnits, R + 1>...};
}

// Output columns [n0, n1) for every row of x, in tiles of up to kMaxRows rows.
template <Codes kCodes, int kBlock, bool kMins, bool kUnits = false>
void columns(const Problem& p, int64_t n0, int64_t n1) {
  static constexpr auto tiles =
      tile_table<kCodes, kBlock, kMins, kUnits>(std::make_integer_sequence<int, Simd::kMaxRows>{});
  for (int64_t m0 = 0; m0 < p.m; m0 += Simd::kMaxRows) {
    const int64_t rows = std::min<int64_t>(Simd::kMaxRows, p.m - m0);
    tiles[rows - 1](p, m0, n0, n1);
  }
}

template <Codes kCodes, int kBlock>
RowsFn pick(bool with_mins) {
  return with_mins ? &columns<kCodes, kBlock, true> : &columns<kCodes, kBlock, false>;
}

// Packed codes come from Q4_K, Q4_1, Q5_K or Q5_1, whose blocks are 32; int8 codes have 16 or 32.
// Two-level scales (``units``) come with Q4_K and Q5_K (nibbles in groups of 64, mins) and
// Q6_K (int8 codes in blocks of 16, no mins).
RowsFn pick(bool bf16, int64_t nibbles, bool fifth, int64_t block, bool with_mins, bool units) {
  if (bf16) return &columns<Codes::kBf16, 32, false>;
  if (units && nibbles == 64) {
    return fifth ? &columns<Codes::kNibbles64H, 32, true, true> : &columns<Codes::kNibbles64, 32, true, true>;
  }
  if (units) return &columns<Codes::kInt8, 16, false, true>;
  if (nibbles == 32) return fifth ? pick<Codes::kNibbles32H, 32>(with_mins) : pick<Codes::kNibbles32, 32>(with_mins);
  if (nibbles == 64) return fifth ? pick<Codes::kNibbles64H, 32>(with_mins) : pick<Codes::kNibbles64, 32>(with_mins);
  return block == 16 ? pick<Codes::kInt8, 16>(with_mins) : pick<Codes::kInt8, 32>(with_mins);
}

#include "f32_interleaved.h"

// Output columns [n0, n1) of one product.
using Columns = std::function<void(int64_t, int64_t)>;

struct Job {
  Columns columns;
  int64_t rows, chunk, chunks;
  std::atomic<int64_t> next{0}, done{0};

  void work() {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      columns(c * chunk, std::min(rows, (c + 1) * chunk));
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// ``job``'s chunks on the caller and on up to all of the pool's threads; returns when every
// chunk is done.
void run(ffi::ThreadPool& pool, const std::shared_ptr<Job>& job) {
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), job->chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->work(); });
  job->work();
  while (job->done.load(std::memory_order_acquire) < job->chunks) std::this_thread::yield();
}

#include "decode_attention.h"

ffi::Unexpected<ffi::Error> bad(const char* message) {
  return ffi::Unexpected<ffi::Error>(ffi::Error::InvalidArgument(message));
}

// The weight behind the buffers, or an error naming what disagrees (the target is registered
// for any caller, so every extent the loops read is checked here). ``nibbles``: 0 for int8
// codes, 32 or 64 for packed 4-bit codes; bf16 codes are a dense weight (scales, mins empty).
// One layer of an operand: its dimensions without the layer axis, first byte and element count.
struct Part {
  std::vector<int64_t> dims;
  const uint8_t* data;
  int64_t count;
};

// Operand ``b`` (of ``rank`` dimensions per layer) at ``layer`` of ``layers``: a stacked weight's
// operands carry a leading axis of ``layers``; an unstacked one's (``layers`` 0) are the layer.
template <typename B>
ffi::ErrorOr<Part> part_of(const B& b, size_t rank, int64_t layer, int64_t layers) {
  const auto d = b.dimensions();
  const auto* data = static_cast<const uint8_t*>(b.untyped_data());
  const int64_t count = static_cast<int64_t>(b.element_count());
  if (count == 0 || layers == 0) return Part{std::vector<int64_t>(d.begin(), d.end()), data, count};
  if (d.size() != rank + 1 || d[0] != layers) return bad("cpu_matmul: a stacked weight's operands share the layer axis");
  const int64_t per_layer = count / layers;
  return Part{std::vector<int64_t>(d.begin() + 1, d.end()),
              data + static_cast<int64_t>(b.size_bytes()) / layers * layer, per_layer};
}

ffi::ErrorOr<Weight> weight_of(int64_t cols, ffi::AnyBuffer codes_buf, ffi::AnyBuffer scales_buf,
                               ffi::AnyBuffer mins_buf, ffi::Buffer<ffi::U8> high_buf, ffi::Buffer<ffi::F16> units_buf,
                               int64_t nibbles, int64_t interleave, int64_t layer) {
  const auto stack = codes_buf.dimensions();
  const int64_t layers = stack.size() == 3 ? stack[0] : 0;
  if (layer < 0 || layer >= std::max<int64_t>(layers, 1)) return bad("cpu_matmul: the layer is outside the stack");
  auto codes = part_of(codes_buf, 2, layer, layers), scales = part_of(scales_buf, 2, layer, layers);
  auto mins = part_of(mins_buf, 2, layer, layers), high = part_of(high_buf, 2, layer, layers);
  auto units = part_of(units_buf, 3, layer, layers);
  for (const auto* p : {&codes, &scales, &mins, &high, &units}) {
    if (p->has_error()) return ffi::Unexpected<ffi::Error>(p->error());
  }
  const auto &cd = codes->dims, &sd = scales->dims;
  const auto* data = codes->data;
  if (cd.size() != 2 || cols % 32 != 0) {
    return bad("cpu_matmul: codes must be 2-D (3-D: a stack of layers), columns a multiple of 32");
  }
  const int64_t rows = cd[0];
  if (codes_buf.element_type() == ffi::DataType::BF16) {
    if (cd[1] != cols || scales->count != 0 || mins->count != 0) {
      return bad("cpu_matmul: a bf16 weight is [out, in], without scales");
    }
    return Weight{data, nullptr, nullptr, rows, cols, 2 * cols, 0};
  }
  const bool packed = nibbles == 32 || nibbles == 64;
  if ((nibbles != 0 && !packed) || codes_buf.element_type() != (packed ? ffi::DataType::U8 : ffi::DataType::S8)) {
    return bad("cpu_matmul: codes must be int8, uint8 nibbles in groups of 32 or 64, or bf16");
  }
  const auto& hd = high->dims;
  const bool fifth = high->count != 0;
  const int64_t planes = fifth && hd.size() == 2 ? hd[1] * 8 / cols : 0;
  if (fifth && (!packed || hd.size() != 2 || hd[0] != rows || (planes != 1 && planes != 2) ||
                hd[1] != cols / 8 * planes)) {
    return bad("cpu_matmul: high bits must be [rows, cols / 8] (fifth bits) or [rows, cols / 4] (bits 4 and 5) "
               "uint8 beside packed codes, or empty");
  }
  const bool six = planes == 2;  // Q6_K's codes: interleaved, sub-blocks of 16
  const int64_t groups = sd.size() == 2 ? sd[1] : 0, block = groups > 0 ? cols / groups : 0;
  if (sd.size() != 2 || cd[1] != (packed ? cols / 2 : cols) || sd[0] != rows || groups * block != cols ||
      (block != 16 && block != 32) || (packed && (block != (six ? 16 : 32) || cols % nibbles != 0))) {
    return bad("cpu_matmul: shapes of x, codes and scales disagree");
  }
  if (six && (interleave != 16 || nibbles != 64)) {
    return bad("cpu_matmul: 6-bit codes (two high-bit planes) are interleaved, in sub-blocks of 16 (Q6_K)");
  }
  const bool with_mins = mins->count != 0;
  const auto& md = mins->dims;
  if (with_mins && (md.size() != 2 || md[0] != rows || md[1] != groups)) {
    return bad("cpu_matmul: mins must be [rows, groups] like scales, or empty");
  }
  const bool two_level = units->count != 0;
  const auto& ud = units->dims;
  if (!two_level && (scales_buf.element_type() != ffi::DataType::F32 ||
                     (with_mins && mins_buf.element_type() != ffi::DataType::F32))) {
    return bad("cpu_matmul: scales and mins are f32 unless units are given");
  }
  if (two_level) {
    const bool q4 = packed && !six;  // Q4_K, Q5_K
    const auto code_type = q4 ? ffi::DataType::U8 : ffi::DataType::S8;
    if ((interleave == 0 && q4 && nibbles != 64) || cols % 256 != 0 || cols / 256 > kMaxSupers ||
        block != (q4 ? 32 : 16) || ud.size() != 3 || ud[0] != rows ||
        ud[1] != cols / 256 || ud[2] != (with_mins ? 2 : 1) || scales_buf.element_type() != code_type ||
        with_mins != q4 || (with_mins && mins_buf.element_type() != ffi::DataType::U8)) {
      return bad("cpu_matmul: two-level scales are Q4_K/Q5_K's (nibbles in groups of 64, u8 scales and mins, "
                 "units [rows, cols / 256, 2]) or Q6_K's (s8 scales, units [rows, cols / 256, 1]), "
                 "at most 65536 columns");
    }
  }
  if (interleave != 0 && (interleave != block || cols % (16 * block) != 0 || (packed && nibbles != 64))) {
    return bad("cpu_matmul: interleaved codes come in groups of 16 sub-blocks of the scales' block "
               "(nibbles: groups of 64, blocks of 32)");
  }
  Weight w{data, nullptr, nullptr, rows, cols, cd[1], groups, fifth ? high->data : nullptr, interleave};
  w.planes = planes;
  const auto* scale_data = scales->data;
  const auto* min_data = with_mins ? mins->data : nullptr;
  if (two_level) {
    w.scale_codes = scale_data;
    w.min_codes = min_data;
    w.units = reinterpret_cast<const uint16_t*>(units->data);
  } else {
    w.scales = reinterpret_cast<const float*>(scale_data);
    w.mins = reinterpret_cast<const float*>(min_data);
  }
  return w;
}

ffi::Error CpuMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer codes, ffi::AnyBuffer scales,
                           ffi::AnyBuffer mins, ffi::Buffer<ffi::U8> high, ffi::Buffer<ffi::F16> units,
                           ffi::Buffer<ffi::S32> layer, ffi::ResultBuffer<ffi::F32> y, int64_t act, int64_t nibbles,
                           int64_t interleave) {
  const auto xd = x.dimensions();
  if (xd.size() != 2) return ffi::Error::InvalidArgument("cpu_matmul: x must be 2-D");
  const int64_t m = xd[0], cols = xd[1];
  if (layer.element_count() != 1) return ffi::Error::InvalidArgument("cpu_matmul: the layer is one int32");
  auto w = weight_of(cols, codes, scales, mins, high, units, nibbles, interleave, layer.typed_data()[0]);
  if (w.has_error()) return w.error();
  const auto yd = y->dimensions();
  if (yd.size() != 2 || yd[0] != m || yd[1] != w->rows) {
    return ffi::Error::InvalidArgument("cpu_matmul: the output must be [rows of x, rows of the weight]");
  }
  auto job = std::make_shared<Job>();
  const int64_t block = w->groups ? cols / w->groups : 0;
  const bool f32 = act == static_cast<int64_t>(Act::kF32);
  // two-level k-quant codes as nibbles: Q4_K's and Q5_K's (with mins), Q6_K's (two planes, none)
  const bool k_quant_nibbles =
      nibbles == 64 && w->units != nullptr && (w->min_codes != nullptr) == (w->planes < 2);
  if (w->interleave != 0 && act != static_cast<int64_t>(Act::kQ8K) && !(f32 && k_quant_nibbles)) {
    return ffi::Error::InvalidArgument(
        "cpu_matmul: interleaved codes take int8 activations in blocks of 256, or f32 ones for Q4_K's, "
        "Q5_K's and Q6_K's 6-bit codes (two-level scales)");
  }
  if (w->interleave == 0 && w->units != nullptr && !f32) {
    return ffi::Error::InvalidArgument("cpu_matmul: two-level scales in row order take f32 activations");
  }
  if (!f32) {
    if ((act != static_cast<int64_t>(Act::kQ8K) && act != static_cast<int64_t>(Act::kQ8_0)) || block == 0 ||
        cols % (act == static_cast<int64_t>(Act::kQ8K) ? 256 : 64) != 0 ||
        (nibbles != 0 && block != (w->planes == 2 ? 16 : 32))) {
      return ffi::Error::InvalidArgument(
          "cpu_matmul: int8 activations take packed or int8 codes with a scale per 16 or 32, and "
          "columns a multiple of 64 (256 for k-quant activations)");
    }
    auto p = std::make_shared<Int8Problem>();
    p->w = *w;
    p->y = y->typed_data();
    p->m = m;
    quantize_rows(x.typed_data(), m, cols, static_cast<Act>(act), block, p->x, w->interleave);
    job->columns = [p, fn = pick_int8(nibbles, w->planes, block, w->interleave != 0)](int64_t n0,
                                                                                                int64_t n1) {
      fn(*p, n0, n1);
    };
  } else {
    auto xsums = std::make_shared<std::vector<float>>();
    const bool with_mins = w->mins != nullptr || w->min_codes != nullptr;
    // Q6_K's 6-bit codes take their zero point as a min (f32_interleaved.h)
    if (with_mins || w->planes == 2) *xsums = block_sums(x.typed_data(), m, cols, block);
    // interleaved (Q4_K, Q5_K, Q6_K): x in the codes' order, beside the sums in row order
    auto xp = std::make_shared<AlignedVector<float>>();
    if (w->interleave != 0) *xp = interleaved_x(x.typed_data(), m, cols, w->interleave);
    const Problem problem{*w, w->interleave != 0 ? xp->data() : x.typed_data(), y->typed_data(), m, xsums->data()};
    static constexpr RowsFn kInterleaved[] = {&columns_interleaved<0>, &columns_interleaved<1>,
                                              &columns_interleaved<2>};
    const RowsFn fn = w->interleave != 0 ? kInterleaved[w->planes]
                                         : pick(codes.element_type() == ffi::DataType::BF16, nibbles,
                                                w->high != nullptr, block, with_mins, w->units != nullptr);
    job->columns = [problem, xsums, xp, fn](int64_t n0, int64_t n1) { fn(problem, n0, n1); };
  }
  job->rows = w->rows;
  // Chunks of ~256 K multiply-adds, at most 256 rows: long runs of each weight stream, and
  // dozens of chunks per matrix to share between threads.
  job->chunk = 4 * std::clamp<int64_t>((int64_t{1} << 18) / std::max<int64_t>(1, m * cols), 1, 64);
  job->chunks = (w->rows + job->chunk - 1) / job->chunk;
  run(pool, job);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CpuMatmul, CpuMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [m, cols]
                                  .Arg<ffi::AnyBuffer>()         // codes [rows, cols or cols / 2]: s8, u8, bf16
                                  .Arg<ffi::AnyBuffer>()         // scales [rows, groups] or [0]: f32, or u8/s8 codes
                                  .Arg<ffi::AnyBuffer>()         // mins [rows, groups] or [0]: f32, or u8 codes
                                  .Arg<ffi::Buffer<ffi::U8>>()   // high bits [rows, cols / 8 * planes] or [0]
                                  .Arg<ffi::Buffer<ffi::F16>>()  // units [rows, cols / 256, k] or [0]: d (, dmin)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // layer: which of a stack's weights (else 0)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y [m, rows]
                                  .Attr<int64_t>("act")          // activations: 0 f32, 1 int8 per 256, 2 per 32
                                  .Attr<int64_t>("nibbles")
                                  .Attr<int64_t>("interleave"));  // 0, or the sub-block of int8_dot.h's order

XLA_FFI_DEFINE_HANDLER_SYMBOL(CpuAttention, CpuAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q [batch, q_heads, head_dim]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k [layers, batch, kv_heads, seq, head_dim]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v, the same
                                  .Arg<ffi::Buffer<ffi::S32>>()   // layer
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // mask [batch, attended slots]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // [batch, q_heads, head_dim]

namespace {

PyObject* Handler(PyObject*, PyObject*) {
  return PyCapsule_New(reinterpret_cast<void*>(&CpuMatmul), nullptr, nullptr);
}

PyObject* AttentionHandler(PyObject*, PyObject*) {
  return PyCapsule_New(reinterpret_cast<void*>(&CpuAttention), nullptr, nullptr);
}

PyObject* Isa(PyObject*, PyObject*) { return PyUnicode_FromString(kIsa); }

// The vector builds this CPU runs (asked of the CPU by the portable build only).
PyObject* Supported(PyObject*, PyObject*) {
  PyObject* out = PyList_New(0);
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool avx512 = __builtin_cpu_supports("avx512f") && avx2;
  const bool vnni = avx512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512vnni");
  for (const char* isa : {vnni ? "avx512vnni" : "", avx512 ? "avx512" : "", avx2 ? "avx2" : ""}) {
    if (*isa == 0) continue;
    PyObject* name = PyUnicode_FromString(isa);
    PyList_Append(out, name);
    Py_DECREF(name);
  }
#endif
  return out;
}

PyMethodDef kMethods[] = {
    {"handler", Handler, METH_NOARGS, "The XLA FFI handler, as a PyCapsule."},
    {"attention_handler", AttentionHandler, METH_NOARGS, "The decode attention's FFI handler, as a PyCapsule."},
    {"isa", Isa, METH_NOARGS, "The instruction set this build uses."},
    {"supported", Supported, METH_NOARGS, "Vector builds that this CPU can run."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

#define PHIJAX_CONCAT_(a, b) a##b
#define PHIJAX_CONCAT(a, b) PHIJAX_CONCAT_(a, b)
#define PHIJAX_STR_(a) #a
#define PHIJAX_STR(a) PHIJAX_STR_(a)

static PyModuleDef kModule = {PyModuleDef_HEAD_INIT, PHIJAX_STR(PHIJAX_MODULE), nullptr, -1, kMethods,
                              nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PHIJAX_CONCAT(PyInit_, PHIJAX_MODULE)() { return PyModule_Create(&kModule); }
