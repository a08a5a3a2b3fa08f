// Row convolutions (rowconv.h): direct convolutions of NHCW activations, 16 output pixels
// of one row per AVX-512 vector (8 per AVX2 vector: the `avx2` kernels below).
//
// oneDNN's convolution kernels put output channels in the vector lanes (8 or 16 a vector),
// so a layer with 9 to 15 output channels computes 16 and one with 25, 32: a pruned
// network whose channel counts are not multiples of 8 leaves up to half its lanes idle.
// These kernels put output pixels in the lanes instead: with rows of 16, 32, 48 ... pixels
// every lane works whatever the channel counts. A tile of two vectors (32 pixels: one row
// of 32, or two rows of 16) and a block of up to 16 output channels accumulates in
// registers (up to 32, all of AVX-512's), over input channels and kernel taps: per tap and
// input channel two vector loads (masked at the image's borders: the zero padding) and
// two fused multiply-adds per output channel, the weight broadcast from the kernel packed
// by blocks of output channels. Stride 2 loads 32 input pixels and keeps the even ones.
// Bias, residual and ReLU are applied when the tile is stored. One core of an AMD EPYC
// (Zen 4) computes 3x3 layers of 8 to 25 channels at 58 GMAC/s at 16x16 and 55 at 32x32,
// as fast as oneDNN's kernels where those fill their lanes.

#include "rowconv.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace thinjax_rowconv {
namespace {

constexpr int kLanes = 16;
constexpr int kMaxBlock = 16;  // output channels per tile: up to 32 accumulators (Block)

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

// AVX2 (8 lanes, 16 vector registers): a tile is two vectors (16 pixels) by up to 6 output
// channels (12 accumulators), a block of up to 16 split into such sub-blocks; the weights
// are broadcast into a register; loads are masked (vmaskmovps) only for the vectors of a
// kernel column that reach the image's borders.
namespace avx2 {

constexpr int kLanes = 8;
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

}  // namespace avx2

bool Avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

}  // namespace

int Lanes() {
  static const int lanes = Avx512() ? kLanes
                           : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                               ? avx2::kLanes
                               : 0;
  return lanes;
}

bool Available() { return Lanes() > 0; }

int64_t Block(int64_t co) {
  const int64_t blocks = (co + kMaxBlock - 1) / kMaxBlock;
  return (co + blocks - 1) / blocks;
}

namespace {

using Tiles = std::vector<std::pair<size_t, int>>;  // (first slot, vectors)

// One image's output vectors, row by row, in tiles of two; a row of one vector alone at the
// top and bottom, so that its tile skips the kernel rows that fall on the padding.
void MakeTiles(const Geometry& g, int64_t lanes, std::vector<Slot>* slots, Tiles* tiles) {
  slots->clear(), tiles->clear();
  for (int64_t oh = 0; oh < g.oh; ++oh) {
    for (int64_t ow0 = 0; ow0 < g.ow; ow0 += lanes) slots->push_back({oh, ow0});
  }
  const bool narrow = g.ow <= lanes;
  for (size_t t = 0; t < slots->size();) {
    const bool edge = narrow && (t == 0 || t + 1 == slots->size());
    const int nv = !edge && t + 1 < slots->size() ? 2 : 1;
    tiles->push_back({t, nv});
    t += nv;
  }
}

// The kernel as the tiles read it: `kernel` itself where the caller packed it (g.block),
// else HWIO packed into `packed` by blocks of `block` output channels (zero-padded).
const float* Packed(const Geometry& g, int64_t block, const float* kernel,
                    std::vector<float>* packed) {
  if (g.block) return kernel;
  const int64_t blocks = (g.co + block - 1) / block, taps = g.k * g.k * g.ci;
  packed->assign(blocks * taps * block, 0.0f);
  for (int64_t t = 0; t < taps; ++t) {
    for (int64_t c = 0; c < g.co; ++c) {
      (*packed)[((c / block) * taps + t) * block + c % block] = kernel[t * g.co + c];
    }
  }
  return packed->data();
}

}  // namespace

void Conv(const Geometry& g, const float* x, const float* kernel, const float* bias, float* y,
          bool sum, bool relu) {
  // per-thread buffers that only grow: no allocation per call (at batch 1 a convolution
  // takes tens of microseconds)
  static thread_local Masks masks;
  static thread_local avx2::Masks masks8;
  static thread_local std::vector<Slot> slots;
  static thread_local Tiles tiles;
  static thread_local std::vector<float> packed;
  const bool wide = Avx512();
  if (wide) {
    MakeMasks(g, &masks);
  } else {
    avx2::MakeMasks(g, &masks8);
  }
  MakeTiles(g, wide ? kLanes : avx2::kLanes, &slots, &tiles);
  Geometry gb = g;
  gb.block = Block(g.co);
  kernel = Packed(g, gb.block, kernel, &packed);
  const int64_t blocks = (g.co + gb.block - 1) / gb.block, taps = g.k * g.k * g.ci;
  const int s = static_cast<int>(g.s);
  for (int64_t i = 0; i < g.n; ++i) {
    const float* xi = x + i * g.h * g.ci * g.w;
    float* yi = y + i * g.oh * g.co * g.ow;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * gb.block, cb = std::min(gb.block, g.co - c0);
      const float* kb = kernel + b * taps * gb.block;
      if (wide) {
        for (const auto& [t, nv] : tiles) {
          TileFor(static_cast<int>(cb), nv, s)(gb, xi, kb, bias, yi, &slots[t], masks, c0,
                                               sum, relu);
        }
        continue;
      }
      // AVX2: the block in up to 3 sub-blocks of at most kSub channels, as even as can be
      const int64_t subs = (cb + avx2::kSub - 1) / avx2::kSub;
      for (int64_t u = 0, cs = 0; u < subs; ++u) {
        const int64_t n = (cb - cs + subs - u - 1) / (subs - u);
        for (const auto& [t, nv] : tiles) {
          avx2::TileFor(static_cast<int>(n), nv, s)(gb, xi, kb, bias, yi, &slots[t], masks8,
                                                    c0 + cs, cs, sum, relu);
        }
        cs += n;
      }
    }
  }
}

}  // namespace thinjax_rowconv
