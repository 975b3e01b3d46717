/// Bad shapes are InvalidArgument naming the sizes, on every device, before any kernel runs: the
/// op layer checks once for all devices.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/devices.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using ::testing::HasSubstr;

TEST(OpErrors, BadShapesNameTheSizes) {
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  auto dev = std::make_shared<Dev>();
  Tensor<float, Dev> a(dev, 4, 6), b(dev, 4, 4), lse(dev, 8, 4);
  try {
    tp::ops::swiglu<float>(*dev, a.view(), b.view());
    ADD_FAILURE() << "swiglu accepted a 4x6 gate_up for a 4x4 output";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("swiglu: gate_up is 4x6, expected 4x8 for 4x4"));
  }
  try {
    tp::ops::attention_forward<float>(*dev, b.view(), b.view(), b.view(), 3, 2, true, lse.view(), b.view());
    ADD_FAILURE() << "attention_forward accepted 4 tokens as sequences of 3";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("q has 4 tokens and k 4: not the same whole sequences of 3 tokens"));
  }
  try {
    tp::ops::attention_forward<float>(*dev, b.view(), b.view(), b.view(), 2, 2, true, lse.view(), b.view());
    ADD_FAILURE() << "attention_forward accepted an 8x4 lse for 2 heads of 4 tokens";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("lse 8x4 (expected 2x4: heads x tokens)"));
  }
  Tensor<float, Dev> mean(dev, 3, 1);
  EXPECT_THROW(tp::ops::layer_norm<float>(*dev, b.view(), b.view().rows_range(0, 1), b.view().rows_range(0, 1),
                                          b.view(), mean.view(), mean.view(), 1e-5),
               InvalidArgument);
  EXPECT_THROW(tp::ops::add<float>(*dev, a.view(), b.view()), InvalidArgument);
}

/// first_outside: the position of the first id outside [begin, end) that is not `allowed`.
TEST(OpErrors, FirstOutsideFindsTheFirstBadId) {
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  auto dev = std::make_shared<Dev>();
  const auto ids = test::upload_ids(dev, {1, 2, 8, 9, 3, -4}, 2, 3);
  EXPECT_EQ(tp::ops::first_outside(*dev, ids.view(), -4, 9, 9), -1);
  EXPECT_EQ(tp::ops::first_outside(*dev, ids.view(), 0, 9, 9), 5);
  EXPECT_EQ(tp::ops::first_outside(*dev, ids.view(), 0, 9, -4), 3);
}

}  // namespace
}  // namespace tp
