/// The GPU suite's preflight: what this machine's GPUs offer that tp and its tests rely on, in a
/// few seconds and before anything is built, as markdown lines for summary.md
/// (scripts/gpu-suite.sh compiles it with nvcc alone, for the architecture it will build for; the
/// CMake build compiles it too, as tp_cuda_preflight, so that it keeps compiling).
///
///   - the driver and runtime versions (a driver older than the toolkit runs nothing);
///   - per device: name, compute capability, memory, whether stream-ordered memory pools are
///     supported (tp::Cuda allocates from the pool, else with cudaMalloc) and concurrentManagedAccess
///     (the device test harnesses use managed buffers only where it is 1, else pinned host memory);
///   - peer access between devices, which LocalCommunicator over device memory needs across GPUs;
///   - one kernel, compiled for the suite's architecture, run on device 0.
///
/// Exit status: 0 when the kernel ran; 77 when there is no usable device (no driver, a driver too
/// old, no GPU); 1 when a device is there but the kernel did not run (another architecture?).
/// Plain CUDA runtime calls only, no tp headers, so that it compiles in seconds.
#include <cuda_runtime_api.h>

#include <cstdio>

namespace {

__global__ void add_one(int* x) { *x += 1; }

/// An attribute of `device`, -1 when it cannot be read (the error is cleared).
int attribute(cudaDeviceAttr what, int device) {
  int value = -1;
  if (cudaDeviceGetAttribute(&value, what, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  return value;
}

void print_version(const char* what, int v) { std::printf("%s %d.%d", what, v / 1000, v % 1000 / 10); }

}  // namespace

int main() {
  int driver = 0, runtime = 0;
  (void)cudaDriverGetVersion(&driver);  // 0 when there is no driver
  (void)cudaRuntimeGetVersion(&runtime);
  std::printf("- preflight: ");
  if (driver == 0)
    std::printf("no CUDA driver found");
  else
    print_version("CUDA driver", driver);
  print_version(", runtime", runtime);
  std::printf("\n");
  int count = 0;
  const cudaError_t found = cudaGetDeviceCount(&count);
  if (found != cudaSuccess || count == 0) {
    if (found != cudaSuccess)
      std::printf("- preflight: no usable CUDA device: cudaGetDeviceCount failed: %s (%s)\n", cudaGetErrorName(found),
                  cudaGetErrorString(found));
    else
      std::printf("- preflight: no usable CUDA device: cudaGetDeviceCount found 0 devices\n");
    return 77;
  }
  for (int d = 0; d < count; ++d) {
    cudaDeviceProp prop{};
    const cudaError_t read = cudaGetDeviceProperties(&prop, d);
    if (read != cudaSuccess) {
      std::printf("- preflight: device %d: cudaGetDeviceProperties failed: %s\n", d, cudaGetErrorName(read));
      continue;
    }
    const int pools = attribute(cudaDevAttrMemoryPoolsSupported, d);
    const int concurrent = attribute(cudaDevAttrConcurrentManagedAccess, d);
    std::printf(
        "- preflight: device %d: %s, compute capability %d.%d, %.1f GiB; memory pools %s (tp::Cuda allocates %s); "
        "concurrentManagedAccess %d (test buffers in %s)\n",
        d, prop.name, prop.major, prop.minor, static_cast<double>(prop.totalGlobalMem) / (1 << 30),
        pools == 1 ? "supported" : "NOT supported", pools == 1 ? "from the stream-ordered pool" : "with cudaMalloc",
        concurrent, concurrent == 1 ? "managed memory" : "pinned host memory");
  }
  for (int a = 0; a < count; ++a) {
    for (int b = 0; b < count; ++b) {
      int can = 0;
      if (a != b && (cudaDeviceCanAccessPeer(&can, a, b) != cudaSuccess || can == 0))
        std::printf("- preflight: device %d cannot reach device %d's memory (LocalCommunicator across them needs NCCL)\n",
                    a, b);
    }
  }
  (void)cudaGetLastError();
  int* x = nullptr;
  int host = 41;
  cudaError_t ran = cudaSetDevice(0);
  if (ran == cudaSuccess) ran = cudaMalloc(&x, sizeof(int));
  if (ran == cudaSuccess) ran = cudaMemcpy(x, &host, sizeof(int), cudaMemcpyHostToDevice);
  if (ran == cudaSuccess) {
    add_one<<<1, 1>>>(x);
    ran = cudaGetLastError();
  }
  if (ran == cudaSuccess) ran = cudaMemcpy(&host, x, sizeof(int), cudaMemcpyDeviceToHost);
  if (x != nullptr) (void)cudaFree(x);
  if (ran != cudaSuccess || host != 42) {
    std::printf("- preflight: a kernel for this build's architecture did NOT run on device 0: %s (%s)\n",
                cudaGetErrorName(ran), ran != cudaSuccess ? cudaGetErrorString(ran) : "wrong result");
    return 1;
  }
  std::printf("- preflight: a kernel compiled for this build's architecture ran on device 0\n");
  return 0;
}
