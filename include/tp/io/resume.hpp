#pragma once
/// Training resume files: one safetensors file with the parameters (under their own names, so it
/// is also a plain weights checkpoint), the AdamW moments ("adamw.exp_avg.<name>",
/// "adamw.exp_avg_sq.<name>"), and in `__metadata__` the step count ("adamw.step"), the
/// hyper-parameters, a checksum of every tensor ("checksum.<name>", see tensor_checksum; the file
/// stays a standard safetensors file), plus whatever the trainer adds (data position, seed).
/// Everything is stored full, so training saved at one TP degree resumes at another.
///
/// load_resume refuses, naming the file and the first tensor, a tensor whose bytes no longer match
/// its checksum (a bit flip on disk or in transit) and parameters or moments that are not finite
/// (NaN or Inf: a run that had already diverged).

#ifndef TP_HAS_IO
#error "tp/io/resume.hpp needs the tp::io CMake component: target_link_libraries(... tp::io)"
#endif

#include <charconv>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "tp/comm/detail/host_staged_communicator.hpp"
#include "tp/io/file.hpp"
#include "tp/io/safetensors.hpp"
#include "tp/optim/adamw.hpp"

namespace tp {

namespace detail {

/// One element's share of a tensor checksum: a 32-bit mix of its index in the full tensor and its
/// bits. The checksum of a tensor is the sum of its elements' shares modulo 2^32, so each rank
/// sums the blocks it writes and the ranks' sums add up (one all_reduce), and a flipped bit
/// changes it but for a chance of 2^-32.
inline std::uint64_t checksum_share(std::uint64_t index, std::uint64_t bits) {
  std::uint64_t z = index * 0x9E3779B97F4A7C15ull ^ bits;  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (z ^ (z >> 31)) & 0xFFFFFFFFull;
}

/// The checksum share of `n` elements of `size` bytes each at `bytes`, the first being element
/// `first` of its tensor.
inline std::uint64_t checksum_bytes(const unsigned char* bytes, std::size_t size, std::int64_t n, std::int64_t first) {
  std::uint64_t sum = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    std::uint64_t bits = 0;
    std::memcpy(&bits, bytes + static_cast<std::size_t>(i) * size, size);
    sum += checksum_share(static_cast<std::uint64_t>(first + i), bits);
  }
  return sum & 0xFFFFFFFFull;
}

/// Whether an element of the file's dtype (F64, F32, F16, BF16; others count as finite) given
/// by its bits is finite: its exponent is not all ones.
inline bool finite_bits(std::string_view dtype, std::uint64_t bits) {
  if (dtype == "F64") return ((bits >> 52) & 0x7FF) != 0x7FF;
  if (dtype == "F32") return ((bits >> 23) & 0xFF) != 0xFF;
  if (dtype == "F16") return ((bits >> 10) & 0x1F) != 0x1F;
  if (dtype == "BF16") return ((bits >> 7) & 0xFF) != 0xFF;
  return true;
}

/// Checks every tensor of a resume file for non-finite values and, with `checksums`, against its
/// checksum in __metadata__, reading
/// the file's bytes (at most 1 MiB at a time); "" or the first failure.
inline std::string verify_resume_file(const SafetensorsFile& file, bool checksums) {
  const Fd fd = Fd::open_regular(file.path());
  const SafetensorsHeader& header = file.header();
  std::vector<unsigned char> chunk;
  for (const auto& [name, t] : header.tensors) {
    const auto want = header.metadata.find("checksum." + name);
    if (checksums && want == header.metadata.end()) return fmt::format("tensor '{}' has no checksum.{} in __metadata__", name, name);
    const std::int64_t n = t.numel(), per_chunk = std::max<std::int64_t>(1, (1 << 20) / static_cast<std::int64_t>(t.element_size));
    std::uint64_t sum = 0;
    for (std::int64_t i = 0; i < n; i += per_chunk) {
      const std::int64_t m = std::min(per_chunk, n - i);
      chunk.resize(static_cast<std::size_t>(m) * t.element_size);
      fd.read_at(chunk.data(), chunk.size(), header.data_start + t.begin + static_cast<std::uint64_t>(i) * t.element_size,
                 fmt::format("tensor '{}'", name));
      sum += checksum_bytes(chunk.data(), t.element_size, m, i);
      for (std::int64_t j = 0; j < m; ++j) {
        std::uint64_t bits = 0;
        std::memcpy(&bits, chunk.data() + static_cast<std::size_t>(j) * t.element_size, t.element_size);
        if (!finite_bits(t.dtype, bits))
          return fmt::format("tensor '{}' holds a non-finite value (NaN or Inf) at element {}; the run it was saved "
                             "from had diverged", name, i + j);
      }
    }
    const std::string got = fmt::format("{:08x}", sum & 0xFFFFFFFFull);
    if (checksums && got != want->second)
      return fmt::format("tensor '{}' has checksum {}, but __metadata__ records {}: the file was changed or damaged "
                         "after it was written", name, got, want->second);
  }
  return {};
}


/// Adds "checksum.<name>" of every tensor to `metadata`: each rank sums its share over the blocks
/// it writes (one writer per block, as save_safetensors writes them) and one all_reduce over `comm`
/// adds the shares up. Collective over `comm`, the communicator the file is saved over (staged on
/// a device: detail::HostComm).
template <class T, class Device>
void add_checksums(Communicator& comm, const Device& device, const std::vector<Parameter<T>>& tensors,
                   SafetensorsMetadata& metadata) {
  const detail::HostComm<Device> group(comm, device);  // staged on a device
  std::map<std::string, std::size_t, std::less<>> slot;
  for (const auto& p : tensors) slot.emplace(p.name, slot.size());
  std::vector<std::int64_t> sums(slot.size(), 0);
  std::vector<T> host;
  for (const auto& p : tensors) {
    if (!writes_record(p, group->rank())) continue;
    host.resize(static_cast<std::size_t>(p.value.size()));
    const MatrixView<T> h(host.data(), p.value.rows, p.value.cols);
    device.to_host(ConstView<T>(p.value), h);
    std::uint64_t sum = 0;
    for (std::int64_t r = 0; r < h.rows; ++r)
      sum += checksum_bytes(reinterpret_cast<const unsigned char*>(h.row(r)), sizeof(T), h.cols,
                            (p.rows.begin + r) * p.full_cols + p.cols.begin);
    auto& s = sums[slot.at(p.name)];
    s = static_cast<std::int64_t>((static_cast<std::uint64_t>(s) + sum) & 0xFFFFFFFFull);
  }
  group->all_reduce(std::span<std::int64_t>(sums), ReduceOp::sum);  // < 2^32 per rank: no overflow
  for (const auto& [name, i] : slot)
    metadata["checksum." + name] = fmt::format("{:08x}", static_cast<std::uint64_t>(sums[i]) & 0xFFFFFFFFull);
}

/// `comm` moves host buffers: on a device, detail::HostComm's (load_resume passes one).
/// Rank 0 of `comm` verifies the resume file at `path` (every value finite, and every tensor's
/// checksum where its metadata has them: a file written before checksums has only the first) and
/// every rank throws its verdict, naming the file and the tensor. Collective over `comm`.
inline void verify_resume_file(Communicator& comm, const std::filesystem::path& path,
                               const SafetensorsMetadata& metadata) {
  std::string error;
  if (comm.rank() == 0) {
    const auto first = metadata.lower_bound("checksum.");
    const bool has_checksums = first != metadata.end() && first->first.starts_with("checksum.");
    try {
      error = verify_resume_file(SafetensorsFile(path), has_checksums);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  // Rank 0's verdict, its text included, so that every rank throws the same message.
  std::int64_t length = static_cast<std::int64_t>(error.size());
  comm.broadcast(std::span<std::int64_t>(&length, 1), 0);
  if (length > 0) {
    std::vector<std::uint8_t> text(error.begin(), error.end());
    text.resize(static_cast<std::size_t>(length));
    comm.broadcast(std::span<std::uint8_t>(text), 0);
    TP_THROW(IoError, "{}: {}", path.string(), std::string(text.begin(), text.end()));
  }
}

/// The step count of a resume file ("adamw.step" in its __metadata__); IoError naming the file
/// when there is none or it is not a count.
inline std::int64_t resume_step(const SafetensorsMetadata& metadata, const std::filesystem::path& path) {
  const auto step = metadata.find("adamw.step");
  if (step == metadata.end()) TP_THROW(IoError, "{}: not a resume file: no adamw.step in __metadata__", path.string());
  std::int64_t count = -1;
  const auto [end, ec] = std::from_chars(step->second.data(), step->second.data() + step->second.size(), count);
  if (ec != std::errc() || end != step->second.data() + step->second.size() || count < 0)
    TP_THROW(IoError, "{}: adamw.step is '{}', not a step count", path.string(), step->second);
  return count;
}

}  // namespace detail

/// Saves the optimizer's parameters, moments and step, with a checksum of every tensor.
/// Collective over the optimizer's group; on a device its collectives over host buffers are
/// staged through device buffers (detail::HostComm).
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
  detail::add_checksums<T>(*ctx.comm, *ctx.device, tensors, metadata);
  save_safetensors<T>(*ctx.comm, *ctx.device, tensors, path, metadata);
}

/// Loads parameters, moments and step count into `optimizer` (each rank its blocks) and returns
/// the file's metadata, for the trainer's own entries. The learning rate is the caller's to set.
/// Rank 0 first verifies that every value is finite and every tensor's checksum (see the header
/// comment; a file written before checksums, with no "checksum.*" entries, has only the first).
/// Collective over the optimizer's group; on a device rank 0's verdict is broadcast through
/// device buffers (detail::HostComm).
template <class T, class Device>
SafetensorsMetadata load_resume(AdamW<T, Device>& optimizer, const std::filesystem::path& path) {
  const SafetensorsCheckpoint checkpoint(path);
  const SafetensorsMetadata& metadata = checkpoint.metadata();
  const std::int64_t count = detail::resume_step(metadata, path);
  const auto& ctx = optimizer.context();
  detail::verify_resume_file(*detail::HostComm<Device>(*ctx.comm, *ctx.device), path, metadata);
  const Device& device = *ctx.device;
  for (const auto& p : optimizer.parameters()) load_parameter(device, p, checkpoint);
  for (const auto& p : optimizer.state()) load_parameter(device, p, checkpoint);
  optimizer.set_step_count(count);
  return metadata;
}

}  // namespace tp
