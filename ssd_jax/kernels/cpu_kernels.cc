// CPU kernels for XLA's FFI: the parts of a MobileNet/SSDLite train step that XLA:CPU
// cannot write as one pass from jnp ops (benchmarks/RESULTS.md, "Custom CPU kernels").
//
// Built on first use by ssd_jax/kernels/build.py (g++ -O3 -march=native, cached per
// source, jaxlib and CPU); every kernel has a pure-JAX equivalent that the tests compare
// against and that runs wherever this library cannot be built.
//
// Work is split into a fixed number of chunks that depends only on the shapes, each chunk
// writes its own partial result, and the partials are summed in chunk order: the result
// is the same bits whatever the thread count or scheduling.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct ForState {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;
};

// fn(i) for i in [0, n) on the calling thread and XLA's intra-op pool. The caller takes
// chunks too, so it never waits on a task the pool has not started: no deadlock when the
// pool is busy (a task that starts after the last chunk was taken does nothing).
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const F& fn) {
  if (n <= 0) return;
  auto state = std::make_shared<ForState>();
  const F* f = &fn;
  auto work = [state, n, f]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      (*f)(i);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(std::function<void()>(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

// Sums parts [n, len] into out [len] in part order (deterministic).
void SumParts(const float* parts, int64_t n, int64_t len, float* out) {
  std::memcpy(out, parts, sizeof(float) * len);
  for (int64_t p = 1; p < n; ++p) {
    const float* __restrict__ src = parts + p * len;
    for (int64_t i = 0; i < len; ++i) out[i] += src[i];
  }
}

// Chunks of whole output rows: about `target` chunks over the batch, never across images.
struct RowChunks {
  int64_t rows_per_chunk, chunks_per_image, count;
  RowChunks(int64_t batch, int64_t rows, int64_t target) {
    rows_per_chunk = std::max<int64_t>(1, (batch * rows + target - 1) / target);
    rows_per_chunk = std::min(rows_per_chunk, std::max<int64_t>(rows, 1));
    chunks_per_image = (rows + rows_per_chunk - 1) / rows_per_chunk;
    count = batch * chunks_per_image;
  }
};

constexpr int64_t kTargetChunks = 32;

// The sizes of a k x k depthwise convolution, NHWC: x [B, H, W, C], dy [B, Ho, Wo, C],
// w [k, k, C].
struct DepthwiseGeometry {
  int64_t B, H, W, C, Ho, Wo, k;
};

// Reads the geometry from the three buffers' dimensions and checks that they and the
// attributes describe one convolution; an InvalidArgument error names `what` otherwise.
ffi::Error ReadGeometry(const char* what, ffi::Span<const int64_t> xd, ffi::Span<const int64_t> gd,
                        ffi::Span<const int64_t> wd, int64_t stride, int64_t padding,
                        int64_t dilation, DepthwiseGeometry& g) {
  const std::string name(what);
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 3)
    return ffi::Error::InvalidArgument(name + ": expected x [B,H,W,C], dy [B,Ho,Wo,C], w [k,k,C]");
  g = {xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], wd[0]};
  if (gd[0] != g.B || gd[3] != g.C || wd[1] != g.k || wd[2] != g.C || stride < 1 ||
      dilation < 1 || padding < 0)
    return ffi::Error::InvalidArgument(name + ": shapes or attributes do not agree");
  if (g.Ho != (g.H + 2 * padding - dilation * (g.k - 1) - 1) / stride + 1 ||
      g.Wo != (g.W + 2 * padding - dilation * (g.k - 1) - 1) / stride + 1)
    return ffi::Error::InvalidArgument(name + ": dy is not the convolution's output size");
  return ffi::Error::Success();
}

}  // namespace

