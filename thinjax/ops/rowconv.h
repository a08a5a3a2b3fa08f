// Row convolutions: inference convolutions of NHCW activations vectorized along the image
// width (rowconv.cc), for channel counts that oneDNN's kernels, vectorized along the
// output channels, compute with idle vector lanes (see rowconv.cc).
#pragma once

#include <cstdint>

namespace thinjax_rowconv {

// x is (n, h, ci, w) and y (n, oh, co, ow) float32 (NHCW: each channel's row contiguous);
// stride s (1 or 2); pt and pl zero rows above and columns left of x (those below and
// right follow from oh and ow). The kernel is HWIO (k, k, ci, co) where `block` is 0, else
// packed as the kernels read it: (ceil(co / block), k, k, ci, block), output channels
// zero-padded, with block = Block(co).
struct Geometry {
  int64_t n, h, w, ci, co, k, s, oh, ow, pt, pl, block;
};

// Whether the kernels run on this CPU: AVX-512F (16 lanes) or AVX2 with FMA (8).
bool Available();

// The pixels a vector holds here: 16 (AVX-512F), 8 (AVX2 and FMA), 0 (neither).
int Lanes();

// The output channels the kernels compute together (at most 16: their accumulators fill
// the vector registers) for `co` of them: co split into as few, as even blocks.
int64_t Block(int64_t co);

// y = [relu](conv(x, kernel) + bias [+ y]) (`sum`: y holds the residual on entry).
void Conv(const Geometry& g, const float* x, const float* kernel, const float* bias, float* y,
          bool sum, bool relu);

}  // namespace thinjax_rowconv
