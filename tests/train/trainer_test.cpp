/// tp::Trainer on TP x DP meshes against the unsharded computation: the losses of every mesh the
/// world size allows (TP 2 x DP 2, TP 1 x DP 4, TP 4 x DP 1, uneven TP 3, ...) follow TP 1 x DP 1
/// on the global batch; ZeRO-1 and the bucketed, overlapped reduction against tp::AdamW over
/// plain per-parameter all-reduces; micro-batches against one batch; full recomputation bit for
/// bit; bad meshes and non-finite gradients refused by name.

#include "tp/train/trainer.hpp"

#include <unistd.h>

#include <filesystem>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/harness.hpp"
#include "tp/optim/adamw.hpp"
#include "tp/optim/clip_grad_norm.hpp"
#include "tp/train/checkpoint.hpp"
#include "train/tiny_training.hpp"

namespace tp {
namespace {

using test::on_ranks;
using ::testing::HasSubstr;
using namespace tiny_training;

/// The reference step: tp::AdamW over the model's own parameters, each gradient all-reduced over
/// the DP group on its own (the plain per-parameter reduction), tp::clip_grad_norm over the TP group.
template <class T>
TrainRun train_plain(const Mesh<>& mesh, const models::TransformerConfig& config, int steps, double clip) {
  models::Transformer<T> model(mesh.tp_context(), config, 11);
  const auto params = model.parameters();
  AdamW<T> opt(mesh.tp_context(), params, kAdamW);
  VocabParallelCrossEntropy<T, Cpu> loss_fn(mesh.tp_context(), config.vocab);
  const Range rows = Trainer<T>::dp_rows(mesh, kRows);
  TrainRun run;
  std::vector<std::int64_t> ids, targets;
  for (int s = 0; s < steps; ++s) {
    global_batch(config.vocab, s, ids, targets);
    double tokens = 0;
    for (auto t : targets) tokens += t != -100;
    const std::int64_t n = rows.size() * kSeq;
    Tensor<std::int64_t, Cpu> id(1, n), tg(1, n);
    std::copy_n(ids.begin() + rows.begin * kSeq, n, id.data());
    std::copy_n(targets.begin() + rows.begin * kSeq, n, tg.data());
    const auto& logits = model.forward(id.view(), AttentionBatch::uniform(rows.size(), kSeq));
    const auto& loss = loss_fn.forward(logits.view(), tg.view());
    double sum = 0;
    for (std::int64_t i = 0; i < n; ++i) sum += static_cast<double>(loss.data()[i]);
    Tensor<T, Cpu> g(n, 1);
    std::fill_n(g.data(), n, static_cast<T>(1.0 / tokens));
    model.backward(loss_fn.backward(g.view()).view());
    for (const auto& p : params) {
      if (p.grad.contiguous()) {  // one all-reduce per parameter; a strided block row by row
        mesh.dp_comm().all_reduce(std::span<T>(p.grad.data, static_cast<std::size_t>(p.grad.size())));
        continue;
      }
      for (std::int64_t r = 0; r < p.grad.rows; ++r)
        mesh.dp_comm().all_reduce(std::span<T>(&p.grad(r, 0), static_cast<std::size_t>(p.grad.cols)));
    }
    mesh.dp_comm().all_reduce(std::span<double>(&sum, 1));
    if (clip > 0) clip_grad_norm<T>(mesh.tp_context(), std::span<const Parameter<T>>(params), clip);
    opt.set_lr(1e-2 * (1 + s % 3) / 3);
    opt.step();
    opt.zero_grad();
    run.losses.push_back(sum / tokens);
  }
  run.params = values(model);
  return run;
}


void expect_close(const std::vector<double>& got, const std::vector<double>& want, double rel, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], rel * std::max(1.0, std::abs(want[i]))) << what << ", element " << i;
}

/// Every mesh of the world against TP 1 x DP 1 on the whole batch (a one-rank communicator split
/// off on every rank): the losses of 20 steps, for both architectures, with 2 micro-batches where
/// the rows allow, ZeRO-1 on the even meshes, small buckets so that there are several. Float: the
/// losses within 1e-6 relative (the sharded GEMMs and the DP sum add in another order: a few ulps
/// per step, which AdamW carries on); double: 1e-12.
template <class T>
void meshes_follow_one_rank(double rel) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    const Mesh<> solo(comm->split(comm->rank(), 0), {.tp = 1});
    for (const bool llama : {true, false}) {
      const auto config = tiny_config(llama, n == 3);
      const TrainRun want = train<T>(solo, config, 20, {});
      for (const MeshDims dims : meshes(n)) {
        const Mesh<> mesh(comm, dims);
        const int mb = (kRows / dims.dp) % 2 == 0 ? 2 : 1;
        const TrainRun got = train<T>(mesh, config, 20,
                                 {.micro_batches = mb, .zero = dims.dp % 2 == 0 ? 1 : 0, .bucket_size = 2000});
        expect_close(got.losses, want.losses, rel,
                     fmt::format("{} TP {} x DP {} ({} micro-batches) vs TP 1 x DP 1", config.model_type, dims.tp,
                                 dims.dp, mb));
      }
    }
  });
}

