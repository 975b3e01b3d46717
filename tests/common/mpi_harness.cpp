/// main() for the tests run under `mpirun -np N`: every process runs every test on the MPI world;
/// only rank 0 prints, and any failing rank makes mpirun exit non-zero.
#include <gtest/gtest.h>

#include "common/harness.hpp"
#include "tp/comm/mpi_communicator.hpp"

namespace tp::test {

namespace {
std::shared_ptr<Communicator> world_comm;

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

std::string_view harness_backend() { return "mpi"; }

void on_ranks(const RankBody& body) {
  SCOPED_TRACE(fmt::format("mpi world {} rank {}", world_comm->size(), world_comm->rank()));
  try {
    body(world_comm);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "mpi world " << world_comm->size() << " rank " << world_comm->rank() << ": " << e.what();
  }
}

}  // namespace tp::test

int main(int argc, char** argv) {
  tp::MpiEnvironment env(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  tp::test::world_comm = std::make_shared<tp::MpiCommunicator>();
  if (tp::test::world_comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new tp::test::FailurePrinter(tp::test::world_comm->rank()));
  }
  const int failed = RUN_ALL_TESTS();
  tp::test::world_comm.reset();
  return failed;
}
