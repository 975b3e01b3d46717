#pragma once
/// Training checkpoints of a tp::Trainer at any mesh: saved at (tp, dp), resumed at any (tp', dp').
///
/// A step's directory (tp/io/checkpoint.hpp: written under a temporary name, fsynced, renamed) holds
///   resume.safetensors  the master weights under the parameters' own names (so it is also a plain
///                       weights file, in the master type), the AdamW moments
///                       "adamw.exp_avg.<name>" / "adamw.exp_avg_sq.<name>", and in __metadata__
///                       "adamw.step", the loss scale, a checksum of every tensor (as
///                       tp/io/resume.hpp writes and verifies them) and the caller's entries (the
///                       model's description, the data position)
///   model.safetensors   the model's weights in T
/// The master weights of float, bf16 and f16 models are fp32 alike, so a checkpoint resumes across
/// those precisions exactly: the master weights and moments are read as they were saved and the
/// model's weights rewritten from them, rounded to the resuming model's type ("precision" in the
/// metadata says which type saved it). A double model's master weights are double: a checkpoint
/// whose master type is not the trainer's is refused, naming both, rather than silently rounded.
/// The loss scale is restored when both runs scale (f16); a run without a scaler ignores it, and a
/// scaling run resumed from one without starts at its initial scale.
///
/// all stored as full tensors, as tp/io/resume.hpp stores them for TP: under ZeRO-1 the DP ranks
/// all-gather their shards of each bucket first, and the ranks of DP group 0 write the blocks
/// their TP ranks hold (a block several TP ranks hold, Parameter::copy, once). Loading reads each
/// rank's blocks of every full tensor into its buckets and keeps its own shard, whatever the
/// mesh that saved them.
///
/// On a device (Device::on_host false: tp::Cuda) the same files: the master weights and moments
/// are on the host already (ZeRO-1's all-gather of them is staged through device buffers,
/// host_all_gather), the model's weights are copied to the host a block at a time to be written
/// (save_safetensors) and written back from the master weights on load (write_weights), and
/// tp/io's collectives over host buffers (save_checkpoint, the checksums, the verification) run on
/// HostStagedCommunicators in front of the mesh's (tp/comm/detail/host_staged_communicator.hpp).

#ifndef TP_HAS_IO
#error "tp/train/checkpoint.hpp needs the tp::io CMake component: target_link_libraries(... tp::io)"
#endif

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "tp/io/checkpoint.hpp"
#include "tp/io/resume.hpp"
#include "tp/io/safetensors.hpp"
#include "tp/train/host_collectives.hpp"
#include "tp/train/trainer.hpp"

namespace tp {

namespace detail {

/// The communicators tp/io's collective file code (save_checkpoint, the checksums of the host
/// state) runs over, which move host buffers (HostComm: the mesh's own on a host device, staged
/// on a device).
template <class Device>
class HostComms {
 public:
  explicit HostComms(const Mesh<Device>& mesh)
      : world_(mesh.world(), *mesh.tp_context().device), tp_(mesh.tp_comm(), *mesh.tp_context().device) {}
  Communicator& world() { return *world_; }
  Communicator& tp() { return *tp_; }

 private:
  HostComm<Device> world_, tp_;
};

/// Full buckets of master weights and moments on every rank (ZeRO-1: all-gathered over DP).
template <class T, class Device>
struct FullOptimizerState {
  using M = typename Trainer<T, Device>::Master;
  std::vector<std::vector<M>> master, exp_avg, exp_avg_sq;