/// Float runs with AdamW's eps at 1e-6: with 1e-8, the uneven TP 3 Llama's losses leave 1e-6 at
/// step 6 (7e-5 by step 19) while its double run agrees to 1e-12: a parameter whose gradient is at
/// the float rounding level gets an update of lr * sign(rounding noise) from Adam when eps is far
/// below it, which turns the ulps of the sharded sums into a different step. eps 1e-6 (above such
/// gradients) keeps Adam from amplifying noise; every mesh then agrees to 1e-6 for 20 steps.
TEST(Trainer, MeshesFollowOneRankFloat) {
  kAdamW.eps = 1e-6;
  meshes_follow_one_rank<float>(1e-6);
  kAdamW.eps = 1e-8;
}
TEST(Trainer, MeshesFollowOneRankDouble) { meshes_follow_one_rank<double>(1e-12); }

/// ZeRO-1 (and zero 0) over buckets against tp::AdamW over per-parameter all-reduces: the same
/// parameters after 10 steps, double within 1e-12 (the global norm sums in another order). ZeRO-1
/// runs twice: with the asynchronous collectives (the reduce-scatters overlapping backward, the
/// all-gathers the next forward: the defaults) and with blocking ones, which must agree bit for bit.
TEST(Trainer, ZeroOneMatchesUnshardedAdamW) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    for (const MeshDims dims : meshes(comm->size())) {
      const Mesh<> mesh(comm, dims);
      const auto config = tiny_config(true, dims.tp == 3);
      const TrainRun want = train_plain<double>(mesh, config, 10, 1.0);
      for (const int zero : {0, 1}) {
        const TrainRun got = train<double>(mesh, config, 10, {.zero = zero, .bucket_size = 1500});
        expect_close(got.losses, want.losses, 1e-12, fmt::format("zero {} losses", zero));
        ASSERT_EQ(got.params.size(), want.params.size());
        for (std::size_t k = 0; k < got.params.size(); ++k)
          expect_close(got.params[k], want.params[k], 1e-12,
                       fmt::format("zero {} TP {} x DP {} parameter {}", zero, dims.tp, dims.dp, k));
        if (zero == 0) continue;
        const TrainRun blocking = train<double>(
            mesh, config, 10, {.zero = 1, .bucket_size = 1500, .overlap = false, .overlap_param_gather = false});
        EXPECT_EQ(got.losses, blocking.losses) << "TP " << dims.tp << " x DP " << dims.dp;
        EXPECT_EQ(got.params, blocking.params) << "TP " << dims.tp << " x DP " << dims.dp;
      }
    }
  });
}

