// Shared argument checks of fastmoco::enqueue_ (CPU and CUDA). TORCH_CHECK_VALUE raises ValueError in Python.
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>

namespace fastmoco {

inline void check_enqueue_args(const at::Tensor& queue, const at::Tensor& ptr, const at::Tensor& keys) {
  TORCH_CHECK_VALUE(queue.dim() == 2, "enqueue_: queue must be 2-D (K, C), got ", queue.dim(), "-D");
  TORCH_CHECK_VALUE(keys.dim() == 2, "enqueue_: keys must be 2-D (N, C), got ", keys.dim(), "-D");
  TORCH_CHECK_VALUE(keys.size(1) == queue.size(1), "enqueue_: keys have C=", keys.size(1),
                    " but the queue has C=", queue.size(1));
  TORCH_CHECK_VALUE(queue.size(0) >= 1 && keys.size(0) >= 1, "enqueue_: need K >= 1 and N >= 1");
  TORCH_CHECK_TYPE(ptr.scalar_type() == at::kLong && ptr.numel() == 1,
                   "enqueue_: ptr must be an int64 tensor of shape (1,)");
  TORCH_CHECK_TYPE(at::isFloatingType(queue.scalar_type()), "enqueue_: queue must be a floating dtype, got ",
                   queue.scalar_type());
  TORCH_CHECK_TYPE(keys.scalar_type() == queue.scalar_type(), "enqueue_: keys dtype ", keys.scalar_type(),
                   " differs from queue dtype ", queue.scalar_type());
  TORCH_CHECK_VALUE(ptr.device() == queue.device() && keys.device() == queue.device(),
                    "enqueue_: queue, ptr and keys must be on one device");
}

}  // namespace fastmoco
