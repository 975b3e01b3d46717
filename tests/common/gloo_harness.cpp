/// on_ranks for Gloo in one process: world sizes 1 to 4, one thread per rank, the ranks meeting
/// through a shared in-memory gloo HashStore and talking over TCP loopback.
#include <gloo/rendezvous/hash_store.h>
#include <gtest/gtest.h>

#include <mutex>
#include <thread>

#include "common/harness.hpp"
#include "tp/comm/gloo_communicator.hpp"

namespace tp::test {

std::string_view harness_backend() { return "gloo"; }

void on_ranks(const RankBody& body) {
  for (int world = 1; world <= 4; ++world) {
    ::gloo::rendezvous::HashStore store;
    std::mutex mutex;
    std::vector<std::string> errors;
    std::vector<std::thread> threads;
    for (int rank = 0; rank < world; ++rank)
      threads.emplace_back([&, rank] {
        try {
          auto comm = std::make_shared<GlooCommunicator>(store, rank, world, GlooOptions{.timeout = std::chrono::seconds(60)});
          SCOPED_TRACE(fmt::format("gloo world {} rank {}", world, rank));  // traces are per thread
          body(comm);
        } catch (const std::exception& e) {
          std::lock_guard lock(mutex);
          errors.push_back(fmt::format("rank {}: {}", rank, e.what()));
        }
      });
    for (auto& t : threads) t.join();
    for (const auto& e : errors) ADD_FAILURE() << "gloo world " << world << " " << e;
  }
}

}  // namespace tp::test