  /// The three kinds of state of parameter k as records of its block of the full tensors.
  std::vector<Parameter<M>> records(Trainer<T, Device>& trainer) {
    auto& grads = trainer.grads();
    std::vector<Parameter<M>> out;
    for (int kind = 0; kind < 3; ++kind) {
      auto& buffers = kind == 0 ? master : kind == 1 ? exp_avg : exp_avg_sq;
      const char* prefix = kind == 0 ? "" : kind == 1 ? "adamw.exp_avg." : "adamw.exp_avg_sq.";
      for (std::size_t k = 0; k < grads.parameters().size(); ++k) {
        const Parameter<T>& p = grads.parameters()[k];
        const GradSegment& s = grads.segments()[k];
        Parameter<M> r{.name = prefix + p.name,
                       .value = MatrixView<M>(buffers[s.bucket].data() + s.offset, p.value.rows, p.value.cols),
                       .grad = {},
                       .full_rows = p.full_rows,
                       .full_cols = p.full_cols,
                       .rows = p.rows,
                       .cols = p.cols,
                       .copy = p.copy,
                       .weight_decay = p.weight_decay};
        out.push_back(r);
      }
    }
    return out;
  }
};

template <class T, class Device>
FullOptimizerState<T, Device> gather_state(Trainer<T, Device>& trainer) {
  FullOptimizerState<T, Device> full;
  auto& opt = trainer.optimizer();
  Communicator& dp = trainer.mesh().dp_comm();
  const bool shard = trainer.grads().options().shard && dp.size() > 1;
  for (std::size_t i = 0; i < opt.shards().size(); ++i) {
    const auto& s = opt.shards()[i];
    const auto n = static_cast<std::size_t>(trainer.grads().buckets()[i].size);
    for (int kind = 0; kind < 3; ++kind) {
      const auto& mine = kind == 0 ? s.master : kind == 1 ? s.exp_avg : s.exp_avg_sq;
      auto& out = (kind == 0 ? full.master : kind == 1 ? full.exp_avg : full.exp_avg_sq).emplace_back(n);
      if (shard)
        host_all_gather(dp, trainer.mesh().tp_context().device,
                        std::span<const typename FullOptimizerState<T, Device>::M>(mine), std::span(out));
      else
        std::copy(mine.begin(), mine.end(), out.begin());
    }
  }
  return full;
}

}  // namespace detail

/// Writes step trainer.steps_done()'s checkpoint under `root` as one unit and returns its
/// directory; keeps the newest `keep` steps (0: all). Collective over the mesh's world.
template <class T, class Device>
std::filesystem::path save_training_checkpoint(Trainer<T, Device>& trainer, const std::filesystem::path& root,
                                               SafetensorsMetadata metadata = {}, int keep = 0) {
  trainer.finish_param_sync();  // the model's weights whole, from the last step (ZeRO-1's overlapped gather)
  const Mesh<Device>& mesh = trainer.mesh();
  detail::HostComms<Device> comms(mesh);
  auto& opt = trainer.optimizer();
  metadata["format"] = "tp.resume";
  metadata["adamw.step"] = std::to_string(opt.step_count());
  metadata["precision"] = std::string(detail::safetensors_dtype_name(dtype_of<T>));
  metadata["mesh"] = fmt::format("tp={} dp={} zero={}", mesh.tp(), mesh.dp(), trainer.options().zero);
  if (trainer.loss_scaler()) {
    metadata["loss_scale"] = fmt::format("{}", trainer.loss_scaler()->scale());
    metadata["loss_scale.clean_steps"] = std::to_string(trainer.loss_scaler()->clean_steps());
  }
  return save_checkpoint(
      comms.world(), root, opt.step_count(),
      [&](const std::filesystem::path& dir) {
        auto full = detail::gather_state(trainer);
        if (mesh.dp_rank() != 0) return;
        const auto records = full.records(trainer);
        const Cpu host;
        SafetensorsMetadata with_checksums = metadata;
        detail::add_checksums<typename Trainer<T, Device>::Master>(comms.tp(), host, records, with_checksums);
        save_safetensors<typename Trainer<T, Device>::Master>(comms.tp(), host, records, dir / "resume.safetensors",
                                                              with_checksums);
        // On a device, save_safetensors copies each block of the weights to the host to write it.
        const auto params = trainer.model().parameters();
        save_safetensors<T>(comms.tp(), *mesh.tp_context().device, params, dir / "model.safetensors", metadata);
      },
      {.keep = keep});
}

/// Loads a checkpoint written by save_training_checkpoint at any mesh into `trainer` (master
/// weights, moments, step count, loss scale; the model's weights rewritten) and returns the file's
/// metadata for the caller's own entries. `path`: a checkpoint root (its latest complete step,
/// picked by world rank 0 for all), a step directory or a resume.safetensors file. `check(metadata,
/// file)`, when given, runs before anything is loaded (a trainer refuses another model's
/// checkpoint there, leaving its state as it was); then world rank 0 checks every tensor against
/// its checksum and for non-finite values (tp/io/resume.hpp), refusing the file on every rank. Throws IoError when there is none or it is not a
/// resume file. Collective over the mesh's world.
template <class T, class Device>
SafetensorsMetadata load_training_checkpoint(
    Trainer<T, Device>& trainer, std::filesystem::path path,
    const std::function<void(const SafetensorsMetadata&, const std::filesystem::path&)>& check = {}) {
  trainer.finish_param_sync();  // no gather of older weights may land after the loaded ones
  const Mesh<Device>& mesh = trainer.mesh();
  detail::HostComms<Device> comms(mesh);
  std::int64_t step = -1;  // -1: `path` is a file or a step directory itself
  if (mesh.rank() == 0 && std::filesystem::is_directory(path) && !std::filesystem::exists(path / "resume.safetensors"))
    if (const auto latest = latest_checkpoint(path)) step = *checkpoint_step(latest->filename().string());
  comms.world().broadcast(std::span<std::int64_t>(&step, 1), 0);
  if (step >= 0) path /= checkpoint_name(step);
  if (std::filesystem::is_directory(path)) {
    if (!std::filesystem::exists(path / "resume.safetensors"))
      TP_THROW(IoError, "{}: no complete checkpoint in it (a step-NNNNNN directory holding resume.safetensors)",
               path.string());
    path /= "resume.safetensors";
  }
  const SafetensorsCheckpoint checkpoint(path);
  const SafetensorsMetadata& metadata = checkpoint.metadata();
  const std::int64_t count = detail::resume_step(metadata, path);
  if (check) check(metadata, path);
  {  // The master type: the dtype of the first parameter's master weights in the file.
    using M = typename Trainer<T, Device>::Master;
    const auto& params = trainer.grads().parameters();
    TP_CHECK(!params.empty(), "load_training_checkpoint: the model has no parameters");
    const std::string& name = params.front().name;
    const std::string& saved = checkpoint.file_of(name).tensor(name).dtype;
    const std::string_view want = detail::safetensors_dtype_name(dtype_of<M>);
    if (saved != want) {
      const auto precision = metadata.find("precision");
      TP_THROW(IoError,
               "{}: the master weights are {} (saved by a {} run) but this {} trainer's are {}: a checkpoint resumes "
               "across fp32, bf16 and f16 (fp32 master weights alike), not between double and those",
               path.string(), saved, precision == metadata.end() ? "?" : precision->second,
               detail::safetensors_dtype_name(dtype_of<T>), want);
    }
  }
  detail::verify_resume_file(comms.world(), path, metadata);

  // Every rank reads its TP blocks into full buckets, then keeps its shard.
  auto full = detail::gather_state(trainer);
  const Cpu host;
  for (const auto& r : full.records(trainer)) load_parameter(host, r, checkpoint);
  auto& opt = trainer.optimizer();
  for (std::size_t i = 0; i < opt.shards().size(); ++i) {
    auto& s = opt.shards()[i];
    std::copy(full.master[i].begin() + s.begin, full.master[i].begin() + s.end, s.master.begin());
    std::copy(full.exp_avg[i].begin() + s.begin, full.exp_avg[i].begin() + s.end, s.exp_avg.begin());
    std::copy(full.exp_avg_sq[i].begin() + s.begin, full.exp_avg_sq[i].begin() + s.end, s.exp_avg_sq.begin());
  }
  opt.write_weights();
  opt.set_step_count(count);
  if (const auto scale = metadata.find("loss_scale"); scale != metadata.end() && trainer.loss_scaler()) {
    auto& scaler = *trainer.loss_scaler();
    double value = 0;
    std::int64_t clean = 0;
    const auto parse = [&](const std::string& key, auto& out) {
      const std::string& text = metadata.at(key);
      const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
      if (ec != std::errc() || end != text.data() + text.size())
        TP_THROW(IoError, "{}: {} is '{}', not a number", path.string(), key, text);
    };
    parse("loss_scale", value);
    if (metadata.count("loss_scale.clean_steps")) parse("loss_scale.clean_steps", clean);
    scaler.set_scale(value);
    // A resuming run with a shorter growth interval grows at its next clean step.
    scaler.set_clean_steps(std::min(clean, scaler.options().growth_interval - 1));
  }
  return metadata;
}

}  // namespace tp
