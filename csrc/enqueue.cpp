// enqueue_'s CPU kernel, and the module's Python bindings. The ring buffer is written as at most two contiguous
// row ranges with ATen copies (memcpy speed, any strides).
#include <torch/extension.h>

#include "enqueue.h"

namespace fastmoco {

void enqueue_cpu(at::Tensor queue, at::Tensor ptr, const at::Tensor& keys) {
  guard_enqueue_args(queue, ptr, keys);
  const int64_t K = queue.size(0), N = keys.size(0);
  int64_t* p = ptr.data_ptr<int64_t>();
  TORCH_CHECK(*p >= 0 && *p < K, "fastmoco._C enqueue: ptr outside [0, K)");  // before any write
  const int64_t n = std::min(N, K);   // N > K: only the last K keys survive
  const int64_t start = (*p + (N - n)) % K;
  const int64_t first = std::min(n, K - start);
  at::Tensor src = keys.narrow(0, N - n, n);
  queue.narrow(0, start, first).copy_(src.narrow(0, 0, first));
  if (first < n) queue.narrow(0, 0, n - first).copy_(src.narrow(0, first, n - first));
  *p = (*p + N) % K;
}

}  // namespace fastmoco

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastmoco native compute functions (the ops are fastmoco.ops)";
  m.def("enqueue_cpu", &fastmoco::enqueue_cpu, "ring-buffer write of keys into queue at ptr (CPU)");
  m.def("ema_cpu", &fastmoco::ema_cpu, "dst_i <- m dst_i + (1 - m) src_i (CPU); false, writing nothing, if a pair "
        "does not fit");
  m.def("ema_pairs_ok", &fastmoco::ema_pairs_ok, "whether every (dst, src) pair fits ema_ (metadata only)");
#ifdef FASTMOCO_WITH_CUDA
  m.def("enqueue_cuda", &fastmoco::enqueue_cuda, "ring-buffer write, pointer read on the device (CUDA)");
#endif
}
