/// Initialization independent of the TP degree: every rank draws exactly its block of one full
/// tensor, so the gathered weights are bitwise the same at world sizes 1 to 4, for column-split,
/// row-split and replicated parameters, and for the uniform and normal initializers.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "common/harness.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::on_ranks;

enum class Split { columns, rows, replicated };
enum class Init { uniform, normal };

/// A parameter of full shape rows x cols as rank `rank` of `world` holds it, with its storage.
struct OwnedParameter {
  Tensor<float, Cpu> value, grad;
  Parameter<float> p;
  OwnedParameter(std::string name, std::int64_t rows, std::int64_t cols, Split split, int world, int rank) {
    Range rr{0, rows}, cr{0, cols};
    if (split == Split::rows) rr = partition(rows, world, rank);  // like ColumnParallelLinear's weight
    if (split == Split::columns) cr = partition(cols, world, rank);  // like RowParallelLinear's weight
    value = Tensor<float, Cpu>(rr.size(), cr.size());
    grad = Tensor<float, Cpu>(rr.size(), cr.size());
    p = {std::move(name), value.view(), grad.view(), rows, cols, rr, cr};
  }
};

void initialize(const Parameter<float>& p, Init init) {
  if (init == Init::uniform)
    init_uniform(Cpu(), p, 1234, 0.5);
  else
    init_normal(Cpu(), p, 1234, 0.02);
}

/// Gathers every rank's block into the full row-major tensor (on every rank).
std::vector<float> gather_full(Communicator& comm, const Parameter<float>& p, Split split) {
  const int world = comm.size();
  std::vector<float> full(static_cast<std::size_t>(p.full_rows * p.full_cols));
  if (split == Split::replicated) {
    std::memcpy(full.data(), p.value.data, full.size() * sizeof(float));
    return full;
  }
  std::vector<std::size_t> counts;
  for (int r = 0; r < world; ++r) {
    const std::int64_t n = split == Split::rows ? partition(p.full_rows, world, r).size() * p.full_cols
                                                : partition(p.full_cols, world, r).size() * p.full_rows;
    counts.push_back(static_cast<std::size_t>(n));
  }
  std::vector<float> flat(full.size());
  comm.all_gather_v(std::span<const float>(p.value.data, static_cast<std::size_t>(p.value.size())),
                    std::span<float>(flat), counts);
  if (split == Split::rows) return flat;
  std::int64_t offset = 0;
  for (int r = 0; r < world; ++r) {  // column blocks arrive one after the other, each row-major
    const Range cols = partition(p.full_cols, world, r);
    for (std::int64_t i = 0; i < p.full_rows; ++i)
      for (std::int64_t j = 0; j < cols.size(); ++j) full[i * p.full_cols + cols.begin + j] = flat[offset + i * cols.size() + j];
    offset += p.full_rows * cols.size();
  }
  return full;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Init, GatheredWeightsAreBitwiseTheSameAtEveryWorldSize) {
  for (Init init : {Init::uniform, Init::normal})
    for (Split split : {Split::columns, Split::rows, Split::replicated}) {
      SCOPED_TRACE(fmt::format("init {} split {}", int(init), int(split)));
      // What a single rank draws for the whole 10x7 tensor (10 and 7 split unevenly over 3 and 4).
      OwnedParameter whole("blocks.0.fc.weight", 10, 7, Split::replicated, 1, 0);
      initialize(whole.p, init);
      const std::vector<float> want(whole.value.data(), whole.value.data() + whole.value.size());
      on_ranks([&](std::shared_ptr<Communicator> comm) {
        OwnedParameter mine("blocks.0.fc.weight", 10, 7, split, comm->size(), comm->rank());
        initialize(mine.p, init);
        EXPECT_TRUE(bitwise_equal(gather_full(*comm, mine.p, split), want)) << "world " << comm->size();
      });
    }
}

TEST(Init, LayersAtEveryWorldSizeHoldBlocksOfOneWeight) {
  // ColumnParallelLinear splits rows of its [out, in] weight, RowParallelLinear columns.
  OwnedParameter col_whole("fc1.weight", 10, 6, Split::replicated, 1, 0), row_whole("fc2.weight", 5, 10, Split::replicated, 1, 0);
  init_uniform(Cpu(), col_whole.p, 7, 1.0 / std::sqrt(6.0));
  init_uniform(Cpu(), row_whole.p, 7, 1.0 / std::sqrt(10.0));
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    ColumnParallelLinear<float> fc1(Context<>(comm), 6, 10, {.name = "fc1", .seed = 7});
    RowParallelLinear<float> fc2(Context<>(comm), 10, 5, {.name = "fc2", .seed = 7});
    const auto p1 = fc1.parameters().front(), p2 = fc2.parameters().front();
    EXPECT_TRUE(bitwise_equal(gather_full(*comm, p1, Split::rows),
                              std::vector<float>(col_whole.value.data(), col_whole.value.data() + 60)));
    EXPECT_TRUE(bitwise_equal(gather_full(*comm, p2, Split::columns),
                              std::vector<float>(row_whole.value.data(), row_whole.value.data() + 50)));
  });
}

TEST(Init, DifferentNamesAndSeedsGiveDifferentWeights) {
  OwnedParameter a("a.weight", 4, 4, Split::replicated, 1, 0), b("b.weight", 4, 4, Split::replicated, 1, 0),
      c("a.weight", 4, 4, Split::replicated, 1, 0);
  init_normal(Cpu(), a.p, 1);
  init_normal(Cpu(), b.p, 1);
  init_normal(Cpu(), c.p, 2);
  EXPECT_NE(std::memcmp(a.value.data(), b.value.data(), 16 * sizeof(float)), 0);
  EXPECT_NE(std::memcmp(a.value.data(), c.value.data(), 16 * sizeof(float)), 0);
}

TEST(Init, NormalHasTheRequestedMeanAndStd) {
  OwnedParameter big("w", 200, 300, Split::replicated, 1, 0);
  init_normal(Cpu(), big.p, 99, 0.02, 0.5);
  double sum = 0, sq = 0;
  const auto n = static_cast<double>(big.value.size());
  for (std::int64_t i = 0; i < big.value.size(); ++i) sum += big.value.data()[i];
  const double mean = sum / n;
  for (std::int64_t i = 0; i < big.value.size(); ++i) sq += (big.value.data()[i] - mean) * (big.value.data()[i] - mean);
  EXPECT_NEAR(mean, 0.5, 4 * 0.02 / std::sqrt(n));  // 4 standard errors
  EXPECT_NEAR(std::sqrt(sq / n), 0.02, 0.02 * 0.01);
  EXPECT_NEAR(scaled_init_std(0.02, 8), 0.02 / 4.0, 1e-15);
  EXPECT_THROW(init_normal(Cpu(), big.p, 1, -1.0), InvalidArgument);
}

TEST(Init, RejectsAParameterWhoseShardDoesNotMatchItsRanges) {
  OwnedParameter p("w", 6, 4, Split::rows, 2, 0);
  p.p.rows = {0, 4};  // claims 4 rows, holds 3
  try {
    init_uniform(Cpu(), p.p, 1, 1.0);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("w: the shard is 3x4"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tp
