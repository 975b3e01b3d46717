/// Inputs that used to be accepted and turned into garbage later (NaN weights, a switch that fell
/// through, a tensor "constructed" with no memory, overlapping rows): each is now a tp error at the
/// call that takes it, and the message names the value.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "tp/tp.hpp"

namespace tp {
namespace {

using ::testing::HasSubstr;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("(not a tp::Error: ") + e.what() + ")";
  }
  return "(no tp::Error thrown)";
}

#define TP_EXPECT_ERROR(expr, text) EXPECT_THAT(error_of([&] { expr; }), HasSubstr(text)) << #expr

struct Owned {
  Tensor<float, Cpu> value{2, 3}, grad{2, 3}, m{2, 3}, v{2, 3};
  Parameter<float> p{"w", value.view(), grad.view(), 2, 3, {0, 2}, {0, 3}};
};

TEST(BadInputs, OptimizerHyperparameters) {
  run_local(1, [](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    Owned o;
    auto adamw = [&](AdamWOptions options) { AdamW<float>(ctx, {o.p}, options); };
    TP_EXPECT_ERROR(adamw({.lr = kInf}), "AdamW: lr must be finite and >= 0, got inf");
    TP_EXPECT_ERROR(adamw({.lr = kNaN}), "AdamW: lr must be finite and >= 0, got nan");
    TP_EXPECT_ERROR(adamw({.lr = -1e-3}), "AdamW: lr must be finite and >= 0, got -0.001");
    TP_EXPECT_ERROR(adamw({.eps = kInf}), "AdamW: eps must be finite and > 0, got inf");
    TP_EXPECT_ERROR(adamw({.eps = 0}), "AdamW: eps must be finite and > 0, got 0");
    TP_EXPECT_ERROR(adamw({.weight_decay = kInf}), "AdamW: weight_decay must be finite and >= 0, got inf");
    TP_EXPECT_ERROR(adamw({.weight_decay = kNaN}), "AdamW: weight_decay must be finite and >= 0, got nan");
    TP_EXPECT_ERROR(adamw({.beta1 = kNaN}), "AdamW: betas must be in [0, 1), got (nan, 0.999)");
    TP_EXPECT_ERROR(adamw({.beta2 = 1.0}), "AdamW: betas must be in [0, 1), got (0.9, 1)");
    AdamW<float> opt(ctx, {o.p});
    TP_EXPECT_ERROR(opt.set_lr(kInf), "AdamW: learning rate must be finite and >= 0, got inf");
    TP_EXPECT_ERROR(ops::adamw_step(*ctx.device, o.value.view(), ConstView<float>(o.grad.view()), o.m.view(),
                                    o.v.view(), kInf, 0.9, 0.999, 1e-8, 0.0, 1),
                    "adamw_step: lr inf, eps 1e-08, weight_decay 0 must be finite");
  });
}

TEST(BadInputs, NormEpsilon) {
  run_local(1, [](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    TP_EXPECT_ERROR(LayerNorm<float>(ctx, 4, {.eps = kInf, .name = "ln"}),
                    "ln: eps must be positive and finite, got inf");
    TP_EXPECT_ERROR(LayerNorm<float>(ctx, 4, {.eps = kNaN, .name = "ln"}),
                    "ln: eps must be positive and finite, got nan");
    Tensor<float, Cpu> x(2, 4), y(2, 4), g(1, 4), b(1, 4), mean(2, 1), rstd(2, 1);
    TP_EXPECT_ERROR(ops::layer_norm(Cpu(), ConstView<float>(x.view()), ConstView<float>(g.view()),
                                    ConstView<float>(b.view()), y.view(), mean.view(), rstd.view(), kInf),
                    "layer_norm: eps must be finite and positive, got inf");
  });
}

TEST(BadInputs, InitializationScales) {
  run_local(1, [](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    Owned o;
    TP_EXPECT_ERROR(init_normal(Cpu(), o.p, 1, kNaN),
                    "w: init_normal needs a finite, non-negative std and a finite "
                    "mean, got std nan");
    TP_EXPECT_ERROR(init_normal(Cpu(), o.p, 1, -0.02), "got std -0.02");
    TP_EXPECT_ERROR(init_normal(Cpu(), o.p, 1, kInf), "got std inf");
    TP_EXPECT_ERROR(init_normal(Cpu(), o.p, 1, 0.02, kNaN), "and mean nan");
    TP_EXPECT_ERROR(init_uniform(Cpu(), o.p, 1, kNaN), "w: init_uniform needs a finite, non-negative bound, got nan");
    TP_EXPECT_ERROR(scaled_init_std(kNaN, 2), "scaled_init_std: std must be finite and non-negative, got nan");
    TP_EXPECT_ERROR(VocabParallelEmbedding<float>(ctx, 8, 4, {.name = "wte", .init_std = kNaN}),
                    "wte: init_std must be finite and non-negative, got nan");
    TP_EXPECT_ERROR(VocabParallelEmbedding<float>(ctx, 8, 4, {.name = "wte", .init_std = -0.1}),
                    "wte: init_std must be finite and non-negative, got -0.1");
  });
}

