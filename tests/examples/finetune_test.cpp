/// examples/finetune (finetune.hpp) on a tiny real-vocabulary checkpoint (tests/golden/chat/llama3-chat:
/// Llama, 4 heads over 2 kv heads, Llama 3's tokenizer): the JSONL data counts only completion
/// tokens; a few steps at TP 2 lower the loss; the directory save_hugging_face writes reloads at TP
/// 1 and 4 to the logits of the fine-tuned model; a run resumed from a step checkpoint continues
/// with the same losses as an uninterrupted one; TP 2 x DP 2 takes the losses of TP 1 x DP 1 on the
/// same global batch, and a checkpoint of TP 2 x DP 1 continues at TP 1 x DP 2 (ZeRO-1,
/// micro-batches) with the uninterrupted run's losses, to float rounding.

#include <gtest/gtest.h>

#include <filesystem>
#include <cstdio>
#include <fstream>

#include "finetune/finetune.hpp"
#include "tp/comm/local_communicator.hpp"
#include "tp/train/mesh.hpp"

namespace tp {
namespace {

namespace fs = std::filesystem;

const fs::path model_dir = fs::path(TP_GOLDEN_DIR) / "chat" / "llama3-chat";
const fs::path data_file = fs::path(TP_FINETUNE_DATA);

fs::path scratch(const std::string& what) {
  const fs::path dir = fs::temp_directory_path() / ("tp_finetune_test_" + what);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

finetune::Options options() {
  return {.train_iters = 8, .global_batch_size = 4, .lr = 1e-2, .min_lr = 1e-3, .lr_warmup_iters = 1,
          .weight_decay = 0.01, .clip_grad = 1.0, .seed = 7};
}

/// float32 rounding of the sharded GEMMs and reductions, the project's float32 tolerance.
constexpr double kRelTol = 1e-6;

void expect_losses_near(const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], kRelTol * std::abs(want[i])) << what << ", loss " << i;
    worst = std::max(worst, std::abs(got[i] - want[i]) / std::abs(want[i]));
  }
  std::printf("%s: largest relative loss difference %.2e\n", what.c_str(), worst);
}

/// The losses of `steps` steps on a mesh of tp x dp local ranks (world rank 0's).
std::vector<double> losses_on(int tp, int dp, finetune::Options o, const std::vector<finetune::Example>& examples,
                              std::int64_t steps) {
  std::vector<double> out;
  run_local(tp * dp, [&](std::shared_ptr<Communicator> comm) {
    const Mesh<> mesh(comm, {.tp = tp, .dp = dp});
    finetune::Finetune<float> run(mesh, model_dir, o);
    std::vector<double> mine;
    while (run.steps_done() < steps) mine.push_back(run.step(examples).loss);
    if (comm->rank() == 0) out = mine;
  });
  return out;
}

/// This rank's logits on fixed ids, gathered to full rows [tokens, vocab] on every rank.
std::vector<float> full_logits(const Context<Cpu>& ctx, models::Transformer<float, Cpu>& model) {
  const std::vector<std::int64_t> ids = {5, 17, 300, 42, 1000, 7, 99, 1202};
  const auto n = static_cast<std::int64_t>(ids.size());
  Tensor<std::int64_t, Cpu> d(ctx.device, 1, n);
  ctx.device->from_host(ConstView<std::int64_t>(ids.data(), 1, n), d.view());
  const auto& out = model.forward(d.view(), AttentionBatch{.lengths = {n}});
  const Range r = model.vocab_range();
  const std::int64_t vocab = model.config().vocab;
  std::vector<float> mine(static_cast<std::size_t>(n * vocab), 0.0f);
  std::vector<float> shard(static_cast<std::size_t>(n * r.size()));
  ctx.device->to_host(ConstView<float>(out.view()), MatrixView<float>(shard.data(), n, r.size()));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < r.size(); ++j) mine[static_cast<std::size_t>(i * vocab + r.begin + j)] = shard[static_cast<std::size_t>(i * r.size() + j)];
  ctx.comm->all_reduce(std::span<float>(mine), ReduceOp::sum);  // each column is nonzero on one rank only
  return mine;
}

double max_relative(const std::vector<float>& a, const std::vector<float>& b) {
  double top = 0, diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    top = std::max(top, std::abs(static_cast<double>(b[i])));
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return diff / top;
}

