/// main() for the Gloo tests run under `mpirun -np N`: every process runs every test on one Gloo
/// world. The ranks meet over MPI (GlooCommunicator built on an MpiCommunicator), or, when
/// TP_GLOO_STORE is set, through gloo's FileStore in that directory with ranks from Open MPI's
/// environment (GlooCommunicator::from_env). Only rank 0 prints; a failing rank fails the job.
#include <gtest/gtest.h>

#include <cstdlib>

#include "common/harness.hpp"
#include "tp/comm/gloo_communicator.hpp"
#include "tp/comm/mpi_communicator.hpp"

namespace tp::test {

namespace {
std::shared_ptr<Communicator> world_comm;

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

std::string_view harness_backend() { return "gloo"; }

void on_ranks(const RankBody& body) {
  SCOPED_TRACE(fmt::format("gloo world {} rank {}", world_comm->size(), world_comm->rank()));
  try {
    body(world_comm);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "gloo world " << world_comm->size() << " rank " << world_comm->rank() << ": " << e.what();
  }
}

}  // namespace tp::test

int main(int argc, char** argv) {
  tp::MpiEnvironment env(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  const tp::GlooOptions options{.timeout = std::chrono::seconds(120)};
  if (const char* dir = std::getenv("TP_GLOO_STORE"); dir != nullptr && *dir != '\0') {
    tp::test::world_comm = tp::GlooCommunicator::from_env(options);
  } else {
    tp::MpiCommunicator mpi;
    tp::test::world_comm = std::make_shared<tp::GlooCommunicator>(mpi, options);
  }
  if (tp::test::world_comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new tp::test::FailurePrinter(tp::test::world_comm->rank()));
  }
  const int failed = RUN_ALL_TESTS();
  tp::test::world_comm.reset();
  return failed;
}
