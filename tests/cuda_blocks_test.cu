/// The transformer blocks and training pieces on tp::Cuda: VocabParallelEmbedding, ParallelMLP
/// (GELU exact and tanh, SwiGLU), ParallelAttention (multi-head, grouped-query and multi-query, kv
/// heads replicated when the world exceeds them), VocabParallelCrossEntropy, LayerNorm, AdamW and
/// the gradient norm, for float and __nv_bfloat16, against the double references in tests/common,
/// on every rank of world sizes 1 to 4 (LocalCommunicator over device memory on one GPU). The same
/// cases as the CPU suites, so both devices answer to one reference. Tolerances: float 1e-6, bf16
/// 1e-2 (tests/common/cuda_support.hpp). Without a GPU every test reports skipped, with the reason.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>

#include "common/blocks_reference.hpp"
#include "common/cuda_support.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "common/reference_train.hpp"
#include "tp/device/cuda.hpp"
#include "tp/layers/layer_norm.hpp"
#include "tp/layers/parallel_attention.hpp"
#include "tp/layers/parallel_mlp.hpp"
#include "tp/layers/vocab_parallel_cross_entropy.hpp"
#include "tp/layers/vocab_parallel_embedding.hpp"
#include "tp/optim/adamw.hpp"
#include "tp/optim/clip_grad_norm.hpp"

namespace tp {
namespace {

using ::testing::HasSubstr;
using test::download;
using test::on_ranks;
using test::upload;

template <class T>
class CudaBlocks : public ::testing::Test {};
using CudaBlockTypes = ::testing::Types<float, __nv_bfloat16>;
TYPED_TEST_SUITE(CudaBlocks, CudaBlockTypes);

/// Host elements of `m` in T, kept alive for a load_full that reads them as a ConstView.
template <class T>
struct HostMatrix {
  explicit HostMatrix(const ref::Matrix& m) : rows(m.rows), cols(m.cols), data(test::to_host_elements<T>(m)) {}
  ConstView<T> view() const { return ConstView<T>(data.data(), rows, cols); }
  std::int64_t rows, cols;
  std::vector<T> data;
};

Tensor<std::int64_t, Cuda> upload_ids(const std::shared_ptr<Cuda>& dev, const std::vector<std::int64_t>& ids,
                                      std::int64_t rows, std::int64_t cols) {
  Tensor<std::int64_t, Cuda> t(dev, rows, cols);
  dev->from_host(ConstView<std::int64_t>(ids.data(), rows, cols), t.view());
  return t;
}

/// test::expect_grads for device gradients: each parameter's gradient equals its block of the
/// full reference gradient, blocks of one name compared as one normwise whole.
template <class T>
void expect_grads(const Cuda& dev, const std::vector<Parameter<T>>& ps,
                  const std::map<std::string, const ref::Matrix*>& full) {
  std::map<std::string, std::pair<ref::Matrix, ref::Matrix>> got_want;
  for (const auto& p : ps) {
    const auto it = full.find(p.name);
    ASSERT_NE(it, full.end()) << "no reference gradient for " << p.name;
    const ref::Matrix got = download<T>(dev, ConstView<T>(p.grad));
    const ref::Matrix want = it->second->block(p.rows.begin, p.cols.begin, p.rows.size(), p.cols.size());
    ASSERT_EQ(got.rows, want.rows) << p.name;
    ASSERT_EQ(got.cols, want.cols) << p.name;
    auto& [g, w] = got_want[p.name];
    g.data.insert(g.data.end(), got.data.begin(), got.data.end());
    w.data.insert(w.data.end(), want.data.begin(), want.data.end());
    g.rows = w.rows = 1;
    g.cols = w.cols = static_cast<std::int64_t>(g.data.size());
  }
  for (const auto& [name, gw] : got_want) {
    SCOPED_TRACE(name);
    TP_EXPECT_CLOSE(T, gw.first, gw.second);
  }
}

TYPED_TEST(CudaBlocks, EmbeddingMatchesReference) {
  using T = TypeParam;
  TP_REQUIRE_CUDA();
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
    const HostMatrix<T> table_h(table);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(trace);
      auto dev = std::make_shared<Cuda>();
      const Range mine = partition(tokens, comm->size(), comm->rank());
      const auto ids_d = upload_ids(dev, ids, s.batch, s.seq);
      for (const bool sp : {false, true}) {
        SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
        VocabParallelEmbedding<T, Cuda> emb(Context<Cuda>(comm, dev), s.vocab, s.hidden, {.sequence_parallel = sp});
        emb.load_full(table_h.view());
        TP_EXPECT_CLOSE(T, download(*dev, emb.forward(ids_d.view())), sp ? y.rows_range(mine.begin, mine.size()) : y);
        const auto dy_d = upload<T>(dev, sp ? dy.rows_range(mine.begin, mine.size()) : dy);
        emb.backward(dy_d.view());
        expect_grads<T>(*dev, emb.parameters(), {{"embedding.weight", &dtable}});
      }
    });
  }
}

