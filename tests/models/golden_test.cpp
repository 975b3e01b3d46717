/// tp::models::Transformer against transformers (tests/golden/, written by generate.py): the
/// Hugging Face checkpoints of GPT-2, Llama (grouped-query attention, tied embeddings), Qwen2 (QKV
/// bias, one kv head) and BERT (two token types) load at every world size their heads split over
/// and give transformers' logits (BERT: hidden states), loss and every weight gradient (float
/// within 1e-5 of the largest golden value, double within 1e-11 of the float64 goldens), and its
/// greedy generation token for token over 32 steps through the KV cache. A model saved back in
/// Hugging Face's layout holds the same tensors and reloads to the same weights.
/// next_token_logits gives the rows of the logits at each sequence's last token.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <limits>
#include <string>
#include <vector>

#include "common/harness.hpp"
#include "tp/io/safetensors.hpp"
#include "tp/layers/vocab_parallel_cross_entropy.hpp"
#include "tp/models/hugging_face.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

namespace fs = std::filesystem;
using models::Transformer;
using test::on_ranks;

const fs::path golden_root = TP_GOLDEN_DIR;
const char* const golden_models[] = {"gpt2", "llama", "qwen2", "bert"};

/// A full tensor of a file as doubles, [rows, cols] as SafetensorsTensor sees it.
struct Full {
  std::int64_t rows = 0, cols = 0;
  std::vector<double> data;
  double operator()(std::int64_t r, std::int64_t c) const { return data[static_cast<std::size_t>(r * cols + c)]; }
  double max_abs() const {
    double m = 0;
    for (const double v : data) m = std::max(m, std::abs(v));
    return m;
  }
};

template <class U = double>
Full read_full(const SafetensorsFile& file, const std::string& name) {
  const auto& t = file.tensor(name);
  std::vector<U> host(static_cast<std::size_t>(t.rows() * t.cols()));
  file.read_block(name, 0, 0, MatrixView<U>(host.data(), t.rows(), t.cols()));
  return {t.rows(), t.cols(), std::vector<double>(host.begin(), host.end())};
}

std::vector<std::int64_t> read_ids(const SafetensorsFile& file, const std::string& name) {
  const auto& t = file.tensor(name);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(t.rows() * t.cols()));
  file.read_block(name, 0, 0, MatrixView<std::int64_t>(ids.data(), t.rows(), t.cols()));
  return ids;
}

/// Float within 1e-5 of the largest golden value; double within 1e-11 (goldens in float64).
template <class T>
constexpr double golden_tolerance = std::is_same_v<T, double> ? 1e-11 : 1e-5;

/// max |got - want| over the block of `want` at column `c0`, relative to want's largest value.
double relative_error(const Full& want, ConstView<double> got, std::int64_t c0 = 0) {
  double err = 0;
  for (std::int64_t r = 0; r < got.rows; ++r)
    for (std::int64_t c = 0; c < got.cols; ++c) err = std::max(err, std::abs(got(r, c) - want(r, c0 + c)));
  return err / want.max_abs();
}

bool heads_split(const models::TransformerConfig& c, int world) {
  return c.heads % world == 0 && (c.kv_heads % world == 0 || world % c.kv_heads == 0);
}

template <class T>
std::vector<double> to_host(const Context<Cpu>& ctx, ConstView<T> x) {
  std::vector<T> h(static_cast<std::size_t>(x.size()));
  ctx.device->to_host(x, MatrixView<T>(h.data(), x.rows, x.cols));
  return {h.begin(), h.end()};
}

template <class T>
Tensor<std::int64_t, Cpu> device_ids(const Context<Cpu>& ctx, const std::vector<std::int64_t>& ids) {
  Tensor<std::int64_t, Cpu> t(ctx.device, 1, static_cast<std::int64_t>(ids.size()));
  ctx.device->from_host(ConstView<std::int64_t>(ids.data(), 1, t.cols()), t.view());
  return t;
}

