/// NCCL: world size 1 on any GPU machine (NCCL refuses two ranks on one device), and world sizes
/// up to 4 where there are that many GPUs, one thread and one device per rank, bootstrapped over a
/// LocalCommunicator (the same path as bootstrapping over MPI). Test buffers: use_device_test_buffers.
///
/// One communicator per (world size, rank) for the whole process, made on first use and replaced
/// only when a test left it aborted: creating and destroying one for each of the few hundred
/// on_ranks calls would cost more than the tests. They are never destroyed (leaked at exit), so
/// that no NCCL teardown runs after the CUDA runtime has shut down.
#include <gtest/gtest.h>

#include <map>
#include <mutex>

#include "common/cuda_support.hpp"
#include "common/harness.hpp"
#include "tp/comm/local_communicator.hpp"
#include "tp/comm/nccl_communicator.hpp"

namespace tp::test {
namespace {

const NcclCommunicator::Options kOptions{.timeout = std::chrono::seconds(60)};

std::shared_ptr<NcclCommunicator>& cached(int world, int rank) {
  static std::mutex mutex;
  static auto* comms = new std::map<std::pair<int, int>, std::shared_ptr<NcclCommunicator>>();
  std::lock_guard lock(mutex);
  return (*comms)[{world, rank}];  // std::map references stay valid as other entries are added
}

std::shared_ptr<Communicator> synced(const std::shared_ptr<NcclCommunicator>& nccl) {
  return std::make_shared<SyncedCommunicator>(nccl, [nccl](Stream s) { nccl->synchronize(s); });
}

}  // namespace

std::string_view harness_backend() { return "nccl"; }

void on_ranks(const RankBody& body) {
  std::string why;
  const int devices = Cuda::device_count(&why);
  if (devices == 0) GTEST_SKIP() << "no CUDA device: " << why;
  use_device_test_buffers();
  try {
    auto& nccl = cached(1, 0);
    if (!nccl || nccl->aborted()) nccl = NcclCommunicator::create_single(kOptions);
    SCOPED_TRACE("nccl world 1");
    body(synced(nccl));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "nccl world 1: " << e.what();
  }
  for (int world = 2; world <= std::min(devices, 4); ++world) {
    try {
      run_local(world, [&](std::shared_ptr<Communicator> bootstrap) {
        const int rank = bootstrap->rank();
        TP_CUDA_CHECK(cudaSetDevice(rank), "selecting device {}", rank);
        auto& nccl = cached(world, rank);
        int broken = !nccl || nccl->aborted(), any_broken = 0;  // every rank must agree to make a new one
        bootstrap->all_reduce(&broken, &any_broken, 1, DType::i32, ReduceOp::max, nullptr);
        if (any_broken != 0) {
          auto opts = kOptions;
          opts.device = rank;
          nccl = NcclCommunicator::create(*bootstrap, opts);
        }
        SCOPED_TRACE(fmt::format("nccl world {} rank {}", world, rank));
        body(synced(nccl));
      }, {.timeout = std::chrono::seconds(120)});
    } catch (const std::exception& e) {
      ADD_FAILURE() << "nccl world " << world << ": " << e.what();
    }
  }
}

}  // namespace tp::test
