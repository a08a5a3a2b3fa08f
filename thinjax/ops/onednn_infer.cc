// Inference convolutions for XLA:CPU: one oneDNN primitive computes
//
//     y = [relu](conv(x, k) + bias [+ residual])
//
// (a convolution with BatchNorm folded into its kernel and bias, the residual add and the
// ReLU of a ResNet block as post-ops), as an XLA FFI handler beside the training kernels of
// onednn_conv.cc. Activations (x, residual, y) are float32 NHWC, or oneDNN's blocked
// nChw16c held as (N, C/16, H, W, 16) when every channel count is a multiple of 16 (its
// direct kernels beat the NHWC ones for 32 channels and more; for 16 channels both layouts
// are the same bytes). The kernel is float32 HWIO or already in the layout the primitive
// wants (see `KernelTag`), the bias (co,) float32. The residual enters as oneDNN's `sum`
// post-op: it is the output buffer's initial content (the Python side aliases the residual
// operand with the output).
//
// Each convolution is split into shares (a batch by images, one NHWC image by output rows)
// that single-threaded primitives compute on thinjax's own thread team (`Team`), not on
// oneDNN's OpenMP threads. Per call a share does only what depends on the buffers: the
// primitives (and a kernel reorder where the caller's layout is not the primitive's) are
// cached per geometry, memory objects and argument maps per thread and primitive, and the
// scratchpad and a reordered kernel live in per-thread buffers that only grow.
//
// Activations may also be NHCW, (N, H, C, W) (`rows`): such a convolution runs thinjax's
// own row kernels (rowconv.cc, vectorized along the width: every vector lane works whatever
// the channel counts) on the same thread team, with the kernel HWIO or packed for them.
//
// Built into the same library as onednn_conv.cc and rowconv.cc by thinjax/ops/build.py;
// used through thinjax/ops/infer.py (`conv2d_fused`).

#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "rowconv.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace thinjax_infer {

using dnnl::memory;
using Tag = memory::format_tag;
using DT = memory::data_type;

// kernel: the layout of the kernel as the caller holds it (`KernelTag`); blocked: the
// activations are nChw16c; rows: they are NHCW (the row kernels).
struct Geometry {
  int64_t n, h, w, ci, kh, kw, co, oh, ow, sh, sw, pt, pb, pl, pr, kernel;
  bool blocked, sum, relu, rows = false;
};

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool,
                       bool, bool>;

Key KeyOf(const Geometry& g) {
  return {g.n, g.h, g.w, g.ci, g.kh, g.kw, g.co, g.sh, g.sw, g.pt, g.pb, g.pl, g.pr,
          g.kernel, g.blocked, g.sum, g.relu};
}

constexpr int64_t kBlocks[] = {4, 8, 16, 24, 32, 48, 64};
constexpr int64_t kOIhw16i16o = -16;  // the blocked layout of oneDNN's direct kernels

