#pragma once
/// The training checkpoint functions (tp/train/checkpoint.hpp) for tp::Cuda in the trainer's three
/// GPU precisions, as explicit instantiations: trainer_cuda_checkpoint_test.cu defines them
/// (TP_CUDA_TRAINING_CHECKPOINTS empty), trainer_cuda_test.cu declares them (extern), so that the
/// nvcc units do not both compile tp/io's file code.

#include <filesystem>
#include <functional>

#include "tp/device/cuda.hpp"
#include "tp/train/checkpoint.hpp"

#ifndef TP_CUDA_TRAINING_CHECKPOINTS
#error "define TP_CUDA_TRAINING_CHECKPOINTS as extern (declarations) or empty (the definitions) first"
#endif

namespace tp {
#define TP_CUDA_TRAINING_CHECKPOINT(T)                                                                         \
  TP_CUDA_TRAINING_CHECKPOINTS template std::filesystem::path save_training_checkpoint<T, Cuda>(              \
      Trainer<T, Cuda>&, const std::filesystem::path&, SafetensorsMetadata, int);                             \
  TP_CUDA_TRAINING_CHECKPOINTS template SafetensorsMetadata load_training_checkpoint<T, Cuda>(                \
      Trainer<T, Cuda>&, std::filesystem::path,                                                                \
      const std::function<void(const SafetensorsMetadata&, const std::filesystem::path&)>&);
TP_CUDA_TRAINING_CHECKPOINT(float)
TP_CUDA_TRAINING_CHECKPOINT(bf16)
TP_CUDA_TRAINING_CHECKPOINT(f16)
#undef TP_CUDA_TRAINING_CHECKPOINT
}  // namespace tp