/// The id of the largest logit of the last row, over every rank's vocabulary columns (the lowest
/// id among equal values), the same on every rank.
template <class T>
std::int64_t greedy_token(const Context<Cpu>& ctx, const Tensor<T, Cpu>& logits, Range vocab_range) {
  const auto row = to_host<T>(ctx, ConstView<T>(logits.view().rows_range(logits.rows() - 1, 1)));
  double best[2] = {-std::numeric_limits<double>::infinity(), 0};
  for (std::size_t i = 0; i < row.size(); ++i)
    if (row[i] > best[0]) best[0] = row[i], best[1] = static_cast<double>(vocab_range.begin + static_cast<std::int64_t>(i));
  std::vector<double> all(static_cast<std::size_t>(2 * ctx.world()));
  ctx.comm->all_gather(std::span<const double>(best, 2), std::span<double>(all));
  std::size_t pick = 0;
  for (std::size_t r = 1; r < all.size() / 2; ++r)
    if (all[2 * r] > all[2 * pick] || (all[2 * r] == all[2 * pick] && all[2 * r + 1] < all[2 * pick + 1])) pick = r;
  return static_cast<std::int64_t>(all[2 * pick + 1]);
}

/// A directory shared by the ranks of one world of one harness for this test.
fs::path world_dir(int world, const std::string& what) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string suite = info->test_suite_name();  // "Golden/0" for a typed test
  std::replace(suite.begin(), suite.end(), '/', '_');
  const fs::path dir = fs::temp_directory_path() /
                       fmt::format("tp_{}_{}_{}_w{}_{}", test::harness_backend(), suite, info->name(), world, what);
  fs::create_directories(dir);
  return dir;
}

std::string read_json_key(const fs::path& path, const char* key) {
  std::ifstream in(path);
  return nlohmann::json::parse(in).at(key).get<std::string>();
}

template <class T>
class Golden : public ::testing::Test {};
using GoldenTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Golden, GoldenTypes);

