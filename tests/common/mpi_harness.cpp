/// main() for the tests run under `mpirun -np N` on the MPI world.
#include "common/process_harness.hpp"
#include "tp/comm/mpi_communicator.hpp"

int main(int argc, char** argv) {
  tp::MpiEnvironment env(argc, argv);
  return tp::test::run_process_tests(argc, argv, "mpi", [] { return std::make_shared<tp::MpiCommunicator>(); });
}
