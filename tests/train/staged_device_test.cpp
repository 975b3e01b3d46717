/// The device path of the training code (tp/train/: Device::on_host false), run on the host: a
/// tp::Cpu that says it is not on the host, so that GradBuffer, DistributedAdamW and Trainer move
/// gradients and weights with to_host / from_host and stage their collectives through "device"
/// buffers (tp/comm/detail/host_staged_communicator.hpp), as they do on tp::Cuda, over the
/// harness's communicators (local, MPI, Gloo) behind a DeviceMemoryCommunicator (staged_cpu.hpp),
/// which refuses buffers that are not StagedCpu memory as NCCL refuses host memory, so that a
/// collective over host buffers that skipped the staging fails here. The arithmetic is tp::Cpu's either way, so the steps must be
/// the host path's bit for bit, on every mesh, with ZeRO-1 and micro-batches. What this cannot
/// show, the GPU's numbers, trainer_cuda_test.cu checks on a GPU. Training checkpoints on the
/// device path: the same files as the host path's, byte for byte, resumed at any mesh by either.
/// tp/io's and tp/models' collective saves and loads called directly on the device path.

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/harness.hpp"
#include "tp/io/resume.hpp"
#include "tp/models/hugging_face.hpp"
#include "train/staged_cpu.hpp"
#include "train/tiny_training.hpp"

namespace tp {

namespace {

using test::on_ranks;
using ::testing::HasSubstr;
using namespace tiny_training;

/// A file's bytes.
std::vector<char> bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// A directory for all ranks of this world (processes under mpirun: rank 0's pid), emptied.
std::filesystem::path fresh_dir(Communicator& comm, const std::string& what) {
  std::int64_t id = ::getpid();
  comm.broadcast(std::span<std::int64_t>(&id, 1), 0);
  const auto dir = std::filesystem::temp_directory_path() /
                   fmt::format("tp_staged_{}_{}_{}_{}", what, test::harness_backend(), comm.size(), id);
  if (comm.rank() == 0) std::filesystem::remove_all(dir);
  comm.barrier();
  return dir;
}

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
      const TrainRun got = train<float, StagedCpu>(Mesh<StagedCpu>(std::make_shared<DeviceMemoryCommunicator>(comm), dims), config, 5, options);
      EXPECT_EQ(got.losses, want.losses) << "TP " << dims.tp << " x DP " << dims.dp;
      EXPECT_EQ(got.params, want.params) << "TP " << dims.tp << " x DP " << dims.dp;
    }
  });
}

/// Training checkpoints through the device path (the model's weights copied to the host to be
/// written, tp/io's collectives staged through "device" buffers): saved at TP 2 x DP 2 with ZeRO-1
/// (at 4 ranks; elsewhere at the world's last mesh) by a StagedCpu trainer and by a host trainer,
/// the two checkpoints are the same bytes; each resumes on every mesh of the world, ZeRO-1 or not,
/// on either path: the staged and the host resumes take the same steps bit for bit, the same as
/// the uninterrupted run's bit for bit at the saving mesh and within 1e-6 at the others (float,
/// AdamW's eps at 1e-6, as trainer_test.cpp's MeshesFollowOneRankFloat: the meshes reorder sums).
/// Float rather than double: the float trainers on both paths are this file's already, which
/// keeps its compile time down.
TEST(TrainerDevicePath, CheckpointsResumeAtAnyMesh) {
  const double eps = kAdamW.eps;
  kAdamW.eps = 1e-6;
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    const auto staged_dir = fresh_dir(*comm, "resume_staged"), host_dir = fresh_dir(*comm, "resume_host");
    const MeshDims saved = n == 4 ? MeshDims{.tp = 2, .dp = 2} : meshes(n).back();
    const auto config = tiny_config(true, n == 3);
    const TrainerOptions zero1{.zero = saved.dp > 1 ? 1 : 0, .bucket_size = 1500};
    const TrainRun full = train<float>(Mesh<>(comm, saved), config, 6, zero1);
    train<float, StagedCpu>(Mesh<StagedCpu>(std::make_shared<DeviceMemoryCommunicator>(comm), saved), config, 3, zero1, {}, staged_dir);
    train<float>(Mesh<>(comm, saved), config, 3, zero1, {}, host_dir);
    if (comm->rank() == 0)
      for (const char* file : {"resume.safetensors", "model.safetensors"})
        EXPECT_EQ(bytes(staged_dir / "step-000003" / file), bytes(host_dir / "step-000003" / file))
            << file << ": the StagedCpu trainer's checkpoint differs from the host trainer's";
    const std::vector<double> tail(full.losses.begin() + 3, full.losses.end());
    for (const MeshDims dims : meshes(n))
      for (const int zero : {0, 1}) {
        if (zero == 1 && dims.dp == 1) continue;
        const std::string where = fmt::format("saved at TP {} x DP {}, resumed at TP {} x DP {}, zero {}", saved.tp,
                                              saved.dp, dims.tp, dims.dp, zero);
        const TrainerOptions options{.zero = zero, .bucket_size = 1500};
        const TrainRun staged = train<float, StagedCpu>(Mesh<StagedCpu>(std::make_shared<DeviceMemoryCommunicator>(comm), dims), config, 6, options, staged_dir);
        const TrainRun host = train<float>(Mesh<>(comm, dims), config, 6, options, staged_dir);
        const TrainRun from_host = train<float, StagedCpu>(Mesh<StagedCpu>(std::make_shared<DeviceMemoryCommunicator>(comm), dims), config, 6, options, host_dir);
        EXPECT_EQ(staged.losses, host.losses) << where << ": StagedCpu and host resumes";
        EXPECT_EQ(staged.params, host.params) << where << ": StagedCpu and host resumes";
        EXPECT_EQ(from_host.losses, staged.losses) << where << ": StagedCpu resumes from the host's checkpoint";
        ASSERT_EQ(staged.losses.size(), tail.size()) << where;
        for (std::size_t s = 0; s < tail.size(); ++s)
          EXPECT_NEAR(staged.losses[s], tail[s], 1e-6 * std::abs(tail[s])) << where << ", step " << 3 + s;
        if (dims.tp == saved.tp && dims.dp == saved.dp && zero == zero1.zero)
          EXPECT_EQ(staged.losses, tail) << where << ": not the uninterrupted run's bit for bit";
      }
    comm->barrier();
    if (comm->rank() == 0) {
      std::filesystem::remove_all(staged_dir);
      std::filesystem::remove_all(host_dir);
    }
  });
  kAdamW.eps = eps;
}

