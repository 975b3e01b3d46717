/// tp::Trainer on tp::Cuda: the tiny Transformers of tiny_training.hpp trained on the GPU take the
/// steps the same trainer takes on tp::Cpu (cpu_reference.cpp, TP 1 x DP 1 on the global batch):
/// float within 1e-5 per step, bf16 within the bf16 curve tolerance below; on every mesh the
/// harness's world allows (cuda_local: ranks as threads on one GPU over LocalCommunicator with
/// device memory, world sizes 1-4, so TP x DP meshes, ZeRO-1 and micro-batches run there; nccl:
/// world 1 on a one-GPU machine); f16 with dynamic loss scaling survives a planted overflow.
/// Training checkpoints on the GPU: trainer_cuda_checkpoint_test.cu.
///
/// Verified here only as far as nvcc compiling and linking it (no GPU on the development
/// machines): every test reports skipped, with the reason, where there is no CUDA device.

#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "common/cuda_support.hpp"
#include "common/harness.hpp"
#include "tp/device/cuda.hpp"
#include "train/cpu_reference.hpp"

// The training API on tp::Cuda, instantiated whole (every member, used by a test or not), for the
// trainer's three GPU precisions: what keeps the CUDA path compiling.
namespace tp {
template class GradBuffer<float, float, Cuda>;
template class GradBuffer<bf16, float, Cuda>;
template class GradBuffer<f16, float, Cuda>;
template class DistributedAdamW<float, float, Cuda>;
template class DistributedAdamW<bf16, float, Cuda>;
template class DistributedAdamW<f16, float, Cuda>;
template class Trainer<float, Cuda>;
template class Trainer<bf16, Cuda>;
template class Trainer<f16, Cuda>;
template class Mesh<Cuda>;
}  // namespace tp

// train() (tiny_training.hpp) can save and resume: the checkpoint functions for tp::Cuda are
// instantiated once, in trainer_cuda_checkpoint_test.cu, not in this unit too.
#define TP_CUDA_TRAINING_CHECKPOINTS extern
#include "train/cuda_checkpoint_instances.hpp"

namespace tp {
namespace {

using test::on_ranks;
using ::testing::HasSubstr;
using namespace tiny_training;



/// The trainer options of mesh `dims`: ZeRO-1 on even DP groups, 2 micro-batches where this DP
/// rank's rows split in two, small buckets (several per model).
TrainerOptions options_for(MeshDims dims) {
  const int mb = (kRows / dims.dp) % 2 == 0 ? 2 : 1;
  return {.micro_batches = mb, .zero = dims.dp % 2 == 0 ? 1 : 0, .bucket_size = 2000};
}

/// Float: the GPU computes every op in fp32 like the CPU, but in another order (cuBLASLt's GEMM
/// tiling, the kernels' block reductions) and with its own exp/tanh: each op's result differs by a
/// few float ulps (~1e-7 relative) where the meshes of trainer_test.cpp only reorder the TP and DP
/// sums. AdamW carries the differences on (with eps 1e-6, as trainer_test.cpp's float meshes run,
/// so that gradients near eps do not turn ulps into different steps); 20 steps stay within 1e-5
/// relative per loss, 10x the CPU meshes' 1e-6 for the ~10x larger per-op difference. Losses, not
/// parameters: an element whose gradient is near eps takes a visibly different AdamW step from a
/// few ulps of difference, which moves the parameter, not the loss, and a step's loss already
/// depends on every weight the optimizer wrote back to the GPU.
constexpr double kFloatTolerance = 1e-5;
constexpr int kFloatSteps = 20;

TEST(TrainerCuda, FloatFollowsCpu) {
  TP_REQUIRE_CUDA();
  const double eps = kAdamW.eps;
  kAdamW.eps = 1e-6;
  // References before on_ranks (one CPU run per model; the uneven one only for world 3).
  const TrainRun ref[2][2] = {{cpu_run(false, false, kFloatSteps, false), cpu_run(false, true, kFloatSteps, false)},
                              {cpu_run(true, false, kFloatSteps, false), cpu_run(true, true, kFloatSteps, false)}};
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    for (const bool llama : {true, false}) {
      const TrainRun& want = ref[llama][n == 3];
      for (const MeshDims dims : meshes(n)) {
        SCOPED_TRACE(fmt::format("{} TP {} x DP {}", llama ? "llama" : "gpt2", dims.tp, dims.dp));
        const Mesh<Cuda> mesh(comm, dims);
        const TrainRun got = train<float, Cuda>(mesh, tiny_config(llama, n == 3), kFloatSteps, options_for(dims));
        ASSERT_EQ(got.losses.size(), want.losses.size());
        for (std::size_t s = 0; s < want.losses.size(); ++s)
          EXPECT_NEAR(got.losses[s], want.losses[s], kFloatTolerance * std::abs(want.losses[s])) << "step " << s;
      }
    }
  });
  kAdamW.eps = eps;
}

