#pragma once
/// The `Device` concept: what a device itself provides to tensors, layers and ops. It covers only
/// memory, copies, fill, GEMM and the stream; every other operation is a free function in tp::ops
/// (tp/ops/*.hpp) with one implementation per device, so adding an op never grows a device class.

#include <concepts>
#include <cstdint>

#include "tp/comm/communicator.hpp"
#include "tp/core/ops.hpp"
#include "tp/core/tensor.hpp"

namespace tp {

template <class D>
concept Device = requires(const D& dev, float* p, ConstView<float> src, MatrixView<float> dst) {
  { D::on_host } -> std::convertible_to<bool>;
  { dev.template allocate<float>(std::int64_t{1}) } -> std::same_as<float*>;
  dev.template deallocate<float>(p, std::int64_t{1});
  dev.template copy<float>(src, dst);
  dev.template to_host<float>(src, dst);
  dev.template from_host<float>(src, dst);
  dev.template fill<float>(dst, 0.0f);
  dev.template gemm<float>(Op::n, Op::t, 1.0f, src, src, 0.0f, dst);
  { dev.stream() } -> std::same_as<Stream>;
  dev.synchronize();
};

}  // namespace tp
