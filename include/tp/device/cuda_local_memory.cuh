#pragma once
/// The former home of tp::CudaLocalMemory, kept so that existing includes keep working.

#include "tp/device/cuda/local_memory.cuh"
