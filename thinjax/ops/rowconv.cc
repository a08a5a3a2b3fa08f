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
// as fast as oneDNN's kernels where those fill their lanes. The kernels of each instruction
// set are in their own file (rowconv_avx512.cc, rowconv_avx2.cc); this one lays out the
// tiles and the kernel and picks them.

#include "rowconv.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "rowconv_tiles.h"

namespace thinjax_rowconv {
namespace {

bool Avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

}  // namespace

int Lanes() {
  static const int lanes = Avx512() ? avx512::kLanes
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
  static thread_local std::vector<Slot> slots;
  static thread_local Tiles tiles;
  static thread_local std::vector<float> packed;
  const bool wide = Avx512();
  MakeTiles(g, wide ? avx512::kLanes : avx2::kLanes, &slots, &tiles);
  Geometry gb = g;
  gb.block = Block(g.co);
  kernel = Packed(g, gb.block, kernel, &packed);
  if (wide) {
    avx512::Prepare(gb);
  } else {
    avx2::Prepare(gb);
  }
  const BlockFn block = wide ? &avx512::Block : &avx2::Block;
  const int64_t blocks = (g.co + gb.block - 1) / gb.block, taps = g.k * g.k * g.ci;
  for (int64_t i = 0; i < g.n; ++i) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * gb.block;
      block(gb, x + i * g.h * g.ci * g.w, kernel + b * taps * gb.block, bias,
            y + i * g.oh * g.co * g.ow, slots, tiles, c0, std::min(gb.block, g.co - c0), sum,
            relu);
    }
  }
}

}  // namespace thinjax_rowconv
