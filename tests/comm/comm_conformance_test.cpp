/// The conformance suite every backend runs: each collective checked against what every rank can
/// compute from rank-seeded inputs. Values are multiples of 1/4 below 2^10, so float sums are exact
/// in any reduction order and the comparisons can be exact. The 16-bit types (tp::bf16, tp::f16)
/// hold these values and their sums over four ranks exactly; products of four are exact in float,
/// where every host backend reduces them, and are compared rounded once to the 16-bit type. Buffers come from the harness
/// (test::Buffer), so device harnesses run the same bodies on GPU-visible memory.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "common/harness.hpp"
#include "tp/core/partition.hpp"

namespace tp {
namespace {

using test::on_ranks;

template <class T>
T value(int rank, std::size_t i) {
  const auto v = static_cast<std::int64_t>((rank * 131 + static_cast<std::int64_t>(i) * 7) % 97) - 48;
  if constexpr (std::is_floating_point_v<T> || is_float16_v<T>) return static_cast<T>(static_cast<float>(v) * 0.25f);
  return static_cast<T>(v);
}

template <class T>
test::Buffer<T> rank_values(int rank, std::size_t n) {
  test::Buffer<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = value<T>(rank, i);
  return v;
}

/// In accum_t<T> (float for the 16-bit types), rounded once, as the backends reduce them.
template <class T>
T reduce_expected(ReduceOp op, int world, std::size_t i) {
  accum_t<T> acc = value<T>(0, i);
  for (int q = 1; q < world; ++q) {
    const accum_t<T> v = value<T>(q, i);
    switch (op) {
      case ReduceOp::sum: acc += v; break;
      case ReduceOp::prod: acc *= v; break;
      case ReduceOp::min: acc = std::min(acc, v); break;
      case ReduceOp::max: acc = std::max(acc, v); break;
    }
  }
  return static_cast<T>(acc);
}

template <class T>
class Collectives : public ::testing::Test {};
using Elements = ::testing::Types<float, double, std::int32_t, std::int64_t, bf16, f16>;
TYPED_TEST_SUITE(Collectives, Elements);

/// all_reduce of n elements, out of place and in place, against the expected values; the input
/// must come back as it was.
template <class T>
void check_all_reduce(Communicator& comm, ReduceOp op, std::size_t n) {
  const int world = comm.size(), rank = comm.rank();
  const auto send = rank_values<T>(rank, n);
  test::Buffer<T> recv(n, T(-1)), inplace = send;
  comm.all_reduce(send.data(), recv.data(), n, dtype_of<T>, op);
  comm.all_reduce(std::span<T>(inplace), op);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const T want = reduce_expected<T>(op, world, i);
    wrong += (recv[i] != want) + (inplace[i] != want);
  }
  EXPECT_EQ(wrong, 0u) << name(op) << " of " << n << " elements";
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(send[i], value<T>(rank, i)) << "the input was written";
}

TYPED_TEST(Collectives, AllReduceEveryOpInPlaceAndOutOfPlace) {
  using T = TypeParam;
  on_ranks([](std::shared_ptr<Communicator> comm) {
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::prod, ReduceOp::min, ReduceOp::max})
      for (std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{1000}, std::size_t{4099}}) {
        // NCCL multiplies 16-bit values in their own type at each step of its ring, not once in float.
        if (is_float16_v<T> && op == ReduceOp::prod && comm->backend() == "nccl") continue;
        check_all_reduce<T>(*comm, op, n);
      }
  });
}

/// Around the sizes where a verified all_reduce changes ways: MPI carries up to 2 KiB with its
/// call signature (reduced on the host), Gloo 64 KiB, and Gloo gathers the rest of the input up to
/// 256 KiB after the signatures; above, the signature exchange is followed by the backend's own
/// all_reduce. And nothing at all. Every backend runs it.
TYPED_TEST(Collectives, AllReduceOnBothSidesOfTheFusedSize) {
  using T = TypeParam;
  on_ranks([](std::shared_ptr<Communicator> comm) {
    for (std::size_t fused : {std::size_t{2048} / sizeof(T), std::size_t{65536} / sizeof(T), std::size_t{256 << 10} / sizeof(T)})
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::max})
        for (std::size_t n : {std::size_t{0}, fused - 1, fused, fused + 1}) {
          check_all_reduce<T>(*comm, op, n);
        }
  });
}