TEST(Finetune, JsonlCountsOnlyTheCompletion) {
  const auto tok = text::Tokenizer::from_directory(model_dir);
  const auto examples = finetune::read_examples(data_file, tok, 64);
  ASSERT_EQ(examples.size(), 8u);
  const auto& e = examples[0];
  const auto prompt = tok.encode("Who made the heaven and the earth?\n", true);
  auto completion = tok.encode("God created the heaven and the earth.", false);
  completion.push_back(tok.special_tokens().eos->id);
  std::vector<std::int64_t> want = prompt;
  want.insert(want.end(), completion.begin(), completion.end());
  EXPECT_EQ(e.ids, want);
  for (std::size_t i = 0; i < e.ids.size(); ++i) EXPECT_EQ(e.counted[i], i >= prompt.size()) << i;
  // Cut at seq_length + 1 tokens.
  for (const auto& x : finetune::read_examples(data_file, tok, 12)) EXPECT_LE(x.ids.size(), 13u);
  // A line that is not a record is refused with its file and line.
  const fs::path bad = scratch("bad") / "bad.jsonl";
  { std::ofstream(bad) << "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": 3}\n"; }
  try {
    (void)finetune::read_examples(bad, tok, 64);
    ADD_FAILURE() << "accepted";
  } catch (const IoError& err) {
    EXPECT_NE(std::string(err.what()).find("bad.jsonl:2"), std::string::npos) << err.what();
  }
}

TEST(Finetune, LossFallsAtTp2AndTheSavedDirectoryReloadsAtTp1And4) {
  const auto tok = text::Tokenizer::from_directory(model_dir);
  const auto examples = finetune::read_examples(data_file, tok, 64);
  const fs::path out = scratch("tp2") / "hf";
  std::vector<double> losses;
  std::vector<float> logits;
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    const Mesh<> mesh(comm, {.tp = 2});
    const Context<Cpu>& ctx = mesh.tp_context();
    finetune::Finetune<float> run(mesh, model_dir, options());
    std::vector<double> mine;
    while (run.steps_done() < run.options().train_iters) mine.push_back(run.step(examples).loss);
    models::save_hugging_face(*comm, run.model(), out);
    auto l = full_logits(ctx, run.model());
    if (comm->rank() == 0) {
      losses = mine;
      logits = l;
    }
  });
  ASSERT_EQ(losses.size(), 8u);
  // Every sequence is seen twice in 8 steps of 4: the second pass is well below the first.
  const double first = (losses[0] + losses[1]) / 2, last = (losses[6] + losses[7]) / 2;
  EXPECT_LT(last, 0.8 * first) << fmt::format("losses {}", fmt::join(losses, ", "));
  for (const int world : {1, 4}) {
    std::vector<float> again;
    run_local(world, [&](std::shared_ptr<Communicator> comm) {
      const Context<Cpu> ctx(comm);
      auto model = models::open_hugging_face<float>(ctx, out);
      auto l = full_logits(ctx, *model);
      if (comm->rank() == 0) again = l;
    });
    EXPECT_LE(max_relative(again, logits), 1e-5) << "world " << world;
  }
}

TEST(Finetune, ResumedRunContinuesWithTheSameLosses) {
  const auto tok = text::Tokenizer::from_directory(model_dir);
  const auto examples = finetune::read_examples(data_file, tok, 64);
  const fs::path root = scratch("resume");
  std::vector<double> straight, resumed;
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    const Mesh<> mesh(comm, {.tp = 2});
    std::vector<double> a, b;
    {
      finetune::Finetune<float> run(mesh, model_dir, options());
      while (run.steps_done() < 8) {
        a.push_back(run.step(examples).loss);
        if (run.steps_done() == 4) run.save(root, 0);
      }
    }
    finetune::Finetune<float> again(mesh, model_dir, options());
    again.load(root);
    EXPECT_EQ(again.steps_done(), 4);
    while (again.steps_done() < 8) b.push_back(again.step(examples).loss);
    if (comm->rank() == 0) {
      straight = a;
      resumed = b;
    }
  });
  ASSERT_EQ(straight.size(), 8u);
  ASSERT_EQ(resumed.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(resumed[i], straight[4 + i]) << "step " << 5 + i;
  // Another seed's checkpoint is refused: its batches would differ.
  run_local(1, [&](std::shared_ptr<Communicator> comm) {
    const Mesh<> mesh(comm, {.tp = 1});
    auto o = options();
    o.seed = 8;
    finetune::Finetune<float> other(mesh, model_dir, o);
    EXPECT_THROW(other.load(root), InvalidArgument);
    o = options();
    o.global_batch_size = 2;
    finetune::Finetune<float> smaller(mesh, model_dir, o);
    EXPECT_THROW(smaller.load(root), InvalidArgument);
  });
}

