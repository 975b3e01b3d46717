#pragma once
/// LocalCommunicator on device memory: N ranks as threads sharing one GPU (or several with peer
/// access, below), the way multi-rank GPU tests run where NCCL refuses two ranks on one device.
///
///   auto comms = tp::LocalCommunicator::create(4, {.memory = std::make_shared<tp::CudaLocalMemory>()});
///
/// Each rank copies and reduces its peers' buffers with copies and kernels on its own stream (the
/// one the collective was given). A rank synchronizes that stream before posting its buffers and
/// before reporting done, so peers never read data still being produced: collectives over this
/// backend are correct, and as synchronous as the host ones. Buffers may be device, managed or
/// pinned host memory (UVA); 16-bit floats are reduced in float.
///
/// Several GPUs: the reduction kernels read the peers' buffers directly, so each rank's device
/// must reach the others' memory. tp::Cuda grants every peer that cudaDeviceCanAccessPeer allows
/// access to its memory pool (cudaMemPoolSetAccess), which is where its tensors live; buffers from
/// plain cudaMalloc also need cudaDeviceEnablePeerAccess by the caller (so do a tp::Cuda's tensors
/// on GPUs without memory pools, where it allocates with cudaMalloc). Without peer access between
/// two GPUs, use NCCL. Tested on one GPU only: the GPU machines here have one.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "tp/comm/local_communicator.hpp"
#include "tp/device/cuda/error.hpp"
#include "tp/device/cuda/local_reduce.cuh"

namespace tp {

class CudaLocalMemory final : public LocalMemory {
 public:
  void acquire(Stream stream) override {
    TP_CUDA_CHECK(cudaStreamSynchronize(stream), "waiting for a rank's stream before a LocalCommunicator collective");
  }
  void copy(void* dst, const void* src, std::size_t bytes, Stream stream) override {
    TP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream),
                  "copying {} bytes between ranks of a LocalCommunicator", bytes);
  }
  void reduce(DType dtype, ReduceOp op, const void* const* srcs, int n, std::size_t offset, std::size_t count,
              void* dst, Stream stream) override {
    TP_CHECK(n <= kernels::kMaxReduceSources, "CudaLocalMemory reduces over at most {} ranks, got {}",
             kernels::kMaxReduceSources, n);
    if (count == 0) return;
    kernels::Sources sources{};
    for (int q = 0; q < n; ++q) sources.ptr[q] = srcs[q];
    kernels::clear_last_error();
    switch (dtype) {
      case DType::f32:
        launch<float>(sources, n, offset, count, dst, op, stream);
        break;
      case DType::f64:
        launch<double>(sources, n, offset, count, dst, op, stream);
        break;
      case DType::f16:
        launch<__half>(sources, n, offset, count, dst, op, stream);
        break;
      case DType::bf16:
        launch<__nv_bfloat16>(sources, n, offset, count, dst, op, stream);
        break;
      case DType::i32:
        launch<std::int32_t>(sources, n, offset, count, dst, op, stream);
        break;
      case DType::i64:
        launch<std::int64_t>(sources, n, offset, count, dst, op, stream);
        break;
      case DType::u8:
        launch<std::uint8_t>(sources, n, offset, count, dst, op, stream);
        break;
    }
    TP_CUDA_CHECK(cudaGetLastError(), "launching a {} {} reduction of {} elements over {} ranks", name(dtype), name(op),
                  count, n);
  }
  void release(Stream stream) override {
    TP_CUDA_CHECK(cudaStreamSynchronize(stream), "waiting for a rank's LocalCommunicator copies to land");
  }

 private:
  template <class T>
  static void launch(const kernels::Sources& srcs, int n, std::size_t offset, std::size_t count, void* dst, ReduceOp op,
                     Stream stream) {
    kernels::reduce_sources<T><<<kernels::grid_for(static_cast<long long>(count)), 256, 0, stream>>>(
        srcs, n, offset, count, static_cast<T*>(dst), op);
  }
};

}  // namespace tp
