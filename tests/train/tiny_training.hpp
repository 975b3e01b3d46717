#pragma once
/// The tiny models, batches and training loop that the tp::Trainer test bodies share
/// (trainer_test.cpp, precision_test.cpp, the GPU's trainer_cuda_test.cu; memory_test.cpp takes the
/// config).

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include "tp/train/checkpoint.hpp"
#include "tp/train/trainer.hpp"

namespace tp::tiny_training {

/// The meshes a world of n ranks has: every tp dividing n.
inline std::vector<MeshDims> meshes(int n) {
  std::vector<MeshDims> out;
  for (int tp = 1; tp <= n; ++tp)
    if (n % tp == 0) out.push_back({.tp = tp, .dp = n / tp});
  return out;
}

/// ||got - want||_2 / ||want||_2 over a loss curve or a parameter list: the metric of every bf16
/// comparison of training runs.
inline double normwise(const std::vector<double>& got, const std::vector<double>& want) {
  EXPECT_EQ(got.size(), want.size());
  double d = 0, w = 0;
  for (std::size_t i = 0; i < got.size() && i < want.size(); ++i) {
    d += (got[i] - want[i]) * (got[i] - want[i]);
    w += want[i] * want[i];
  }
  return std::sqrt(d / w);
}

/// A small Llama (untied head: a column-parallel lm_head; 2 kv heads: replicated at TP 4) or GPT-2
/// (tied head, LayerNorm, biases, learned positions); `uneven`: vocab 257, 6 heads over 3 kv heads
/// and ffn 100, which split unevenly over 3 ranks (86/86/85 vocabulary rows, 34/33/33 ffn).
inline models::TransformerConfig tiny_config(bool llama, bool uneven = false) {
  models::TransformerConfig c;
  c.arch = llama ? models::Architecture::llama : models::Architecture::gpt2;
  c.model_type = llama ? "llama" : "gpt2";
  c.vocab = uneven ? 257 : 64;
  c.hidden = uneven ? 36 : 32;
  c.heads = uneven ? 6 : 4;
  c.kv_heads = uneven ? 3 : 2;
  c.head_dim = c.hidden / c.heads;
  c.layers = 2;
  c.ffn = uneven ? 100 : 48;
  c.max_positions = 16;
  c.rope_theta = llama ? 10000 : 0;
  c.tie_embeddings = !llama;
  c.qkv_bias = c.dense_bias = c.mlp_bias = !llama;
  c.activation = llama ? Activation::swiglu : Activation::gelu_tanh;
  return c;
}

inline constexpr std::int64_t kRows = 12, kSeq = 8;  // global batch: 12 sequences (splits over dp 1-4)

/// Step s's global batch: pseudo-random ids, the target a fixed function of the id (learnable),
/// every 7th target masked (-100).
inline void global_batch(std::int64_t vocab, std::int64_t step, std::vector<std::int64_t>& ids,
                         std::vector<std::int64_t>& targets) {
  ids.resize(kRows * kSeq);
  targets.resize(kRows * kSeq);
  std::uint64_t x = 0x9e3779b97f4a7c15ull * static_cast<std::uint64_t>(step + 1);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    ids[i] = static_cast<std::int64_t>((x >> 33) % static_cast<std::uint64_t>(vocab));
    targets[i] = i % 7 == 3 ? -100 : (ids[i] * 5 + 3) % vocab;
  }
}

struct TrainRun {
  std::vector<double> losses;
  std::vector<std::vector<double>> params;  ///< this rank's parameters at the end
  std::int64_t skipped = 0;                 ///< steps the trainer skipped (inf/nan gradients)
};

/// This rank's parameters, on the host (copied from a device's memory).
template <class T, class Device>
std::vector<std::vector<double>> values(models::Transformer<T, Device>& model) {
  std::vector<std::vector<double>> out;
  std::vector<T> host;
  for (const auto& p : model.parameters()) {
    host.resize(static_cast<std::size_t>(p.value.size()));
    model.context().device->to_host(ConstView<T>(p.value), MatrixView<T>(host.data(), p.value.rows, p.value.cols));
    auto& v = out.emplace_back();
    for (const T& x : host) v.push_back(static_cast<double>(x));
  }
  return out;
}

inline AdamWOptions kAdamW{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};

/// Called before each step s (the trainer and s): plants faults, changes the loss scale; returns
/// whether to take step s (false: batch s is left out, its loss recorded as NaN).
template <class T, class Device = Cpu>
using BeforeStep = std::function<bool(Trainer<T, Device>&, int)>;