TYPED_TEST(Collectives, AllReduceAsync) {
  using T = TypeParam;
  on_ranks([](std::shared_ptr<Communicator> comm) {
    auto data = rank_values<T>(comm->rank(), 513);
    auto work = comm->all_reduce_async(data.data(), data.data(), data.size(), dtype_of<T>);
    work->wait();
    for (std::size_t i = 0; i < data.size(); ++i) ASSERT_EQ(data[i], reduce_expected<T>(ReduceOp::sum, comm->size(), i));
  });
}

/// all_reduce and all_reduce_async give the same bits. Inputs whose float sum depends on the order
/// (1e8 on rank 0, 3 on the others: 1e8 + 3 + 3 rounds to 1e8, 3 + 3 + 1e8 to 1e8 + 8) tell a host
/// reduction in rank order from a backend's own ring apart: sizes where MPI (2 KiB) and Gloo
/// (256 KiB) carry the data with the verification. (Above, MPI's non-blocking all_reduce may take
/// another algorithm than its blocking one: no promise there.)
TEST(Collectives, AllReduceAsyncEqualsBlockingBitForBit) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    std::vector<std::size_t> sizes{7, 500};
    if (comm->backend() == "gloo") sizes.insert(sizes.end(), {16000, 60000});
    for (std::size_t n : sizes) {
      std::vector<float> blocking(n), async(n);
      for (std::size_t i = 0; i < n; ++i) blocking[i] = comm->rank() == 0 ? 1e8f + 8.f * static_cast<float>(i % 7) : 3.f;
      async = blocking;
      comm->all_reduce(std::span<float>(blocking));
      comm->all_reduce_async(async.data(), async.data(), n, DType::f32)->wait();
      std::size_t differ = 0;
      for (std::size_t i = 0; i < n; ++i) differ += std::bit_cast<std::uint32_t>(blocking[i]) != std::bit_cast<std::uint32_t>(async[i]);
      EXPECT_EQ(differ, 0u) << n << " elements on " << comm->backend() << ", world " << comm->size();
    }
  });
}

TYPED_TEST(Collectives, AllGatherEvenAndUneven) {
  using T = TypeParam;
  on_ranks([](std::shared_ptr<Communicator> comm) {
    const int world = comm->size(), rank = comm->rank();
    const std::size_t n = 37;
    const auto send = rank_values<T>(rank, n);
    test::Buffer<T> recv(n * world);
    comm->all_gather(std::span<const T>(send), std::span<T>(recv));
    for (int q = 0; q < world; ++q)
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(recv[q * n + i], value<T>(q, i)) << "block " << q;

    // Uneven blocks, one of them empty when world > 1: 10 split as partition() does, then rank 0 gets 0.
    std::vector<std::size_t> counts(world);
    for (int q = 0; q < world; ++q) counts[q] = static_cast<std::size_t>(partition(10, world, q).size());
    if (world > 1) counts[0] = 0;
    const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
    const auto mine = rank_values<T>(rank, counts[rank]);
    test::Buffer<T> all(total, T(-7));
    comm->all_gather_v(std::span<const T>(mine), std::span<T>(all), std::span<const std::size_t>(counts));
    const auto displs = displacements(counts);
    for (int q = 0; q < world; ++q)
      for (std::size_t i = 0; i < counts[q]; ++i) ASSERT_EQ(all[displs[q] + i], value<T>(q, i)) << "block " << q;

    // In place: this rank's block already sits at its displacement in the receive buffer.
    test::Buffer<T> inplace(total, T(-7));
    std::copy(mine.begin(), mine.end(), inplace.begin() + static_cast<std::ptrdiff_t>(displs[rank]));
    comm->all_gather_v(inplace.data() + displs[rank], inplace.data(), counts, dtype_of<T>);
    EXPECT_EQ(inplace, all);
  });
}