/// first_outside on the device: the layer names the first bad id and its position.
TEST(CudaBlocksErrors, EmbeddingIdOutsideTheVocabulary) {
  TP_REQUIRE_CUDA();
  on_ranks([](std::shared_ptr<Communicator> comm) {
    auto dev = std::make_shared<Cuda>();
    VocabParallelEmbedding<float, Cuda> emb(Context<Cuda>(comm, dev), 9, 4);
    const auto ids = upload_ids(dev, {1, 2, 8, 9, 3, -4}, 2, 3);
    try {
      emb.forward(ids.view());
      ADD_FAILURE() << "id 9 accepted in a vocabulary of 9";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr("token id 9 at position 3 (row 1, column 0 of the 2x3 ids) is outside the "
                                      "vocabulary [0, 9)"));
    }
    EXPECT_EQ(tp::ops::first_outside(*dev, ids.view(), -4, 9, 9), -1);
    EXPECT_EQ(tp::ops::first_outside(*dev, ids.view(), 0, 9, 9), 5);
  });
}

TYPED_TEST(CudaBlocks, MlpMatchesReference) {
  using T = TypeParam;
  TP_REQUIRE_CUDA();
  constexpr std::pair<Activation, ref::Act> acts[] = {{Activation::gelu_exact, ref::Act::gelu_exact},
                                                      {Activation::gelu_tanh, ref::Act::gelu_tanh},
                                                      {Activation::swiglu, ref::Act::swiglu}};
  const std::int64_t tokens = 5, hidden = 8, ffn = 10;  // 10 over 3 and 4 ranks is uneven, 5 tokens too
  for (const auto [act, ref_act] : acts)
    for (const bool bias : {true, false}) {
      const std::string trace = fmt::format("activation {} bias {}", static_cast<int>(act), bias);
      SCOPED_TRACE(trace);
      const std::int64_t fc1_rows = act == Activation::swiglu ? 2 * ffn : ffn;
      const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(1));
      const auto w1 = test::random_matrix<T>(fc1_rows, hidden, ref::test_seed(2));
      const auto b1 = test::random_matrix<T>(1, fc1_rows, ref::test_seed(3));
      const auto w2 = test::random_matrix<T>(hidden, ffn, ref::test_seed(4));
      const auto b2 = test::random_matrix<T>(1, hidden, ref::test_seed(5));
      const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(6));
      const auto want = ref::mlp(x, w1, b1, w2, b2, dy, ref_act, bias);
      const HostMatrix<T> w1_h(w1), b1_h(b1), w2_h(w2), b2_h(b2);
      on_ranks([&](std::shared_ptr<Communicator> comm) {
        SCOPED_TRACE(trace);
        auto dev = std::make_shared<Cuda>();
        const Range mine = partition(tokens, comm->size(), comm->rank());
        for (const bool sp : {false, true}) {
          SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
          ParallelMLP<T, Cuda> mlp(Context<Cuda>(comm, dev), hidden, ffn,
                                   {.activation = act, .bias = bias, .sequence_parallel = sp});
          mlp.load_full(w1_h.view(), b1_h.view(), w2_h.view(), b2_h.view());
          const auto x_d = upload<T>(dev, sp ? x.rows_range(mine.begin, mine.size()) : x);
          TP_EXPECT_CLOSE(T, download(*dev, mlp.forward(x_d.view(), sp ? tokens : -1)),
                          sp ? want.y.rows_range(mine.begin, mine.size()) : want.y);
          const auto dy_d = upload<T>(dev, sp ? dy.rows_range(mine.begin, mine.size()) : dy);
          TP_EXPECT_CLOSE(T, download(*dev, mlp.backward(dy_d.view())),
                          sp ? want.dx.rows_range(mine.begin, mine.size()) : want.dx);
          expect_grads<T>(*dev, mlp.parameters(), {{"mlp.fc1.weight", &want.dw1},
                                                   {"mlp.fc1.bias", &want.db1},
                                                   {"mlp.fc2.weight", &want.dw2},
                                                   {"mlp.fc2.bias", &want.db2}});
        }
      });
    }
}

