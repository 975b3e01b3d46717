/// main() for the Gloo tests run under `mpirun -np N`: the ranks meet over MPI (GlooCommunicator
/// built on an MpiCommunicator), or, when TP_GLOO_STORE is set, through gloo's FileStore in that
/// directory with ranks from Open MPI's environment (GlooCommunicator::from_env).
#include <cstdlib>

#include "common/process_harness.hpp"
#include "tp/comm/gloo_communicator.hpp"
#include "tp/comm/mpi_communicator.hpp"

int main(int argc, char** argv) {
  tp::MpiEnvironment env(argc, argv);
  return tp::test::run_process_tests(argc, argv, "gloo", []() -> std::shared_ptr<tp::Communicator> {
    const tp::GlooOptions options{.timeout = std::chrono::seconds(120)};
    if (const char* dir = std::getenv("TP_GLOO_STORE"); dir != nullptr && *dir != '\0')
      return tp::GlooCommunicator::from_env(options);
    tp::MpiCommunicator mpi;
    return std::make_shared<tp::GlooCommunicator>(mpi, options);
  });
}