TYPED_TEST(Collectives, ReduceScatterEvenAndUneven) {
  using T = TypeParam;
  on_ranks([](std::shared_ptr<Communicator> comm) {
    const int world = comm->size(), rank = comm->rank();
    const std::size_t n = 33;
    const auto send = rank_values<T>(rank, n * world);
    test::Buffer<T> recv(n);
    comm->reduce_scatter(std::span<const T>(send), std::span<T>(recv));
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(recv[i], reduce_expected<T>(ReduceOp::sum, world, rank * n + i));

    std::vector<std::size_t> counts(world);
    for (int q = 0; q < world; ++q) counts[q] = static_cast<std::size_t>(partition(11, world, q).size());
    const auto displs = displacements(counts);
    const auto full = rank_values<T>(rank, 11);
    test::Buffer<T> mine(counts[rank]);
    comm->reduce_scatter_v(std::span<const T>(full), std::span<T>(mine), std::span<const std::size_t>(counts),
                           ReduceOp::max);
    for (std::size_t i = 0; i < counts[rank]; ++i)
      ASSERT_EQ(mine[i], reduce_expected<T>(ReduceOp::max, world, displs[rank] + i));
  });
}

/// The asynchronous gathers and reduce-scatters give what the blocking ones give: even blocks,
/// uneven ones with an empty block (rank 0's, from two ranks on), in place and out of place, two
/// in flight at once and waited for in the other order.
TYPED_TEST(Collectives, GatherAndReduceScatterAsyncMatchBlocking) {
  using T = TypeParam;
  on_ranks([](std::shared_ptr<Communicator> comm) {
    const int world = comm->size(), rank = comm->rank();
    std::vector<std::size_t> even(world, 21), uneven(world);
    for (int q = 0; q < world; ++q) uneven[q] = static_cast<std::size_t>(partition(13, world, q).size());
    if (world > 1) uneven[0] = 0;
    for (const auto& counts : {even, uneven}) {
      const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
      const auto displs = displacements(counts);
      const std::string what = fmt::format("counts {}", counts);

      const auto mine = rank_values<T>(rank, counts[rank]);
      test::Buffer<T> want(total, T(-7)), got(total, T(-7)), inplace(total, T(-7));
      comm->all_gather_v(std::span<const T>(mine), std::span<T>(want), std::span<const std::size_t>(counts));
      std::copy(mine.begin(), mine.end(), inplace.begin() + static_cast<std::ptrdiff_t>(displs[rank]));
      auto gather = comm->all_gather_v_async(std::span<const T>(mine), std::span<T>(got), counts);
      auto gather_in_place =
          comm->all_gather_v_async(inplace.data() + displs[rank], inplace.data(), counts, dtype_of<T>);
      gather_in_place->wait();
      gather->wait();
      EXPECT_EQ(got, want) << "all_gather_v_async, " << what;
      EXPECT_EQ(inplace, want) << "all_gather_v_async in place, " << what;

      const auto send = rank_values<T>(rank, total);
      test::Buffer<T> reduced(counts[rank], T(-7)), reduced_async(counts[rank], T(-7));
      comm->reduce_scatter_v(std::span<const T>(send), std::span<T>(reduced), std::span<const std::size_t>(counts));
      comm->reduce_scatter_v_async(std::span<const T>(send), std::span<T>(reduced_async), counts)->wait();
      EXPECT_EQ(reduced_async, reduced) << "reduce_scatter_v_async, " << what;
      for (std::size_t i = 0; i < counts[rank]; ++i)
        ASSERT_EQ(reduced[i], reduce_expected<T>(ReduceOp::sum, world, displs[rank] + i)) << what;
      for (std::size_t i = 0; i < total; ++i) ASSERT_EQ(send[i], value<T>(rank, i)) << "the input was written";
    }

    // The even forms, typed and untyped.
    const std::size_t n = 17;
    const auto block = rank_values<T>(rank, n);
    test::Buffer<T> all(n * world, T(-7)), all_async(n * world, T(-7));
    comm->all_gather(std::span<const T>(block), std::span<T>(all));
    comm->all_gather_async(std::span<const T>(block), std::span<T>(all_async))->wait();
    EXPECT_EQ(all_async, all) << "all_gather_async";
    const auto send = rank_values<T>(rank, n * world);
    test::Buffer<T> part(n, T(-7)), part_async(n, T(-7));
    comm->reduce_scatter(std::span<const T>(send), std::span<T>(part), ReduceOp::max);
    comm->reduce_scatter_async(send.data(), part_async.data(), n, dtype_of<T>, ReduceOp::max)->wait();
    EXPECT_EQ(part_async, part) << "reduce_scatter_async max";
  });
}