bool splittable(std::int64_t heads, std::int64_t kv_heads, int world) {
  return heads % world == 0 && (kv_heads % world == 0 || world % kv_heads == 0);
}

TYPED_TEST(CudaBlocks, AttentionMatchesReference) {
  using T = TypeParam;
  TP_REQUIRE_CUDA();
  struct Case {
    std::int64_t heads, kv_heads;
  };
  const std::int64_t hidden = 10, d = 4, batch = 2, seq = 5, tokens = batch * seq;  // 10 tokens: uneven over 3, 4
  // 8/2 at world 4 and 8/1, 12/1 at worlds 2 to 4 replicate kv heads; 12/12 runs at world 3.
  for (const Case s : {Case{8, 8}, Case{8, 2}, Case{8, 1}, Case{12, 12}, Case{12, 1}})
    for (const bool causal : {true, false})
      for (const bool bias : {true, false}) {
        const std::string trace = fmt::format("heads {} kv_heads {} causal {} bias {}", s.heads, s.kv_heads, causal, bias);
        SCOPED_TRACE(trace);
        const std::int64_t qkv_rows = (s.heads + 2 * s.kv_heads) * d;
        const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(1));
        const auto w_qkv = test::rounded<T>(ref::random_scaled<double>(qkv_rows, hidden, ref::test_seed(2), 1 / std::sqrt(double(hidden))));
        const auto b_qkv = test::random_matrix<T>(1, qkv_rows, ref::test_seed(3));
        const auto w_o = test::rounded<T>(
            ref::random_scaled<double>(hidden, s.heads * d, ref::test_seed(4), 1 / std::sqrt(double(s.heads * d))));
        const auto b_o = test::random_matrix<T>(1, hidden, ref::test_seed(5));
        const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(6));
        const auto want = ref::attention(x, w_qkv, b_qkv, w_o, b_o, dy, s.heads, s.kv_heads, d, seq, causal, bias);
        const HostMatrix<T> w_qkv_h(w_qkv), b_qkv_h(b_qkv), w_o_h(w_o), b_o_h(b_o);
        on_ranks([&](std::shared_ptr<Communicator> comm) {
          SCOPED_TRACE(trace);
          const int world = comm->size(), rank = comm->rank();
          if (!splittable(s.heads, s.kv_heads, world)) return;
          auto dev = std::make_shared<Cuda>();
          const Range mine = partition(tokens, world, rank);
          for (const bool sp : {false, true}) {
            SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
            ParallelAttention<T, Cuda> attn(Context<Cuda>(comm, dev), hidden, s.heads, s.kv_heads,
                                            {.causal = causal, .bias = bias, .head_dim = d, .sequence_parallel = sp});
            EXPECT_EQ(attn.kv_replicas(), world > s.kv_heads ? world / s.kv_heads : 1);
            attn.load_full(w_qkv_h.view(), bias ? b_qkv_h.view() : ConstView<T>{}, w_o_h.view(),
                           bias ? b_o_h.view() : ConstView<T>{});
            const auto x_d = upload<T>(dev, sp ? x.rows_range(mine.begin, mine.size()) : x);
            TP_EXPECT_CLOSE(T, download(*dev, attn.forward(x_d.view(), seq, sp ? tokens : -1)),
                            sp ? want.y.rows_range(mine.begin, mine.size()) : want.y);
            const auto dy_d = upload<T>(dev, sp ? dy.rows_range(mine.begin, mine.size()) : dy);
            TP_EXPECT_CLOSE(T, download(*dev, attn.backward(dy_d.view())),
                            sp ? want.dx.rows_range(mine.begin, mine.size()) : want.dx);
            expect_grads<T>(*dev, attn.parameters(), {{"attention.qkv.weight", &want.dw_qkv},
                                                      {"attention.qkv.bias", &want.db_qkv},
                                                      {"attention.dense.weight", &want.dw_o},
                                                      {"attention.dense.bias", &want.db_o}});
          }
        });
      }
}

