// ema_'s fast argument check and CPU kernel: dst_i <- m dst_i + (1 - m) src_i for every pair.
#include <ATen/ops/_foreach_lerp.h>

#include "enqueue.h"

namespace fastmoco {

namespace {

bool float_type(at::ScalarType t) {  // the dtypes the Python check (fastmoco/ops/_checks.py) accepts
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

// Every pair updatable: equal lengths, both tensors defined, same sizes, same floating dtype, same device, and no
// Python tensor subclass (those take the dispatcher). Metadata only, no message built: when it says false, the
// Python check runs to name the problem (ops/ema.py). One C++ pass costs ~1 us at 161 pairs, against ~230 us for
// the Python loop (measured, 2-core EPYC).
bool ema_pairs_ok(const std::vector<at::Tensor>& dst, const std::vector<at::Tensor>& src) {
  if (dst.size() != src.size()) return false;
  for (size_t i = 0; i < dst.size(); ++i) {
    const at::Tensor& d = dst[i];
    const at::Tensor& s = src[i];
    if (!d.defined() || !s.defined()) return false;
    if (d.key_set().has(c10::DispatchKey::Python) || s.key_set().has(c10::DispatchKey::Python)) return false;
    if (d.sizes() != s.sizes() || d.scalar_type() != s.scalar_type() || d.device() != s.device()) return false;
    if (!float_type(d.scalar_type())) return false;
  }
  return true;
}

// The checked update in one call (one conversion of the two lists): false, having written nothing, when a pair
// fails ema_pairs_ok.
bool ema_cpu(std::vector<at::Tensor> dst, std::vector<at::Tensor> src, double momentum) {
  if (!ema_pairs_ok(dst, src)) return false;
  // The update itself is memory-bound: torch's vectorised foreach kernel is as fast as a hand-written loop
  // measured (a single OpenMP region over 128 K-element chunks ran 1.06x slower on ResNet-50's parameters).
  at::_foreach_lerp_(dst, src, at::Scalar(1.0 - momentum));
  return true;
}

}  // namespace fastmoco
