/// main() for the tests run under `mpirun -np N` on the MPI world.
#include "common/process_harness.hpp"

int main(int argc, char** argv) { return tp::test::run_process_tests(argc, argv, {.backend = "mpi"}); }