// The format tag of a kernel layout code: 0 = HWIO; B > 0 = Acdb<B>a, output channels
// padded to a multiple of B, held as (ceil(co/B), kh, kw, ci, B) (oneDNN's brgemm
// kernels, NHWC activations); kOIhw16i16o = ABcd16b16a, both channel counts padded to
// multiples of 16, held as (ceil(co/16), ceil(ci/16), kh, kw, 16, 16) (its direct
// kernels: nChw16c activations, and NHWC ones at most 16 pixels wide). False for others.
bool KernelTag(int64_t code, Tag* tag) {
  switch (code) {
    case kOIhw16i16o: *tag = Tag::ABcd16b16a; return true;
    case 0: *tag = Tag::hwio; return true;
    case 4: *tag = Tag::Acdb4a; return true;
    case 8: *tag = Tag::Acdb8a; return true;
    case 16: *tag = Tag::Acdb16a; return true;
    case 24: *tag = Tag::Acdb24a; return true;
    case 32: *tag = Tag::Acdb32a; return true;
    case 48: *tag = Tag::Acdb48a; return true;
    case 64: *tag = Tag::Acdb64a; return true;
    default: return false;
  }
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Entry {
  memory::desc src, dst, bias, kernel_user, kernel_prim;
  dnnl::convolution_forward conv;
  bool needs_reorder = false;
  dnnl::reorder reorder;
  size_t scratch_bytes = 0;
};

// oneDNN's OpenMP runtime: a primitive takes its thread count from the creating thread's
// omp_get_max_threads() (resolved through libdnnl's own dependencies at load time).
extern "C" int omp_get_max_threads(void);
extern "C" void omp_set_num_threads(int);

// Sets the calling thread's OpenMP thread count to 1 while it lives: primitives built
// meanwhile run on the thread that executes them, with no OpenMP team (`Team` splits the
// work instead).
struct SingleThreaded {
  int before = omp_get_max_threads();
  SingleThreaded() { omp_set_num_threads(1); }
  ~SingleThreaded() { omp_set_num_threads(before); }
};

dnnl::convolution_forward::primitive_desc PrimitiveDesc(const Geometry& g) {
  SingleThreaded one;
  const memory::dims k = {g.co, g.ci, g.kh, g.kw};
  const Tag act = g.blocked ? Tag::nChw16c : Tag::nhwc;
  dnnl::post_ops ops;
  if (g.sum) ops.append_sum(1.0f);
  if (g.relu) ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr.set_post_ops(ops);
  const auto make = [&] {
    return dnnl::convolution_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
        memory::desc({g.n, g.ci, g.h, g.w}, DT::f32, act),
        memory::desc(k, DT::f32, Tag::any), memory::desc({g.co}, DT::f32, Tag::a),
        memory::desc({g.n, g.co, g.oh, g.ow}, DT::f32, act), {g.sh, g.sw},
        {g.pt, g.pl}, {g.pb, g.pr}, attr);
  };
  auto pd = make();
  // oneDNN's first choice for NHWC on AVX-512 CPUs, its brgconv kernels with output
  // channels in 16-wide vectors, is not its fastest here (3x3, batch 1 to 64, AMD EPYC):
  // * for 8 modulo 16 output channels its AVX2 brgconv kernels (8-wide) waste less: 10-33%
  //   less time for 8, 24, 40 and 56 channels, e.g. round_to 8 prunings;
  // * for other counts, images at most 16 pixels wide and kernels over 1x1, its direct
  //   AVX-512 kernels: 4-14% less time (e.g. 25 to 19 channels at 16x16, 41 to 49 at 8x8,
  //   40 to 48 at 8x8; as fast for 256 to 256 at 14x14; 1x1: 7-14% slower than brgconv's
  //   for 1024 to 256 at 14x14, 2048 to 512 at 7x7).
  bool (*wanted)(const std::string&) = nullptr;
  if (!g.blocked && g.co % 16 == 8) {
    wanted = [](const std::string& impl) {
      return impl.rfind("brgconv", 0) == 0 && impl.find(":avx2") != std::string::npos;
    };
  } else if (!g.blocked && g.ow <= 16 && g.kh * g.kw > 1) {
    wanted = [](const std::string& impl) { return impl == "jit:avx512_core"; };
  }
  if (wanted) {
    do {
      if (wanted(pd.impl_info_str())) return pd;
    } while (pd.next_impl());
    pd = make();  // none: oneDNN's first choice
  }
  return pd;
}

std::shared_ptr<Entry> Build(const Geometry& g) {
  SingleThreaded one;  // the convolution and the kernel reorder
  auto e = std::make_shared<Entry>();
  Tag user_tag = Tag::hwio;
  KernelTag(g.kernel, &user_tag);  // checked by the handler
  e->kernel_user = memory::desc({g.co, g.ci, g.kh, g.kw}, DT::f32, user_tag);
  auto pd = PrimitiveDesc(g);
  e->src = pd.src_desc(), e->dst = pd.dst_desc(), e->bias = pd.bias_desc();
  e->conv = dnnl::convolution_forward(pd);
  e->scratch_bytes = pd.scratchpad_desc().get_size();
  e->kernel_prim = pd.weights_desc();
  e->needs_reorder = e->kernel_prim != e->kernel_user;
  if (e->needs_reorder) {
    e->reorder = dnnl::reorder(
        dnnl::reorder::primitive_desc(Engine(), e->kernel_user, Engine(), e->kernel_prim));
  }
  return e;
}

std::shared_ptr<Entry> Lookup(const Geometry& g) {
  static std::mutex mu;
  static std::map<Key, std::shared_ptr<Entry>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[KeyOf(g)];
  if (!slot) slot = Build(g);
  return slot;
}

