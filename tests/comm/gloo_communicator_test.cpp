/// What only Gloo needs shown: peers that never arrive become CommError within the timeout, at the
/// rendezvous and inside a collective, and every way of meeting (store, directory, environment,
/// another communicator) connects the same world.
#include <gloo/rendezvous/hash_store.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "tp/comm/gloo_communicator.hpp"
#include "tp/comm/local_communicator.hpp"

namespace tp {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

/// Sums rank + 1 over the world and checks the result on every rank.
void expect_world_sums(Communicator& comm, int world) {
  std::vector<double> v(1000, comm.rank() + 1.0);
  comm.all_reduce(std::span<double>(v));
  for (double x : v) ASSERT_EQ(x, world * (world + 1) / 2.0);
}

TEST(GlooCommunicator, PeerMissingAtRendezvousTimesOutNamingIt) {
  ::gloo::rendezvous::HashStore store;
  std::vector<std::string> messages(2);
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank)  // rank 2 of 3 never comes
    threads.emplace_back([&, rank] {
      try {
        GlooCommunicator comm(store, rank, 3, {.timeout = 300ms});
      } catch (const CommError& e) {
        messages[rank] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_LT(Clock::now() - start, 10s);
  for (const auto& m : messages) {
    EXPECT_THAT(m, HasSubstr("rendezvous"));
    EXPECT_THAT(m, HasSubstr("ranks [2] of 3 never arrived"));
  }
}

/// Without collective verification the all_reduce itself times out; with it (the default), the
/// signature exchange before it does, and says which call it was about to make.
TEST(GlooCommunicator, PeerMissingAtCollectiveTimesOutAndBreaksTheCommunicator) {
  for (bool verify : {false, true}) {
    ::gloo::rendezvous::HashStore store;
    std::vector<std::string> first(3), second(3);
    std::atomic<int> done = 0;
    const auto start = Clock::now();
    std::vector<std::thread> threads;
    for (int rank = 0; rank < 3; ++rank)
      threads.emplace_back([&, rank] {
        GlooCommunicator comm(store, rank, 3, {.timeout = 300ms});
        comm.set_verify_collectives(verify);
        if (rank == 2) {  // connected, but never joins the all_reduce
          while (done < 2) std::this_thread::sleep_for(10ms);
          return;
        }
        std::vector<float> v(100000, 1.f);
        try {
          comm.all_reduce(std::span<float>(v));
        } catch (const CommError& e) {
          first[rank] = e.what();
        }
        try {
          comm.barrier();
        } catch (const CommError& e) {
          second[rank] = e.what();
        }
        ++done;
      });
    for (auto& t : threads) t.join();
    EXPECT_LT(Clock::now() - start, 10s);
    for (int rank = 0; rank < 2; ++rank) {
      if (verify) {
        EXPECT_THAT(first[rank], HasSubstr(fmt::format("gloo communicator, rank {} of 3: exchanging call signatures "
                                                       "before all_reduce(100000 x float32, sum)", rank)));
      } else {
        EXPECT_THAT(first[rank], HasSubstr(fmt::format("GlooCommunicator all_reduce: rank {} of 3", rank)));
      }
      EXPECT_THAT(first[rank], HasSubstr("300 ms"));
      EXPECT_THAT(second[rank], HasSubstr("can no longer communicate"));
    }
  }
}

TEST(GlooCommunicator, MeetsThroughADirectory) {
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("tp_gloo_test_{}", ::getpid());
  std::filesystem::remove_all(dir);
  std::vector<std::thread> threads;
  std::vector<int> ok(3, 0);
  for (int rank = 0; rank < 3; ++rank)
    threads.emplace_back([&, rank] {
      auto comm = GlooCommunicator::from_directory(dir.string(), rank, 3, {.timeout = 30s});
      expect_world_sums(*comm, 3);
      ok[rank] = 1;
    });
  for (auto& t : threads) t.join();
  std::filesystem::remove_all(dir);
  EXPECT_EQ(ok, (std::vector<int>{1, 1, 1}));
}

TEST(GlooCommunicator, FromEnvNamesWhatIsMissing) {
  if (std::getenv("TP_RANK") || std::getenv("OMPI_COMM_WORLD_RANK") || std::getenv("PMI_RANK")) GTEST_SKIP();
  try {
    GlooCommunicator::from_env();
    FAIL() << "from_env worked without a rank";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("TP_RANK"));
  }
}

TEST(GlooCommunicator, BootstrapsOverAnotherCommunicatorAndSplits) {
  for (int world = 1; world <= 4; ++world)
    run_local(world, [world](std::shared_ptr<Communicator> local) {
      GlooCommunicator comm(*local, {.timeout = 30s});
      EXPECT_EQ(comm.rank(), local->rank());
      expect_world_sums(comm, world);
      // Group sizes 1 and 2 (world 3), a rank left out (world 4): every rank joins the exchange.
      const int color = world == 4 && comm.rank() == 3 ? -1 : comm.rank() % 2;
      auto sub = comm.split(color, -comm.rank());
      if (color < 0) {
        EXPECT_EQ(sub, nullptr);
        return;
      }
      ASSERT_NE(sub, nullptr);
      std::int64_t v = comm.rank(), want = 0, members = 0;
      for (int r = 0; r < world; ++r)
        if (r % 2 == color && !(world == 4 && r == 3)) want += r, ++members;
      sub->all_reduce(std::span<std::int64_t>(&v, 1));
      EXPECT_EQ(v, want);
      EXPECT_EQ(sub->size(), members);
    });
}

TEST(GlooCommunicator, RejectsBadArguments) {
  ::gloo::rendezvous::HashStore store;
  EXPECT_THROW(GlooCommunicator(store, 2, 2), InvalidArgument);
  EXPECT_THROW(GlooCommunicator(store, 0, 1, {.timeout = 0ms}), InvalidArgument);
}

}  // namespace
}  // namespace tp
