/// NCCL: world size 1 on any GPU machine (NCCL refuses two ranks on one device), and world sizes
/// up to 4 where there are that many GPUs, one thread and one device per rank, bootstrapped over a
/// LocalCommunicator (the same path as bootstrapping over MPI). Test buffers are managed memory.
#include <gtest/gtest.h>

#include "common/cuda_support.hpp"
#include "common/harness.hpp"
#include "tp/comm/local_communicator.hpp"
#include "tp/comm/nccl_communicator.hpp"

namespace tp::test {

std::string_view harness_backend() { return "nccl"; }

void on_ranks(const RankBody& body) {
  std::string why;
  const int devices = Cuda::device_count(&why);
  if (devices == 0) GTEST_SKIP() << "no CUDA device: " << why;
  use_managed_buffers();
  const NcclCommunicator::Options options{.timeout = std::chrono::seconds(60)};
  try {
    auto nccl = NcclCommunicator::create_single(options);
    SCOPED_TRACE("nccl world 1");
    body(std::make_shared<SyncedCommunicator>(nccl, [nccl](Stream s) { nccl->synchronize(s); }));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "nccl world 1: " << e.what();
  }
  for (int world = 2; world <= std::min(devices, 4); ++world) {
    try {
      run_local(world, [&](std::shared_ptr<Communicator> bootstrap) {
        const int rank = bootstrap->rank();
        TP_CUDA_CHECK(cudaSetDevice(rank), "selecting device {}", rank);
        auto opts = options;
        opts.device = rank;
        auto nccl = NcclCommunicator::create(*bootstrap, opts);
        SCOPED_TRACE(fmt::format("nccl world {} rank {}", world, rank));
        body(std::make_shared<SyncedCommunicator>(nccl, [nccl](Stream s) { nccl->synchronize(s); }));
      }, {.timeout = std::chrono::seconds(120)});
    } catch (const std::exception& e) {
      ADD_FAILURE() << "nccl world " << world << ": " << e.what();
    }
  }
}

}  // namespace tp::test
