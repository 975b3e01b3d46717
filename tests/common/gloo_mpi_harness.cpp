/// main() for the Gloo tests run under `mpirun -np N`: the ranks meet over MPI (GlooCommunicator
/// built on an MpiCommunicator), or, when TP_GLOO_STORE is set, through gloo's FileStore in that
/// directory with ranks from Open MPI's environment (GlooCommunicator::from_env); tp::Launch
/// (tp/comm/launch.hpp) makes that choice.
#include "common/process_harness.hpp"

int main(int argc, char** argv) {
  return tp::test::run_process_tests(argc, argv, {.backend = "gloo", .timeout = std::chrono::seconds(120)});
}
