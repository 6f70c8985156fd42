// The fastmoco library's native schemas, and enqueue_'s CPU kernel. The CUDA kernel is in enqueue_cuda.cu (built with FASTMOCO_CUDA).
// The ring buffer is written as at most two contiguous row ranges with ATen copies (memcpy speed, any strides).
#include <Python.h>

#include "enqueue.h"

namespace fastmoco {

void enqueue_cpu(at::Tensor queue, at::Tensor ptr, const at::Tensor& keys) {
  check_enqueue_args(queue, ptr, keys);
  const int64_t K = queue.size(0), N = keys.size(0);
  int64_t* p = ptr.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(*p >= 0 && *p < K, "enqueue_: ptr=", *p, " outside [0, K=", K, ")");  // before any write
  const int64_t n = std::min(N, K);   // N > K: only the last K keys survive
  const int64_t start = (*p + (N - n)) % K;
  const int64_t first = std::min(n, K - start);
  at::Tensor src = keys.narrow(0, N - n, n);
  queue.narrow(0, start, first).copy_(src.narrow(0, 0, first));
  if (first < n) queue.narrow(0, 0, n - first).copy_(src.narrow(0, first, n - first));
  *p = (*p + N) % K;
}

}  // namespace fastmoco

TORCH_LIBRARY(fastmoco, m) {
  m.def("enqueue_(Tensor(a!) queue, Tensor(b!) ptr, Tensor keys) -> ()");
  m.def("ema_(Tensor(a!)[] dst, Tensor[] src, float momentum) -> ()");  // CPU: ema.cpp; CUDA: Triton (Python)
}

TORCH_LIBRARY_IMPL(fastmoco, CPU, m) { m.impl("enqueue_", &fastmoco::enqueue_cpu); }

// A Python module that does nothing but load this library: `import fastmoco._C` registers the ops.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "fastmoco native ops", -1, nullptr};
  return PyModule_Create(&def);
}
