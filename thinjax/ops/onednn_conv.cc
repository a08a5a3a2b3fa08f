// 2-D convolutions (forward, input gradient, kernel gradient) for XLA:CPU as XLA FFI
// handlers that call oneDNN, the library PyTorch's CPU convolutions use.
//
// Layouts are JAX's: activations NHWC, kernels HWIO, no groups, no dilation. Activations
// are float32 or bfloat16 (the compute dtype: oneDNN picks its AMX / AVX-512 BF16 kernels
// for bf16 descriptors, accumulating in f32); a kernel is float32 or bfloat16 whatever the
// activations are. Activations are handed to oneDNN in place (oneDNN's nhwc kernels); a
// kernel is reordered into the blocked layout and compute dtype the chosen oneDNN kernel
// wants (a few KB to a few MB; the reorder converts f32 to bf16, rounding to nearest even),
// and a kernel gradient back from it: with bf16 activations the kernel gradient leaves
// oneDNN in f32 and is rounded only if the kernel is bf16. Primitives are built once per
// geometry and dtypes and cached; executing one is thread-safe (user-managed scratchpad,
// allocated per call).
//
// Built and loaded by thinjax/ops/build.py; used through thinjax/ops/conv.py.

#include <cstdint>
#include <cstdlib>
#include <cstring>
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

using DT = memory::data_type;

// Shapes, strides, paddings, and the dtypes of the activations (the compute dtype) and of
// the kernel as JAX holds it.
struct Geometry {
  int64_t n, h, w, ci, kh, kw, co, oh, ow;
  int64_t sh, sw, pt, pb, pl, pr;
  DT act, wei;
};

using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int>;

Key KeyOf(int kind, const Geometry& g) {
  return {kind, g.n,  g.h,  g.w,  g.ci, g.kh, g.kw, g.co, g.sh, g.sw, g.pt, g.pb, g.pl, g.pr,
          static_cast<int>(g.act), static_cast<int>(g.wei)};
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// kernel_any: the kernel in the compute dtype, any layout (forward, input gradient);
// grad_any: the kernel gradient, any layout, in f32 (oneDNN accumulates bf16 in f32).
struct Descs {
  memory::desc src, dst, kernel_user, kernel_any, grad_any;
  memory::dims strides, pad_l, pad_r;
};

Descs DescsOf(const Geometry& g) {
  const memory::dims k = {g.co, g.ci, g.kh, g.kw};
  return {memory::desc({g.n, g.ci, g.h, g.w}, g.act, Tag::nhwc),
          memory::desc({g.n, g.co, g.oh, g.ow}, g.act, Tag::nhwc),
          memory::desc(k, g.wei, Tag::hwio),
          memory::desc(k, g.act, Tag::any),
          memory::desc(k, DT::f32, Tag::any),
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
        Engine(), algo, d.src, d.grad_any, d.dst, d.strides, d.pad_l, d.pad_r, fwd, attr);
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

using Buf = ffi::AnyBuffer;
using Out = ffi::Result<ffi::AnyBuffer>;

// oneDNN's name for an XLA dtype that the kernels take (f32, bf16), or false.
bool DnnlType(ffi::DataType t, DT* out) {
  if (t == ffi::DataType::F32) *out = DT::f32;
  else if (t == ffi::DataType::BF16) *out = DT::bf16;
  else return false;
  return true;
}

// The geometry from the NHWC input, the HWIO kernel and the NHWC output (shapes and
// dtypes: the input and output share the compute dtype, the kernel's may differ).
ffi::Error GeometryOf(const Buf& x, const Buf& k, const Buf& y, int64_t sh, int64_t sw,
                      int64_t pt, int64_t pb, int64_t pl, int64_t pr, Geometry* g) {
  auto xd = x.dimensions(), kd = k.dimensions(), yd = y.dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4) {
    return ffi::Error::InvalidArgument("thinjax oneDNN conv: operands must be 4-D");
  }
  *g = {xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], kd[3], yd[1], yd[2],
        sh,    sw,    pt,    pb,    pl,    pr,    DT::f32, DT::f32};
  if (kd[2] != xd[3] || yd[3] != kd[3] || yd[0] != xd[0]) {
    return ffi::Error::InvalidArgument("thinjax oneDNN conv: operand shapes do not agree");
  }
  if (x.element_type() != y.element_type() || !DnnlType(x.element_type(), &g->act) ||
      !DnnlType(k.element_type(), &g->wei)) {
    return ffi::Error::InvalidArgument(
        "thinjax oneDNN conv: activations must be f32 or bf16 (input and output alike), "
        "the kernel f32 or bf16");
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

ffi::Error Forward(Buf x, Buf k, Out y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr) {
  Geometry g;
  auto err = GeometryOf(x, k, *y, sh, sw, pt, pb, pl, pr, &g);
  if (err.failure()) return err;
  return Guarded(kForward, g, x.untyped_data(), k.untyped_data(), y->untyped_data());
}

ffi::Error BackwardData(Buf dy, Buf k, Out dx, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr) {
  Geometry g;
  auto err = GeometryOf(*dx, k, dy, sh, sw, pt, pb, pl, pr, &g);
  if (err.failure()) return err;
  return Guarded(kBackwardData, g, dy.untyped_data(), k.untyped_data(), dx->untyped_data());
}

ffi::Error BackwardWeights(Buf x, Buf dy, Out dk, int64_t sh, int64_t sw, int64_t pt,
                           int64_t pb, int64_t pl, int64_t pr) {
  Geometry g;
  auto err = GeometryOf(x, *dk, dy, sh, sw, pt, pb, pl, pr, &g);
  if (err.failure()) return err;
  return Guarded(kBackwardWeights, g, x.untyped_data(), dy.untyped_data(), dk->untyped_data());
}

}  // namespace

#define THINJAX_CONV_BINDING                                                              \
  ffi::Ffi::Bind()                                                                        \
      .Arg<ffi::AnyBuffer>()                                                              \
      .Arg<ffi::AnyBuffer>()                                                              \
      .Ret<ffi::AnyBuffer>()                                                              \
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

// The identity, for thinjax.ops.conv.lane_boundary: a point XLA:CPU does not fuse across.
// Called with the result aliased to the operand (input_output_aliases), it does nothing;
// it copies only if XLA gave it two buffers.
ffi::Error Identity(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (x.untyped_data() != y->untyped_data()) {
    std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ThinjaxIdentity, Identity,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());

extern "C" const char* ThinjaxOneDnnVersion() {
  static std::string v = [] {
    const dnnl_version_t* ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." +
           std::to_string(ver->patch) + " (" + ver->hash + ")";
  }();
  return v.c_str();
}

// The oneDNN implementation a bfloat16 3x3 convolution (16 -> 16 channels, NHWC) gets on
// this CPU, e.g. "brgconv:avx512_core_bf16" or "brgconv:avx512_core_amx"; thinjax uses
// oneDNN for bfloat16 only where that is a kernel with native bfloat16 instructions.
extern "C" const char* ThinjaxOneDnnBf16Impl() {
  static std::string impl = [] {
    Geometry g = {32, 16, 16, 16, 3, 3, 16, 16, 16, 1, 1, 1, 1, 1, 1,
                  DT::bf16, DT::bf16};
    try {
      dnnl::primitive_attr attr;
      return std::string(ForwardPd(DescsOf(g), attr).impl_info_str());
    } catch (const dnnl::error& err) {
      return std::string("none (") + err.what() + ")";
    }
  }();
  return impl.c_str();
}