// A per-thread, 64-byte aligned buffer that only grows.
struct Buffer {
  void* ptr = nullptr;
  size_t size = 0;
  ~Buffer() { std::free(ptr); }
  void* Get(size_t bytes) {
    if (bytes > size) {
      std::free(ptr);
      size = (bytes + 4095) / 4096 * 4096;
      ptr = std::aligned_alloc(64, size);
    }
    return ptr;
  }
};

// One thread's memory objects and argument map for one cached primitive: built on the
// thread's first call of it; later calls only point them at the call's buffers (creating
// oneDNN memory objects and maps allocates, which at batch 1 costs as much as a
// convolution's own overhead). oneDNN zero-fills the padding of a blocked layout when a
// handle is set, so a caller's kernel with padded output channels is copied into a buffer
// of the thread's instead (never written to: it is XLA's buffer).
struct Bound {
  memory src, k_user, k_prim, bias, dst, scratch;
  std::unordered_map<int, memory> args;
  bool copy_kernel = false;  // the caller's kernel layout has padding
  Buffer kernel_copy, kernel;  // the caller's kernel copied; reordered for the primitive
};

bool HasPadding(const memory::desc& d) {
  size_t n = d.get_data_type() == DT::f32 ? 4 : 1;
  for (auto dim : d.get_dims()) n *= static_cast<size_t>(dim);
  return d.get_size() != n;
}

Bound& BoundOf(const std::shared_ptr<Entry>& e) {
  static thread_local std::map<const Entry*, std::unique_ptr<Bound>> bound;
  auto& slot = bound[e.get()];  // entries are never freed: the pointer is a stable key
  if (slot) return *slot;
  slot = std::make_unique<Bound>();
  Bound& m = *slot;
  m.copy_kernel = HasPadding(e->kernel_user);
  m.src = memory(e->src, Engine(), nullptr);
  m.k_user = memory(e->kernel_user, Engine(),
                    m.copy_kernel ? m.kernel_copy.Get(e->kernel_user.get_size()) : nullptr);
  m.k_prim = e->needs_reorder
                 ? memory(e->kernel_prim, Engine(), m.kernel.Get(e->kernel_prim.get_size()))
                 : m.k_user;
  m.bias = memory(e->bias, Engine(), nullptr);
  m.dst = memory(e->dst, Engine(), nullptr);
  m.scratch = memory(memory::desc({static_cast<int64_t>(e->scratch_bytes)}, DT::u8, Tag::a),
                     Engine(), nullptr);
  m.args = {{DNNL_ARG_SRC, m.src}, {DNNL_ARG_WEIGHTS, m.k_prim}, {DNNL_ARG_BIAS, m.bias},
            {DNNL_ARG_DST, m.dst}, {DNNL_ARG_SCRATCHPAD, m.scratch}};
  return m;
}

// Runs the convolution of `g` on raw buffers, on the calling thread.
void RunPart(const Geometry& g, void* x, void* k, void* b, void* y) {
  if (g.rows) {
    thinjax_rowconv::Conv({g.n, g.h, g.w, g.ci, g.co, g.kh, g.sh, g.oh, g.ow, g.pt, g.pl,
                           g.kernel},
                          static_cast<const float*>(x), static_cast<const float*>(k),
                          static_cast<const float*>(b), static_cast<float*>(y), g.sum, g.relu);
    return;
  }
  static thread_local Buffer scratch;
  static thread_local std::unique_ptr<dnnl::stream> stream;
  if (!stream) stream = std::make_unique<dnnl::stream>(Engine());
  auto e = Lookup(g);
  Bound& m = BoundOf(e);
  m.src.set_data_handle(x);
  if (m.copy_kernel) {
    std::memcpy(m.kernel_copy.ptr, k, e->kernel_user.get_size());
  } else {
    m.k_user.set_data_handle(k);
  }
  m.bias.set_data_handle(b);
  m.dst.set_data_handle(y);
  m.scratch.set_data_handle(e->scratch_bytes ? scratch.Get(e->scratch_bytes) : nullptr);
  if (e->needs_reorder) e->reorder.execute(*stream, m.k_user, m.k_prim);
  e->conv.execute(*stream, m.args);
  stream->wait();
}

// One share of a convolution: its geometry and where its input and output start.
struct Part {
  Geometry g;
  int64_t x_offset, y_offset;  // in floats
};

