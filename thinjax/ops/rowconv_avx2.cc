// The AVX2 row kernels (rowconv.cc says what they compute).

#include <immintrin.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "rowconv_tiles.h"

namespace thinjax_rowconv {
// AVX2 (8 lanes, 16 vector registers): a tile is two vectors (16 pixels) by up to 6 output
// channels (12 accumulators), a block of up to 16 split into such sub-blocks; the weights
// are broadcast into a register; loads are masked (vmaskmovps) only for the vectors of a
// kernel column that reach the image's borders.
namespace avx2 {
namespace {

constexpr int kSub = 6;  // output channels per tile

// Per column chunk (ow0 / 8) and kernel column: two 8-lane load masks (stride 2 loads 16
// input pixels) and whether both are full (plain loads); per chunk the store mask.
struct Masks {
  std::vector<int32_t> load, store;  // 8 ints a mask: -1 to load / store the lane
  std::vector<uint8_t> full;
  int64_t k;
  size_t At(int64_t ow0, int64_t kw) const { return (ow0 / kLanes) * k + kw; }
};

void MakeMasks(const Geometry& g, Masks* masks) {
  const int64_t chunks = (g.ow + kLanes - 1) / kLanes;
  Masks& m = *masks;
  m.load.assign(chunks * g.k * 2 * kLanes, 0), m.store.assign(chunks * kLanes, 0);
  m.full.assign(chunks * g.k, 1), m.k = g.k;
  for (int64_t c = 0; c < chunks; ++c) {
    for (int j = 0; j < kLanes; ++j) m.store[c * kLanes + j] = c * kLanes + j < g.ow ? -1 : 0;
    for (int64_t kw = 0; kw < g.k; ++kw) {
      const size_t at = c * g.k + kw;
      for (int j = 0; j < kLanes * 2; ++j) {  // every pixel of the span the chunk reads
        const int64_t iw = c * kLanes * g.s + j + kw - g.pl;
        const bool in = j < kLanes * g.s && c * kLanes + j / g.s < g.ow && iw >= 0 && iw < g.w;
        m.load[at * 2 * kLanes + j] = in ? -1 : 0;
        if (!in && j < kLanes * g.s) m.full[at] = 0;
      }
    }
  }
}

template <bool M>
__attribute__((target("avx2,fma"), always_inline)) inline __m256 Load(const float* p,
                                                                      __m256i m) {
  return M ? _mm256_maskload_ps(p, m) : _mm256_loadu_ps(p);
}

// The even pixels of the 16 at q (stride 2).
template <bool M>
__attribute__((target("avx2,fma"), always_inline)) inline __m256 LoadEven(const float* q,
                                                                          __m256i m0,
                                                                          __m256i m1) {
  const __m256 t = _mm256_shuffle_ps(Load<M>(q, m0), Load<M>(q + kLanes, m1), 0x88);
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), 0xD8));
}

// Accumulates one kernel tap (the input pixels at p, the weights at wk) over the input
// channels into acc.
template <int CB, int NV, int S, bool M>
__attribute__((target("avx2,fma"), always_inline)) inline void Taps(
    __m256 (&acc)[NV][CB], const float* const (&p)[NV], const __m256i (&m0)[NV],
    const __m256i (&m1)[NV], const float* wk, int64_t ci_n, int64_t w, int64_t block) {
  for (int64_t ci = 0; ci < ci_n; ++ci) {
    __m256 in[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const float* q = p[v] + ci * w;
      in[v] = S == 1 ? Load<M>(q, m0[v]) : LoadEven<M>(q, m0[v], m1[v]);
    }
    const float* wc = wk + ci * block;
#pragma GCC unroll 6
    for (int c = 0; c < CB; ++c) {
      const __m256 wv = _mm256_broadcast_ss(wc + c);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[v][c] = _mm256_fmadd_ps(in[v], wv, acc[v][c]);
    }
  }
}

