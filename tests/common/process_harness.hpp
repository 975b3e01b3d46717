#pragma once
/// The harness for test binaries run under `mpirun -np N`, whatever backend the ranks talk over:
/// every process runs every test on one world communicator; only rank 0 prints in full, other ranks
/// print their failures tagged with the rank, and any failing rank makes mpirun exit non-zero.
/// Link process_harness.cpp and call run_process_tests from main().

#include "common/harness.hpp"
#include "tp/comm/launch.hpp"

namespace tp::test {

/// Starts this process's rank as `options` say (tp::Launch, which initialises MPI before gtest reads
/// its flags) and runs every test on it; `options.backend` is what harness_backend() reports.
int run_process_tests(int& argc, char**& argv, const LaunchOptions& options);

}  // namespace tp::test
