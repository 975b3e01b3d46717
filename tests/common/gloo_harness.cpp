/// on_ranks for Gloo in one process: world sizes 1 to 4, one thread per rank, the ranks meeting
/// through a shared in-memory gloo HashStore and talking over TCP loopback (tp::Launch,
/// tp/comm/launch.hpp, started outside mpirun).
#include <gtest/gtest.h>

#include <mutex>

#include "common/harness.hpp"
#include "tp/comm/launch.hpp"

namespace tp::test {

std::string_view harness_backend() { return "gloo"; }

void on_ranks(const RankBody& body) {
  for (int world = 1; world <= 4; ++world) {
    std::mutex mutex;
    std::vector<std::string> errors;
    try {
      const Launch launch({.backend = "gloo", .world = world, .timeout = std::chrono::seconds(60)});
      launch.run([&](std::shared_ptr<Communicator> comm) {
        try {
          SCOPED_TRACE(fmt::format("gloo world {} rank {}", world, comm->rank()));  // traces are per thread
          body(comm);
        } catch (const std::exception& e) {
          std::lock_guard lock(mutex);
          errors.push_back(fmt::format("rank {}: {}", comm->rank(), e.what()));
        }
      });
    } catch (const std::exception& e) {
      errors.push_back(fmt::format("rendezvous: {}", e.what()));
    }
    for (const auto& e : errors) ADD_FAILURE() << "gloo world " << world << " " << e;
  }
}

}  // namespace tp::test
