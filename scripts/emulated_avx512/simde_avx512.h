// Force-included into the AVX-512 builds by scripts/check_avx512_emulated.sh: SIMDe's portable
// AVX-512 intrinsics, under Intel's names, on a CPU without AVX-512. The kernel's preprocessor
// tests then take the AVX-512 branches (__AVX512F__ and, for the VNNI build, the rest), so the
// suite runs those builds' code on any x86-64 CPU with AVX2. It checks what the intrinsics
// compute, not GCC's AVX-512 code generation or speed.
#include <immintrin.h>  // first: GCC's own AVX-512 declarations, before the names are taken
#include <string.h>
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

// Intrinsics SIMDe (0.7.4) lacks, each as Intel's guide defines it.
static inline simde__m512 phijax_emu_cvtepi32_ps(simde__m512i a) {
  simde__m512i_private s = simde__m512i_to_private(a);
  simde__m512_private r;
  for (int i = 0; i < 16; ++i) r.f32[i] = (float)s.i32[i];
  return simde__m512_from_private(r);
}
// Widening conversions: 16 lanes of `source` (their field `lane`) to int32.
#define PHIJAX_EMU_WIDEN(name, source, lane)                              \
  static inline simde__m512i name(source a) {                             \
    source##_private s = source##_to_private(a);                          \
    simde__m512i_private r;                                               \
    for (int i = 0; i < 16; ++i) r.i32[i] = s.lane[i];                    \
    return simde__m512i_from_private(r);                                  \
  }
PHIJAX_EMU_WIDEN(phijax_emu_cvtepi8_epi32, simde__m128i, i8)
PHIJAX_EMU_WIDEN(phijax_emu_cvtepu8_epi32, simde__m128i, u8)
PHIJAX_EMU_WIDEN(phijax_emu_cvtepu16_epi32, simde__m256i, u16)
static inline simde__m512 phijax_emu_cvtph_ps(simde__m256i a) {  // F16C, which the build has
  __m128i halves[2];
  memcpy(halves, &a, sizeof halves);
  const __m256 low = _mm256_cvtph_ps(halves[0]), high = _mm256_cvtph_ps(halves[1]);
  simde__m512 r;
  memcpy(&r, &low, sizeof low);
  memcpy((char*)&r + sizeof low, &high, sizeof high);
  return r;
}
static inline simde__m512 phijax_emu_maskz_loadu_ps(simde__mmask16 k, const void* p) {
  simde__m512_private r;  // reads only the lanes in k, as the instruction does
  for (int i = 0; i < 16; ++i) r.f32[i] = ((k >> i) & 1) ? ((const float*)p)[i] : 0.0f;
  return simde__m512_from_private(r);
}
static inline simde__m512 phijax_emu_zextps128_ps512(simde__m128 a) {
  simde__m128_private s = simde__m128_to_private(a);
  simde__m512_private r;
  for (int i = 0; i < 16; ++i) r.f32[i] = i < 4 ? s.f32[i] : 0.0f;
  return simde__m512_from_private(r);
}
// GCC's order of a reduction (avx512fintrin.h): halves, then quarters, then lanes (2, 3, 0, 1),
// then lane 0 with lane 1; a sum's rounding depends on it.
#define PHIJAX_EMU_REDUCE(name, op)                               \
  static inline float name(simde__m512 a) {                       \
    simde__m512_private s = simde__m512_to_private(a);            \
    float half[8], quarter[4], pair[4];                           \
    for (int i = 0; i < 8; ++i) half[i] = op(s.f32[8 + i], s.f32[i]); \
    for (int i = 0; i < 4; ++i) quarter[i] = op(half[4 + i], half[i]); \
    for (int i = 0; i < 4; ++i) pair[i] = op(quarter[i], quarter[i ^ 2]); \
    return op(pair[0], pair[1]);                                  \
  }
#define PHIJAX_EMU_ADD(a, b) ((a) + (b))
#define PHIJAX_EMU_MAX(a, b) ((a) > (b) ? (a) : (b))
PHIJAX_EMU_REDUCE(phijax_emu_reduce_add_ps, PHIJAX_EMU_ADD)
PHIJAX_EMU_REDUCE(phijax_emu_reduce_max_ps, PHIJAX_EMU_MAX)

#ifndef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps phijax_emu_cvtepi32_ps
#endif
#ifndef _mm512_cvtepi8_epi32
#define _mm512_cvtepi8_epi32 phijax_emu_cvtepi8_epi32
#endif
#ifndef _mm512_cvtepu8_epi32
#define _mm512_cvtepu8_epi32 phijax_emu_cvtepu8_epi32
#endif
#ifndef _mm512_cvtepu16_epi32
#define _mm512_cvtepu16_epi32 phijax_emu_cvtepu16_epi32
#endif
#ifndef _mm512_cvtph_ps
#define _mm512_cvtph_ps phijax_emu_cvtph_ps
#endif
#ifndef _mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_ps phijax_emu_maskz_loadu_ps
#endif
#ifndef _mm512_zextps128_ps512
#define _mm512_zextps128_ps512 phijax_emu_zextps128_ps512
#endif
#ifndef _mm512_reduce_add_ps
#define _mm512_reduce_add_ps phijax_emu_reduce_add_ps
#endif
#ifndef _mm512_reduce_max_ps
#define _mm512_reduce_max_ps phijax_emu_reduce_max_ps
#endif
#ifndef _mm512_shuffle_i64x2
#define _mm512_shuffle_i64x2 simde_mm512_shuffle_i64x2
#endif
#ifndef _cvtu64_mask64
#define _cvtu64_mask64(a) ((simde__mmask64)(a))
#endif

// What the compiler would say for -mavx512f (and, for the VNNI build, its other flags).
#define __AVX512F__ 1
#ifdef PHIJAX_EMULATE_VNNI
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512VNNI__ 1
#endif
