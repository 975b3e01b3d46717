/// tp::models::Transformer packed for inference (pack_for_inference): a Llama-style model (SwiGLU,
/// RoPE, no biases) and a GPT-2-style one (every bias, GELU) give the unsharded model's logits at
/// every world size, packed or not, through the plain forward and the KV cache's, at token counts
/// on both sides of the streaming kernels' limit (9: decode's path on the plain weights; 40: the
/// prefill's, on the packed ones), on every instruction set tp::Cpu's loops are compiled for. While
/// packed, parameters() and backward throw; unpacked, the model trains and repacks.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/devices.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "tp/comm/local_communicator.hpp"
#include "tp/models/transformer.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using models::Transformer;
using test::download;
using test::error_of;
using test::on_ranks;
using ::testing::AllOf;
using ::testing::HasSubstr;

/// 12 heads (and kv heads) split over 1 to 4 ranks; ffn 70 and vocabulary 50 split unevenly at 3 and 4.
models::TransformerConfig tiny(models::Architecture arch) {
  models::TransformerConfig c;
  const bool llama = arch == models::Architecture::llama;
  c.arch = arch;
  c.model_type = llama ? "llama" : "gpt2";
  c.vocab = 50;
  c.hidden = 48;
  c.layers = 2;
  c.heads = c.kv_heads = 12;
  c.head_dim = 4;
  c.ffn = 70;
  c.max_positions = 64;
  c.rope_theta = llama ? 10000.0 : 0.0;
  c.tie_embeddings = true;
  c.qkv_bias = c.dense_bias = c.mlp_bias = !llama;
  c.activation = llama ? Activation::swiglu : Activation::gelu_tanh;
  return c;
}

std::vector<std::int64_t> some_ids(std::int64_t n, std::int64_t vocab) {
  std::vector<std::int64_t> ids;
  for (std::int64_t i = 0; i < n; ++i) ids.push_back((11 * i + 5) % vocab);
  return ids;
}

Tensor<std::int64_t, Cpu> upload(const Context<Cpu>& ctx, const std::vector<std::int64_t>& ids) {
  return test::upload_ids(ctx.device, ids, 1, static_cast<std::int64_t>(ids.size()));
}

template <class T>
class PackedInference : public ::testing::Test {};
TYPED_TEST_SUITE(PackedInference, test::AllFloats);

TYPED_TEST(PackedInference, LogitsMatchTheUnshardedModelAtEveryWorldSize) {
  using T = TypeParam;
  for (const auto arch : {models::Architecture::llama, models::Architecture::gpt2})
    for (const std::int64_t tokens : {9, 40}) {
      const auto config = tiny(arch);
      SCOPED_TRACE(fmt::format("{}, {} tokens", config.model_type, tokens));
      const auto ids = some_ids(tokens, config.vocab);
      // The unsharded computation: one rank, unpacked.
      ref::Matrix want;
      run_local(1, [&](std::shared_ptr<Communicator> comm) {
        const Context<Cpu> ctx(comm);
        Transformer<T> model(ctx, config, 7);
        const auto ids_d = upload(ctx, ids);
        want = download(*ctx.device, model.forward(ids_d.view(), AttentionBatch{.lengths = {tokens}}));
      });
      on_ranks([&](std::shared_ptr<Communicator> comm) {
        const Context<Cpu> ctx(comm);
        Transformer<T> model(ctx, config, 7);
        const Range cols = model.vocab_range();
        const ref::Matrix mine = want.cols_range(cols.begin, cols.size());
        const auto ids_d = upload(ctx, ids);
        const AttentionBatch batch{.lengths = {tokens}};
        test::for_each_cpu_isa([&] {
          const ref::Matrix plain = download(*ctx.device, model.forward(ids_d.view(), batch));
          TP_EXPECT_CLOSE(T, plain, mine);
          model.pack_for_inference();
          EXPECT_TRUE(model.packed_for_inference());
          if constexpr (std::is_same_v<T, float>)
            EXPECT_GT(model.packed_bytes(), 0);
          else
            EXPECT_EQ(model.packed_bytes(), 0);
          const ref::Matrix packed = download(*ctx.device, model.forward(ids_d.view(), batch));
          TP_EXPECT_CLOSE(T, packed, plain);
          TP_EXPECT_CLOSE(T, packed, mine);
          // Through the KV cache (tp::generate's prefill), then one decoded token on the plain weights.
          auto cache = model.make_cache(1, tokens + 1);
          TP_EXPECT_CLOSE(T, download(*ctx.device, model.forward(ids_d.view(), batch, cache)), mine);
          const auto next = upload(ctx, {3});
          const ref::Matrix step = download(*ctx.device, model.forward(next.view(), {.lengths = {1}}, cache));
          model.unpack();
          auto plain_cache = model.make_cache(1, tokens + 1);
          (void)model.forward(ids_d.view(), batch, plain_cache);
          TP_EXPECT_CLOSE(T, step, download(*ctx.device, model.forward(next.view(), {.lengths = {1}}, plain_cache)));
        });
      });
    }
}

/// While packed, parameters() (what loaders, savers and optimizers take) and backward throw, and
/// so do a layer's own writers; unpacked, a training step runs and packing again reads the
/// changed weights.
TEST(PackedInferenceRule, WritesWhilePackedThrowUntilUnpacked) {
  const auto config = tiny(models::Architecture::llama);
  const std::int64_t tokens = 20;
  const auto ids = some_ids(tokens, config.vocab);
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const Context<Cpu> ctx(comm);
    Transformer<float> model(ctx, config, 3);
    const auto ids_d = upload(ctx, ids);
    const AttentionBatch batch{.lengths = {tokens}};
    model.pack_for_inference();
    const auto& logits = model.forward(ids_d.view(), batch);
    Tensor<float, Cpu> grad(ctx.device, logits.rows(), logits.cols());
    ctx.device->fill(grad.view(), 0.01f);
    const auto refused = [](std::string what) {
      return AllOf(HasSubstr("llama: " + what + " while the model is packed for inference"),
                   HasSubstr("call unpack() first"));
    };
    EXPECT_THAT(error_of([&] { model.parameters(); }), refused("parameters()"));
    EXPECT_THAT(error_of([&] { model.backward(grad.view()); }), refused("backward"));
    EXPECT_THAT(error_of([&] { model.layer(0).mlp.fc1().parameters(); }),
                HasSubstr("layers.0.mlp.fc1: parameters() while the layer is packed for inference"));
    EXPECT_THAT(error_of([&] { model.layer(1).attention.qkv_weight(); }),
                HasSubstr("layers.1.attention: qkv_weight() (writable) while the layer is packed for inference"));
    EXPECT_THAT(error_of([&] { model.layer(1).attention.dense().weight(); }),
                HasSubstr("layers.1.attention.dense: weight() (writable) while the layer is packed"));

    // Unpacked: a step of plain gradient descent changes the weights; packing again reads them.
    model.unpack();
    model.backward(grad.view());
    for (const auto& p : model.parameters())
      for (std::int64_t r = 0; r < p.value.rows; ++r)
        for (std::int64_t c = 0; c < p.value.cols; ++c) p.value(r, c) -= 0.5f * p.grad(r, c);
    const ref::Matrix plain = download(*ctx.device, model.forward(ids_d.view(), batch));
    model.pack_for_inference();
    TP_EXPECT_CLOSE(float, download(*ctx.device, model.forward(ids_d.view(), batch)), plain);
  });
}

}  // namespace
}  // namespace tp
