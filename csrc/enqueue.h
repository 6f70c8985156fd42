// fastmoco._C: compute functions called by the kernels that fastmoco/ops registers against its op schemas (the
// schemas and the user-facing argument checks live in Python, fastmoco/ops/_library.py and _checks.py). The
// guards here only keep a direct, unchecked call from touching memory out of bounds.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace fastmoco {

inline void guard_enqueue_args(const at::Tensor& queue, const at::Tensor& ptr, const at::Tensor& keys) {
  TORCH_CHECK(queue.dim() == 2 && keys.dim() == 2 && keys.size(1) == queue.size(1) && queue.size(0) >= 1 &&
                  keys.size(0) >= 1 && ptr.scalar_type() == at::kLong && ptr.numel() == 1 &&
                  keys.scalar_type() == queue.scalar_type() && ptr.device() == queue.device() &&
                  keys.device() == queue.device(),
              "fastmoco._C enqueue: unchecked arguments (call fastmoco.ops.enqueue_)");
}

void enqueue_cpu(at::Tensor queue, at::Tensor ptr, const at::Tensor& keys);
bool ema_pairs_ok(const std::vector<at::Tensor>& dst, const std::vector<at::Tensor>& src);
bool ema_cpu(std::vector<at::Tensor> dst, std::vector<at::Tensor> src, double momentum);
#ifdef FASTMOCO_WITH_CUDA
void enqueue_cuda(at::Tensor queue, at::Tensor ptr, const at::Tensor& keys);
#endif

}  // namespace fastmoco