TEST(Finetune, Tp2Dp2TakesTheStepsOfTp1Dp1) {
  const auto tok = text::Tokenizer::from_directory(model_dir);
  const auto examples = finetune::read_examples(data_file, tok, 64);
  auto o = options();
  o.train_iters = 4;
  const auto want = losses_on(1, 1, o, examples, 4);
  expect_losses_near(losses_on(2, 2, o, examples, 4), want, "TP 2 x DP 2");
  // Each DP rank trains on its own half of the global batch (the losses alone would not tell: every
  // DP rank training on the whole batch takes the same steps), the TP ranks of a group on the same.
  const auto global = finetune::global_batch(examples, o, 0);
  const auto rows = [](const Tensor<std::int64_t, Cpu>& t, std::int64_t begin, std::int64_t end) {
    std::vector<std::int64_t> out;
    for (std::int64_t r = begin; r < end; ++r)
      for (std::int64_t c = 0; c < t.view().cols; ++c) out.push_back(t.view()(r, c));
    return out;
  };
  std::vector<std::vector<std::int64_t>> ids(4), targets(4);
  std::vector<std::int64_t> trained(4);
  run_local(4, [&](std::shared_ptr<Communicator> comm) {
    const Mesh<> mesh(comm, {.tp = 2, .dp = 2});
    finetune::Finetune<float> run(mesh, model_dir, o);
    const auto b = run.local_batch(examples, 0);
    const auto rank = static_cast<std::size_t>(comm->rank());
    ids[rank] = rows(b.ids, 0, b.ids.view().rows);
    targets[rank] = rows(b.targets, 0, b.targets.view().rows);
    trained[rank] = run.step(examples).sequences;  // what the step handed the Trainer
  });
  EXPECT_EQ(trained, std::vector<std::int64_t>(4, 2));
  for (int rank = 0; rank < 4; ++rank) {
    const std::int64_t dp_rank = rank / 2;
    EXPECT_EQ(ids[static_cast<std::size_t>(rank)], rows(global.ids, 2 * dp_rank, 2 * dp_rank + 2)) << "rank " << rank;
    EXPECT_EQ(targets[static_cast<std::size_t>(rank)], rows(global.targets, 2 * dp_rank, 2 * dp_rank + 2)) << "rank " << rank;
  }
  EXPECT_NE(rows(global.ids, 0, 2), rows(global.ids, 2, 4));
}

TEST(Finetune, CheckpointOfTp2Dp1ContinuesAtTp1Dp2) {
  const auto tok = text::Tokenizer::from_directory(model_dir);
  const auto examples = finetune::read_examples(data_file, tok, 64);
  const fs::path root = scratch("mesh_resume");
  std::vector<double> straight, resumed;
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    const Mesh<> mesh(comm, {.tp = 2, .dp = 1});
    finetune::Finetune<float> run(mesh, model_dir, options());
    std::vector<double> mine;
    while (run.steps_done() < 8) {
      mine.push_back(run.step(examples).loss);
      if (run.steps_done() == 4) run.save(root, 0);
    }
    if (comm->rank() == 0) straight = mine;
  });
  auto o = options();
  o.zero = 1;
  o.micro_batches = 2;
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    const Mesh<> mesh(comm, {.tp = 1, .dp = 2});
    finetune::Finetune<float> run(mesh, model_dir, o);
    run.load(root);
    EXPECT_EQ(run.steps_done(), 4);
    std::vector<double> mine;
    while (run.steps_done() < 8) mine.push_back(run.step(examples).loss);
    if (comm->rank() == 0) resumed = mine;
  });
  ASSERT_EQ(straight.size(), 8u);
  expect_losses_near(resumed, std::vector<double>(straight.begin() + 4, straight.end()),
                     "resumed at TP 1 x DP 2 (ZeRO-1, 2 micro-batches) from TP 2 x DP 1");
}

}  // namespace
}  // namespace tp