/// bf16: the GPU and the CPU store the same bf16 values after each op (weights, activations,
/// gradients: u = 2^-9 relative rounding each) and differ only in the fp32 arithmetic between
/// the roundings (above, ~1e-7). Where that moves a value across a rounding boundary the stored
/// value changes by one bf16 ulp: the same kind of perturbation as bf16 against fp32, of which
/// precision_test.cpp derives the loss curve's bound, 2^-5 normwise (kHalfCurveTolerance there:
/// ~20 stored roundings in a row, sqrt(20) u = 0.9% on one forward, 3x that for the drift of
/// successive steps). Hence, normwise over the curve: the GPU's bf16 curve within 2^-5 of the
/// CPU's fp32 curve (100 steps at TP 1 x DP 1, where precision_test measures 3.9e-3 and 2.2e-3 on
/// the CPU) and of the CPU's bf16 curve (20 steps on every mesh, as precision_test's meshes).
constexpr double kBf16CurveTolerance = 1.0 / 32;

TEST(TrainerCuda, Bf16FollowsCpu) {
  TP_REQUIRE_CUDA();
  constexpr int kLongSteps = 100, kMeshSteps = 20;
  const TrainRun f32[2] = {cpu_run(false, false, kLongSteps, false), cpu_run(true, false, kLongSteps, false)};
  const TrainRun b16[2][2] = {{cpu_run(false, false, kMeshSteps, true), cpu_run(false, true, kMeshSteps, true)},
                              {cpu_run(true, false, kMeshSteps, true), cpu_run(true, true, kMeshSteps, true)}};
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    for (const bool llama : {true, false}) {
      const char* model = llama ? "llama" : "gpt2";
      if (n == 1) {
        const Mesh<Cuda> solo(comm, {.tp = 1});
        const TrainRun got = train<bf16, Cuda>(solo, tiny_config(llama), kLongSteps, {});
        EXPECT_LE(normwise(got.losses, f32[llama].losses), kBf16CurveTolerance)
            << model << ": GPU bf16 against CPU fp32 over " << kLongSteps << " steps";
        EXPECT_LT(got.losses.back(), got.losses.front() / 10) << model << ": bf16 on the GPU did not learn";
      }
      for (const MeshDims dims : meshes(n)) {
        const Mesh<Cuda> mesh(comm, dims);
        const TrainRun got = train<bf16, Cuda>(mesh, tiny_config(llama, n == 3), kMeshSteps, options_for(dims));
        EXPECT_LE(normwise(got.losses, b16[llama][n == 3].losses), kBf16CurveTolerance)
            << model << ": GPU bf16 at TP " << dims.tp << " x DP " << dims.dp << " against CPU bf16 at TP 1 x DP 1";
      }
    }
  });
}

/// f16 with dynamic loss scaling on the GPU through a planted overflow (tiny_training.hpp's
/// planted_overflow, on precision_test.cpp's meshes): the last rank's inf is seen by every rank,
/// the step skipped, the scale halved, and the run goes on as one that left the batch out, within
/// f16's curve tolerance (2^-7 normwise, precision_test.cpp's kF16CurveTolerance) rather than bit
/// for bit: the two runs are the same arithmetic, but the GPU's run-to-run repeatability is not
/// what this asserts.
TEST(TrainerCuda, F16SurvivesAPlantedOverflow) {
  TP_REQUIRE_CUDA();
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    for (const MeshDims dims : overflow_meshes(n)) {
      const Mesh<Cuda> mesh(comm, dims);
      const PlantedOverflow r = planted_overflow(mesh, tiny_config(true, dims.tp == 3));
      expect_survived(r, comm->rank() == n - 1, kOverflowPlant, false, 1.0 / 128,
                      fmt::format("GPU f16 TP {} x DP {}", dims.tp, dims.dp));
    }
  });
}

}  // namespace
}  // namespace tp
