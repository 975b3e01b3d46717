/// One rank of a two-process Gloo job for the fault tests (gloo_fault_test.cpp): meets its peer
/// through a FileStore directory, says so by creating <dir>/ready.<rank>, then all-reduces until
/// told to stop or until the peer is gone. Exit status: 0 done, 3 CommError (printed), 4 any other
/// error. A death by signal (SIGPIPE) is what the test looks for and must never see.
///
///   tp_gloo_fault_peer DIR RANK WORLD TIMEOUT_MS ELEMENTS ITERATIONS
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "tp/comm/gloo_communicator.hpp"

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: %s DIR RANK WORLD TIMEOUT_MS ELEMENTS ITERATIONS\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const int rank = std::atoi(argv[2]), world = std::atoi(argv[3]);
  const auto timeout = std::chrono::milliseconds(std::atol(argv[4]));
  const auto elements = static_cast<std::size_t>(std::atol(argv[5]));
  const long iterations = std::atol(argv[6]);
  try {
    auto comm = tp::GlooCommunicator::from_directory(dir, rank, world, {.timeout = timeout});
    std::ofstream(dir + "/ready." + std::to_string(rank)) << "ready\n";
    std::vector<float> v(elements, 1.f);
    for (long i = 0; i < iterations; ++i) comm->all_reduce(std::span<float>(v), tp::ReduceOp::max);
    return 0;
  } catch (const tp::CommError& e) {
    std::fprintf(stderr, "CommError: %s\n", e.what());
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 4;
  }
}
