#pragma once
/// Training resume files: one safetensors file with the parameters (under their own names, so it
/// is also a plain weights checkpoint), the AdamW moments ("adamw.exp_avg.<name>",
/// "adamw.exp_avg_sq.<name>"), and in `__metadata__` the step count ("adamw.step") and the
/// hyper-parameters, plus whatever the trainer adds (data position, seed). Everything is stored
/// full, so training saved at one TP degree resumes at another.

#ifndef TP_HAS_IO
#error "tp/io/resume.hpp needs the tp::io CMake component: target_link_libraries(... tp::io)"
#endif

#include <charconv>
#include <filesystem>
#include <string>
#include <vector>

#include "tp/io/safetensors.hpp"
#include "tp/optim/adamw.hpp"

namespace tp {

/// Saves the optimizer's parameters, moments and step. Collective over the optimizer's group.
template <class T, class Device>
void save_resume(AdamW<T, Device>& optimizer, const std::filesystem::path& path, SafetensorsMetadata metadata = {}) {
  const auto& ctx = optimizer.context();
  std::vector<Parameter<T>> tensors = optimizer.parameters();
  for (auto& p : optimizer.state()) tensors.push_back(p);
  const auto& o = optimizer.options();
  metadata["format"] = "tp.resume";
  metadata["adamw.step"] = std::to_string(optimizer.step_count());
  metadata["adamw.lr"] = fmt::format("{}", o.lr);
  metadata["adamw.betas"] = fmt::format("{},{}", o.beta1, o.beta2);
  metadata["adamw.eps"] = fmt::format("{}", o.eps);
  metadata["adamw.weight_decay"] = fmt::format("{}", o.weight_decay);
  save_safetensors<T>(*ctx.comm, *ctx.device, tensors, path, metadata);
}

/// Loads parameters, moments and step count into `optimizer` (each rank its blocks) and returns
/// the file's metadata, for the trainer's own entries. The learning rate is the caller's to set.
template <class T, class Device>
SafetensorsMetadata load_resume(AdamW<T, Device>& optimizer, const std::filesystem::path& path) {
  const SafetensorsCheckpoint checkpoint(path);
  const SafetensorsMetadata& metadata = checkpoint.metadata();
  const auto step = metadata.find("adamw.step");
  if (step == metadata.end()) TP_THROW(IoError, "{}: not a resume file: no adamw.step in __metadata__", path.string());
  std::int64_t count = -1;
  const auto [end, ec] = std::from_chars(step->second.data(), step->second.data() + step->second.size(), count);
  if (ec != std::errc() || end != step->second.data() + step->second.size() || count < 0)
    TP_THROW(IoError, "{}: adamw.step is '{}', not a step count", path.string(), step->second);
  const Device& device = *optimizer.context().device;
  for (const auto& p : optimizer.parameters()) load_parameter(device, p, checkpoint);
  for (const auto& p : optimizer.state()) load_parameter(device, p, checkpoint);
  optimizer.set_step_count(count);
  return metadata;
}

}  // namespace tp
