// The AVX-512 row kernels (rowconv.cc says what they compute): 16 output pixels a vector,
// tiles of two vectors by up to 16 output channels (32 accumulators, all of AVX-512's
// registers); loads masked at the image's borders (the zero padding). Stride 2 loads 32
// input pixels and keeps the even ones.

#include <immintrin.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "rowconv_tiles.h"

namespace thinjax_rowconv {
namespace avx512 {
namespace {

// The 16 floats at p where mask m is set, zeros elsewhere. As _mm512_maskz_loadu_ps, but
// GCC then reloads the mask from the stack for every load, and the kernels run 5-11% slower.
__attribute__((target("avx512f"), always_inline)) inline __m512 LoadM(__mmask16 m,
                                                                       const float* p) {
  __m512 r;
  __asm__("vmovups %1, %0%{%2%}%{z%}" : "=v"(r) : "m"(*(const float(*)[16])p), "Yk"(m));
  return r;
}

// acc + x * the weight at w broadcast, AVX-512's embedded broadcast (each multiply-add
// loads its weight): 2-6% faster here than a broadcast register shared by a tile's vectors
__attribute__((target("avx512f"), always_inline)) inline __m512 FmaB(__m512 acc, __m512 x,
                                                                      const float* w) {
  __asm__("vfmadd231ps %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(x), "m"(*w));
  return acc;
}

// Per column chunk (ow0 / 16): the load masks of each kernel column (two 16-lane masks,
// for stride 2's 32 input pixels) and the store mask.
struct Masks {
  std::vector<__mmask16> load, store;
  int64_t k;
  const __mmask16* Load(int64_t ow0, int64_t kw) const {
    return &load[((ow0 / kLanes) * k + kw) * 2];
  }
};

void MakeMasks(const Geometry& g, Masks* masks) {
  const int64_t chunks = (g.ow + kLanes - 1) / kLanes;
  Masks& m = *masks;
  m.load.assign(chunks * g.k * 2, 0), m.store.assign(chunks, 0), m.k = g.k;
  for (int64_t c = 0; c < chunks; ++c) {
    for (int j = 0; j < kLanes; ++j) {
      if (c * kLanes + j < g.ow) m.store[c] |= 1u << j;
    }
    for (int64_t kw = 0; kw < g.k; ++kw) {
      for (int j = 0; j < kLanes * g.s; ++j) {  // input positions loaded for this chunk
        const int64_t iw = c * kLanes * g.s + j + kw - g.pl;
        if (j % g.s == 0 && c * kLanes + j / g.s < g.ow && iw >= 0 && iw < g.w) {
          m.load[(c * g.k + kw) * 2 + j / kLanes] |= 1u << (j % kLanes);
        }
      }
    }
  }
}

// The NV vectors of `slots` (NV <= 2) for output channels c0 .. c0 + CB - 1 of one image.
template <int CB, int NV, int S>
__attribute__((target("avx512f"))) void Tile(const Geometry& g, const float* x, const float* k,
                                             const float* bias, float* y, const Slot* slots,
                                             const Masks& masks, int64_t c0, bool sum,
                                             bool relu) {
  __m512 acc[NV][CB];
#pragma GCC unroll 16
  for (int c = 0; c < CB; ++c) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[v][c] = _mm512_set1_ps(bias[c0 + c]);
  }
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4,
                                        2, 0);
  const int64_t ci_n = g.ci, w = g.w, plane = ci_n * w, block = g.block;  // plane: a row
  for (int64_t kh = 0; kh < g.k; ++kh) {
    const float* row[NV];
    bool any = false;
    for (int v = 0; v < NV; ++v) {
      const int64_t ih = slots[v].oh * S - g.pt + kh;
      row[v] = ih >= 0 && ih < g.h ? x + ih * plane : nullptr;
      any = any || row[v] != nullptr;
    }
    if (!any) continue;  // padding rows
    for (int64_t kw = 0; kw < g.k; ++kw) {
      const float* p[NV];
      __mmask16 m0[NV], m1[NV];
      for (int v = 0; v < NV; ++v) {
        const __mmask16* m = masks.Load(slots[v].ow0, kw);
        m0[v] = row[v] ? m[0] : 0, m1[v] = row[v] ? m[1] : 0;
        p[v] = (row[v] ? row[v] : x) + slots[v].ow0 * S + kw - g.pl;  // masked where outside
      }
      const float* wk = k + (kh * g.k + kw) * ci_n * block;
      for (int64_t ci = 0; ci < ci_n; ++ci) {
        __m512 in[NV];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
          const float* q = p[v] + ci * w;
          in[v] = S == 1 ? LoadM(m0[v], q)
                         : _mm512_permutex2var_ps(LoadM(m0[v], q), even,
                                                  LoadM(m1[v], q + kLanes));
        }
        const float* wc = wk + ci * block;
#pragma GCC unroll 16
        for (int c = 0; c < CB; ++c) {
#pragma GCC unroll 2
          for (int v = 0; v < NV; ++v) acc[v][c] = FmaB(acc[v][c], in[v], wc + c);
        }
      }
    }
  }
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    const __mmask16 m = masks.store[slots[v].ow0 / kLanes];
    float* out = y + (slots[v].oh * g.co + c0) * g.ow + slots[v].ow0;
#pragma GCC unroll 16
    for (int c = 0; c < CB; ++c) {
      __m512 r = acc[v][c];
      if (sum) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, out + c * g.ow));
      if (relu) r = _mm512_max_ps(r, _mm512_setzero_ps());
      _mm512_mask_storeu_ps(out + c * g.ow, m, r);
    }
  }
}

using TileFn = void (*)(const Geometry&, const float*, const float*, const float*, float*,
                        const Slot*, const Masks&, int64_t, bool, bool);

template <int NV, int S, int... CB>
TileFn Pick(int cb, std::integer_sequence<int, CB...>) {
  constexpr TileFn fns[] = {&Tile<CB + 1, NV, S>...};
  return fns[cb - 1];
}

TileFn TileFor(int cb, int nv, int s) {
  const auto blocks = std::make_integer_sequence<int, kMaxBlock>();
  if (nv == 1) return s == 1 ? Pick<1, 1>(cb, blocks) : Pick<1, 2>(cb, blocks);
  return s == 1 ? Pick<2, 1>(cb, blocks) : Pick<2, 2>(cb, blocks);
}

thread_local Masks masks;  // this thread's, for the geometry of its current Conv

}  // namespace

void Prepare(const Geometry& gb) { MakeMasks(gb, &masks); }

void Block(const Geometry& gb, const float* x, const float* kb, const float* bias, float* y,
           const std::vector<Slot>& slots, const Tiles& tiles, int64_t c0, int64_t cb,
           bool sum, bool relu) {
  for (const auto& [t, nv] : tiles) {
    TileFor(static_cast<int>(cb), nv, static_cast<int>(gb.s))(gb, x, kb, bias, y, &slots[t],
                                                              masks, c0, sum, relu);
  }
}

}  // namespace avx512
}  // namespace thinjax_rowconv