/// tp/io's and tp/models' collective saves and loads called directly with a device's communicator
/// (fine-tuned on a GPU, saved without tp/train): over a DeviceMemoryCommunicator, which refuses
/// host buffers as NCCL does, save_safetensors, save_hugging_face and save_resume / load_resume
/// (the checksums, rank 0's verification and its verdict) of a StagedCpu model stage their
/// collectives, and write the host model's files byte for byte. Llama (untied head, GQA) and GPT-2
/// (tied head, biases, no GQA), split unevenly at 3 ranks.
TEST(TrainerDevicePath, IoSavesAndLoadsStageTheirCollectives) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    const auto dir = fresh_dir(*comm, "io");
    if (comm->rank() == 0) std::filesystem::create_directories(dir);
    comm->barrier();
    const auto device_comm = std::make_shared<DeviceMemoryCommunicator>(comm);
    const std::shared_ptr<StagedCpu>& device = StagedCpu::shared();
    {  // The wrapper refuses host memory, so that a collective that skips the staging fails here.
      std::int64_t one = 1;
      EXPECT_THAT([&] { device_comm->all_reduce(std::span<std::int64_t>(&one, 1)); },
                  ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("not StagedCpu (device) memory")));
    }
    for (const bool llama : {true, false}) {
      const std::string arch = llama ? "llama" : "gpt2";
      auto config = tiny_config(llama, n == 3);
      if (!llama) config.kv_heads = config.heads;  // Hugging Face's GPT-2 has no GQA
      models::Transformer<float, StagedCpu> staged(Context<StagedCpu>(device_comm, device), config, 11);
      models::Transformer<float> host(Context<>(comm), config, 11);
      models::save_hugging_face(*device_comm, staged, dir / (arch + "_staged"));
      models::save_hugging_face(*comm, host, dir / (arch + "_host"));
      save_safetensors<float>(*device_comm, *device, staged.parameters(), dir / (arch + "_staged.safetensors"));
      save_safetensors<float>(*comm, Cpu(), host.parameters(), dir / (arch + "_host.safetensors"));
      AdamW<float, StagedCpu> staged_opt(Context<StagedCpu>(device_comm, device), staged.parameters());
      AdamW<float> host_opt(Context<>(comm), host.parameters());
      const auto resume = dir / (arch + "_staged_resume.safetensors");
      save_resume(staged_opt, resume, {{"data.position", "3"}});
      save_resume(host_opt, dir / (arch + "_host_resume.safetensors"), {{"data.position", "3"}});
      if (comm->rank() == 0) {
        for (const std::string file : {"_staged/model.safetensors", "_staged/config.json", "_staged.safetensors",
                                       "_staged_resume.safetensors"}) {
          std::string other = file;
          other.replace(0, 7, "_host");
          EXPECT_EQ(bytes(dir / (arch + file)), bytes(dir / (arch + other)))
              << arch << file << ": the StagedCpu model's file differs from the host model's";
        }
      }
      // Loaded back into another StagedCpu model (rank 0 verifies, every rank hears its verdict).
      models::Transformer<float, StagedCpu> loaded(Context<StagedCpu>(device_comm, device), config, 12);
      AdamW<float, StagedCpu> loaded_opt(Context<StagedCpu>(device_comm, device), loaded.parameters());
      EXPECT_EQ(load_resume(loaded_opt, resume).at("data.position"), "3");
      EXPECT_EQ(values(loaded), values(host)) << arch;
      // A damaged file: rank 0's verdict reaches every rank through the staged broadcast.
      comm->barrier();
      if (comm->rank() == 0) {
        std::fstream f(resume, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(-3, std::ios::end);
        f.put('\x7f');
      }
      comm->barrier();
      EXPECT_THAT([&] { load_resume(loaded_opt, resume); }, ::testing::ThrowsMessage<IoError>(HasSubstr("checksum")))
          << arch;
    }
    comm->barrier();
    if (comm->rank() == 0) std::filesystem::remove_all(dir);
  });
}

