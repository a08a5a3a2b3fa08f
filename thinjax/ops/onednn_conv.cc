// 2-D convolutions (forward, input gradient, kernel gradient) for XLA:CPU as XLA FFI
// handlers that call oneDNN, the library PyTorch's CPU convolutions use.
//
// Layouts are JAX's: activations NHWC, kernels HWIO, float32, no groups, no dilation.
// Activations are handed to oneDNN in place (oneDNN's nhwc kernels); a kernel is reordered
// into the blocked layout the chosen oneDNN kernel wants (a few KB to a few MB), and a
// kernel gradient back from it. Primitives are built once per geometry and cached;
// executing one is thread-safe (user-managed scratchpad, allocated per call).
//
// Built and loaded by thinjax/ops/build.py; used through thinjax/ops/conv.py.

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;

namespace {

enum Kind : int { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Geometry {
  int64_t n, h, w, ci, kh, kw, co, oh, ow;
  int64_t sh, sw, pt, pb, pl, pr;
};

using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;

Key KeyOf(int kind, const Geometry& g) {
  return {kind, g.n, g.h, g.w, g.ci, g.kh, g.kw, g.co, g.sh, g.sw, g.pt, g.pb, g.pl, g.pr};
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Descs {
  memory::desc src, dst, kernel_user, kernel_any;
  memory::dims strides, pad_l, pad_r;
};

Descs DescsOf(const Geometry& g) {
  const auto f32 = memory::data_type::f32;
  return {memory::desc({g.n, g.ci, g.h, g.w}, f32, Tag::nhwc),
          memory::desc({g.n, g.co, g.oh, g.ow}, f32, Tag::nhwc),
          memory::desc({g.co, g.ci, g.kh, g.kw}, f32, Tag::hwio),
          memory::desc({g.co, g.ci, g.kh, g.kw}, f32, Tag::any),
          {g.sh, g.sw}, {g.pt, g.pl}, {g.pb, g.pr}};
}

// One cached primitive: its memory descriptions, the convolution, the kernel layout it
// wants, and the reorder between that layout and HWIO (empty when they are the same).
struct Entry {
  Descs d;
  dnnl::primitive conv;
  memory::desc kernel_prim;
  bool needs_reorder = false;
  dnnl::reorder reorder;
  size_t scratch_bytes = 0;
};

dnnl::convolution_forward::primitive_desc ForwardPd(const Descs& d,
                                                     const dnnl::primitive_attr& attr) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, d.src,
      d.kernel_any, d.dst, d.strides, d.pad_l, d.pad_r, attr);
}

// Fills `e` from a primitive description: the primitive, its scratchpad size, and the
// reorder of the kernel (`prim` layout) from HWIO, or to HWIO for a kernel gradient.
template <typename Conv>
void Finish(Entry& e, const typename Conv::primitive_desc& pd, const memory::desc& prim,
            bool to_user) {
  e.conv = Conv(pd);
  e.scratch_bytes = pd.scratchpad_desc().get_size();
  e.kernel_prim = prim;
  e.needs_reorder = prim != e.d.kernel_user;
  if (!e.needs_reorder) return;
  const memory::desc& from = to_user ? prim : e.d.kernel_user;
  const memory::desc& to = to_user ? e.d.kernel_user : prim;
  e.reorder = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), from, Engine(), to));
}

std::shared_ptr<Entry> Build(int kind, const Geometry& g) {
  auto e = std::make_shared<Entry>();
  e->d = DescsOf(g);
  const Descs& d = e->d;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto fwd = ForwardPd(d, attr);
  const auto algo = dnnl::algorithm::convolution_direct;
  if (kind == kForward) {
    Finish<dnnl::convolution_forward>(*e, fwd, fwd.weights_desc(), false);
  } else if (kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), algo, d.src, d.kernel_any, d.dst, d.strides, d.pad_l, d.pad_r, fwd, attr);
    Finish<dnnl::convolution_backward_data>(*e, pd, pd.weights_desc(), false);
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), algo, d.src, d.kernel_any, d.dst, d.strides, d.pad_l, d.pad_r, fwd, attr);
    Finish<dnnl::convolution_backward_weights>(*e, pd, pd.diff_weights_desc(), true);
  }
  return e;
}

std::shared_ptr<Entry> Lookup(int kind, const Geometry& g) {
  static std::mutex mu;
  static std::map<Key, std::shared_ptr<Entry>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[KeyOf(kind, g)];
  if (!slot) slot = Build(kind, g);
  return slot;
}

struct Aligned {
  explicit Aligned(size_t bytes)
      : ptr(bytes ? std::aligned_alloc(64, (bytes + 63) / 64 * 64) : nullptr) {}
  ~Aligned() { std::free(ptr); }
  void* ptr;
};

