/// VocabParallelEmbedding against the unsharded lookup: odd vocabularies over every world size
/// (7 over 3, 50257 over 4), a [batch, seq] id matrix, sequence parallelism on and off, ids out
/// of range, tables smaller than the world (replicated); the lookup and its gradient on every
/// device (common/devices.hpp).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <span>
#include <string>

#include "common/blocks_reference.hpp"
#include "common/devices.hpp"
#include "common/harness.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::on_ranks;
using test::upload;
using ::testing::HasSubstr;

template <class T>
class Embedding : public ::testing::Test {};
TYPED_TEST_SUITE(Embedding, test::BlockFloatsBf16);

TYPED_TEST(Embedding, MatchesReference) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  struct Case {
    std::int64_t vocab, hidden, batch, seq;
  };
  for (const Case s : {Case{7, 5, 2, 5}, Case{13, 4, 1, 7}, Case{50257, 3, 3, 3}, Case{4, 6, 1, 3}}) {
    const std::string trace = fmt::format("vocab {} hidden {} batch {} seq {}", s.vocab, s.hidden, s.batch, s.seq);
    SCOPED_TRACE(trace);
    const std::int64_t tokens = s.batch * s.seq;
    auto ids = ref::random_ids(tokens, s.vocab, ref::test_seed(1));
    ids[0] = s.vocab - 1;  // both ends of the vocabulary, and a repeated id (its gradients add up)
    ids[1] = 0;
    ids[tokens - 1] = ids[2];
    const auto table = test::random_matrix<T>(s.vocab, s.hidden, ref::test_seed(2));
    const auto dy = test::random_matrix<T>(tokens, s.hidden, ref::test_seed(3));
    const auto y = ref::embedding(ids, table);
    const auto dtable = ref::embedding_grad(ids, dy, s.vocab);
    const test::HostMatrix<T> table_h(table);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(trace);  // traces are per thread
      auto dev = std::make_shared<Dev>();
      const Range mine = partition(tokens, comm->size(), comm->rank());
      const auto ids_d = test::upload_ids(dev, ids, s.batch, s.seq);
      for (const bool sp : {false, true}) {
        SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
        VocabParallelEmbedding<T, Dev> emb(Context<Dev>(comm, dev), s.vocab, s.hidden, {.sequence_parallel = sp});
        EXPECT_EQ(emb.vocab_range(), partition(s.vocab, comm->size(), comm->rank()));
        emb.load_full(table_h.view());
        TP_EXPECT_CLOSE(T, download(*dev, emb.forward(ids_d.view())), sp ? y.rows_range(mine.begin, mine.size()) : y);
        const auto dy_d = upload<T>(dev, sp ? dy.rows_range(mine.begin, mine.size()) : dy);
        emb.backward(dy_d.view());
        test::expect_grads<T>(*dev, emb.parameters(), {{"embedding.weight", &dtable}});
      }
    });
  }
}

