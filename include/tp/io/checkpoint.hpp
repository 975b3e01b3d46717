#pragma once
/// A training run's checkpoints as one directory per step, each written as one unit:
///
///   <root>/step-000300/                 complete: its files were written and fsynced, then the
///                                       directory was renamed to this name, last
///   <root>/step-000400.tmp-<16 hex>/    being written, or left by a save that was killed: never
///                                       read; removed by the next save into <root>
///
/// `save_checkpoint` creates a fresh temporary directory (exclusively, under a random name, so
/// nothing planted there is followed), lets the caller write every file of the step into it
/// (weights, optimizer state, data position: tp/io/safetensors.hpp, tp/io/resume.hpp), fsyncs each
/// file and the directory, renames it to `step-NNNNNN` and fsyncs the root. A kill at any moment
/// leaves the earlier complete steps as they were: there is never a step directory whose files
/// are from different steps or half written.
///
/// `latest_checkpoint` picks the resume point: the `step-<digits>` directory with the highest step,
/// ignoring everything else (temporary directories, other files, symbolic links). Saving a step
/// that exists already replaces it: the old directory is renamed to `step-NNNNNN.old-<hex>` first
/// and removed after; a kill between the two renames leaves the step absent (the step before it
/// is then the latest) until the next save puts the old directory back. One run writes into a
/// root at a time.

#ifndef TP_HAS_IO
#error "tp/io/checkpoint.hpp needs the tp::io CMake component: target_link_libraries(... tp::io)"
#endif

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "tp/comm/communicator.hpp"
#include "tp/core/error.hpp"
#include "tp/io/file.hpp"

namespace tp {

struct CheckpointOptions {
  /// How many complete step directories to keep, the newest ones (0: keep all). Older ones are
  /// removed after a save succeeds, never before.
  int keep = 0;
};

/// "step-000300": the directory name of a step's checkpoint (at least 6 digits, so that names
/// sort by step up to a million).
inline std::string checkpoint_name(std::int64_t step) { return fmt::format("step-{:06d}", step); }

/// The step of a complete checkpoint's directory name ("step-" and digits only); nullopt for
/// anything else, temporary directories included.
inline std::optional<std::int64_t> checkpoint_step(std::string_view name) {
  constexpr std::string_view prefix = "step-";
  if (!name.starts_with(prefix) || name.size() == prefix.size()) return std::nullopt;
  const std::string_view digits = name.substr(prefix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
  std::int64_t step = -1;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return step;
}

namespace detail {

/// The complete checkpoints under `root`, by step (oldest first).
inline std::vector<std::pair<std::int64_t, std::filesystem::path>> list_checkpoints(const std::filesystem::path& root) {
  std::vector<std::pair<std::int64_t, std::filesystem::path>> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
    const auto step = checkpoint_step(entry.path().filename().string());
    std::error_code is_dir_ec;
    if (step && entry.is_directory(is_dir_ec) && !entry.is_symlink(is_dir_ec)) found.emplace_back(*step, entry.path());
  }
  if (ec && ec != std::errc::no_such_file_or_directory)
    TP_THROW(IoError, "{}: cannot list the checkpoint directory: {}", root.string(), ec.message());
  std::sort(found.begin(), found.end());
  return found;
}

/// Clears what killed saves left under `root`: removes `step-*.tmp-*` directories, and puts a
/// `step-N.old-*` directory back as `step-N` when the save that replaced it never finished (else
/// removes it).
inline void remove_stale_checkpoints(const std::filesystem::path& root) {
  std::vector<std::filesystem::path> stale;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("step-") &&
        (name.find(".tmp-") != std::string::npos || name.find(".old-") != std::string::npos))
      stale.push_back(entry.path());
  }
  for (const auto& path : stale) {
    const std::string name = path.filename().string();
    const auto old = name.find(".old-");
    std::error_code ignored;
    if (old != std::string::npos && checkpoint_step(name.substr(0, old)) &&
        !std::filesystem::exists(std::filesystem::symlink_status(root / name.substr(0, old))) &&
        rename_file(path, root / name.substr(0, old)).empty())
      continue;
    std::filesystem::remove_all(path, ignored);
  }
}

/// fsyncs every regular file directly in `dir`, then `dir` itself.
inline void sync_tree(const std::filesystem::path& dir) {
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (!entry.is_regular_file() || entry.is_symlink()) continue;
    Fd::open_regular(entry.path().string()).sync();
  }
  sync_directory(dir);
}

