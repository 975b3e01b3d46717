/// Weight decay follows the parameter's `weight_decay` flag, set by the layer that owns it: weight
/// matrices and embeddings decay, biases and norm weights do not, whatever their shapes (a [1, in]
/// weight of a one-feature head is a matrix and decays).

#include <gtest/gtest.h>

#include "common/harness.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::on_ranks;

TEST(WeightDecayFlag, LayersFlagWeightsNotBiasesOrNorms) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    ColumnParallelLinear<double> head(ctx, 3, 4, {.name = "head"});
    RowParallelLinear<double> row(ctx, 4, 1, {.name = "row"});  // a [1, 4] weight: one output feature
    LayerNorm<double> ln(ctx, 4, {.name = "ln"});
    VocabParallelEmbedding<double> emb(ctx, 5, 4, {.name = "emb"});
    ParallelAttention<double> attn(ctx, 12, 12, 12, {.name = "attn"});
    std::vector<Parameter<double>> ps;
    for (auto more : {head.parameters(), row.parameters(), ln.parameters(), emb.parameters(), attn.parameters()})
      ps.insert(ps.end(), more.begin(), more.end());
    for (const auto& p : ps) {
      SCOPED_TRACE(p.name);
      const bool is_weight = p.name.ends_with(".weight") && !p.name.starts_with("ln.");
      EXPECT_EQ(p.weight_decay, is_weight);
    }

    // One AdamW step with zero gradients moves only what decays: p *= 1 - lr * weight_decay.
    ctx.device->fill(ln.bias(), 0.5);  // a nonzero bias, so that decaying it would show
    std::vector<std::vector<double>> before;
    for (const auto& p : ps) {
      before.emplace_back(p.value.size());
      Cpu().copy(ConstView<double>(p.value), MatrixView<double>(before.back().data(), p.value.rows, p.value.cols));
    }
    AdamW<double> opt(ctx, ps, {.lr = 0.1, .weight_decay = 0.5});
    opt.step();
    for (std::size_t i = 0; i < ps.size(); ++i) {
      SCOPED_TRACE(ps[i].name);
      const double factor = ps[i].weight_decay ? 1 - 0.1 * 0.5 : 1.0;
      const MatrixView<double> v = ps[i].value;
      for (std::int64_t r = 0; r < v.rows; ++r)
        for (std::int64_t c = 0; c < v.cols; ++c) EXPECT_DOUBLE_EQ(v(r, c), factor * before[i][r * v.cols + c]);
    }
  });
}

}  // namespace
}  // namespace tp
