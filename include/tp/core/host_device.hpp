#pragma once
/// TP_HOST_DEVICE marks a function that both the CPU loops and the CUDA kernels call: nvcc
/// compiles it for host and device, any other compiler sees a plain inline function.

#ifdef __CUDACC__
#define TP_HOST_DEVICE __host__ __device__ inline
#else
#define TP_HOST_DEVICE inline
#endif
