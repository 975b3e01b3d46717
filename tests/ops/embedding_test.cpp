/// The embedding ops on every device and dtype (common/devices.hpp): one rank's masked lookup into
/// its shard [first, first + rows) of the vocabulary (ids elsewhere give zero rows) and the
/// gradient that accumulates into that shard, a repeated id adding up.

#include <gtest/gtest.h>

#include "common/blocks_reference.hpp"
#include "common/devices.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::upload;

template <class T>
class EmbeddingOps : public ::testing::Test {};
TYPED_TEST_SUITE(EmbeddingOps, test::BlockFloats);

TYPED_TEST(EmbeddingOps, ShardLookupAndGradient) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t vocab = 17, hidden = 5, first = 6, shard = 7;  // this rank holds ids [6, 13)
  std::vector<std::int64_t> ids = ref::random_ids(12, vocab, ref::test_seed(1));
  ids[0] = first;  // both ends of the shard, one id on each side of it, and a repeat
  ids[1] = first + shard - 1;
  ids[2] = first - 1;
  ids[3] = first + shard;
  ids[11] = ids[1];
  const auto table = test::random_matrix<T>(vocab, hidden, ref::test_seed(2));
  const auto dy = test::random_matrix<T>(12, hidden, ref::test_seed(3));
  const auto d0 = test::random_matrix<T>(shard, hidden, ref::test_seed(4));
  ref::Matrix want_y = ref::embedding(ids, table);
  for (std::size_t t = 0; t < ids.size(); ++t)
    if (ids[t] < first || ids[t] >= first + shard)
      for (std::int64_t c = 0; c < hidden; ++c) want_y(static_cast<std::int64_t>(t), c) = 0.0;
  const auto want_d = ref::add(d0, ref::embedding_grad(ids, dy, vocab).rows_range(first, shard));

  auto dev = std::make_shared<Dev>();
  const auto ids_d = test::upload_ids(dev, ids, 3, 4);
  const auto shard_d = upload<T>(dev, table.rows_range(first, shard)), dy_d = upload<T>(dev, dy);
  Tensor<T, Dev> y(dev, 12, hidden);
  auto d_table = upload<T>(dev, d0);
  tp::ops::embedding_forward(*dev, ids_d.view(), shard_d.view(), first, y.view());
  TP_EXPECT_CLOSE(T, download(*dev, y), want_y);
  EXPECT_EQ(download(*dev, y)(2, 0), 0.0);
  tp::ops::embedding_backward(*dev, ids_d.view(), dy_d.view(), first, d_table.view());
  TP_EXPECT_CLOSE(T, download(*dev, d_table), want_d);
}

/// The gradient with many table rows and repeated ids: on CUDA blocks cover groups of table rows
/// as well as column tiles (each (row, column) still summed by one thread, in token order); a
/// 20-row shard and 300 columns is 20 groups and two column tiles there.
TYPED_TEST(EmbeddingOps, GradientOverRowGroups) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t tokens = 48, vocab = 30, hidden = 300, first = 5, shard = 20;
  const std::vector<std::int64_t> ids = ref::random_ids(tokens, vocab, ref::test_seed(1));
  const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(2));
  const auto d0 = test::random_matrix<T>(shard, hidden, ref::test_seed(3));
  const auto want_d = ref::add(d0, ref::embedding_grad(ids, dy, vocab).rows_range(first, shard));

  auto dev = std::make_shared<Dev>();
  const auto ids_d = test::upload_ids(dev, ids, 6, 8);
  const auto dy_d = upload<T>(dev, dy);
  auto d_table = upload<T>(dev, d0);
  tp::ops::embedding_backward(*dev, ids_d.view(), dy_d.view(), first, d_table.view());
  TP_EXPECT_CLOSE(T, download(*dev, d_table), want_d);
}

}  // namespace
}  // namespace tp