/// Logits (or hidden states), loss and every weight gradient against transformers'.
TYPED_TEST(Golden, ForwardLossAndEveryGradientMatchTransformers) {
  using T = TypeParam;
  const double tol = golden_tolerance<T>;
  for (const char* name : golden_models) {
    const fs::path dir = golden_root / name;
    const auto config = models::read_hugging_face_config(dir / "config.json");
    const SafetensorsFile golden(dir / "golden.safetensors");
    const auto ids = read_ids(golden, "input_ids");
    const std::int64_t batch = golden.tensor("input_ids").shape[0], seq = golden.tensor("input_ids").shape[1];
    const std::int64_t tokens = batch * seq;
    const std::string out_name = config.decoder() ? "logits" : "hidden";
    const Full want = read_full(golden, std::is_same_v<T, double> ? out_name : out_name + ".f32");
    const double want_loss = read_full(golden, std::is_same_v<T, double> ? "loss" : "loss.f32").data[0];
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      const int world = comm->size();
      SCOPED_TRACE(fmt::format("{} at world {} rank {}", name, world, comm->rank()));
      if (!heads_split(config, world)) return;  // HeadsThatCannotBeSplit
      const Context<Cpu> ctx(comm);
      auto model = models::open_hugging_face<T>(ctx, dir);
      const auto d_ids = device_ids<T>(ctx, ids);
      Tensor<std::int64_t, Cpu> types;
      if (!config.decoder()) types = device_ids<T>(ctx, read_ids(golden, "token_type_ids"));
      const auto batch_shape = AttentionBatch::uniform(batch, seq);
      const auto& out = config.decoder() ? model->forward(d_ids.view(), batch_shape)
                                         : model->forward(d_ids.view(), batch_shape, types.view());
      const auto got = to_host<T>(ctx, out.view());
      const Range cols = config.decoder() ? model->vocab_range() : Range{0, config.hidden};
      ASSERT_EQ(out.rows(), tokens);
      ASSERT_EQ(out.cols(), cols.size());
      EXPECT_LE(relative_error(want, ConstView<double>(got.data(), tokens, cols.size()), cols.begin), tol) << out_name;

      // The loss and its gradient with respect to the output.
      double loss = 0;
      Tensor<T, Cpu> grad_out;
      VocabParallelCrossEntropy<T> ce(ctx, config.vocab);
      if (config.decoder()) {
        const auto labels = device_ids<T>(ctx, read_ids(golden, "labels"));
        const auto per_token = to_host<T>(ctx, ce.forward(out.view(), labels.view()).view());
        const auto host_labels = read_ids(golden, "labels");
        const auto counted = std::count_if(host_labels.begin(), host_labels.end(), [](std::int64_t l) { return l != -100; });
        for (const double l : per_token) loss += l;
        loss /= static_cast<double>(counted);
        std::vector<T> g(static_cast<std::size_t>(tokens), T(1) / static_cast<T>(counted));
        Tensor<T, Cpu> grad_loss(ctx.device, tokens, 1);
        ctx.device->from_host(ConstView<T>(g.data(), tokens, 1), grad_loss.view());
        const auto& dlogits = ce.backward(grad_loss.view());
        model->backward(dlogits.view());
      } else {
        const Full g = read_full(golden, "grad_output");
        for (std::size_t i = 0; i < g.data.size(); ++i) loss += g.data[i] * got[i];
        std::vector<T> gt(g.data.begin(), g.data.end());
        grad_out = Tensor<T, Cpu>(ctx.device, tokens, config.hidden);
        ctx.device->from_host(ConstView<T>(gt.data(), tokens, config.hidden), grad_out.view());
        model->backward(grad_out.view());
      }
      EXPECT_LE(std::abs(loss - want_loss), tol * std::abs(want_loss)) << "loss " << loss << " want " << want_loss;

      // Every gradient, written in Hugging Face's layout and compared with the golden one.
      const fs::path grads = world_dir(world, name) / "grads.safetensors";
      models::save_hugging_face_tensors(*comm, *model, models::hugging_face_gradients(*model), grads);
      const SafetensorsFile ours(grads);
      const SafetensorsFile original(dir / "model.safetensors");
      // Each gradient within tol of its own largest value; but a gradient that is zero in exact
      // arithmetic (BERT's key bias: softmax ignores a constant added to a row of scores) holds
      // only rounding noise, and is held to tol of the largest gradient of the model instead.
      double scale = 0;
      for (const auto& [tensor, info] : original.header().tensors)
        scale = std::max(scale, read_full(golden, "grad." + tensor).max_abs());
      std::size_t compared = 0;
      for (const auto& [tensor, info] : original.header().tensors) {
        SCOPED_TRACE(tensor);
        ASSERT_TRUE(ours.contains(tensor));
        EXPECT_EQ(ours.tensor(tensor).shape, info.shape);
        const Full want_grad = read_full(golden, "grad." + tensor);
        const Full got_grad = read_full(ours, tensor);
        const double own = want_grad.max_abs();
        const double err = relative_error(want_grad, ConstView<double>(got_grad.data.data(), got_grad.rows, got_grad.cols));
        EXPECT_LE(own > 1e-12 * scale ? err : err * own / scale, tol) << "largest golden value " << own;
        ++compared;
      }
      EXPECT_EQ(compared, original.header().tensors.size());

      // AdamW's moments under Hugging Face's names: after one step from zero, exp_avg is
      // (1 - beta1) g and exp_avg_sq (1 - beta2) g^2 of the golden gradient g.
      AdamW<T> adamw(ctx, model->parameters(), {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999});
      adamw.step();
      const fs::path moments = world_dir(world, name) / "moments.safetensors";
      models::save_hugging_face_tensors(*comm, *model, models::hugging_face_moments(*model, adamw), moments);
      const SafetensorsFile saved_moments(moments);
      EXPECT_EQ(saved_moments.header().tensors.size(), 2 * original.header().tensors.size());
      for (const auto& [tensor, info] : original.header().tensors) {
        SCOPED_TRACE(tensor);
        Full m = read_full(golden, "grad." + tensor), v = m;
        for (auto& x : m.data) x *= 1 - 0.9;
        for (auto& x : v.data) x = (1 - 0.999) * x * x;
        const Full got_m = read_full(saved_moments, "exp_avg." + tensor), got_v = read_full(saved_moments, "exp_avg_sq." + tensor);
        EXPECT_EQ(saved_moments.tensor("exp_avg." + tensor).shape, info.shape);
        const double own = m.max_abs(), s = scale * (1 - 0.9);
        const double err_m = relative_error(m, ConstView<double>(got_m.data.data(), got_m.rows, got_m.cols));
        EXPECT_LE(own > 1e-12 * s ? err_m : err_m * own / s, tol) << "exp_avg";
        if (own > 1e-6 * s)  // squares of rounding noise say nothing
          EXPECT_LE(relative_error(v, ConstView<double>(got_v.data.data(), got_v.rows, got_v.cols)), 4 * tol) << "exp_avg_sq";
      }
      comm->barrier();  // the file is rewritten by the next model
    });
  }
}