TYPED_TEST(CudaBlocks, CrossEntropyMatchesReference) {
  using T = TypeParam;
  TP_REQUIRE_CUDA();
  struct Case {
    std::int64_t tokens, vocab;
    double offset;  // added to every logit: 1e4 checks the max-shifted arithmetic
  };
  for (const Case s : {Case{6, 7, 0.0}, Case{5, 13, 0.0}, Case{4, 50257, 0.0}, Case{6, 11, 1e4}, Case{5, 4, -1e4}})
    for (const double smoothing : {0.0, 0.1})
      for (const bool ignore : {false, true}) {
        const std::string trace = fmt::format("tokens {} vocab {} offset {} smoothing {} ignore {}", s.tokens, s.vocab,
                                              s.offset, smoothing, ignore);
        SCOPED_TRACE(trace);
        const std::int64_t ignore_index = -100;
        auto targets = ref::random_ids(s.tokens, s.vocab, ref::test_seed(1));
        targets[0] = s.vocab - 1;
        targets[1] = 0;
        if (ignore) targets[2] = ignore_index;
        auto logits = ref::random_matrix<double>(s.tokens, s.vocab, ref::test_seed(2));
        for (auto& v : logits.data) v = detail::to_double(static_cast<T>(3.0 * v + s.offset));
        const auto dloss = test::random_matrix<T>(s.tokens, 1, ref::test_seed(3));
        const auto want = ref::cross_entropy(logits, targets, ignore_index, smoothing, dloss);
        on_ranks([&](std::shared_ptr<Communicator> comm) {
          SCOPED_TRACE(trace);
          auto dev = std::make_shared<Cuda>();
          VocabParallelCrossEntropy<T, Cuda> ce(Context<Cuda>(comm, dev), s.vocab,
                                                {.ignore_index = ignore_index, .label_smoothing = smoothing});
          const Range v = ce.vocab_range();
          const auto logits_d = upload<T>(dev, logits.cols_range(v.begin, v.size()));
          const auto targets_d = upload_ids(dev, targets, 1, s.tokens);
          const auto loss = download(*dev, ce.forward(logits_d.view(), targets_d.view()));
          TP_EXPECT_CLOSE(T, loss, want.loss);
          if (ignore) EXPECT_EQ(loss(2, 0), 0.0);
          const auto dloss_d = upload<T>(dev, dloss);
          TP_EXPECT_CLOSE(T, download(*dev, ce.backward(dloss_d.view())), want.dlogits.cols_range(v.begin, v.size()));
        });
      }
}

TEST(CudaBlocksErrors, CrossEntropyTargetOutsideTheVocabulary) {
  TP_REQUIRE_CUDA();
  on_ranks([](std::shared_ptr<Communicator> comm) {
    auto dev = std::make_shared<Cuda>();
    VocabParallelCrossEntropy<float, Cuda> ce(Context<Cuda>(comm, dev), 5);
    const Range v = ce.vocab_range();
    Tensor<float, Cuda> logits(dev, 3, v.size());
    dev->fill(logits.view(), 0.25f);
    const auto targets = upload_ids(dev, {4, -100, 5}, 1, 3);
    try {
      ce.forward(logits.view(), targets.view());
      ADD_FAILURE() << "target 5 accepted in a vocabulary of 5";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr("target 5 at position 2 is outside the vocabulary [0, 5)"));
    }
  });
}

TYPED_TEST(CudaBlocks, LayerNormMatchesReference) {
  using T = TypeParam;
  TP_REQUIRE_CUDA();
  for (auto [tokens, hidden] : {std::pair{5, 16}, {3, 7}, {1, 33}, {4, 3}, {3, 1000}}) {
    const std::string trace = fmt::format("tokens {} hidden {}", tokens, hidden);
    SCOPED_TRACE(trace);
    // An offset and scale, so that the mean and variance matter.
    const auto x = ref::map(test::random_matrix<T>(tokens, hidden, ref::test_seed(1)),
                            [](double v) { return detail::to_double(static_cast<T>(3 * v + 1.5)); });
    const auto gamma = test::random_matrix<T>(1, hidden, ref::test_seed(2));
    const auto beta = test::random_matrix<T>(1, hidden, ref::test_seed(3));
    const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(4));
    const auto want = ref::layer_norm(x, gamma, beta, dy, 1e-5);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(trace);
      auto dev = std::make_shared<Cuda>();
      LayerNorm<T, Cuda> ln(Context<Cuda>(comm, dev), hidden, {.eps = 1e-5, .name = "ln_f"});
      EXPECT_EQ(download(*dev, ln.weight())(0, hidden - 1), 1.0);  // torch's init: weight 1, bias 0
      EXPECT_EQ(download(*dev, ln.bias())(0, 0), 0.0);
      const auto gamma_d = upload<T>(dev, gamma), beta_d = upload<T>(dev, beta);
      dev->copy(gamma_d.view(), ln.weight());
      dev->copy(beta_d.view(), ln.bias());
      const auto x_d = upload<T>(dev, x), dy_d = upload<T>(dev, dy);
      TP_EXPECT_CLOSE(T, download(*dev, ln.forward(x_d.view())), want.y);
      TP_EXPECT_CLOSE(T, download(*dev, ln.backward(dy_d.view())), want.dx);
      TP_EXPECT_CLOSE(T, download(*dev, ln.weight_grad()), want.dgamma);
      TP_EXPECT_CLOSE(T, download(*dev, ln.bias_grad()), want.dbeta);
      ln.forward(x_d.view());
      ln.backward(dy_d.view());  // gradients accumulate
      TP_EXPECT_CLOSE(T, download(*dev, ln.weight_grad()), ref::scale(want.dgamma, 2));
      TP_EXPECT_CLOSE(T, download(*dev, ln.bias_grad()), ref::scale(want.dbeta, 2));
    });
  }
}