// `g` cut into at most `parts` shares of about equal work: a batch of several images by
// images; one image by output rows (each share reads the input rows its output rows need,
// with the padding that falls to it). Shares of under `min_macs` multiply-adds are merged.
std::vector<Part> Split(const Geometry& g, int parts, int64_t min_macs) {
  const int64_t macs = g.n * g.oh * g.ow * g.co * g.ci * g.kh * g.kw;
  // nChw16c rows are not contiguous across channel blocks: one blocked image is not split
  const int64_t rows = g.n > 1 ? g.n : (g.blocked ? 1 : g.oh);
  int64_t n = std::min<int64_t>({parts, rows, std::max<int64_t>(1, macs / min_macs)});
  std::vector<Part> out;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r0 = rows * i / n, r1 = rows * (i + 1) / n;
    Part p{g, 0, 0};
    if (g.n > 1) {
      p.g.n = r1 - r0;
      p.x_offset = r0 * g.h * g.w * g.ci;
      p.y_offset = r0 * g.oh * g.ow * g.co;
    } else {
      const int64_t first = r0 * g.sh - g.pt, last = (r1 - 1) * g.sh - g.pt + g.kh;
      const int64_t i0 = std::max<int64_t>(0, first), i1 = std::min(g.h, last);
      p.g.h = i1 - i0, p.g.oh = r1 - r0;
      p.g.pt = i0 - first, p.g.pb = last - i1;
      p.x_offset = i0 * g.w * g.ci;
      p.y_offset = r0 * g.ow * g.co;
    }
    out.push_back(p);
  }
  return out;
}

// The threads that run the shares of a convolution: the caller and helpers that live as
// long as the process, one team for every caller (OpenMP would make a team per calling
// thread, and XLA calls from several: their idle members then spin against each other on
// few cores). Shares are claimed, not assigned: the caller works through them and a
// helper joins in when it is running, so a helper that is asleep or descheduled (a loaded
// machine) never holds the caller up beyond a share it has already claimed, and the team
// stops sharing for a while when helpers keep arriving late or stalling (`Learn`). A
// helper spins for a while after its work (a network's next convolution follows within
// microseconds), then sleeps until the next one. While one caller's convolution runs,
// another caller runs its shares itself.
class Team {
 public:
  explicit Team(int size) : size_(std::max(size, 1)) {
    for (int i = 1; i < size_; ++i) helpers_.emplace_back([this] { Loop(); });
  }
  int size() const { return size_; }

  // Calls fn(0) .. fn(n - 1) on the calling thread and the helpers.
  template <typename Fn>
  void Run(int n, Fn&& fn) {
    using Clock = std::chrono::steady_clock;
    if (n <= 1 || size_ == 1 || Clock::now() < solo_until_.load(std::memory_order_relaxed) ||
        busy_.test_and_set(std::memory_order_acquire)) {
      for (int i = 0; i < n; ++i) fn(i);
      return;
    }
    const std::function<void(int)> task = fn;
    task_.store(&task, std::memory_order_relaxed);
    n_.store(n, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    const uint64_t run = (state_.load(std::memory_order_relaxed) >> 32) + 1;
    state_.store(run << 32);  // publishes the task; a helper claims shares of this run
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      wake_.notify_all();
    }
    const auto start = Clock::now();
    const int mine = Work(run);
    const auto own = Clock::now();
    for (int spins = 0; done_.load(std::memory_order_acquire) != n; ++spins) {
      _mm_pause();
      if (spins > 4096) std::this_thread::yield();
    }
    Learn(own - start, Clock::now() - own, mine < n);
    busy_.clear(std::memory_order_release);
  }

 private:
  // Whether sharing pays, learnt from each shared run: `own`, the caller's time on its
  // shares; `waited`, its wait for the helpers' shares after that; `helped`, whether a
  // helper took any. A wait far beyond the caller's own work means a helper was
  // descheduled holding a share, and runs where no helper arrives in time mean the
  // helpers are not getting a CPU: both happen on a loaded machine, where a helper costs
  // the caller CPU time and gains nothing. The team then backs off: callers work alone
  // for a while that doubles with each stall or run of kMisses misses (up to kMaxSoloUs)
  // and halves after kCalm helped runs in a row.
  void Learn(std::chrono::nanoseconds own, std::chrono::nanoseconds waited, bool helped) {
    using std::chrono::microseconds;
    const bool stall = waited > own + microseconds(kStallUs);
    misses_ = helped ? 0 : misses_ + 1;
    if (stall || misses_ >= kMisses) {
      backoff_ = std::min(backoff_ * 2, microseconds(kMaxSoloUs));
      calm_ = misses_ = 0;
      solo_until_.store(std::chrono::steady_clock::now() + backoff_,
                        std::memory_order_relaxed);
    } else if (helped && ++calm_ >= kCalm) {
      backoff_ = std::max(backoff_ / 2, microseconds(kMinSoloUs));
      calm_ = 0;
    }
  }