TYPED_TEST(Collectives, BroadcastFromEveryRoot) {
  using T = TypeParam;
  on_ranks([](std::shared_ptr<Communicator> comm) {
    for (int root = 0; root < comm->size(); ++root) {
      auto data = rank_values<T>(comm->rank(), 129);
      comm->broadcast(std::span<T>(data), root);
      EXPECT_EQ(data, rank_values<T>(root, 129)) << "root " << root;
    }
  });
}

/// 16-bit sums over ranks are float sums rounded once, not a chain of 16-bit roundings: 1 and two
/// halves of an ulp of 1 (2^-8 in bf16, 2^-11 in f16) sum to 1 + one ulp, where rounding after
/// each addition stays at 1 (1 + half an ulp is a tie, which goes to the even 1); four ranks give
/// 1 + 1.5 ulp, a tie that goes to 1 + 2 ulp. NCCL adds in the 16-bit type and is not held to it.
template <class T>
void expect_sum_rounded_once(Communicator& comm, float half_ulp) {
  const int world = comm.size(), rank = comm.rank();
  const T mine = rank == 0 ? T(1.0f) : T(half_ulp);
  const float want = static_cast<float>(T(1.0f + static_cast<float>(world - 1) * half_ulp));
  test::Buffer<T> x(5, mine);
  comm.all_reduce(std::span<T>(x));
  for (std::size_t i = 0; i < x.size(); ++i) EXPECT_EQ(static_cast<float>(x[i]), want) << "all_reduce, element " << i;
  auto work = comm.all_reduce_async(x.data(), x.data(), x.size(), dtype_of<T>, ReduceOp::max);
  work->wait();
  EXPECT_EQ(static_cast<float>(x[0]), want) << "all_reduce_async max";
  const test::Buffer<T> send(3 * static_cast<std::size_t>(world), mine);
  test::Buffer<T> recv(3, T(0.0f));
  comm.reduce_scatter(std::span<const T>(send), std::span<T>(recv));
  for (std::size_t i = 0; i < recv.size(); ++i)
    EXPECT_EQ(static_cast<float>(recv[i]), want) << "reduce_scatter, element " << i;
}

TEST(Collectives16, SumsInFloatAndRoundsOnce) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    if (comm->backend() == "nccl") return;
    expect_sum_rounded_once<bf16>(*comm, 0x1p-8f);
    expect_sum_rounded_once<f16>(*comm, 0x1p-11f);
  });
}

TEST(Communicator, SplitMakesGroupsOrderedByKey) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    const int rank = comm->rank(), world = comm->size();
    // Two groups by parity, ranks reversed inside each by the key.
    auto sub = comm->split(rank % 2, world - rank);
    ASSERT_NE(sub, nullptr);
    std::vector<int> members;
    for (int q = 0; q < world; ++q)
      if (q % 2 == rank % 2) members.push_back(q);
    std::reverse(members.begin(), members.end());
    EXPECT_EQ(sub->size(), static_cast<int>(members.size()));
    EXPECT_EQ(sub->rank(), static_cast<int>(std::find(members.begin(), members.end(), rank) - members.begin()));
    test::Buffer<std::int64_t> v(1, rank + 1);  // harness memory: device harnesses cannot reduce a stack variable
    sub->all_reduce(std::span<std::int64_t>(v));
    std::int64_t want = 0;
    for (int q : members) want += q + 1;
    EXPECT_EQ(v[0], want);
    sub->barrier();
    comm->barrier();
  });
}

