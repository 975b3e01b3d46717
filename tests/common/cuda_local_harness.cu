/// The in-process harness on one GPU: ranks as threads over LocalCommunicator with device memory
/// (CudaLocalMemory), world sizes 1 to 4, test buffers that host and device both reach
/// (use_device_test_buffers). Without a device every test that uses it reports skipped, with the
/// reason. A rank that fails an assertion stops its peers at once (run_rank_stopping_peers), and
/// the first world size with a failure ends the test: a GPU machine's minutes are few, and the
/// larger world sizes would mostly repeat it.
#include <gtest/gtest.h>

#include "common/cuda_support.hpp"
#include "common/harness.hpp"
#include "tp/comm/local_communicator.hpp"
#include "tp/device/cuda_local_memory.cuh"

namespace tp::test {

std::string_view harness_backend() { return "cuda-local"; }

void on_ranks(const RankBody& body) {
  const std::string why = no_cuda_device_reason();
  if (!why.empty()) GTEST_SKIP() << "no CUDA device: " << why;
  use_device_test_buffers();
  for (int world = 1; world <= 4; ++world) {
    try {
      run_local(
          world,
          [&](std::shared_ptr<Communicator> comm) {
            SCOPED_TRACE(fmt::format("cuda-local world {} rank {}", world, comm->rank()));
            run_rank_stopping_peers(body, std::make_shared<SyncedCommunicator>(std::move(comm), sync_stream));
          },
          {.timeout = std::chrono::seconds(60), .memory = std::make_shared<CudaLocalMemory>()});
    } catch (const std::exception& e) {
      ADD_FAILURE() << "cuda-local world " << world << ": " << e.what();
    }
    if (::testing::Test::HasFailure()) return;
  }
}

}  // namespace tp::test
