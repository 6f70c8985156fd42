// CUDA kernel of fastmoco::enqueue_ (called by the op's CUDA kernel registered in fastmoco/ops). The pointer is
// read on the device (no host sync, CUDA-graph capturable); an out-of-range value makes every thread skip its
// write and leaves ptr unchanged.
// Only c10 CUDA headers: ATen/cuda/CUDAContext.h needs cusparse.h, which a CUDA toolkit without the math
// libraries lacks, so the kernel also builds there.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <ATen/Dispatch.h>

#include "enqueue.h"

namespace fastmoco {

template <typename scalar_t>
__global__ void enqueue_rows_kernel(scalar_t* __restrict__ queue, const int64_t* __restrict__ ptr,
                                    const scalar_t* __restrict__ keys, int64_t K, int64_t N, int64_t C,
                                    int64_t q_s0, int64_t q_s1) {
  const int64_t p = *ptr;
  if (p < 0 || p >= K) return;
  const int64_t n = N < K ? N : K;
  const int64_t skip = N - n;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * C; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / C, c = i % C;
    const int64_t row = (p + skip + r) % K;
    queue[row * q_s0 + c * q_s1] = keys[(skip + r) * C + c];
  }
}

// Runs after enqueue_rows_kernel on the same stream, so every row writer has read the old pointer.
__global__ void advance_ptr_kernel(int64_t* ptr, int64_t K, int64_t N) {
  const int64_t p = *ptr;
  if (p >= 0 && p < K) *ptr = (p + N) % K;
}

void enqueue_cuda(at::Tensor queue, at::Tensor ptr, const at::Tensor& keys_in) {
  guard_enqueue_args(queue, ptr, keys_in);
  c10::cuda::CUDAGuard guard(queue.device());
  at::Tensor keys = keys_in.contiguous();
  const int64_t K = queue.size(0), N = keys.size(0), C = keys.size(1);
  const int64_t work = std::min(N, K) * C;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((work + threads - 1) / threads, 65535));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queue.scalar_type(), "enqueue_cuda", [&] {
    enqueue_rows_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        queue.data_ptr<scalar_t>(), ptr.data_ptr<int64_t>(), keys.data_ptr<scalar_t>(), K, N, C,
        queue.stride(0), queue.stride(1));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  advance_ptr_kernel<<<1, 1, 0, stream>>>(ptr.data_ptr<int64_t>(), K, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fastmoco