/// ZeRO-1's overlapped all-gather: after a step the buckets' gathers are in flight (DP > 1), the
/// model's weights are the previous step's until a read through the model (here parameters())
/// waits for them, and a forward waits for each bucket before the layers that read it.
TEST(Trainer, ZeroOneGathersWeightsBeforeTheyAreRead) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    for (const MeshDims dims : meshes(comm->size())) {
      if (dims.dp == 1) continue;
      const Mesh<> mesh(comm, dims);
      const auto config = tiny_config(true, dims.tp == 3);
      models::Transformer<double> model(mesh.tp_context(), config, 11);
      Trainer<double> trainer(mesh, model, {.zero = 1, .bucket_size = 1500, .adamw = kAdamW});
      const std::size_t buckets = trainer.grads().buckets().size();
      ASSERT_GT(buckets, 2u) << "the test wants several buckets";
      const Range rows = Trainer<double>::dp_rows(mesh, kRows);
      std::vector<std::int64_t> ids, targets;
      auto step = [&](int s) {
        global_batch(config.vocab, s, ids, targets);
        const ConstView<std::int64_t> all_ids(ids.data(), kRows, kSeq), all_targets(targets.data(), kRows, kSeq);
        return trainer.step(all_ids.block(rows.begin, 0, rows.size(), kSeq),
                            all_targets.block(rows.begin, 0, rows.size(), kSeq), 1e-2);
      };
      step(0);
      EXPECT_EQ(trainer.optimizer().params_in_flight(), buckets);
      // Views taken earlier still see the weights before the step, every one of them, until a read
      // through the model waits for the gathers.
      const auto read = [](const std::vector<Parameter<double>>& params) {
        std::vector<std::vector<double>> out;
        for (const auto& p : params) {
          auto& v = out.emplace_back();
          for (std::int64_t e = 0; e < p.value.size(); ++e) v.push_back(p.value(e / p.value.cols, e % p.value.cols));
        }
        return out;
      };
      const auto views = trainer.grads().parameters();
      const auto before = read(views);
      const auto after = values(model);
      EXPECT_EQ(trainer.optimizer().params_in_flight(), 0u);
      ASSERT_EQ(before.size(), after.size());
      for (std::size_t k = 0; k < before.size(); ++k)
        EXPECT_NE(before[k], after[k]) << "parameter " << views[k].name << " was not updated, or not after the read";
      EXPECT_EQ(read(views), after);
      step(1);
      // The forward of step 2 waits for every bucket, its first layers' first.
      step(2);
      EXPECT_EQ(trainer.optimizer().params_in_flight(), buckets);
      trainer.finish_param_sync();
      EXPECT_EQ(trainer.optimizer().params_in_flight(), 0u);
    }
  });
}

/// Without clipping, float: bucketed reduction, overlapped with backward or not, equals the plain
/// per-parameter all-reduce exactly at DP 1 and 2 (a sum of two is the same in any order; at DP 3
/// and 4 a backend may add a bucket's elements in an order that depends on their place).
TEST(Trainer, BucketsEqualPlainAllReduce) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    for (const MeshDims dims : meshes(comm->size())) {
      if (dims.dp > 2) continue;
      const Mesh<> mesh(comm, dims);
      const auto config = tiny_config(false, dims.tp == 3);
      const TrainRun want = train_plain<float>(mesh, config, 5, 0);
      for (const bool overlap : {true, false})
        for (const std::int64_t bucket : {std::int64_t{1}, std::int64_t{3000}, std::int64_t{0}}) {
          const TrainRun got = train<float>(mesh, config, 5, {.bucket_size = bucket, .overlap = overlap, .clip = 0});
          EXPECT_EQ(got.losses, want.losses) << "bucket " << bucket << " overlap " << overlap;
          EXPECT_EQ(got.params, want.params) << "bucket " << bucket << " overlap " << overlap;
        }
    }
  });
}

/// A checkpoint saved at TP 2 x DP 2 with ZeRO-1 (at 4 ranks; elsewhere at the world's last mesh)
/// resumes on every mesh of the world, ZeRO-1 or not, with the uninterrupted run's next losses
/// (double: within 1e-12); a float trainer refuses its double master weights by name.
TEST(Trainer, ResumesAtAnyMesh) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    std::int64_t id = ::getpid();  // one directory for all ranks (processes under mpirun)
    comm->broadcast(std::span<std::int64_t>(&id, 1), 0);
    const auto dir = std::filesystem::temp_directory_path() /
                     fmt::format("tp_trainer_resume_{}_{}_{}", test::harness_backend(), n, id);
    const MeshDims saved = n == 4 ? MeshDims{.tp = 2, .dp = 2} : meshes(n).back();
    const auto config = tiny_config(true, n == 3);
    const Mesh<> at(comm, saved);
    const TrainerOptions zero1{.zero = saved.dp > 1 ? 1 : 0, .bucket_size = 1500};
    const TrainRun full = train<double>(at, config, 6, zero1);
    if (comm->rank() == 0) std::filesystem::remove_all(dir);
    comm->barrier();
    train<double>(at, config, 3, zero1, {}, dir);
    for (const MeshDims dims : meshes(n))
      for (const int zero : {0, 1}) {
        if (zero == 1 && dims.dp == 1) continue;
        const Mesh<> mesh(comm, dims);
        const TrainRun resumed = train<double>(mesh, config, 6, {.zero = zero, .bucket_size = 700}, dir);
        expect_close(resumed.losses, std::vector<double>(full.losses.begin() + 3, full.losses.end()), 1e-12,
                     fmt::format("saved at TP {} x DP {}, resumed at TP {} x DP {}, zero {}", saved.tp, saved.dp,
                                 dims.tp, dims.dp, zero));
      }
    // Master weights in double: a float trainer (fp32 master weights) refuses them by name.
    models::Transformer<float> f(at.tp_context(), config, 1);
    Trainer<float> tf(at, f, zero1);
    EXPECT_THAT([&] { load_training_checkpoint(tf, dir); },
                ::testing::ThrowsMessage<IoError>(HasSubstr("master weights are F64 (saved by a F64 run)")));
    comm->barrier();
    if (comm->rank() == 0) std::filesystem::remove_all(dir);
  });
}

