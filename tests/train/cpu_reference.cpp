#include "train/cpu_reference.hpp"

#include "tp/comm/local_communicator.hpp"
#include "tp/device/cpu.hpp"

namespace tp::tiny_training {

TrainRun cpu_run(bool llama, bool uneven, int steps, bool bf16, const std::filesystem::path& resume,
                 const std::filesystem::path& save) {
  const Mesh<> solo(LocalCommunicator::create(1).front(), {.tp = 1});
  const auto config = tiny_config(llama, uneven);
  return bf16 ? train<tp::bf16>(solo, config, steps, {}, resume, save)
              : train<float>(solo, config, steps, {}, resume, save);
}

}  // namespace tp::tiny_training
