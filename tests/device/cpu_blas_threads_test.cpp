/// OpenBLAS keeps one thread count for the whole process: tp::Cpu sets it only when the caller asks
/// (CpuOptions::threads > 0). A default Cpu, the one host tensors share, or a Context's default
/// device leaves the caller's setting alone.

#include <gtest/gtest.h>

#include "tp/tp.hpp"

namespace tp {
namespace {

#ifdef OPENBLAS_VERSION
TEST(CpuBlasThreads, SetOnlyWhenAsked) {
  const int before = openblas_get_num_threads();
  openblas_set_num_threads(2);
  const int caller = openblas_get_num_threads();
  if (caller < 2) {
    openblas_set_num_threads(before);
    GTEST_SKIP() << "this OpenBLAS runs one thread only (a serial build), so a reset to 1 cannot be seen";
  }
  {
    const Cpu plain;
    Tensor<float, Cpu> host(3, 3);  // through Cpu::shared()
    run_local(1, [](std::shared_ptr<Communicator> comm) { Context<> ctx(comm); });
    EXPECT_EQ(openblas_get_num_threads(), caller);
  }
  const Cpu asked({.threads = 1});
  EXPECT_EQ(openblas_get_num_threads(), 1);
  const Cpu plain_again;
  EXPECT_EQ(openblas_get_num_threads(), 1);  // the last explicit request stands
  openblas_set_num_threads(before);
}
#endif

}  // namespace
}  // namespace tp