/// 32 greedy tokens through the KV cache (prefill, then one token at a time), token for token.
TYPED_TEST(Golden, GreedyGenerationMatchesTransformersTokenForToken) {
  using T = TypeParam;
  for (const char* name : golden_models) {
    const fs::path dir = golden_root / name;
    const auto config = models::read_hugging_face_config(dir / "config.json");
    if (!config.decoder()) continue;
    const SafetensorsFile golden(dir / "golden.safetensors");
    const auto prompt = read_ids(golden, "prompt");
    const auto want = read_ids(golden, "generated");
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      const int world = comm->size();
      SCOPED_TRACE(fmt::format("{} at world {} rank {}", name, world, comm->rank()));
      if (!heads_split(config, world)) return;
      const Context<Cpu> ctx(comm);
      auto model = models::open_hugging_face<T>(ctx, dir);
      const std::int64_t n = static_cast<std::int64_t>(prompt.size()), steps = static_cast<std::int64_t>(want.size());
      auto cache = model->make_cache(1, n + steps);
      std::vector<std::int64_t> got;
      auto ids = device_ids<T>(ctx, prompt);
      got.push_back(greedy_token<T>(ctx, model->forward(ids.view(), AttentionBatch{.lengths = {n}}, cache), model->vocab_range()));
      while (static_cast<std::int64_t>(got.size()) < steps) {
        ids = device_ids<T>(ctx, {got.back()});
        got.push_back(greedy_token<T>(ctx, model->forward(ids.view(), AttentionBatch{.lengths = {1}}, cache), model->vocab_range()));
      }
      EXPECT_EQ(got, want);
      EXPECT_EQ(cache.length(0), n + steps - 1);
    });
  }
}

/// Sequences of different lengths packed without padding (decoders; transformers ran each alone),
/// and a key padding mask (BERT): positions restart in each sequence, padding keys are ignored.
TYPED_TEST(Golden, VariableLengthsAndPaddingMatchTransformers) {
  using T = TypeParam;
  for (const char* name : golden_models) {
    const fs::path dir = golden_root / name;
    const auto config = models::read_hugging_face_config(dir / "config.json");
    const SafetensorsFile golden(dir / "golden.safetensors");
    const Full want = read_full(golden, config.decoder() ? "packed_logits" : "masked_hidden");
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(fmt::format("{} at world {} rank {}", name, comm->size(), comm->rank()));
      if (!heads_split(config, comm->size())) return;
      const Context<Cpu> ctx(comm);
      auto model = models::open_hugging_face<T>(ctx, dir);
      Range cols{0, config.hidden};
      std::vector<double> got;
      if (config.decoder()) {
        const auto ids = device_ids<T>(ctx, read_ids(golden, "packed_ids"));
        got = to_host<T>(ctx, model->forward(ids.view(), AttentionBatch{.lengths = read_ids(golden, "packed_lengths")}).view());
        cols = model->vocab_range();
      } else {
        const auto ids = device_ids<T>(ctx, read_ids(golden, "input_ids"));
        const auto types = device_ids<T>(ctx, read_ids(golden, "token_type_ids"));
        const auto mask = read_ids(golden, "attention_mask");
        AttentionBatch batch = AttentionBatch::uniform(golden.tensor("input_ids").shape[0], golden.tensor("input_ids").shape[1]);
        batch.key_mask.assign(mask.begin(), mask.end());
        got = to_host<T>(ctx, model->forward(ids.view(), batch, types.view()).view());
      }
      ASSERT_EQ(static_cast<std::int64_t>(got.size()), want.rows * cols.size());
      EXPECT_LE(relative_error(want, ConstView<double>(got.data(), want.rows, cols.size()), cols.begin), golden_tolerance<T>);
    });
  }
}

