/// The harness of the test binaries run under `mpirun -np N` (see process_harness.hpp).
#include "common/process_harness.hpp"

#include <gtest/gtest.h>

#include <cstdio>

namespace tp::test {

namespace {
std::shared_ptr<Communicator> world_comm;
std::string world_backend;

/// On ranks other than 0: print failures only, tagged with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (result.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, result.file_name() ? result.file_name() : "?",
                   result.line_number(), result.summary());
  }

 private:
  int rank_;
};
}  // namespace

std::string_view harness_backend() { return world_backend; }

void on_ranks(const RankBody& body) {
  const auto& comm = world_comm;
  SCOPED_TRACE(fmt::format("{} world {} rank {}", world_backend, comm->size(), comm->rank()));
  try {
    body(comm);
  } catch (const std::exception& e) {
    ADD_FAILURE() << world_backend << " world " << comm->size() << " rank " << comm->rank() << ": "
                  << e.what();
  }
}

int run_process_tests(int& argc, char**& argv, const LaunchOptions& options) {
  const Launch launch(options, argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  world_backend = options.backend;
  world_comm = launch.ranks()[0];  // one rank per process: --world is left at 1
  if (world_comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(world_comm->rank()));
  }
  const int failed = RUN_ALL_TESTS();
  world_comm.reset();
  return failed;
}

}  // namespace tp::test