TEST(Communicator, SplitWithNegativeColorLeavesRankOut) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    auto sub = comm->split(comm->rank() == 0 ? -1 : 0, comm->rank());
    if (comm->rank() == 0) {
      EXPECT_EQ(sub, nullptr);
    } else {
      ASSERT_NE(sub, nullptr);
      EXPECT_EQ(sub->size(), comm->size() - 1);
      sub->barrier();
    }
  });
}

TEST(Communicator, TypedFormsRejectMismatchedBuffers) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    test::Buffer<float> send(4), recv(4 * comm->size() + 1);
    try {
      comm->all_gather(std::span<const float>(send), std::span<float>(recv));
      ADD_FAILURE() << "all_gather accepted a receive buffer of the wrong size";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), ::testing::HasSubstr(std::to_string(recv.size())));
    }
    const std::vector<std::size_t> counts(comm->size() + 1, 1);
    EXPECT_THROW(comm->all_gather_v(send.data(), recv.data(), counts, DType::f32), InvalidArgument);
    EXPECT_THROW(comm->broadcast(std::span<float>(send), comm->size()), InvalidArgument);
  });
}

}  // namespace
}  // namespace tp

namespace tp {
namespace {

/// The last rank makes `odd`, every other rank `usual`: every rank must throw a CommError that
/// names both calls and the odd rank, and the communicator must still work afterwards.
void expect_disagreement(Communicator& comm, const std::function<void(Communicator&)>& usual,
                         const std::function<void(Communicator&)>& odd, const std::string& usual_call,
                         const std::string& odd_call) {
  const int last = comm.size() - 1;
  try {
    (comm.rank() == last ? odd : usual)(comm);
    ADD_FAILURE() << "no CommError when rank " << last << " called " << odd_call << " and the others " << usual_call;
  } catch (const CommError& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("called " + usual_call)) << "rank " << comm.rank();
    EXPECT_THAT(e.what(), ::testing::HasSubstr(fmt::format("rank {} called {}", last, odd_call)))
        << "rank " << comm.rank();
  }
  test::Buffer<std::int64_t> one(1, 1);
  comm.all_reduce(std::span<std::int64_t>(one));
  EXPECT_EQ(one[0], comm.size()) << "after " << odd_call;
}

TEST(CollectiveVerification, RanksThatDisagreeAllGetCommErrorNamingBothCalls) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    const int world = comm->size(), last = world - 1;
    if (world == 1) return;  // one rank cannot disagree with itself
    test::Buffer<float> f(8, 1.f), gathered(2 * static_cast<std::size_t>(world));
    test::Buffer<std::int32_t> i(8, 1);
    const auto reduce = [&](std::size_t n, ReduceOp op) {
      return [&, n, op](Communicator& c) { c.all_reduce(f.data(), f.data(), n, DType::f32, op); };
    };
    // Another collective, another count, another element type, another reduction, another root.
    expect_disagreement(*comm, reduce(8, ReduceOp::sum), [&](Communicator& c) { c.broadcast(std::span<float>(f), 0); },
                        "all_reduce(8 x float32, sum)", "broadcast(8 x float32, root 0)");
    expect_disagreement(*comm, reduce(8, ReduceOp::sum), reduce(7, ReduceOp::sum), "all_reduce(8 x float32, sum)",
                        "all_reduce(7 x float32, sum)");
    expect_disagreement(*comm, reduce(8, ReduceOp::sum), [&](Communicator& c) { c.all_reduce(std::span<std::int32_t>(i)); },
                        "all_reduce(8 x float32, sum)", "all_reduce(8 x int32, sum)");
    expect_disagreement(*comm, reduce(8, ReduceOp::sum), reduce(8, ReduceOp::max), "all_reduce(8 x float32, sum)",
                        "all_reduce(8 x float32, max)");
    // A small all_reduce (MPI carries its data with the signature) against a large one (MPI
    // exchanges the signature alone first) and against an asynchronous one: the recipient of the
    // larger message must not be written past its room, and both must see the mismatch.
    test::Buffer<float> large(513, 1.f);
    const auto reduce_large = [&](Communicator& c) { c.all_reduce(large.data(), large.data(), 513, DType::f32); };
    expect_disagreement(*comm, reduce(8, ReduceOp::sum), reduce_large, "all_reduce(8 x float32, sum)",
                        "all_reduce(513 x float32, sum)");
    expect_disagreement(*comm, reduce_large, reduce(8, ReduceOp::sum), "all_reduce(513 x float32, sum)",
                        "all_reduce(8 x float32, sum)");
    expect_disagreement(*comm, reduce(8, ReduceOp::sum),
                        [&](Communicator& c) { c.all_reduce_async(f.data(), f.data(), 7, DType::f32)->wait(); },
                        "all_reduce(8 x float32, sum)", "all_reduce_async(7 x float32, sum)");
    // The same across Gloo's fused size (64 KiB), and two calls that both fit it but differ by one
    // element at its very end: every rank pads its message to the same size, whatever it called.
    // Then calls whose rest Gloo gathers after the signatures (up to 256 KiB) that differ, and one
    // across that limit: no rest may move before the signatures are compared.
    constexpr std::size_t gloo_fused = 65536 / sizeof(float), gloo_limit = (256 << 10) / sizeof(float);
    test::Buffer<float> huge(gloo_limit + 1, 1.f);
    const auto reduce_huge = [&](std::size_t n) {
      return [&, n](Communicator& c) { c.all_reduce(huge.data(), huge.data(), n, DType::f32); };
    };
    expect_disagreement(*comm, reduce(8, ReduceOp::sum), reduce_huge(gloo_fused + 1), "all_reduce(8 x float32, sum)",
                        fmt::format("all_reduce({} x float32, sum)", gloo_fused + 1));
    expect_disagreement(*comm, reduce_huge(gloo_fused), reduce_huge(gloo_fused + 1),
                        fmt::format("all_reduce({} x float32, sum)", gloo_fused),
                        fmt::format("all_reduce({} x float32, sum)", gloo_fused + 1));
    expect_disagreement(*comm, reduce_huge(gloo_fused), reduce_huge(gloo_fused - 1),
                        fmt::format("all_reduce({} x float32, sum)", gloo_fused),
                        fmt::format("all_reduce({} x float32, sum)", gloo_fused - 1));
    expect_disagreement(*comm, reduce_huge(gloo_fused + 5), reduce_huge(gloo_fused + 6),
                        fmt::format("all_reduce({} x float32, sum)", gloo_fused + 5),
                        fmt::format("all_reduce({} x float32, sum)", gloo_fused + 6));
    expect_disagreement(*comm, reduce_huge(gloo_limit), reduce_huge(gloo_limit + 1),
                        fmt::format("all_reduce({} x float32, sum)", gloo_limit),
                        fmt::format("all_reduce({} x float32, sum)", gloo_limit + 1));
    for (float v : huge) ASSERT_EQ(v, 1.f) << "a rejected all_reduce wrote its buffer";
    // The same call, blocking on some ranks and asynchronous on others (MPI would not match them).
    expect_disagreement(*comm, reduce(8, ReduceOp::sum),
                        [&](Communicator& c) { c.all_reduce_async(f.data(), f.data(), 8, DType::f32)->wait(); },
                        "all_reduce(8 x float32, sum)", "all_reduce_async(8 x float32, sum)");
    for (float v : f) ASSERT_EQ(v, 1.f) << "a rejected all_reduce wrote its buffer";
    expect_disagreement(*comm, [&](Communicator& c) { c.broadcast(std::span<float>(f), 0); },
                        [&](Communicator& c) { c.broadcast(std::span<float>(f), last); },
                        "broadcast(8 x float32, root 0)", fmt::format("broadcast(8 x float32, root {})", last));
    // Uneven gathers whose ranks were given different counts; a barrier against a collective.
    const auto gather = [&](std::size_t each) {
      return [&, each](Communicator& c) {
        const std::vector<std::size_t> counts(world, each);
        c.all_gather_v(f.data(), gathered.data(), counts, DType::f32);
      };
    };
    expect_disagreement(*comm, gather(1), gather(2), fmt::format("all_gather_v({} x float32 in all", world),
                        fmt::format("all_gather_v({} x float32 in all", 2 * world));
    // The asynchronous gathers and reduce-scatters with counts that differ between ranks (the
    // same total, another split; another total), and against their blocking forms.
    const auto counts_with = [&](std::size_t first) {
      std::vector<std::size_t> counts(world, 1);
      counts[0] = first;
      counts[last] = 2 - first;  // `world` elements in all, whatever `first`
      return counts;
    };
    const auto gather_async = [&](std::size_t first) {
      return [&, first](Communicator& c) {
        const auto counts = counts_with(first);
        c.all_gather_v_async(f.data(), gathered.data(), counts, DType::f32)->wait();
      };
    };
    const auto scatter_async = [&](std::size_t first) {
      return [&, first](Communicator& c) {
        const auto counts = counts_with(first);
        c.reduce_scatter_v_async(gathered.data(), f.data(), counts, DType::f32)->wait();
      };
    };
    const std::string same_total = fmt::format("{} x float32 in all, counts #", world);
    expect_disagreement(*comm, gather_async(1), gather_async(2), "all_gather_v_async(" + same_total,
                        "all_gather_v_async(" + same_total);
    expect_disagreement(*comm, scatter_async(1), scatter_async(0), "reduce_scatter_v_async(" + same_total,
                        "reduce_scatter_v_async(" + same_total);
    expect_disagreement(*comm, scatter_async(1),
                        [&](Communicator& c) {
                          const auto counts = counts_with(1);
                          c.reduce_scatter_v(gathered.data(), f.data(), counts, DType::f32);
                        },
                        "reduce_scatter_v_async(" + same_total, "reduce_scatter_v(" + same_total);
    const auto gather_even_async = [&](std::size_t each) {
      return [&, each](Communicator& c) { c.all_gather_async(f.data(), gathered.data(), each, DType::f32)->wait(); };
    };
    expect_disagreement(*comm, gather_even_async(2), gather_even_async(1), "all_gather_async(2 x float32)",
                        "all_gather_async(1 x float32)");
    const auto scatter_even_async = [&](ReduceOp op) {
      return [&, op](Communicator& c) { c.reduce_scatter_async(gathered.data(), f.data(), 2, DType::f32, op)->wait(); };
    };
    expect_disagreement(*comm, scatter_even_async(ReduceOp::sum), scatter_even_async(ReduceOp::max),
                        "reduce_scatter_async(2 x float32, sum)", "reduce_scatter_async(2 x float32, max)");
    expect_disagreement(*comm, [](Communicator& c) { c.barrier(); }, reduce(8, ReduceOp::sum), "barrier()",
                        "all_reduce(8 x float32, sum)");
  });
}

TEST(CollectiveVerification, CanBeSwitchedOffAndSplitsInheritIt) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    comm->set_verify_collectives(false);
    test::Buffer<std::int64_t> v(3, comm->rank() + 1);
    comm->all_reduce(std::span<std::int64_t>(v));
    EXPECT_EQ(v[2], comm->size() * (comm->size() + 1) / 2);
    comm->barrier();
    auto sub = comm->split(0, comm->rank());
    ASSERT_NE(sub, nullptr);
    EXPECT_FALSE(sub->verify_collectives());
    sub->barrier();
    comm->set_verify_collectives(true);
    comm->barrier();
  });
}

}  // namespace
}  // namespace tp