/// AdamW on a row-sharded matrix, a column-sharded matrix and a replicated vector, several steps:
/// every shard and its moments track the reference loop on the full tensors. bf16 takes a larger
/// learning rate so that an update is many bf16 units of the parameter (else a missing update
/// would hide inside the tolerance).
TYPED_TEST(CudaBlocks, AdamWMatchesReference) {
  using T = TypeParam;
  TP_REQUIRE_CUDA();
  const double lr = std::is_same_v<T, float> ? 1e-2 : 1e-1;
  const AdamWOptions options{.lr = lr, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
  constexpr std::int64_t rows = 9, cols = 7;
  constexpr int steps = 3;
  const auto w0 = test::random_matrix<T>(rows, cols, ref::test_seed(1));
  const auto v0 = test::random_matrix<T>(1, cols, ref::test_seed(2));
  std::vector<ref::Matrix> gw, gv;
  for (int s = 0; s < steps; ++s) {
    gw.push_back(test::random_matrix<T>(rows, cols, ref::test_seed(10 + s)));
    gv.push_back(test::random_matrix<T>(1, cols, ref::test_seed(20 + s)));
  }
  std::vector<ref::Matrix> want_w, want_v, want_mw, want_vw;
  {
    ref::Matrix w = w0, v = v0;
    ref::AdamWState sw, sv;
    for (int s = 0; s < steps; ++s) {
      ref::adamw_step(w, gw[s], sw, options.lr, options.beta1, options.beta2, options.eps, options.weight_decay);
      ref::adamw_step(v, gv[s], sv, options.lr, options.beta1, options.beta2, options.eps, 0.0);  // vectors: no decay
      want_w.push_back(w);
      want_v.push_back(v);
      want_mw.push_back(sw.m);
      want_vw.push_back(sw.v);
    }
  }
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    auto dev = std::make_shared<Cuda>();
    const int world = comm->size(), rank = comm->rank();
    const Range rr = partition(rows, world, rank), cr = partition(cols, world, rank);
    struct Owned {
      Tensor<T, Cuda> value, grad;
      Parameter<T> p;
    };
    auto make = [&](std::string name, const ref::Matrix& full, Range r, Range c) {
      Owned o{upload<T>(dev, full.block(r.begin, c.begin, r.size(), c.size())), Tensor<T, Cuda>(dev, r.size(), c.size()), {}};
      o.p = {std::move(name), o.value.view(), o.grad.view(), full.rows, full.cols, r, c};
      return o;
    };
    Owned by_rows = make("a", w0, rr, {0, cols}), by_cols = make("b", w0, {0, rows}, cr),
          vec = make("c", v0, {0, 1}, {0, cols});
    AdamW<T, Cuda> opt(Context<Cuda>(comm, dev), {by_rows.p, by_cols.p, vec.p}, options);
    for (int s = 0; s < steps; ++s) {
      for (Owned* o : {&by_rows, &by_cols, &vec}) {
        const ref::Matrix& g = o == &vec ? gv[s] : gw[s];
        const auto g_d = upload<T>(dev, g.block(o->p.rows.begin, o->p.cols.begin, o->p.rows.size(), o->p.cols.size()));
        dev->copy(g_d.view(), o->grad.view());
      }
      opt.step();
      TP_EXPECT_CLOSE(T, download(*dev, by_rows.value), want_w[s].rows_range(rr.begin, rr.size()));
      TP_EXPECT_CLOSE(T, download(*dev, by_cols.value), want_w[s].cols_range(cr.begin, cr.size()));
      TP_EXPECT_CLOSE(T, download(*dev, vec.value), want_v[s]);
      const auto state = opt.state();  // exp_avg, exp_avg_sq of each parameter in turn
      TP_EXPECT_CLOSE(T, download<T>(*dev, ConstView<T>(state[0].value)), want_mw[s].rows_range(rr.begin, rr.size()));
      TP_EXPECT_CLOSE(T, download<T>(*dev, ConstView<T>(state[3].value)), want_vw[s].cols_range(cr.begin, cr.size()));
    }
  });
}

