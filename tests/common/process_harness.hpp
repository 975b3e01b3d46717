#pragma once
/// The harness for test binaries run under `mpirun -np N`, whatever backend the ranks talk over:
/// every process runs every test on one world communicator; only rank 0 prints in full, other ranks
/// print their failures tagged with the rank, and any failing rank makes mpirun exit non-zero.
/// Link process_harness.cpp and call run_process_tests from main().

#include <functional>
#include <memory>
#include <string>

#include "common/harness.hpp"

namespace tp::test {

/// Runs every test on the communicator `make_world` returns (called after gtest has read its flags);
/// `backend` is what harness_backend() reports.
int run_process_tests(int& argc, char** argv, std::string backend,
                      const std::function<std::shared_ptr<Communicator>()>& make_world);

}  // namespace tp::test