/// next_token_logits: the packed sequences through a cache give transformers' logits at each
/// sequence's last token (one row per sequence); one more token per sequence gives the rows
/// forward(ids, batch, cache) gives for it on a second cache. A sequence without a new token is
/// refused.
TYPED_TEST(Golden, NextTokenLogitsAreEachSequencesLastRow) {
  using T = TypeParam;
  for (const char* name : golden_models) {
    const fs::path dir = golden_root / name;
    const auto config = models::read_hugging_face_config(dir / "config.json");
    if (!config.decoder()) continue;
    const SafetensorsFile golden(dir / "golden.safetensors");
    const Full want = read_full(golden, "packed_logits");
    const auto lengths = read_ids(golden, "packed_lengths");
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(fmt::format("{} at world {} rank {}", name, comm->size(), comm->rank()));
      if (!heads_split(config, comm->size())) return;
      const Context<Cpu> ctx(comm);
      auto model = models::open_hugging_face<T>(ctx, dir);
      const auto sequences = static_cast<std::int64_t>(lengths.size());
      const std::int64_t longest = *std::max_element(lengths.begin(), lengths.end());
      auto cache = model->make_cache(sequences, longest + 1), other = model->make_cache(sequences, longest + 1);
      const Range cols = model->vocab_range();
      const auto ids = device_ids<T>(ctx, read_ids(golden, "packed_ids"));
      const AttentionBatch batch{.lengths = lengths};
      const auto got = to_host<T>(ctx, model->next_token_logits(ids.view(), batch, cache).view());
      ASSERT_EQ(static_cast<std::int64_t>(got.size()), sequences * cols.size());
      Full last{sequences, want.cols, {}};
      std::int64_t end = 0;
      for (const std::int64_t n : lengths) {
        end += n;
        for (std::int64_t c = 0; c < want.cols; ++c) last.data.push_back(want(end - 1, c));
      }
      EXPECT_LE(relative_error(last, ConstView<double>(got.data(), sequences, cols.size()), cols.begin),
                golden_tolerance<T>);

      // One more token in every sequence: the same rows as forward's on a cache at the same point.
      (void)model->forward(ids.view(), batch, other);
      std::vector<std::int64_t> step_ids;
      for (std::int64_t b = 0; b < sequences; ++b) step_ids.push_back((7 * b + 3) % config.vocab);
      const auto step = device_ids<T>(ctx, step_ids);
      const AttentionBatch ones{.lengths = std::vector<std::int64_t>(static_cast<std::size_t>(sequences), 1)};
      const auto full = to_host<T>(ctx, model->forward(step.view(), ones, other).view());
      const Full want_step{sequences, cols.size(), full};
      const auto got_step = to_host<T>(ctx, model->next_token_logits(step.view(), ones, cache).view());
      EXPECT_LE(relative_error(want_step, ConstView<double>(got_step.data(), sequences, cols.size())),
                golden_tolerance<T>);

      AttentionBatch empty = ones;
      empty.lengths.back() = 0;
      const auto fewer = device_ids<T>(ctx, std::vector<std::int64_t>(step_ids.begin(), step_ids.end() - 1));
      EXPECT_THROW((void)model->next_token_logits(fewer.view(), empty, cache), InvalidArgument);
    });
  }
}

