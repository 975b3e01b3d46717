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

}  // namespace
}  // namespace tp