/// sum_squares in double on the device, and the gradient norm and clipping over sharded and
/// replicated gradients through it (the norm's all-reduce runs on a device buffer).
TYPED_TEST(CudaBlocks, GradNormAndClipMatchReference) {
  using T = TypeParam;
  TP_REQUIRE_CUDA();
  constexpr std::int64_t rows = 300, cols = 70;  // 21000 elements: several blocks of partial sums
  const auto g = test::random_matrix<T>(rows, cols, ref::test_seed(1));
  const auto b = test::random_matrix<T>(1, cols, ref::test_seed(2));
  double sq = 0;
  for (double v : g.data) sq += v * v;
  double sq_b = 0;
  for (double v : b.data) sq_b += v * v;
  const double norm = std::sqrt(sq + sq_b), max_norm = norm / 4;
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    auto dev = std::make_shared<Cuda>();
    const Range rr = partition(rows, comm->size(), comm->rank());
    auto g_d = upload<T>(dev, g.rows_range(rr.begin, rr.size()));
    auto b_d = upload<T>(dev, b);
    const ref::Matrix mine = g.rows_range(rr.begin, rr.size());
    double want_local = 0;
    for (double v : mine.data) want_local += v * v;
    EXPECT_NEAR(tp::ops::sum_squares<T>(*dev, g_d.view()), want_local, 1e-12 * want_local);
    EXPECT_NEAR(tp::ops::sum_squares<T>(*dev, g_d.view().cols_range(1, 0)), 0.0, 0.0);
    const Context<Cuda> ctx(comm, dev);
    const std::vector<Parameter<T>> ps{{"w", g_d.view(), g_d.view(), rows, cols, rr, {0, cols}},
                                       {"b", b_d.view(), b_d.view(), 1, cols, {0, 1}, {0, cols}}};
    EXPECT_NEAR((grad_norm<T, Cuda>(ctx, ps)), norm, 1e-12 * norm);
    EXPECT_NEAR((clip_grad_norm<T, Cuda>(ctx, ps, max_norm)), norm, 1e-12 * norm);
    const double factor = max_norm / (norm + 1e-6);
    TP_EXPECT_CLOSE(T, download(*dev, g_d), ref::scale(mine, factor));
    TP_EXPECT_CLOSE(T, download(*dev, b_d), ref::scale(b, factor));
  });
}

/// Bad shapes are InvalidArgument naming the sizes, before any kernel runs.
TEST(CudaBlocksErrors, BadShapesNameTheSizes) {
  TP_REQUIRE_CUDA();
  auto dev = std::make_shared<Cuda>();
  Tensor<float, Cuda> a(dev, 4, 6), b(dev, 4, 4), probs(dev, 8, 4);
  try {
    tp::ops::swiglu<float>(*dev, a.view(), b.view());
    ADD_FAILURE() << "swiglu accepted a 4x6 gate_up for a 4x4 output";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("swiglu: gate_up is 4x6, expected 4x8 for 4x4"));
  }
  try {
    tp::ops::attention_forward<float>(*dev, b.view(), b.view(), b.view(), 3, 2, true, probs.view(), b.view());
    ADD_FAILURE() << "attention_forward accepted 4 tokens as sequences of 3";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("do not hold whole sequences of 3 tokens and heads of 2"));
  }
  try {
    tp::ops::attention_forward<float>(*dev, b.view(), b.view(), b.view(), 2, 2, true, probs.view(), b.view());
    ADD_FAILURE() << "attention_forward accepted an 8x4 probs for 2 sequences of 2 heads";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("probs 8x4 (expected 8x2)"));
  }
  Tensor<float, Cuda> mean(dev, 3, 1);
  EXPECT_THROW(tp::ops::layer_norm<float>(*dev, b.view(), b.view().rows_range(0, 1), b.view().rows_range(0, 1),
                                          b.view(), mean.view(), mean.view(), 1e-5),
               InvalidArgument);
}

}  // namespace
}  // namespace tp
