// Stride-1 NHWC/HWIO convolutions on oneDNN, as XLA FFI handlers (fmnist_jax/onednn.py).
//
// OnednnConv: y = conv(x, w); x: N H W C, w: KH KW C O, y: N OH OW O (float32).
// OnednnKernelGrad: dw = d/dw of sum(conv(x, w) * g); x: N H W C, g: N OH OW O,
// dw: KH KW C O (float32).
// Inputs are float32 or bfloat16 (both operands the same); outputs are float32.
// Written against oneDNN 2.x (Debian's libdnnl-dev).
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;
using Dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// oneDNN's logical order: activations N C H W, weights O I KH KW.
struct Shapes {
  memory::dims src, wei, dst, pad_l, pad_r;
};

Shapes Describe(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
                int64_t top, int64_t bottom, int64_t left, int64_t right) {
  return {{x[0], x[3], x[1], x[2]}, {w[3], w[2], w[0], w[1]}, {y[0], y[3], y[1], y[2]},
          {top, left}, {bottom, right}};
}

memory::desc Nhwc(const memory::dims& dims, Dt dt) { return memory::desc(dims, dt, Tag::nhwc); }
memory::desc AnyLayout(const memory::dims& dims, Dt dt) { return memory::desc(dims, dt, Tag::any); }

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;  // Each call brings its own scratchpad: calls may run concurrently.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Shapes& s, Dt in) {
  dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                    Nhwc(s.src, in), AnyLayout(s.wei, in), Nhwc(s.dst, Dt::f32), {1, 1},
                                    s.pad_l, s.pad_r);
  return dnnl::convolution_forward::primitive_desc(d, UserScratchpad(), Engine());
}

dnnl::convolution_backward_weights::primitive_desc KernelGradDesc(const Shapes& s, Dt in) {
  dnnl::convolution_backward_weights::desc d(dnnl::algorithm::convolution_direct, Nhwc(s.src, in),
                                             AnyLayout(s.wei, Dt::f32), Nhwc(s.dst, in), {1, 1}, s.pad_l,
                                             s.pad_r);
  return dnnl::convolution_backward_weights::primitive_desc(d, UserScratchpad(), Engine(), ForwardDesc(s, in));
}

// A primitive with the weights layout it wants and the scratchpad it needs, made once per shape.
struct Prepared {
  dnnl::primitive primitive;
  memory::desc weights, scratchpad;
};

Prepared Prepare(bool kernel_grad, const Shapes& s, Dt in) {
  if (kernel_grad) {
    auto pd = KernelGradDesc(s, in);
    return {dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(), pd.scratchpad_desc()};
  }
  auto pd = ForwardDesc(s, in);
  return {dnnl::convolution_forward(pd), pd.weights_desc(), pd.scratchpad_desc()};
}

const Prepared& Cached(bool kernel_grad, const Shapes& s, Dt in) {
  using Key = std::tuple<bool, memory::dims, memory::dims, memory::dims, memory::dims, memory::dims, Dt>;
  static std::mutex mutex;
  static std::map<Key, Prepared> cache;
  std::lock_guard<std::mutex> lock(mutex);
  Key key{kernel_grad, s.src, s.wei, s.dst, s.pad_l, s.pad_r, in};
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, Prepare(kernel_grad, s, in)).first;
  return it->second;
}

void Execute(const dnnl::primitive& p, std::unordered_map<int, memory> args) {
  thread_local dnnl::stream stream(Engine());
  p.execute(stream, args);
  stream.wait();
}

void Reorder(const memory& from, const memory& to) {
  Execute(dnnl::reorder(from, to), {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
}

Dt DataType(const ffi::AnyBuffer& b) { return b.element_type() == ffi::DataType::BF16 ? Dt::bf16 : Dt::f32; }

memory Wrap(const memory::desc& desc, void* data) { return memory(desc, Engine(), data); }

ffi::Error Check(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b) {
  auto t = a.element_type();
  if (t != b.element_type() || (t != ffi::DataType::F32 && t != ffi::DataType::BF16))
    return ffi::Error::InvalidArgument("oneDNN convolution: operands must both be float32 or both bfloat16");
  if (a.dimensions().size() != 4 || b.dimensions().size() != 4)
    return ffi::Error::InvalidArgument("oneDNN convolution: operands must have rank 4");
  return ffi::Error::Success();
}

ffi::Error Conv(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::Buffer<ffi::F32>> y, int64_t top,
                int64_t bottom, int64_t left, int64_t right) {
  if (auto e = Check(x, w); e.failure()) return e;
  Shapes s = Describe(x.dimensions(), w.dimensions(), y->dimensions(), top, bottom, left, right);
  Dt in = DataType(x);
  const Prepared& p = Cached(false, s, in);
  memory user_w = Wrap(memory::desc(s.wei, in, Tag::hwio), w.untyped_data());
  memory weights = user_w;
  if (p.weights != user_w.get_desc()) {
    weights = memory(p.weights, Engine());
    Reorder(user_w, weights);
  }
  Execute(p.primitive, {{DNNL_ARG_SRC, Wrap(Nhwc(s.src, in), x.untyped_data())},
                        {DNNL_ARG_WEIGHTS, weights},
                        {DNNL_ARG_DST, Wrap(Nhwc(s.dst, Dt::f32), y->typed_data())},
                        {DNNL_ARG_SCRATCHPAD, memory(p.scratchpad, Engine())}});
  return ffi::Error::Success();
}

ffi::Error KernelGrad(ffi::AnyBuffer x, ffi::AnyBuffer g, ffi::Result<ffi::Buffer<ffi::F32>> dw, int64_t top,
                      int64_t bottom, int64_t left, int64_t right) {
  if (auto e = Check(x, g); e.failure()) return e;
  Shapes s = Describe(x.dimensions(), dw->dimensions(), g.dimensions(), top, bottom, left, right);
  Dt in = DataType(x);
  const Prepared& p = Cached(true, s, in);
  memory user_dw = Wrap(memory::desc(s.wei, Dt::f32, Tag::hwio), dw->typed_data());
  memory grad = p.weights == user_dw.get_desc() ? user_dw : memory(p.weights, Engine());
  Execute(p.primitive, {{DNNL_ARG_SRC, Wrap(Nhwc(s.src, in), x.untyped_data())},
                        {DNNL_ARG_DIFF_DST, Wrap(Nhwc(s.dst, in), g.untyped_data())},
                        {DNNL_ARG_DIFF_WEIGHTS, grad},
                        {DNNL_ARG_SCRATCHPAD, memory(p.scratchpad, Engine())}});
  if (grad.get_data_handle() != user_dw.get_data_handle()) Reorder(grad, user_dw);
  return ffi::Error::Success();
}

// A oneDNN error (an unsupported shape, say) becomes an XLA error, not an abort.
template <auto F>
ffi::Error Guarded(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::Buffer<ffi::F32>> out, int64_t top,
                   int64_t bottom, int64_t left, int64_t right) {
  try {
    return F(a, b, out, top, bottom, left, right);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
}

}  // namespace

#define FMNIST_JAX_BIND                                                                              \
  ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::Buffer<ffi::F32>>()          \
      .Attr<int64_t>("top").Attr<int64_t>("bottom").Attr<int64_t>("left").Attr<int64_t>("right")
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv, Guarded<Conv>, FMNIST_JAX_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnKernelGrad, Guarded<KernelGrad>, FMNIST_JAX_BIND);