TEST(BadInputs, LayerOptions) {
  run_local(1, [](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    TP_EXPECT_ERROR(ParallelAttention<float>(ctx, 8, 2, 2, {.head_dim = -4, .name = "attn"}),
                    "attn: head_dim must be positive (or 0: hidden / heads), got -4");
    TP_EXPECT_ERROR(ParallelMLP<float>(ctx, 4, 8, {.activation = static_cast<Activation>(7), .name = "mlp"}),
                    "mlp: activation 7 is not a tp::Activation");
    TP_EXPECT_ERROR(VocabParallelCrossEntropy<float>(ctx, 8, {.label_smoothing = kNaN, .name = "ce"}),
                    "ce: label_smoothing must be in [0, 1], got nan");
    TP_EXPECT_ERROR(Cpu({.threads = -1}), "Cpu: threads must be positive (or 0: leave the BLAS setting alone), got -1");
  });
}

TEST(BadInputs, EnumsOutsideTheirValues) {
  run_local(1, [](std::shared_ptr<Communicator> comm) {
    float buf[4] = {1, 2, 3, 4};
    TP_EXPECT_ERROR(comm->all_reduce(buf, buf, 4, DType::f32, static_cast<ReduceOp>(9)),
                    "all_reduce: reduce op 9 is not a tp::ReduceOp");
    TP_EXPECT_ERROR(comm->all_reduce(buf, buf, 4, static_cast<DType>(42)), "all_reduce: dtype 42 is not a tp::DType");
    TP_EXPECT_ERROR(comm->reduce_scatter(buf, buf, 4, DType::f32, static_cast<ReduceOp>(9)),
                    "reduce_scatter: reduce op 9 is not a tp::ReduceOp");
    TP_EXPECT_ERROR(comm->broadcast(buf, 4, static_cast<DType>(42), 0), "broadcast: dtype 42 is not a tp::DType");
    Tensor<float, Cpu> x(2, 2), y(2, 2);
    TP_EXPECT_ERROR(ops::gelu(Cpu(), ConstView<float>(x.view()), y.view(), static_cast<Gelu>(5)),
                    "gelu: kind 5 is not a tp::Gelu");
    TP_EXPECT_ERROR(Cpu().gemm(static_cast<Op>(3), Op::n, 1.f, ConstView<float>(x.view()), ConstView<float>(x.view()),
                               0.f, y.view()),
                    "gemm: op_a 3 and op_b 0 must be tp::Op::n or tp::Op::t");
  });
}

TEST(BadInputs, ViewsAndTensorShapes) {
  float data[12] = {};
  TP_EXPECT_ERROR(MatrixView<float>(data, 3, 4, 2), "view of 3x4 has leading dimension 2 < 4 columns");
  TP_EXPECT_ERROR(MatrixView<float>(data, -1, 4), "view shape -1x4 is negative");
  TP_EXPECT_ERROR(MatrixView<float>(nullptr, 2, 3), "view of 2x3 has no data (a null pointer)");
  const std::int64_t huge = std::numeric_limits<std::int64_t>::max() / 2;
  TP_EXPECT_ERROR(MatrixView<float>(data, huge, 4),
                  fmt::format("view of {}x4 with leading dimension 4 spans more", huge));
  TP_EXPECT_ERROR((Tensor<float, Cpu>(huge, 4)), fmt::format("tensor of {}x4 elements of 4 bytes is larger", huge));
  TP_EXPECT_ERROR((Tensor<float, Cpu>(std::int64_t{1} << 31, std::int64_t{1} << 31)),
                  "tensor of 2147483648x2147483648 elements of 4 bytes is larger than memory can address");
  // Valid edge cases stay valid: one row with any leading dimension, empty views without data.
  EXPECT_NO_THROW(MatrixView<float>(data, 1, 4, 0));
  EXPECT_NO_THROW(MatrixView<float>(nullptr, 0, 4));
  // Copies of empty matrices read no pointer (memcpy from null is undefined even for 0 bytes).
  Tensor<float, Cpu> empty(0, 3);
  EXPECT_NO_THROW(Cpu().copy(ConstView<float>(nullptr, 0, 3), empty.view()));
}

}  // namespace
}  // namespace tp
