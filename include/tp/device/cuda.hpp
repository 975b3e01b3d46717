#pragma once
/// The former home of tp::Cuda, kept so that existing includes keep working: the device now lives
/// in tp/device/cuda/cuda.hpp and its operations are tp::ops functions (tp/ops/*.hpp), included
/// here (their CUDA implementations only in translation units compiled by nvcc).

#include "tp/device/cuda/cuda.hpp"
#include "tp/ops/all.hpp"
