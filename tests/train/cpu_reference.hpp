#pragma once
/// The CPU runs that trainer_cuda_test.cu compares tp::Cuda training with, compiled by the host
/// compiler in cpu_reference.cpp (nvcc then compiles only the CUDA side).

#include "train/tiny_training.hpp"

namespace tp::tiny_training {

/// `steps` Trainer steps of tiny_config(llama, uneven) on tp::Cpu at TP 1 x DP 1 on the global
/// batch, in float or (bf16) tp::bf16, with the options of train() and the current kAdamW;
/// resuming from `resume` and saving under `save` when given (train()'s).
TrainRun cpu_run(bool llama, bool uneven, int steps, bool bf16, const std::filesystem::path& resume = {},
                 const std::filesystem::path& save = {});

}  // namespace tp::tiny_training
