/// What only the in-process backend can show: timeouts, ranks that disagree, failures that wake peers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "tp/comm/local_communicator.hpp"

namespace tp {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

TEST(LocalCommunicator, MissingPeerTimesOutNamingTheRanks) {
  auto comms = LocalCommunicator::create(3, {.timeout = 200ms});
  std::vector<float> data(4, 1.f);
  std::string message;
  std::thread other([&] {
    try {
      comms[1]->all_reduce(std::span<float>(data));
    } catch (const CommError&) {
    }
  });
  try {
    std::vector<float> mine(4, 1.f);
    comms[0]->all_reduce(std::span<float>(mine));
  } catch (const CommError& e) {
    message = e.what();
  }
  other.join();
  // whichever of ranks 0 and 1 timed out first, rank 2 never arrived
  EXPECT_THAT(message, HasSubstr("all_reduce"));
  EXPECT_THAT(message, ::testing::AnyOf(HasSubstr("ranks [2] of 3 never arrived"), HasSubstr("gave up because")));
}

TEST(LocalCommunicator, RanksThatDisagreeOnSizesFail) {
  std::vector<std::string> messages(2);
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    std::vector<float> data(4 + comm->rank(), 1.f);
    try {
      comm->all_reduce(std::span<float>(data));
    } catch (const CommError& e) {
      messages[comm->rank()] = e.what();
    }
  });
  for (const auto& m : messages)
    EXPECT_THAT(m, HasSubstr("rank 0 called all_reduce(4 x float32, sum); rank 1 called all_reduce(5 x float32, sum)"));
}

/// With collective verification off, the rendezvous still compares the calls (peers would read
/// past buffers otherwise) and names both, with the differing root or reduction.
TEST(LocalCommunicator, RanksThatDisagreeFailWithVerificationOffToo) {
  std::vector<std::string> messages(2);
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    comm->set_verify_collectives(false);
    std::vector<float> data(4, 1.f);
    try {
      comm->broadcast(std::span<float>(data), comm->rank());
    } catch (const CommError& e) {
      messages[comm->rank()] = e.what();
    }
    try {
      comm->all_reduce(std::span<float>(data), comm->rank() == 0 ? ReduceOp::sum : ReduceOp::max);
    } catch (const CommError& e) {
      messages[comm->rank()] += e.what();
    }
  });
  for (const auto& m : messages) {
    EXPECT_THAT(m, HasSubstr("rank 0 called broadcast(4 x float32, root 0), rank 1 called broadcast(4 x float32, root 1)"));
    EXPECT_THAT(m, HasSubstr("rank 0 called all_reduce(4 x float32, sum), rank 1 called all_reduce(4 x float32, max)"));
  }
}

TEST(LocalCommunicator, DifferentCollectivesAtOnceFail) {
  std::vector<int> failed(2, 0);
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    float v = 1;
    try {
      if (comm->rank() == 0) comm->barrier();
      else comm->all_reduce(std::span<float>(&v, 1));
    } catch (const CommError&) {
      failed[comm->rank()] = 1;
    }
  });
  EXPECT_EQ(failed, (std::vector<int>{1, 1}));
}

TEST(LocalCommunicator, FailingRankWakesItsPeersAndItsErrorIsRethrown) {
  const auto start = std::chrono::steady_clock::now();
  try {
    run_local(3, [](std::shared_ptr<Communicator> comm) {
      if (comm->rank() == 2) throw InvalidArgument("rank 2 has a bad shape");
      auto sub = comm->split(0, comm->rank());  // ranks 0 and 1 wait here for rank 2
      sub->barrier();
    }, {.timeout = 60s});
    FAIL() << "run_local returned normally";
  } catch (const InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "rank 2 has a bad shape");
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
}

TEST(LocalCommunicator, RejectsEmptyWorld) { EXPECT_THROW(LocalCommunicator::create(0), InvalidArgument); }

TEST(LocalCommunicator, RejectsATimeoutThatIsNotPositive) {
  for (auto timeout : {0ms, -5ms}) {
    try {
      LocalCommunicator::create(2, {.timeout = timeout});
      ADD_FAILURE() << "accepted a timeout of " << timeout.count() << " ms";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr(fmt::format("got {} ms", timeout.count())));
    }
  }
}

/// Host memory whose copies or reductions, on the threads that ask for it, are slow or fail.
class FaultyMemory final : public LocalMemory {
 public:
  static inline thread_local std::chrono::milliseconds copy_delay{0};
  static inline thread_local bool fail_reduce = false;
  void acquire(Stream s) override { host_.acquire(s); }
  void copy(void* dst, const void* src, std::size_t bytes, Stream s) override {
    std::this_thread::sleep_for(copy_delay);
    host_.copy(dst, src, bytes, s);
  }
  void reduce(DType dtype, ReduceOp op, const void* const* srcs, int n, std::size_t offset, std::size_t count, void* dst,
              Stream s) override {
    if (fail_reduce) throw InvalidArgument("injected reduction failure");
    host_.reduce(dtype, op, srcs, n, offset, count, dst, s);
  }
  void release(Stream s) override { host_.release(s); }

 private:
  HostMemory host_;
};

/// Once every rank has arrived, peers write into this rank's buffers: a peer slower than the
/// timeout in doing so is waited for, not left writing into a buffer its owner has freed.
TEST(LocalCommunicator, PeerSlowerThanTheTimeoutInTheDataPhaseIsWaitedFor) {
  run_local(2, [](std::shared_ptr<Communicator> comm) {
    FaultyMemory::copy_delay = comm->rank() == 1 ? 400ms : 0ms;
    std::vector<float> data(1000, comm->rank() + 1.f);
    comm->all_reduce(std::span<float>(data));
    for (float x : data) ASSERT_EQ(x, 3.f);
    FaultyMemory::copy_delay = 0ms;
  }, {.timeout = 100ms, .memory = std::make_shared<FaultyMemory>()});
}

/// A peer that fails in the data phase and goes on (it caught its error) leaves the others an
/// incomplete result: they throw naming it, and the ranks stay in step for the next collective.
TEST(LocalCommunicator, PeerFailingInTheDataPhaseFailsItsPeersAndKeepsThemInStep) {
  std::vector<std::string> messages(2);
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    FaultyMemory::fail_reduce = comm->rank() == 1;
    std::vector<float> data(1000, 1.f);
    try {
      comm->all_reduce(std::span<float>(data));
    } catch (const Error& e) {
      messages[comm->rank()] = e.what();
    }
    FaultyMemory::fail_reduce = false;
    std::vector<float> again(10, 1.f);
    comm->all_reduce(std::span<float>(again));
    EXPECT_EQ(again[9], 2.f);
  }, {.timeout = 2s, .memory = std::make_shared<FaultyMemory>()});
  EXPECT_THAT(messages[0], HasSubstr("rank 0 has an incomplete result: rank 1 failed in all_reduce"));
  EXPECT_THAT(messages[1], HasSubstr("injected reduction failure"));
}

}  // namespace
}  // namespace tp