/// A table with fewer rows than ranks (vocab 2 and 3: BERT's token types) is replicated at world
/// sizes above its rows: every rank holds it all, marked copy = rank so that a gradient norm counts
/// it once, and every rank ends with the same full gradient; at smaller worlds it is split as usual.
TYPED_TEST(Embedding, SmallTablesAreReplicated) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t hidden = 5, batch = 2, seq = 3, tokens = batch * seq;
  for (const std::int64_t vocab : {2, 3}) {
    const std::string trace = fmt::format("vocab {}", vocab);
    SCOPED_TRACE(trace);
    auto ids = ref::random_ids(tokens, vocab, ref::test_seed(1));
    ids[0] = 0;
    ids[1] = vocab - 1;
    const auto table = test::random_matrix<T>(vocab, hidden, ref::test_seed(2));
    const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(3));
    const auto y = ref::embedding(ids, table);
    const auto dtable = ref::embedding_grad(ids, dy, vocab);
    double norm = 0;
    for (const double g : dtable.data) norm += g * g;
    norm = std::sqrt(norm);
    const test::HostMatrix<T> table_h(table);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(trace);
      auto dev = std::make_shared<Dev>();
      const bool replicated = vocab < comm->size();
      const Range mine = partition(tokens, comm->size(), comm->rank());
      const auto ids_d = test::upload_ids(dev, ids, batch, seq);
      for (const bool sp : {false, true}) {
        SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
        const Context<Dev> ctx(comm, dev);
        VocabParallelEmbedding<T, Dev> emb(ctx, vocab, hidden, {.sequence_parallel = sp, .name = "token_type"});
        EXPECT_EQ(emb.replicated(), replicated);
        EXPECT_EQ(emb.vocab_range(), (replicated ? Range{0, vocab} : partition(vocab, comm->size(), comm->rank())));
        const auto ps = emb.parameters();
        ASSERT_EQ(ps.size(), 1u);
        EXPECT_EQ(ps[0].copy, replicated ? comm->rank() : 0);
        EXPECT_EQ(ps[0].sharded(), !replicated && comm->size() > 1);
        emb.load_full(table_h.view());
        TP_EXPECT_CLOSE(T, download(*dev, emb.forward(ids_d.view())), sp ? y.rows_range(mine.begin, mine.size()) : y);
        const auto dy_d = upload<T>(dev, sp ? dy.rows_range(mine.begin, mine.size()) : dy);
        emb.backward(dy_d.view());
        test::expect_grads<T>(*dev, ps, {{"token_type.weight", &dtable}});
        // Counted once, whatever the world size: the norm of the one full gradient.
        const double got = grad_norm<T>(ctx, std::span<const Parameter<T>>(ps));
        EXPECT_LE(std::abs(got - norm) / norm, ref::tolerance<T>) << got << " vs " << norm;
      }
    });
  }
}

#ifndef TP_TEST_CUDA  // device-independent checks: once, in the host binaries

/// The initial table is a function of (seed, name, full index): the same at every world size.
TEST(EmbeddingInit, SameTableAtEveryWorldSize) {
  const std::int64_t vocab = 11, hidden = 3;
  std::vector<std::int64_t> all(vocab);
  for (std::int64_t i = 0; i < vocab; ++i) all[i] = i;
  ref::Matrix world1;
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    VocabParallelEmbedding<double> emb(Context<>(comm), vocab, hidden, {.seed = 5});
    const ref::Matrix table = test::as_matrix<double>(emb.forward(test::to_ids(all, 1, vocab)));
    if (comm->size() == 1) world1 = table;
    if (comm->size() > 1 && !world1.data.empty()) EXPECT_EQ(table.data, world1.data);
    double sq = 0;
    for (double v : table.data) sq += v * v;
    EXPECT_NEAR(std::sqrt(sq / static_cast<double>(table.data.size())), 0.02, 0.01);  // init_std
  });
}

TEST(EmbeddingErrors, IdsOutOfRangeNameTheIdAndPosition) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    VocabParallelEmbedding<float> emb(Context<>(comm), 7, 4, {.name = "wte"});
    for (const std::int64_t bad : {std::int64_t{7}, std::int64_t{-1}, std::int64_t{1} << 40}) {
      std::vector<std::int64_t> ids = {1, 2, 3, 4, 5, 6};
      ids[4] = bad;
      try {
        emb.forward(test::to_ids(ids, 2, 3));
        ADD_FAILURE() << "id " << bad << " accepted";
      } catch (const InvalidArgument& e) {
        EXPECT_THAT(e.what(), HasSubstr(fmt::format("wte: token id {} at position 4 (row 1, column 1 of the 2x3 ids) "
                                                    "is outside the vocabulary [0, 7)",
                                                    bad)));
      }
    }
    EXPECT_THROW(emb.backward(Tensor<float, Cpu>(6, 4)), InvalidArgument);  // before any forward
    EXPECT_THAT([&] { VocabParallelEmbedding<float>(Context<>(comm), 0, 4, {.name = "wte"}); },
                ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("wte: vocab must be positive, got 0")));
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