// Runs `kind` on raw NHWC/HWIO buffers: for the forward pass a = input, k = kernel,
// out = output; for the input gradient a = output gradient, k = kernel, out = input
// gradient; for the kernel gradient a = input, k = output gradient, out = kernel gradient.
void Run(int kind, const Geometry& g, void* a, void* k, void* out) {
  auto e = Lookup(kind, g);
  const Descs& d = e->d;
  dnnl::stream stream(Engine());
  Aligned scratch(e->scratch_bytes);
  Aligned kernel(e->needs_reorder ? e->kernel_prim.get_size() : 0);
  memory scratch_m(memory::desc({static_cast<int64_t>(e->scratch_bytes)},
                                memory::data_type::u8, Tag::a),
                   Engine(), scratch.ptr);
  if (kind == kBackwardWeights) {
    memory dw_user(d.kernel_user, Engine(), out);
    memory dw_prim = e->needs_reorder ? memory(e->kernel_prim, Engine(), kernel.ptr) : dw_user;
    e->conv.execute(stream, {{DNNL_ARG_SRC, memory(d.src, Engine(), a)},
                             {DNNL_ARG_DIFF_DST, memory(d.dst, Engine(), k)},
                             {DNNL_ARG_DIFF_WEIGHTS, dw_prim},
                             {DNNL_ARG_SCRATCHPAD, scratch_m}});
    if (e->needs_reorder) e->reorder.execute(stream, dw_prim, dw_user);
    stream.wait();
    return;
  }
  memory k_user(d.kernel_user, Engine(), k);
  memory k_prim = e->needs_reorder ? memory(e->kernel_prim, Engine(), kernel.ptr) : k_user;
  if (e->needs_reorder) e->reorder.execute(stream, k_user, k_prim);
  if (kind == kForward) {
    e->conv.execute(stream, {{DNNL_ARG_SRC, memory(d.src, Engine(), a)},
                             {DNNL_ARG_WEIGHTS, k_prim},
                             {DNNL_ARG_DST, memory(d.dst, Engine(), out)},
                             {DNNL_ARG_SCRATCHPAD, scratch_m}});
  } else {
    e->conv.execute(stream, {{DNNL_ARG_DIFF_DST, memory(d.dst, Engine(), a)},
                             {DNNL_ARG_WEIGHTS, k_prim},
                             {DNNL_ARG_DIFF_SRC, memory(d.src, Engine(), out)},
                             {DNNL_ARG_SCRATCHPAD, scratch_m}});
  }
  stream.wait();
}

using F32 = ffi::Buffer<ffi::F32>;

// The geometry from the NHWC input, the HWIO kernel and the NHWC output shapes.
ffi::Error GeometryOf(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k,
                      ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                      int64_t pl, int64_t pr, Geometry* g) {
  if (x.size() != 4 || k.size() != 4 || y.size() != 4) {
    return ffi::Error::InvalidArgument("thinjax oneDNN conv: operands must be 4-D");
  }
  *g = {x[0], x[1], x[2], x[3], k[0], k[1], k[3], y[1], y[2], sh, sw, pt, pb, pl, pr};
  if (k[2] != x[3] || y[3] != k[3] || y[0] != x[0]) {
    return ffi::Error::InvalidArgument("thinjax oneDNN conv: operand shapes do not agree");
  }
  return ffi::Error::Success();
}

ffi::Error Guarded(int kind, const Geometry& g, void* a, void* k, void* out) {
  try {
    Run(kind, g, a, k, out);
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("thinjax oneDNN conv: ") + err.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(F32 x, F32 k, ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw,
                   int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geometry g;
  auto err = GeometryOf(x.dimensions(), k.dimensions(), y->dimensions(), sh, sw, pt, pb, pl,
                        pr, &g);
  if (err.failure()) return err;
  return Guarded(kForward, g, x.untyped_data(), k.untyped_data(), y->untyped_data());
}

ffi::Error BackwardData(F32 dy, F32 k, ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw,
                        int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geometry g;
  auto err = GeometryOf(dx->dimensions(), k.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl,
                        pr, &g);
  if (err.failure()) return err;
  return Guarded(kBackwardData, g, dy.untyped_data(), k.untyped_data(), dx->untyped_data());
}

ffi::Error BackwardWeights(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dk, int64_t sh,
                           int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geometry g;
  auto err = GeometryOf(x.dimensions(), dk->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl,
                        pr, &g);
  if (err.failure()) return err;
  return Guarded(kBackwardWeights, g, x.untyped_data(), dy.untyped_data(), dk->untyped_data());
}

}  // namespace

#define THINJAX_CONV_BINDING                                                              \
  ffi::Ffi::Bind()                                                                        \
      .Arg<F32>()                                                                         \
      .Arg<F32>()                                                                         \
      .Ret<F32>()                                                                         \
      .Attr<int64_t>("sh")                                                                \
      .Attr<int64_t>("sw")                                                                \
      .Attr<int64_t>("pt")                                                                \
      .Attr<int64_t>("pb")                                                                \
      .Attr<int64_t>("pl")                                                                \
      .Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ThinjaxConvForward, Forward, THINJAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ThinjaxConvBackwardData, BackwardData, THINJAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ThinjaxConvBackwardWeights, BackwardWeights,
                              THINJAX_CONV_BINDING);

extern "C" const char* ThinjaxOneDnnVersion() {
  static std::string v = [] {
    const dnnl_version_t* ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." +
           std::to_string(ver->patch) + " (" + ver->hash + ")";
  }();
  return v.c_str();
}