/// Full recomputation: the same losses and parameters bit for bit (the same arithmetic again).
TEST(Trainer, RecomputationIsBitForBit) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const Mesh<> mesh(comm, {.tp = comm->size()});
    for (const bool llama : {true, false}) {
      const auto config = tiny_config(llama, comm->size() == 3);
      const TrainRun want = train<float>(mesh, config, 3, {});
      for (const auto r : {models::Recompute::selective, models::Recompute::full}) {
        const TrainRun got = train<float>(mesh, config, 3, {.micro_batches = 2, .recompute = r});
        const TrainRun base = train<float>(mesh, config, 3, {.micro_batches = 2});
        EXPECT_EQ(got.losses, base.losses);
        EXPECT_EQ(got.params, base.params);
      }
      (void)want;
    }
  });
}

/// ZeRO-1's optimizer state per rank falls as 1/dp (to a bucket's padding).
TEST(Trainer, ZeroOneShardsTheOptimizerState) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    const Mesh<> mesh(comm, {.tp = 1});
    models::Transformer<float> a(mesh.tp_context(), tiny_config(true), 1), b(mesh.tp_context(), tiny_config(true), 1);
    Trainer<float> plain(mesh, a, {.zero = 0}), zero(mesh, b, {.zero = 1});
    const auto full = plain.optimizer().state_bytes(), shard = zero.optimizer().state_bytes();
    std::int64_t elements = 0;
    for (const auto& p : a.parameters()) elements += p.value.size();
    EXPECT_EQ(full, 3 * elements * 4);
    EXPECT_LE(shard, full / n + 3 * 4 * n);
    EXPECT_GE(shard, full / n - 3 * 4 * n);
  });
}

TEST(Trainer, BadInputIsRefusedByName) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    if (n == 1) {
      EXPECT_THAT([&] { Mesh<>(comm, {.tp = 0}); }, ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("tp = 0")));
      return;
    }
    // A world that is not tp x dp: named with both, on every rank, before any split.
    EXPECT_THAT([&] { Mesh<>(comm, {.tp = n, .dp = 2}); },
                ::testing::ThrowsMessage<InvalidArgument>(HasSubstr(fmt::format("world has {}", n))));
    if (n == 3) EXPECT_THAT([&] { Mesh<>(comm, {.tp = 2}); }, ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("tp 2")));
    const Mesh<> mesh(comm, {.tp = 1});
    // DP ranks that build different models: the bucket check names the ranks.
    auto config = tiny_config(true);
    if (comm->rank() == 1) config.ffn = 64;
    models::Transformer<float> model(mesh.tp_context(), config, 1);
    EXPECT_THAT([&] { Trainer<float>(mesh, model, {}); }, ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("DP rank")));
    models::Transformer<float> good(mesh.tp_context(), tiny_config(true), 1);
    // Gradients the backward never reported are refused, not reduced as zeros.
    GradBuffer<float, float> unreported(mesh, good.parameters());
    unreported.accumulate(1, good.parameters().size());
    EXPECT_THAT([&] { unreported.finish(); },
                ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("waits for 1 of its")));
    // Non-finite gradients: a named error, or a skipped step when configured.
    for (const bool skip : {false, true}) {
      Trainer<float> trainer(mesh, good, {.skip_non_finite = skip});
      auto p = good.parameters().back();
      p.value(0, 0) = std::numeric_limits<float>::infinity();
      std::vector<std::int64_t> ids, targets;
      global_batch(64, 0, ids, targets);
      const Range rows = Trainer<float>::dp_rows(mesh, kRows);
      const ConstView<std::int64_t> i(ids.data() + rows.begin * kSeq, rows.size(), kSeq),
          t(targets.data() + rows.begin * kSeq, rows.size(), kSeq);
      if (!skip) {
        EXPECT_THAT([&] { trainer.step(i, t, 1e-3); }, ::testing::ThrowsMessage<Error>(HasSubstr("inf or nan")));
      } else {
        EXPECT_TRUE(trainer.step(i, t, 1e-3).skipped);
        EXPECT_EQ(trainer.steps_done(), 0);
      }
      p.value(0, 0) = 0;
    }
  });
}

}  // namespace
}  // namespace tp