// Depthwise convolution kernel gradient, NHWC, one pass over x and dy (zero padding
// `padding` on every side is implied, not materialised):
//   dw[i, j, c] = sum_{b, h, w} x[b, s*h + d*i - p, s*w + d*j - p, c] * dy[b, h, w, c]
// x: [B, H, W, C], dy: [B, Ho, Wo, C], dw: [k, k, C].
static ffi::Error DepthwiseKernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                          ffi::Buffer<ffi::F32> dy,
                                          ffi::ResultBuffer<ffi::F32> dw, int64_t stride,
                                          int64_t padding, int64_t dilation) {
  DepthwiseGeometry g;
  if (ffi::Error e = ReadGeometry("depthwise_kernel_grad", x.dimensions(), dy.dimensions(),
                                  dw->dimensions(), stride, padding, dilation, g);
      e.failure())
    return e;
  const int64_t B = g.B, H = g.H, W = g.W, C = g.C, Ho = g.Ho, Wo = g.Wo, k = g.k;

  const int64_t len = k * k * C;
  const RowChunks chunks(B, Ho, kTargetChunks);
  std::vector<float> parts(static_cast<size_t>(std::max<int64_t>(chunks.count, 1) * len), 0.0f);
  const float* xp = x.typed_data();
  const float* gp = dy.typed_data();
  float* partp = parts.data();

  ParallelFor(pool, chunks.count, [&](int64_t chunk) {
    const int64_t b = chunk / chunks.chunks_per_image;
    const int64_t h0 = (chunk % chunks.chunks_per_image) * chunks.rows_per_chunk;
    const int64_t h1 = std::min(Ho, h0 + chunks.rows_per_chunk);
    float* acc = partp + chunk * len;
    for (int64_t h = h0; h < h1; ++h) {
      const float* grow = gp + (b * Ho + h) * Wo * C;
      for (int64_t i = 0; i < k; ++i) {
        const int64_t hi = h * stride + i * dilation - padding;
        if (hi < 0 || hi >= H) continue;
        const float* xrow = xp + (b * H + hi) * W * C;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t off = j * dilation - padding;  // input column = w * stride + off
          const int64_t w0 = off >= 0 ? 0 : (-off + stride - 1) / stride;
          const int64_t last = W - 1 - off;  // the last input column, relative to off
          const int64_t w1 = last < 0 ? 0 : std::min(Wo, last / stride + 1);
          float* __restrict__ a = acc + (i * k + j) * C;
          for (int64_t w = w0; w < w1; ++w) {
            const float* __restrict__ xv = xrow + (w * stride + off) * C;
            const float* __restrict__ g = grow + w * C;
#pragma GCC ivdep
            for (int64_t c = 0; c < C; ++c) a[c] += xv[c] * g[c];
          }
        }
      }
    }
  });
  if (chunks.count == 0) {
    std::memset(dw->typed_data(), 0, sizeof(float) * len);
  } else {
    SumParts(partp, chunks.count, len, dw->typed_data());
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(SsdDepthwiseKernelGrad, DepthwiseKernelGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding")
                                  .Attr<int64_t>("dilation"));

// Depthwise convolution input gradient, NHWC, as a gather (each chunk owns whole rows of
// dx, so no two threads write the same element and the taps are summed in a fixed order):
//   dx[b, y, x, c] = sum_{i, j: y = s*h + d*i - p, x = s*w + d*j - p} w[i, j, c] * dy[b, h, w, c]
// dy: [B, Ho, Wo, C], w: [k, k, C], dx: [B, H, W, C].
static ffi::Error DepthwiseInputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                                         ffi::Buffer<ffi::F32> kernel,
                                         ffi::ResultBuffer<ffi::F32> dx, int64_t stride,
                                         int64_t padding, int64_t dilation) {
  DepthwiseGeometry g;
  if (ffi::Error e = ReadGeometry("depthwise_input_grad", dx->dimensions(), dy.dimensions(),
                                  kernel.dimensions(), stride, padding, dilation, g);
      e.failure())
    return e;
  const int64_t B = g.B, H = g.H, W = g.W, C = g.C, Ho = g.Ho, Wo = g.Wo, k = g.k;

  const RowChunks chunks(B, H, kTargetChunks);
  const float* gp = dy.typed_data();
  const float* wp = kernel.typed_data();
  float* dxp = dx->typed_data();

  ParallelFor(pool, chunks.count, [&](int64_t chunk) {
    const int64_t b = chunk / chunks.chunks_per_image;
    const int64_t y0 = (chunk % chunks.chunks_per_image) * chunks.rows_per_chunk;
    const int64_t y1 = std::min(H, y0 + chunks.rows_per_chunk);
    for (int64_t y = y0; y < y1; ++y) {
      float* out_row = dxp + (b * H + y) * W * C;
      std::memset(out_row, 0, sizeof(float) * W * C);
      for (int64_t i = 0; i < k; ++i) {
        const int64_t hs = y + padding - i * dilation;  // = stride * h
        if (hs < 0 || hs % stride || hs / stride >= Ho) continue;
        const float* grow = gp + (b * Ho + hs / stride) * Wo * C;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t off = j * dilation - padding;  // input column = w * stride + off
          const int64_t w0 = off >= 0 ? 0 : (-off + stride - 1) / stride;
          const int64_t last = W - 1 - off;  // the last input column, relative to off
          const int64_t w1 = last < 0 ? 0 : std::min(Wo, last / stride + 1);
          const float* __restrict__ wv = wp + (i * k + j) * C;
          for (int64_t w = w0; w < w1; ++w) {
            float* __restrict__ o = out_row + (w * stride + off) * C;
            const float* __restrict__ g = grow + w * C;
#pragma GCC ivdep
            for (int64_t c = 0; c < C; ++c) o[c] += wv[c] * g[c];
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(SsdDepthwiseInputGrad, DepthwiseInputGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding")
                                  .Attr<int64_t>("dilation"));