  // Claims and runs shares of `run` until none is left or the run is over; how many.
  int Work(uint64_t run) {
    int ran = 0;
    for (;;) {
      uint64_t s = state_.load(std::memory_order_acquire);
      const int i = static_cast<int>(s & 0xffffffffu);
      if ((s >> 32) != run || i >= n_.load(std::memory_order_relaxed)) return ran;
      if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) continue;
      (*task_.load(std::memory_order_relaxed))(i);  // the run lasts until its shares are done
      done_.fetch_add(1, std::memory_order_release);
      ++ran;
    }
  }

  void Loop() {
    uint64_t seen = 0;
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      for (int spins = 1; (state_.load(std::memory_order_acquire) >> 32) == seen; ++spins) {
        _mm_pause();
        if (spins % 256 == 0 &&
            std::chrono::steady_clock::now() - start > std::chrono::microseconds(kSpinUs)) {
          std::unique_lock<std::mutex> lock(mu_);
          sleepers_.fetch_add(1);
          wake_.wait(lock, [&] { return (state_.load() >> 32) != seen; });
          sleepers_.fetch_sub(1);
        }
      }
      seen = state_.load(std::memory_order_acquire) >> 32;
      Work(seen);
    }
  }

  static constexpr int kSpinUs = 100, kStallUs = 100, kMinSoloUs = 500,
                       kMaxSoloUs = 20000, kCalm = 64, kMisses = 16;
  const int size_;
  std::vector<std::thread> helpers_;
  std::atomic_flag busy_ = ATOMIC_FLAG_INIT;
  std::atomic<uint64_t> state_{0};  // run number << 32 | next unclaimed share
  std::atomic<const std::function<void(int)>*> task_{nullptr};
  std::atomic<int> n_{0}, done_{0}, sleepers_{0};
  std::mutex mu_;
  std::condition_variable wake_;
  std::atomic<std::chrono::steady_clock::time_point> solo_until_{};
  std::chrono::microseconds backoff_{kMinSoloUs};  // these three: the busy_ holder's
  int calm_ = 0, misses_ = 0;
};

