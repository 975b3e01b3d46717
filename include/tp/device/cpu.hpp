#pragma once
/// The former home of tp::Cpu, kept so that existing includes keep working: the device now lives
/// in tp/device/cpu/cpu.hpp and its operations are tp::ops functions (tp/ops/*.hpp), included here.

#include "tp/device/cpu/cpu.hpp"
#include "tp/ops/all.hpp"
