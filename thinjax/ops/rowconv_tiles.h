// What rowconv.cc shares with its per-ISA kernels (rowconv_avx512.cc, rowconv_avx2.cc):
// the output vectors of one image and their tiles. Internal to the kernel library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "rowconv.h"

namespace thinjax_rowconv {

constexpr int kMaxBlock = 16;  // output channels per block: AVX-512's 32 accumulators (Block)

// A vector of output pixels: row oh, columns ow0 .. ow0 + lanes - 1 (those < ow).
struct Slot {
  int64_t oh, ow0;
};

using Tiles = std::vector<std::pair<size_t, int>>;  // (first slot, vectors: 1 or 2)

// Per instruction set: `Prepare` makes this thread's masks for `gb` (gb.block > 0: the
// kernel packed by Block(co) channels); `Block` computes output channels c0 .. c0 + cb - 1
// of one image (x, y; their packed weights at kb), tile by tile over `slots` (the image's
// output vectors, kLanes pixels each). rowconv.cc's Conv loops over images and blocks.
using BlockFn = void (*)(const Geometry& gb, const float* x, const float* kb,
                         const float* bias, float* y, const std::vector<Slot>& slots,
                         const Tiles& tiles, int64_t c0, int64_t cb, bool sum, bool relu);
namespace avx512 {
constexpr int kLanes = 16;
void Prepare(const Geometry& gb);
void Block(const Geometry& gb, const float* x, const float* kb, const float* bias, float* y,
           const std::vector<Slot>& slots, const Tiles& tiles, int64_t c0, int64_t cb,
           bool sum, bool relu);
}  // namespace avx512
namespace avx2 {
constexpr int kLanes = 8;
void Prepare(const Geometry& gb);
void Block(const Geometry& gb, const float* x, const float* kb, const float* bias, float* y,
           const std::vector<Slot>& slots, const Tiles& tiles, int64_t c0, int64_t cb,
           bool sum, bool relu);
}  // namespace avx2

}  // namespace thinjax_rowconv