// The number of CPUs this process may run on (its affinity mask), or THINJAX_INFER_THREADS.
int TeamSize() {
  if (const char* env = std::getenv("THINJAX_INFER_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

Team& TheTeam() {
  static Team* team = new Team(TeamSize());  // never destroyed: helpers outlive main()
  return *team;
}

constexpr int64_t kMinShareMacs = 1 << 18;  // ~5 us of work: less is not worth a thread

// Runs `g` split over the team; the first failure's message, or "" on success.
std::string Run(const Geometry& g, void* x, void* k, void* b, void* y) {
  Team& team = TheTeam();
  const std::vector<Part> parts = Split(g, team.size(), kMinShareMacs);
  auto* xs = static_cast<float*>(x);
  auto* ys = static_cast<float*>(y);
  std::mutex mu;
  std::string failure;
  team.Run(static_cast<int>(parts.size()), [&](int i) {
    const Part& p = parts[i];
    try {  // on a helper thread an escaping exception would end the process
      RunPart(p.g, xs + p.x_offset, k, b, ys + p.y_offset);
    } catch (const dnnl::error& err) {
      std::lock_guard<std::mutex> lock(mu);
      if (failure.empty()) failure = err.what();
    }
  });
  return failure;
}

using Buf = ffi::AnyBuffer;

// The geometry of x, the kernel, the bias and y, shapes and dtypes checked. Activations
// are NHWC (4-D), nChw16c as (N, C/16, H, W, 16) (5-D), or NHCW where `rows` (4-D); the
// kernel HWIO (4-D), (ceil(co/B), kh, kw, ci, B) (5-D: Acdb<B>a) or (ceil(co/16),
// ceil(ci/16), kh, kw, 16, 16) (6-D); for the row kernels HWIO or (ceil(co/B), k, k, ci, B)
// with B = thinjax_rowconv::Block(co).
ffi::Error Check(const Buf& x, const Buf& k, const Buf& b, const Buf& y, bool rows,
                 Geometry* g) {
  auto xd = x.dimensions(), kd = k.dimensions(), bd = b.dimensions(), yd = y.dimensions();
  const auto bad = [](const char* what) {
    return ffi::Error::InvalidArgument(std::string("thinjax oneDNN inference conv: ") + what);
  };
  if (xd.size() != yd.size() || (xd.size() != 4 && xd.size() != 5) || bd.size() != 1 ||
      kd.size() < 4 || kd.size() > 6 || (rows && (xd.size() != 4 || kd.size() == 6))) {
    return bad("x and y must be 4-D (NHWC, NHCW) or 5-D (nChw16c) alike, the kernel 4-D to "
               "6-D (4-D or 5-D for NHCW), the bias 1-D");
  }
  g->blocked = xd.size() == 5, g->rows = rows;
  if (g->blocked && (xd[4] != 16 || yd[4] != 16)) return bad("nChw16c blocks are 16 wide");
  const int a = g->blocked ? 1 : 0;  // the first spatial dimension
  const int wd = rows ? 3 : 2 + a;   // the width's
  g->n = xd[0], g->h = xd[1 + a], g->w = xd[wd], g->oh = yd[1 + a], g->ow = yd[wd];
  g->ci = g->blocked ? xd[1] * 16 : xd[rows ? 2 : 3];
  g->co = bd[0];
  if ((g->blocked ? yd[1] * 16 : yd[rows ? 2 : 3]) != g->co || yd[0] != g->n) {
    return bad("the output's shape does not agree with the input's and the bias's");
  }
  bool ok;
  if (rows && kd.size() == 5) {  // the row kernels' (ceil(co/B), k, k, ci, B)
    g->kernel = kd[4], g->kh = kd[1], g->kw = kd[2];
    ok = g->kernel == thinjax_rowconv::Block(g->co) && kd[3] == g->ci &&
         kd[0] == (g->co + g->kernel - 1) / g->kernel;
  } else if (kd.size() == 4) {  // HWIO
    g->kernel = 0, g->kh = kd[0], g->kw = kd[1];
    ok = kd[2] == g->ci && kd[3] == g->co;
  } else if (kd.size() == 5) {  // Acdb<B>a
    g->kernel = kd[4], g->kh = kd[1], g->kw = kd[2];
    Tag tag;
    ok = KernelTag(g->kernel, &tag) && g->kernel > 0 && kd[3] == g->ci &&
         kd[0] == (g->co + g->kernel - 1) / g->kernel;
  } else {  // OIhw16i16o
    g->kernel = kOIhw16i16o, g->kh = kd[2], g->kw = kd[3];
    ok = kd[4] == 16 && kd[5] == 16 && kd[0] == (g->co + 15) / 16 &&
         kd[1] == (g->ci + 15) / 16;
  }
  if (!ok) return bad("the kernel's shape does not agree with x, the bias and its layout");
  for (const Buf* t : {&x, &k, &b, &y}) {
    if (t->element_type() != ffi::DataType::F32) return bad("float32 only");
  }
  return ffi::Error::Success();
}

ffi::Error Guarded(const Geometry& g, void* x, void* k, void* b, void* y) {
  if (g.rows && (!thinjax_rowconv::Available() || g.kh != g.kw || g.sh != g.sw ||
                 (g.sh != 1 && g.sh != 2))) {
    return ffi::Error::InvalidArgument(
        "thinjax row conv (NHCW): needs an AVX-512 or AVX2 CPU (ThinjaxInferRowKernels), a square "
        "kernel and stride 1 or 2");
  }
  const std::string failure = Run(g, x, k, b, y);
  if (!failure.empty()) {
    return ffi::Error::Internal("thinjax oneDNN inference conv: " + failure);
  }
  return ffi::Error::Success();
}

// y = [relu](conv(x, k) + b)
ffi::Error Infer(Buf x, Buf k, Buf b, ffi::Result<Buf> y, int64_t sh, int64_t sw,
                 int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t relu, int64_t rows) {
  Geometry g{};
  auto err = Check(x, k, b, *y, rows != 0, &g);
  if (err.failure()) return err;
  g.sh = sh, g.sw = sw, g.pt = pt, g.pb = pb, g.pl = pl, g.pr = pr;
  g.sum = false, g.relu = relu != 0;
  return Guarded(g, x.untyped_data(), k.untyped_data(), b.untyped_data(), y->untyped_data());
}

// y = [relu](conv(x, k) + b + r), where r is y's buffer (aliased by the caller).
ffi::Error InferAdd(Buf x, Buf k, Buf b, Buf r, ffi::Result<Buf> y, int64_t sh, int64_t sw,
                    int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t relu, int64_t rows) {
  Geometry g{};
  auto err = Check(x, k, b, *y, rows != 0, &g);
  if (err.failure()) return err;
  if (r.untyped_data() != y->untyped_data()) {
    return ffi::Error::InvalidArgument(
        "thinjax oneDNN inference conv: the residual must alias the output");
  }
  g.sh = sh, g.sw = sw, g.pt = pt, g.pb = pb, g.pl = pl, g.pr = pr;
  g.sum = true, g.relu = relu != 0;
  return Guarded(g, x.untyped_data(), k.untyped_data(), b.untyped_data(), y->untyped_data());
}

}  // namespace thinjax_infer

// The layout code (`KernelTag`) of the kernel layout oneDNN's inference convolution of
// this geometry (NHWC, or nChw16c where `blocked`, input n x h x w x ci, kernel kh x kw,
// co outputs, strides, paddings) wants, as split over the inference threads; 0 when it is
// none of those (the handlers then reorder an HWIO kernel in every call) or the geometry
// is refused.
extern "C" int64_t ThinjaxInferKernelLayout(int64_t n, int64_t h, int64_t w, int64_t ci,
                                            int64_t kh, int64_t kw, int64_t co, int64_t sh,
                                            int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                                            int64_t pr, int64_t blocked) {
  using namespace thinjax_infer;
  Geometry g{n,  h,  w,  ci, kh, kw, co, (h + pt + pb - kh) / sh + 1, (w + pl + pr - kw) / sw + 1,
             sh, sw, pt, pb, pl, pr, 0,  blocked != 0, false, true};
  try {
    const memory::desc want =
        PrimitiveDesc(Split(g, TheTeam().size(), kMinShareMacs)[0].g).weights_desc();
    Tag tag;
    KernelTag(kOIhw16i16o, &tag);
    if (want == memory::desc({co, ci, kh, kw}, DT::f32, tag)) return kOIhw16i16o;
    for (int64_t block : kBlocks) {
      KernelTag(block, &tag);
      if (want == memory::desc({co, ci, kh, kw}, DT::f32, tag)) return block;
    }
  } catch (const dnnl::error&) {
  }
  return 0;
}
// 1 when oneDNN has a direct (not reference) kernel for nChw16c convolutions on this CPU
// (AVX-512; an AVX2 CPU's kernels block by 8), else 0.
extern "C" int64_t ThinjaxInferBlockedKernels() {
  using namespace thinjax_infer;
  static const int64_t ok = [] {
    Geometry g{2, 8, 8, 32, 3, 3, 32, 8, 8, 1, 1, 1, 1, 1, 1, 0, true, false, true};
    try {
      return std::string(PrimitiveDesc(g).impl_info_str()).rfind("ref", 0) == 0 ? 0 : 1;
    } catch (const dnnl::error&) {
      return 0;
    }
  }();
  return ok;
}

// The pixels a vector of thinjax's row kernels (NHCW activations, rowconv.cc) holds on
// this CPU: 16 (AVX-512), 8 (AVX2), 0 where they do not run.
extern "C" int64_t ThinjaxInferRowKernels() { return thinjax_rowconv::Lanes(); }

#define THINJAX_INFER_ATTRS                                                               \
  .Attr<int64_t>("sh")                                                                    \
      .Attr<int64_t>("sw")                                                                \
      .Attr<int64_t>("pt")                                                                \
      .Attr<int64_t>("pb")                                                                \
      .Attr<int64_t>("pl")                                                                \
      .Attr<int64_t>("pr")                                                                \
      .Attr<int64_t>("relu")                                                              \
      .Attr<int64_t>("rows")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ThinjaxConvInfer, thinjax_infer::Infer,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() THINJAX_INFER_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ThinjaxConvInferAdd, thinjax_infer::InferAdd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() THINJAX_INFER_ATTRS);

