#pragma once
/// The POSIX file calls tp's checkpoint I/O makes, wrapped so that every failure throws
/// tp::IoError naming the file, the operation, the offset and what was being read or written:
/// positioned reads and writes (`pread`/`pwrite`, so ranks and threads share no file offset),
/// sizing, syncing and the final rename that makes a written file appear whole.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "tp/core/error.hpp"

namespace tp::detail {

/// An open file descriptor, closed on destruction.
class Fd {
 public:
  Fd() = default;
  Fd(const std::string& path, int flags, mode_t mode = 0644) : path_(path), fd_(::open(path.c_str(), flags | O_CLOEXEC, mode)) {
    if (fd_ < 0) TP_THROW(IoError, "{}: cannot open: {}", path, std::strerror(errno));
  }
  Fd(Fd&& o) noexcept : path_(std::move(o.path_)), fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    std::swap(path_, o.path_);
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  const std::string& path() const { return path_; }

  std::uint64_t size() const {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) TP_THROW(IoError, "{}: cannot stat: {}", path_, std::strerror(errno));
    return static_cast<std::uint64_t>(st.st_size);
  }
  /// Reads exactly `n` bytes at `offset`; `what` names the tensor in the error.
  void read_at(void* dst, std::size_t n, std::uint64_t offset, std::string_view what) const {
    auto* p = static_cast<char*>(dst);
    while (n > 0) {
      const ssize_t got = ::pread(fd_, p, n, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) TP_THROW(IoError, "{}: reading {} at offset {}: {}", path_, what, offset, std::strerror(errno));
      if (got == 0) TP_THROW(IoError, "{}: file ends at offset {} while reading {}", path_, offset, what);
      p += got;
      n -= static_cast<std::size_t>(got);
      offset += static_cast<std::uint64_t>(got);
    }
  }
  void write_at(const void* src, std::size_t n, std::uint64_t offset, std::string_view what) const {
    const auto* p = static_cast<const char*>(src);
    while (n > 0) {
      const ssize_t put = ::pwrite(fd_, p, n, static_cast<off_t>(offset));
      if (put < 0 && errno == EINTR) continue;
      if (put <= 0) TP_THROW(IoError, "{}: writing {} at offset {}: {}", path_, what, offset, std::strerror(errno));
      p += put;
      n -= static_cast<std::size_t>(put);
      offset += static_cast<std::uint64_t>(put);
    }
  }
  /// Sets the file's size, so that ranks writing their blocks at any offset find it there.
  void resize(std::uint64_t bytes) const {
    if (::ftruncate(fd_, static_cast<off_t>(bytes)) != 0)
      TP_THROW(IoError, "{}: cannot size the file to {} bytes: {}", path_, bytes, std::strerror(errno));
  }
  /// Flushes to the disk, so that a rename after it never exposes a file with missing blocks.
  void sync() const {
    if (::fsync(fd_) != 0) TP_THROW(IoError, "{}: fsync failed: {}", path_, std::strerror(errno));
  }
  void close() {
    if (fd_ >= 0 && ::close(std::exchange(fd_, -1)) != 0)
      TP_THROW(IoError, "{}: close failed: {}", path_, std::strerror(errno));
  }

 private:
  std::string path_;
  int fd_ = -1;
};

/// Renames `from` to `to` (atomically on one file system); "" on success, else the reason, so
/// that a caller in a collective can hand the verdict to the other ranks before throwing.
inline std::string rename_file(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::error_code ec;
  std::filesystem::rename(from, to, ec);
  return ec ? fmt::format("cannot rename {} to {}: {}", from.string(), to.string(), ec.message()) : std::string();
}

}  // namespace tp::detail