/// save_hugging_face writes the tensors transformers saved (names, shapes, values) and a config
/// that reads back the same; the saved directory loads into the same weights.
TYPED_TEST(Golden, SavedBackInHuggingFaceLayoutReloadsTheSame) {
  using T = TypeParam;
  for (const char* name : golden_models) {
    const fs::path dir = golden_root / name;
    const auto config = models::read_hugging_face_config(dir / "config.json");
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      const int world = comm->size();
      SCOPED_TRACE(fmt::format("{} at world {} rank {}", name, world, comm->rank()));
      if (!heads_split(config, world)) return;
      const Context<Cpu> ctx(comm);
      auto model = models::open_hugging_face<T>(ctx, dir);
      const fs::path out = world_dir(world, name) / "saved";
      models::save_hugging_face(*comm, *model, out);
      const auto again = models::read_hugging_face_config(out / "config.json");
      EXPECT_EQ(hugging_face_config_json(again), hugging_face_config_json(config));
      EXPECT_EQ(read_json_key(out / "config.json", "torch_dtype"), (std::is_same_v<T, double> ? "float64" : "float32"));
      const SafetensorsFile original(dir / "model.safetensors"), saved(out / "model.safetensors");
      EXPECT_EQ(saved.header().tensors.size(), original.header().tensors.size());
      EXPECT_EQ(saved.metadata().at("format"), "pt");
      for (const auto& [tensor, info] : original.header().tensors) {
        SCOPED_TRACE(tensor);
        ASSERT_TRUE(saved.contains(tensor));
        EXPECT_EQ(saved.tensor(tensor).shape, info.shape);
        EXPECT_EQ(read_full<T>(saved, tensor).data, read_full<T>(original, tensor).data);  // float32 values, exact
      }
      auto reloaded = models::open_hugging_face<T>(ctx, out);
      const auto a = model->parameters(), b = reloaded->parameters();
      ASSERT_EQ(a.size(), b.size());
      for (std::size_t i = 0; i < a.size(); ++i)
        EXPECT_EQ(to_host<T>(ctx, ConstView<T>(a[i].value)), to_host<T>(ctx, ConstView<T>(b[i].value))) << a[i].name;
      comm->barrier();
    });
  }
}

/// A BertForPreTraining checkpoint (pooler, masked-LM and next-sentence heads besides the encoder,
/// all under "bert."/"cls." names) saved by tp comes back whole: every tensor with its name, shape
/// and value, and config.json's class, at every TP degree.
TYPED_TEST(Golden, BertSavedWholeWithPoolerAndHeads) {
  using T = TypeParam;
  const fs::path dir = golden_root / "bert-heads";
  const auto config = models::read_hugging_face_config(dir / "config.json");
  EXPECT_EQ(config.bert_class, "BertForPreTraining");
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int world = comm->size();
    SCOPED_TRACE(fmt::format("bert-heads at world {} rank {}", world, comm->rank()));
    if (!heads_split(config, world)) return;
    const Context<Cpu> ctx(comm);
    auto model = models::open_hugging_face<T>(ctx, dir);
    EXPECT_EQ(model->kept_tensors().size(), 9u);  // pooler 2, predictions 5, seq_relationship 2
    const fs::path out = world_dir(world, "bert-heads") / "saved";
    models::save_hugging_face(*comm, *model, out);
    EXPECT_EQ(read_json_key(out / "config.json", "model_type"), "bert");
    std::ifstream in(out / "config.json");
    EXPECT_EQ(nlohmann::json::parse(in).at("architectures"), nlohmann::json::array({"BertForPreTraining"}));
    const SafetensorsFile original(dir / "model.safetensors"), saved(out / "model.safetensors");
    EXPECT_EQ(saved.header().tensors.size(), original.header().tensors.size());
    for (const auto& [tensor, info] : original.header().tensors) {
      SCOPED_TRACE(tensor);
      ASSERT_TRUE(saved.contains(tensor));
      EXPECT_EQ(saved.tensor(tensor).shape, info.shape);
      EXPECT_EQ(read_full<T>(saved, tensor).data, read_full<T>(original, tensor).data);  // float32 values, exact
    }
    // Saved and reloaded: the same again (the heads ride along a second time).
    auto reloaded = models::open_hugging_face<T>(ctx, out);
    ASSERT_EQ(reloaded->kept_tensors().size(), model->kept_tensors().size());
    for (std::size_t i = 0; i < model->kept_tensors().size(); ++i) {
      EXPECT_EQ(reloaded->kept_tensors()[i].name, model->kept_tensors()[i].name);
      EXPECT_EQ(to_host<T>(ctx, ConstView<T>(reloaded->kept_tensors()[i].value.view())),
                to_host<T>(ctx, ConstView<T>(model->kept_tensors()[i].value.view())));
    }
    comm->barrier();
  });
}

}  // namespace
}  // namespace tp