/// Trainer steps up to `steps` on `mesh`, each DP rank on its rows of the global batch; resuming
/// from `resume` and saving under `save` at the end when given. Without loss scaling every step
/// must be applied. On a device (tp::Cuda: trainer_cuda_test.cu; StagedCpu: staged_device_test.cpp)
/// the same steps and checkpoints.
template <class T, class Device = Cpu>
TrainRun train(const Mesh<Device>& mesh, const models::TransformerConfig& config, int steps, TrainerOptions options,
               const std::filesystem::path& resume = {}, const std::filesystem::path& save = {},
               const std::type_identity_t<BeforeStep<T, Device>>& before = {}) {
  models::Transformer<T, Device> model(mesh.tp_context(), config, 11);
  options.adamw = kAdamW;
  Trainer<T, Device> trainer(mesh, model, options);
  if (!resume.empty()) load_training_checkpoint(trainer, resume);
  const Range rows = Trainer<T, Device>::dp_rows(mesh, kRows);
  TrainRun run;
  std::vector<std::int64_t> ids, targets;
  for (int s = static_cast<int>(trainer.steps_done()); s < steps; ++s) {
    if (before && !before(trainer, s)) {
      run.losses.push_back(std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    global_batch(config.vocab, s, ids, targets);
    const ConstView<std::int64_t> all_ids(ids.data(), kRows, kSeq), all_targets(targets.data(), kRows, kSeq);
    const auto r = trainer.step(all_ids.block(rows.begin, 0, rows.size(), kSeq),
                                all_targets.block(rows.begin, 0, rows.size(), kSeq), 1e-2 * (1 + s % 3) / 3);
    if (!options.loss_scaling) EXPECT_FALSE(r.skipped);
    run.losses.push_back(r.loss);
  }
  run.skipped = trainer.steps_skipped();
  run.params = values(model);
  if (!save.empty()) save_training_checkpoint(trainer, save);
  return run;
}

/// f16 with dynamic loss scaling through a planted overflow, on any device: at step `plant` the
/// last world rank's first reported gradient (the final norm's weight, a replicated parameter:
/// counted in the global norm on TP rank 0 only, yet updated on every rank) becomes inf. `got` is
/// that run; `want` one that left batch `plant` out and halved its scale there by hand; `unplanted`
/// one without the plant; `scales[s]` the loss scale before step s of `got`.
struct PlantedOverflow {
  TrainRun got, want, unplanted;
  std::vector<double> scales;
  bool planted = false;
};

template <class Device = Cpu>
PlantedOverflow planted_overflow(const Mesh<Device>& mesh, const models::TransformerConfig& config,
                                 const TrainerOptions& options, int steps, int plant) {
  PlantedOverflow out;
  const bool last = mesh.rank() == mesh.world_size() - 1;
  out.got = train<f16, Device>(mesh, config, steps, options, {}, {}, [&](Trainer<f16, Device>& t, int s) {
    out.scales.push_back(t.loss_scaler()->scale());
    if (s != plant) return true;
    t.model().set_grad_ready_hook([&t, &out, last](std::size_t first, std::size_t end) {
      if (last && !out.planted && first < end) {
        const MatrixView<f16> g = t.grads().parameters()[first].grad;
        t.mesh().tp_context().device->fill(g.block(0, 0, 1, 1), static_cast<f16>(std::numeric_limits<float>::infinity()));
        out.planted = true;
      }
      t.grads().accumulate(first, end);
    });
    return true;
  });
  out.want = train<f16, Device>(mesh, config, steps, options, {}, {}, [&](Trainer<f16, Device>& t, int s) {
    if (s == plant) t.loss_scaler()->set_scale(t.loss_scaler()->scale() / 2);
    return s != plant;
  });
  out.unplanted = train<f16, Device>(mesh, config, steps, options);
  return out;
}

/// The planted-overflow tests' run on one mesh: 30 steps with the inf at step 5, the loss scale
/// starting at 1024 and not growing within them, ZeRO-1 where dp > 1, buckets of 1500 elements.
inline constexpr int kOverflowSteps = 30, kOverflowPlant = 5;
template <class Device = Cpu>
PlantedOverflow planted_overflow(const Mesh<Device>& mesh, const models::TransformerConfig& config) {
  const TrainerOptions options{.zero = mesh.dp() > 1 ? 1 : 0,
                               .bucket_size = 1500,
                               .loss_scaling = LossScalerOptions{.initial_scale = 1024, .growth_interval = 1000}};
  return planted_overflow(mesh, config, options, kOverflowSteps, kOverflowPlant);
}

/// Where the planted-overflow tests run at n ranks: TP n and, above one rank, TP 2 x DP n/2 (TP 1
/// x DP n on an odd world), the mesh whose DP collectives carry the inf.
inline std::vector<MeshDims> overflow_meshes(int n) {
  std::vector<MeshDims> all{{.tp = n, .dp = 1}};
  if (n > 1) all.push_back({.tp = n % 2 == 0 ? 2 : 1, .dp = n % 2 == 0 ? n / 2 : n});
  return all;
}

/// What a planted overflow must do (planted_overflow): the last rank planted it, every rank skipped
/// that step and halved the scale, and the run went on as `want` from step plant + 1: bit for bit
/// (`exact`: the same arithmetic in both runs) or, on a device that need not repeat its roundings
/// run to run, within `tolerance` normwise over the losses; and it kept learning (one update
/// behind the run without the plant, in the steep part of the curve, ~5% a step, it ends below
/// where that run was 3 steps before its end).
inline void expect_survived(const PlantedOverflow& r, bool last_rank, int plant, bool exact, double tolerance,
                            const std::string& where) {
  EXPECT_EQ(r.planted, last_rank) << where;
  EXPECT_EQ(r.got.skipped, r.want.skipped + 1) << where << ": the planted step was not skipped";
  ASSERT_GT(r.scales.size(), static_cast<std::size_t>(plant + 1)) << where;
  EXPECT_EQ(r.scales[plant + 1], r.scales[plant] / 2) << where << ": the scale did not back off";
  // `want` left batch `plant` out; the planted run took it but skipped it: from plant + 1 on.
  const std::vector<double> after(r.got.losses.begin() + plant + 1, r.got.losses.end());
  const std::vector<double> want(r.want.losses.begin() + plant + 1, r.want.losses.end());
  if (exact) {
    EXPECT_EQ(after, want) << where;
    EXPECT_EQ(r.got.params, r.want.params) << where;
  } else {
    EXPECT_LE(normwise(after, want), tolerance) << where;
  }
  EXPECT_LT(r.got.losses.back(), r.unplanted.losses[r.unplanted.losses.size() - 4]) << where;
}

}  // namespace tp::tiny_training
