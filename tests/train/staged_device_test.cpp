/// The device path of the training code (tp/train/: Device::on_host false), run on the host: a
/// tp::Cpu that says it is not on the host, so that GradBuffer, DistributedAdamW and Trainer move
/// gradients and weights with to_host / from_host and stage their collectives through "device"
/// buffers (tp/train/host_collectives.hpp), as they do on tp::Cuda, over the harness's host
/// communicators (local, MPI, Gloo). The arithmetic is tp::Cpu's either way, so the steps must be
/// the host path's bit for bit, on every mesh, with ZeRO-1 and micro-batches. What this cannot
/// show, the GPU's numbers, trainer_cuda_test.cu checks on a GPU.

#include <gtest/gtest.h>

#include "common/harness.hpp"
#include "train/tiny_training.hpp"

namespace tp {

/// tp::Cpu with on_host false: the same memory and kernels, the device code paths.
class StagedCpu : public Cpu {
 public:
  static constexpr bool on_host = false;
  static const std::shared_ptr<StagedCpu>& shared() {
    static const auto device = std::make_shared<StagedCpu>();
    return device;
  }
};

namespace {

using test::on_ranks;
using namespace tiny_training;

TEST(TrainerDevicePath, StagedEqualsHost) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    for (int tp = 1; tp <= n; ++tp) {
      if (n % tp != 0) continue;
      const MeshDims dims{.tp = tp, .dp = n / tp};
      const int mb = (kRows / dims.dp) % 2 == 0 ? 2 : 1;
      const TrainerOptions options{.micro_batches = mb, .zero = dims.dp % 2 == 0 ? 1 : 0, .bucket_size = 2000};
      const auto config = tiny_config(true, n == 3);
      const TrainRun want = train<float>(Mesh<>(comm, dims), config, 5, options);
      const TrainRun got = train<float, StagedCpu>(Mesh<StagedCpu>(comm, dims), config, 5, options);
      EXPECT_EQ(got.losses, want.losses) << "TP " << dims.tp << " x DP " << dims.dp;
      EXPECT_EQ(got.params, want.params) << "TP " << dims.tp << " x DP " << dims.dp;
    }
  });
}

}  // namespace
}  // namespace tp
