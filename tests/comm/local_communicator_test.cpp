/// What only the in-process backend can show: timeouts, ranks that disagree, failures that wake peers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

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
  for (const auto& m : messages) EXPECT_THAT(m, HasSubstr("rank 0 called all_reduce with 4 x float32, rank 1 called all_reduce with 5 x float32"));
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

}  // namespace
}  // namespace tp
