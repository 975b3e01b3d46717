#pragma once
/// One test body, many backends: each test binary links one harness (local_harness.cpp,
/// mpi_harness.cpp, ...) that decides where `on_ranks` runs the body.

#include <functional>
#include <memory>
#include <string_view>

#include "tp/comm/communicator.hpp"

namespace tp::test {

using RankBody = std::function<void(std::shared_ptr<Communicator>)>;

/// Runs `body` once per rank: in-process harnesses at world sizes 1 to 4 (one thread per rank),
/// the mpirun harness once on every process of the MPI world. Exceptions escaping the body fail
/// the test with the world size and rank.
void on_ranks(const RankBody& body);

/// The backend the harness runs: "local", "mpi", ...
std::string_view harness_backend();

}  // namespace tp::test