/// Another model's checkpoint (a wider MLP) on the device path, refused by name (the first tensor
/// whose shape differs) before the trainer changes. (A double run's checkpoint in a float trainer
/// is refused before anything device-specific runs: trainer_test.cpp's ResumesAtAnyMesh.)
TEST(TrainerDevicePath, OtherModelsCheckpointsAreRefused) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    const auto dir = fresh_dir(*comm, "refused");
    const auto config = tiny_config(true, n == 3);
    const Mesh<StagedCpu> mesh(std::make_shared<DeviceMemoryCommunicator>(comm), meshes(n).back());
    train<float, StagedCpu>(mesh, config, 1, {}, {}, dir);
    auto wider = config;
    wider.ffn += 12;
    models::Transformer<float, StagedCpu> other(mesh.tp_context(), wider, 3);
    Trainer<float, StagedCpu> trainer(mesh, other, {.zero = mesh.dp() > 1 ? 1 : 0});
    const auto before = values(other);
    EXPECT_THAT([&] { load_training_checkpoint(trainer, dir); },
                ::testing::ThrowsMessage<Error>(HasSubstr("but the layer's parameter is")));
    EXPECT_EQ(values(other), before) << "the model changed on a refused load";
    EXPECT_EQ(trainer.steps_done(), 0);
    comm->barrier();
    if (comm->rank() == 0) std::filesystem::remove_all(dir);
  });
}

/// f16 with dynamic loss scaling on the device path (tp::Cpu's f16 tensors, the device's staging):
/// a planted overflow is skipped on every rank, the scale backs off, and the run goes on bit for
/// bit as one that left the batch out (precision_test.cpp's F16SurvivesAPlantedOverflow, on the
/// last of its meshes: TP 2 x DP 2 with ZeRO-1 at 4 ranks, TP 1 x DP n at 2 and 3, TP 1 at 1,
/// where the staged DP collectives carry the inf); an f16 checkpoint with its loss scale (growing every 2 clean steps) resumes
/// through the device path with the uninterrupted run's next losses, bit for bit.
TEST(TrainerDevicePath, F16SurvivesAPlantedOverflowAndResumes) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    const MeshDims dims = overflow_meshes(n).back();
    const Mesh<StagedCpu> mesh(std::make_shared<DeviceMemoryCommunicator>(comm), dims);
    const auto config = tiny_config(true, dims.tp == 3);
    {
      const PlantedOverflow r = planted_overflow(mesh, config);
      expect_survived(r, comm->rank() == n - 1, kOverflowPlant, true, 0, fmt::format("TP {} x DP {}", dims.tp, dims.dp));
    }
    const auto dir = fresh_dir(*comm, "f16");
    TrainerOptions options{.zero = mesh.dp() > 1 ? 1 : 0, .bucket_size = 1500};
    options.loss_scaling = LossScalerOptions{.initial_scale = 1024, .growth_interval = 2};
    const TrainRun full = train<f16, StagedCpu>(mesh, config, 6, options);
    train<f16, StagedCpu>(mesh, config, 3, options, {}, dir);
    const TrainRun resumed = train<f16, StagedCpu>(mesh, config, 6, options, dir);
    EXPECT_EQ(resumed.losses, std::vector<double>(full.losses.begin() + 3, full.losses.end()));
    EXPECT_EQ(resumed.params, full.params);
    comm->barrier();
    if (comm->rank() == 0) std::filesystem::remove_all(dir);
  });
}

}  // namespace
}  // namespace tp
