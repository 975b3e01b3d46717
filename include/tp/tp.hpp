#pragma once
/// Everything a CPU user needs: core types, the communicator interface and its in-process backend,
/// the host device, the ops and the parallel layers. Backends with their own dependencies (MPI, Gloo,
/// NCCL) and the CUDA device have headers of their own.

#include "tp/comm/communicator.hpp"
#include "tp/comm/local_communicator.hpp"
#include "tp/core/context.hpp"
#include "tp/core/dtype.hpp"
#include "tp/core/error.hpp"
#include "tp/core/parameter.hpp"
#include "tp/core/partition.hpp"
#include "tp/core/rng.hpp"
#include "tp/core/tensor.hpp"
#include "tp/device/cpu/cpu.hpp"
#include "tp/layers/column_parallel_linear.hpp"
#include "tp/layers/layer_norm.hpp"
#include "tp/layers/parallel_attention.hpp"
#include "tp/layers/parallel_lm_head.hpp"
#include "tp/layers/parallel_mlp.hpp"
#include "tp/layers/rms_norm.hpp"
#include "tp/layers/row_parallel_linear.hpp"
#include "tp/layers/vocab_parallel_cross_entropy.hpp"
#include "tp/layers/vocab_parallel_embedding.hpp"
#include "tp/ops/all.hpp"
#include "tp/optim/adamw.hpp"
#include "tp/optim/clip_grad_norm.hpp"
