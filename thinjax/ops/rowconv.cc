// Row convolutions (rowconv.h): direct convolutions of NHCW activations, 16 output pixels
// of one row per AVX-512 vector.
//
// oneDNN's convolution kernels put output channels in the vector lanes (8 or 16 a vector),
// so a layer with 9 to 15 output channels computes 16 and one with 25, 32: a pruned
// network whose channel counts are not multiples of 8 leaves up to half its lanes idle.
// These kernels put output pixels in the lanes instead: with rows of 16, 32, 48 ... pixels
// every lane works whatever the channel counts. A tile of two vectors (32 pixels: one row
// of 32, or two rows of 16) and up to kMaxBlock output channels accumulates in registers
// (2 x 12 of AVX-512's 32), over input channels and kernel taps: per tap and input channel
// two vector loads (masked at the image's borders: the zero padding) and two fused
// multiply-adds per output channel with the weight broadcast from the HWIO kernel. Stride
// 2 loads 32 input pixels and keeps the even ones. Bias, residual and ReLU are applied
// when the tile is stored.

#include "rowconv.h"

#include <immintrin.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace thinjax_rowconv {
namespace {

constexpr int kLanes = 16;
constexpr int kMaxBlock = 16;  // output channels per tile: up to 32 accumulators

// A vector of output pixels: row oh, columns ow0 .. ow0 + 15 (those < ow).
struct Slot {
  int64_t oh, ow0;
};

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

Masks MakeMasks(const Geometry& g) {
  const int64_t chunks = (g.ow + kLanes - 1) / kLanes;
  Masks m{std::vector<__mmask16>(chunks * g.k * 2, 0), std::vector<__mmask16>(chunks, 0), g.k};
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
  return m;
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
  const int64_t ci_n = g.ci, co = g.co, w = g.w, plane = ci_n * w;  // plane: an input row
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
      const float* wk = k + (kh * g.k + kw) * ci_n * CB;
      for (int64_t ci = 0; ci < ci_n; ++ci) {
        __m512 in[NV];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) {
          const float* q = p[v] + ci * w;
          in[v] = S == 1 ? LoadM(m0[v], q)
                         : _mm512_permutex2var_ps(LoadM(m0[v], q), even,
                                                  LoadM(m1[v], q + kLanes));
        }
        const float* wc = wk + ci * CB;
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

}  // namespace

bool Available() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

void Conv(const Geometry& g, const float* x, const float* kernel, const float* bias, float* y,
          bool sum, bool relu) {
  const Masks masks = MakeMasks(g);
  // one image's vectors, row by row, in tiles of two; rows of one vector alone at the top and
  // bottom, so that their tiles skip the kernel rows that fall on the padding
  std::vector<Slot> slots;
  std::vector<std::pair<size_t, int>> tiles;  // (first slot, vectors)
  const bool narrow = g.ow <= kLanes;
  for (int64_t oh = 0; oh < g.oh; ++oh) {
    for (int64_t ow0 = 0; ow0 < g.ow; ow0 += kLanes) slots.push_back({oh, ow0});
  }
  for (size_t t = 0; t < slots.size();) {
    const bool edge = narrow && (t == 0 || t + 1 == slots.size());
    const int nv = !edge && t + 1 < slots.size() ? 2 : 1;
    tiles.push_back({t, nv});
    t += nv;
  }
  // output channels in blocks of at most kMaxBlock, as even as can be
  const int64_t blocks = (g.co + kMaxBlock - 1) / kMaxBlock;
  std::vector<int64_t> start(blocks + 1, 0);
  for (int64_t b = 0; b < blocks; ++b) start[b + 1] = g.co * (b + 1) / blocks;
  // each block's weights packed: (k, k, ci, block) from HWIO
  static thread_local std::vector<float> packed;
  const int64_t taps = g.k * g.k * g.ci;
  packed.resize(taps * g.co);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t cb = start[b + 1] - start[b];
    float* dst = packed.data() + taps * start[b];
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t c = 0; c < cb; ++c) dst[t * cb + c] = kernel[t * g.co + start[b] + c];
    }
  }
  const int s = static_cast<int>(g.s);
  for (int64_t i = 0; i < g.n; ++i) {
    const float* xi = x + i * g.h * g.ci * g.w;
    float* yi = y + i * g.oh * g.co * g.ow;
    for (int64_t b = 0; b < blocks; ++b) {
      const int cb = static_cast<int>(start[b + 1] - start[b]);
      const float* kb = packed.data() + taps * start[b];
      for (const auto& [t, nv] : tiles) {
        TileFor(cb, nv, s)(g, xi, kb, bias, yi, &slots[t], masks, start[b], sum, relu);
      }
    }
  }
}

}  // namespace thinjax_rowconv