// As the AVX-512 Tile: output channels c0 .. c0 + CB - 1, their weights at k + cs.
template <int CB, int NV, int S>
__attribute__((target("avx2,fma"))) void Tile(const Geometry& g, const float* x, const float* k,
                                              const float* bias, float* y, const Slot* slots,
                                              const Masks& masks, int64_t c0, int64_t cs,
                                              bool sum, bool relu) {
  __m256 acc[NV][CB];  // every loop over it unrolled, or GCC keeps it on the stack (3x slower)
#pragma GCC unroll 6
  for (int c = 0; c < CB; ++c) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[v][c] = _mm256_set1_ps(bias[c0 + c]);
  }
  const int64_t plane = g.ci * g.w;
  for (int64_t kh = 0; kh < g.k; ++kh) {
    const float* row[NV];
    bool any = false, all = true;
    for (int v = 0; v < NV; ++v) {
      const int64_t ih = slots[v].oh * S - g.pt + kh;
      row[v] = ih >= 0 && ih < g.h ? x + ih * plane : nullptr;
      any = any || row[v] != nullptr, all = all && row[v] != nullptr;
    }
    if (!any) continue;  // padding rows
    for (int64_t kw = 0; kw < g.k; ++kw) {
      const float* p[NV];
      __m256i m0[NV], m1[NV];
      bool full = all;
      for (int v = 0; v < NV; ++v) {
        const size_t at = masks.At(slots[v].ow0, kw);
        const int32_t* m = &masks.load[at * 2 * kLanes];
        m0[v] = row[v] ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m))
                       : _mm256_setzero_si256();
        m1[v] = row[v] ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + kLanes))
                       : _mm256_setzero_si256();
        full = full && masks.full[at];
        p[v] = (row[v] ? row[v] : x) + slots[v].ow0 * S + kw - g.pl;  // masked where outside
      }
      const float* wk = k + (kh * g.k + kw) * g.ci * g.block + cs;
      if (full) {
        Taps<CB, NV, S, false>(acc, p, m0, m1, wk, g.ci, g.w, g.block);
      } else {
        Taps<CB, NV, S, true>(acc, p, m0, m1, wk, g.ci, g.w, g.block);
      }
    }
  }
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    const __m256i m = _mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(&masks.store[slots[v].ow0]));
    float* out = y + (slots[v].oh * g.co + c0) * g.ow + slots[v].ow0;
#pragma GCC unroll 6
    for (int c = 0; c < CB; ++c) {
      __m256 r = acc[v][c];
      if (sum) r = _mm256_add_ps(r, _mm256_maskload_ps(out + c * g.ow, m));
      if (relu) r = _mm256_max_ps(r, _mm256_setzero_ps());
      _mm256_maskstore_ps(out + c * g.ow, m, r);
    }
  }
}

using TileFn = void (*)(const Geometry&, const float*, const float*, const float*, float*,
                        const Slot*, const Masks&, int64_t, int64_t, bool, bool);

template <int NV, int S, int... CB>
TileFn Pick(int cb, std::integer_sequence<int, CB...>) {
  constexpr TileFn fns[] = {&Tile<CB + 1, NV, S>...};
  return fns[cb - 1];
}

TileFn TileFor(int cb, int nv, int s) {
  const auto subs = std::make_integer_sequence<int, kSub>();
  if (nv == 1) return s == 1 ? Pick<1, 1>(cb, subs) : Pick<1, 2>(cb, subs);
  return s == 1 ? Pick<2, 1>(cb, subs) : Pick<2, 2>(cb, subs);
}

thread_local Masks masks;  // this thread's, for the geometry of its current Conv

}  // namespace

void Prepare(const Geometry& gb) { MakeMasks(gb, &masks); }

// The block in up to 3 sub-blocks of at most kSub channels, as even as can be.
void Block(const Geometry& gb, const float* x, const float* kb, const float* bias, float* y,
           const std::vector<Slot>& slots, const Tiles& tiles, int64_t c0, int64_t cb,
           bool sum, bool relu) {
  const int64_t subs = (cb + kSub - 1) / kSub;
  for (int64_t u = 0, cs = 0; u < subs; ++u) {
    const int64_t n = (cb - cs + subs - u - 1) / (subs - u);
    for (const auto& [t, nv] : tiles) {
      TileFor(static_cast<int>(n), nv, static_cast<int>(gb.s))(gb, x, kb, bias, y, &slots[t],
                                                               masks, c0 + cs, cs, sum, relu);
    }
    cs += n;
  }
}

}  // namespace avx2
}  // namespace thinjax_rowconv
