#include <gtest/gtest.h>

#include "common/harness.hpp"
#include "tp/comm/local_communicator.hpp"

namespace tp::test {

std::string_view harness_backend() { return "local"; }

void on_ranks(const RankBody& body) {
  for (int world = 1; world <= 4; ++world) {
    try {
      run_local(world, [&](std::shared_ptr<Communicator> comm) {
        SCOPED_TRACE(fmt::format("local world {} rank {}", world, comm->rank()));  // traces are per thread
        body(comm);
      }, {.timeout = std::chrono::seconds(60)});
    } catch (const std::exception& e) {
      ADD_FAILURE() << "local world " << world << ": " << e.what();
    }
  }
}

}  // namespace tp::test