/// Commits a written temporary directory as `final` (see the header comment); "" or the reason.
inline std::string commit_checkpoint(const std::filesystem::path& tmp, const std::filesystem::path& final) {
  try {
    sync_tree(tmp);
    std::filesystem::path aside;
    if (std::filesystem::exists(std::filesystem::symlink_status(final))) {
      aside = fmt::format("{}.old-{:016x}", final.string(), random_suffix());
      if (auto error = rename_file(final, aside); !error.empty()) return error;
    }
    if (auto error = rename_file(tmp, final); !error.empty()) {
      if (!aside.empty()) rename_file(aside, final);  // put the old step back
      return error;
    }
    sync_directory(final.parent_path());
    if (!aside.empty()) std::filesystem::remove_all(aside);
    return {};
  } catch (const std::exception& e) {
    return e.what();
  }
}

}  // namespace detail

/// The complete checkpoint with the highest step under `root` (see the header comment), or
/// nullopt when there is none (or no `root`).
inline std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& root) {
  const auto found = detail::list_checkpoints(root);
  if (found.empty()) return std::nullopt;
  return found.back().second;
}

/// Writes step `step`'s checkpoint under `root` as one unit and returns its directory
/// (`<root>/step-NNNNNN`). Collective over `comm`: every rank calls it, and `write(dir)` runs on
/// every rank with the same temporary directory, to write the step's files into (collective
/// writers such as save_safetensors and save_resume included). If `write` throws on any rank,
/// the temporary directory is removed and every rank throws, naming the step; nothing under the
/// step's name changes. `comm` carries host buffers (a few integers): a device's communicator
/// that takes device memory only (NCCL) goes behind a detail::HostStagedCommunicator first, as
/// save_training_checkpoint does (the collective writers inside `write` stage their own).
template <class Write>
std::filesystem::path save_checkpoint(Communicator& comm, const std::filesystem::path& root, std::int64_t step,
                                      Write&& write, const CheckpointOptions& options = {}) {
  TP_CHECK(step >= 0, "{}: checkpoint step {} is negative", root.string(), step);
  TP_CHECK(options.keep >= 0, "{}: CheckpointOptions::keep is {}, not a count", root.string(), options.keep);
  const std::filesystem::path final = root / checkpoint_name(step);

  // Rank 0 clears what killed saves left and creates the temporary directory; the others wait for
  // its verdict and the suffix that names the directory.
  std::int64_t created[2] = {0, 0};  // {failed, suffix}
  std::string error;
  if (comm.rank() == 0) {
    try {
      std::filesystem::create_directories(root);
      detail::remove_stale_checkpoints(root);
      created[1] = static_cast<std::int64_t>(detail::create_temp_directory(final));
    } catch (const std::exception& e) {
      created[0] = 1;
      error = e.what();
    }
  }
  comm.broadcast(std::span<std::int64_t>(created, 2), 0);
  if (created[0])
    TP_THROW(IoError, "{}: cannot start the checkpoint of step {}: {}", final.string(), step,
             comm.rank() == 0 ? error : "rank 0 could not create its directory");
  const std::filesystem::path tmp = detail::temp_name(final, static_cast<std::uint64_t>(created[1]));

  std::int32_t failed = 0;
  try {
    write(tmp);
  } catch (const std::exception& e) {
    failed = 1;
    error = e.what();
  }
  std::int32_t any = failed;
  comm.all_reduce(std::span<std::int32_t>(&any, 1), ReduceOp::max);
  if (any) {
    if (comm.rank() == 0) {
      std::error_code ignored;
      std::filesystem::remove_all(tmp, ignored);
    }
    TP_THROW(IoError, "{}: checkpoint of step {} not written: {}", final.string(), step,
             failed ? error : "another rank failed to write its part");
  }

  if (comm.rank() == 0) {
    error = detail::commit_checkpoint(tmp, final);
    failed = error.empty() ? 0 : 1;
    if (!failed && options.keep > 0) {
      const auto found = detail::list_checkpoints(root);
      for (std::size_t i = 0; i + static_cast<std::size_t>(options.keep) < found.size(); ++i) {
        if (found[i].second == final) continue;
        std::error_code ignored;
        std::filesystem::remove_all(found[i].second, ignored);
      }
    }
  }
  comm.broadcast(std::span<std::int32_t>(&failed, 1), 0);
  if (failed)
    TP_THROW(IoError, "{}: checkpoint of step {} not committed: {}", final.string(), step,
             comm.rank() == 0 ? error : "rank 0 could not rename its directory");
  return final;
}

}  // namespace tp
