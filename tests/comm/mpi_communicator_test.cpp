/// What only MPI needs shown: with a timeout, a peer that stops calling collectives becomes a
/// CommError within the deadline instead of a hang, and the communicator refuses further use;
/// with or without one, the collectives give the same results.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <vector>

#include "common/harness.hpp"
#include "tp/comm/mpi_communicator.hpp"

namespace tp {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

TEST(MpiCommunicator, WithATimeoutEveryCollectiveStillWorks) {
  test::on_ranks([](std::shared_ptr<Communicator> world) {
    MpiCommunicator comm(MPI_COMM_WORLD, {.timeout = 30s});
    const int n = comm.size(), r = comm.rank();
    std::vector<double> v(1000, r + 1.0);
    comm.all_reduce(std::span<double>(v));
    EXPECT_EQ(v[999], n * (n + 1) / 2.0);
    auto work = comm.all_reduce_async(v.data(), v.data(), v.size(), DType::f64, ReduceOp::max);
    work->wait();
    EXPECT_EQ(v[0], n * (n + 1) / 2.0);
    std::vector<std::int64_t> mine(3, r), all(3 * n);
    comm.all_gather(std::span<const std::int64_t>(mine), std::span<std::int64_t>(all));
    EXPECT_EQ(all[3 * n - 1], n - 1);
    std::vector<std::int64_t> block(3);
    comm.reduce_scatter(std::span<const std::int64_t>(all), std::span<std::int64_t>(block));
    EXPECT_EQ(block[0], static_cast<std::int64_t>(n) * r);  // block r of every rank holds r
    // The asynchronous gather and reduce-scatter (MPI_Iallgatherv, MPI_Ireduce_scatter), both in
    // flight at once, their count arrays gone with the calls.
    std::vector<std::int64_t> all_async(3 * n), block_async(3);
    auto gather = comm.all_gather_async(std::span<const std::int64_t>(mine), std::span<std::int64_t>(all_async));
    auto scatter = comm.reduce_scatter_async(std::span<const std::int64_t>(all), std::span<std::int64_t>(block_async));
    scatter->wait();
    gather->wait();
    EXPECT_EQ(all_async, all);
    EXPECT_EQ(block_async, block);
    comm.broadcast(std::span<std::int64_t>(mine), n - 1);
    EXPECT_EQ(mine[0], n - 1);
    comm.barrier();
    auto sub = comm.split(r % 2, r);
    ASSERT_NE(sub, nullptr);
    sub->barrier();
    world->barrier();
  });
}

TEST(MpiCommunicator, NegativeTimeoutIsRefused) {
  test::on_ranks([](std::shared_ptr<Communicator>) {
    EXPECT_THROW(MpiCommunicator(MPI_COMM_WORLD, {.timeout = -1ms}), InvalidArgument);
  });
}

/// Rank 0 calls a collective its peers never join (they are stuck elsewhere): with verification
/// (the signature exchange times out) and without (the collective itself times out). Rank 0's
/// abandoned requests keep its freed communicators' context ids taken, so later communicators
/// cannot match their messages; this file comes last in tp_mpi_tests all the same.
TEST(MpiCommunicator, PeerThatStopsIsACommErrorWithinTheTimeout) {
  test::on_ranks([](std::shared_ptr<Communicator> world) {
    if (world->size() == 1) GTEST_SKIP() << "needs a peer (mpirun -np 2 or more)";
    for (bool verify : {true, false}) {
      MpiCommunicator comm(MPI_COMM_WORLD, {.timeout = 300ms});
      comm.set_verify_collectives(verify);
      if (comm.rank() == 0) {
        std::vector<float> v(1000, 1.f);
        const auto start = Clock::now();
        try {
          comm.all_reduce(std::span<float>(v));
          ADD_FAILURE() << "all_reduce returned without its peers";
        } catch (const CommError& e) {
          EXPECT_THAT(e.what(), HasSubstr("rank 0 of"));
          EXPECT_THAT(e.what(), HasSubstr("waited 300 ms"));
          if (verify) EXPECT_THAT(e.what(), HasSubstr("before all_reduce(1000 x float32, sum)"));
        }
        EXPECT_LT(Clock::now() - start, 5s);
        try {
          comm.barrier();
          ADD_FAILURE() << "a timed-out communicator was used again";
        } catch (const CommError& e) {
          EXPECT_THAT(e.what(), HasSubstr("can no longer communicate"));
        }
      }
      world->barrier();  // the peers were elsewhere all along
    }
  });
}

/// The asynchronous forms time out as the blocking ones do, in wait(): rank 0 starts an
/// all-gather and a reduce-scatter its peers never join (verification off, so that the start
/// returns) and each wait() throws CommError naming the collective within the deadline.
TEST(MpiCommunicator, AsyncCollectiveWithoutPeersTimesOutInWait) {
  test::on_ranks([](std::shared_ptr<Communicator> world) {
    if (world->size() == 1) GTEST_SKIP() << "needs a peer (mpirun -np 2 or more)";
    MpiCommunicator comm(MPI_COMM_WORLD, {.timeout = 300ms});
    comm.set_verify_collectives(false);
    if (comm.rank() == 0) {
      std::vector<float> mine(4, 1.f), all(4 * static_cast<std::size_t>(comm.size()));
      const auto start = Clock::now();
      auto gather = comm.all_gather_async(std::span<const float>(mine), std::span<float>(all));
      EXPECT_THAT([&] { gather->wait(); }, ::testing::ThrowsMessage<CommError>(HasSubstr("all_gather (async)")));
      auto scatter = comm.reduce_scatter_async(std::span<const float>(all), std::span<float>(mine));
      EXPECT_THAT([&] { scatter->wait(); },
                  ::testing::ThrowsMessage<CommError>(HasSubstr("reduce_scatter (async): rank 0 of")));
      EXPECT_LT(Clock::now() - start, 5s);
    }
    world->barrier();  // the peers were elsewhere all along
  });
}

}  // namespace
}  // namespace tp
