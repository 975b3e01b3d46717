#pragma once
/// The POSIX file calls tp's checkpoint I/O makes, wrapped so that every failure throws
/// tp::IoError naming the file, the operation, the offset and what was being read or written:
/// positioned reads and writes (`pread`/`pwrite`, so ranks and threads share no file offset),
/// sizing, syncing and the final rename that makes a written file appear whole.
///
/// Temporary names are `<target>.tmp-<16 hex digits>`, random, created exclusively
/// (O_CREAT|O_EXCL|O_NOFOLLOW, or mkdir) in the target's directory: whatever already sits at a
/// name, a planted symbolic link included, makes the creation fail and another name be drawn, so
/// a write never lands anywhere but in a file this process created.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
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
  /// Opens `path` for reading only if it is a regular file. The open does not block (O_NONBLOCK:
  /// a FIFO would otherwise wait forever for a writer), and a FIFO, directory, device or socket is
  /// refused by name; symbolic links are followed, as model caches use them.
  static Fd open_regular(const std::string& path) {
    Fd fd(path, O_RDONLY | O_NONBLOCK);
    struct stat st {};
    if (::fstat(fd.fd_, &st) != 0) TP_THROW(IoError, "{}: cannot stat: {}", path, std::strerror(errno));
    if (!S_ISREG(st.st_mode))
      TP_THROW(IoError, "{}: is {}, not a regular file; tp reads its inputs from regular files only", path,
               S_ISFIFO(st.st_mode)  ? "a FIFO"
               : S_ISDIR(st.st_mode) ? "a directory"
               : S_ISCHR(st.st_mode) ? "a character device"
               : S_ISBLK(st.st_mode) ? "a block device"
               : S_ISSOCK(st.st_mode) ? "a socket"
                                      : "not a file");
    const int flags = ::fcntl(fd.fd_, F_GETFL);
    if (flags < 0 || ::fcntl(fd.fd_, F_SETFL, flags & ~O_NONBLOCK) != 0)
      TP_THROW(IoError, "{}: cannot clear O_NONBLOCK: {}", path, std::strerror(errno));
    return fd;
  }

  /// Creates `path` for writing; nullopt if anything exists at the name, a symbolic link (even a
  /// dangling one) included, IoError on any other failure.
  static std::optional<Fd> create_new(const std::string& path, mode_t mode = 0644) {
    Fd fd;
    fd.path_ = path;
    fd.fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd.fd_ >= 0) return fd;
    if (errno == EEXIST) return std::nullopt;
    TP_THROW(IoError, "{}: cannot create: {}", path, std::strerror(errno));
  }
  /// Opens an existing file for writing; fails if the name is a symbolic link.
  static Fd open_for_writing(const std::string& path) { return Fd(path, O_WRONLY | O_NOFOLLOW); }

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

/// A random 64-bit value for temporary names (two writers, or a planted file, never agree on one).
inline std::uint64_t random_suffix() {
  std::random_device device;
  return (std::uint64_t{device()} << 32) ^ device();
}

/// `<target>.tmp-<suffix in hex>`: the temporary name beside `target` that `suffix` stands for, so
/// that ranks handed the suffix find the file rank 0 created.
inline std::filesystem::path temp_name(const std::filesystem::path& target, std::uint64_t suffix) {
  return fmt::format("{}.tmp-{:016x}", target.string(), suffix);
}

/// Creates a fresh temporary file beside `target` (see temp_name), exclusively; returns it open for
/// writing and the suffix that names it. A name that exists already is skipped.
inline std::pair<Fd, std::uint64_t> create_temp_file(const std::filesystem::path& target) {
  for (int attempt = 0;; ++attempt) {
    const std::uint64_t suffix = random_suffix();
    std::optional<Fd> fd = Fd::create_new(temp_name(target, suffix).string());
    if (fd) return {std::move(*fd), suffix};
    if (attempt == 99)
      TP_THROW(IoError, "{}: 100 temporary names beside it were all taken", target.string());
  }
}

/// Creates a fresh temporary directory beside `target` (see temp_name); returns its suffix.
inline std::uint64_t create_temp_directory(const std::filesystem::path& target) {
  for (int attempt = 0;; ++attempt) {
    const std::uint64_t suffix = random_suffix();
    const std::string name = temp_name(target, suffix).string();
    if (::mkdir(name.c_str(), 0755) == 0) return suffix;
    if (errno != EEXIST || attempt == 99)
      TP_THROW(IoError, "{}: cannot create a temporary directory {}: {}", target.string(), name, std::strerror(errno));
  }
}

/// Flushes a directory's entries to the disk, so that a rename into it survives a power loss.
inline void sync_directory(const std::filesystem::path& dir) {
  const std::string name = dir.empty() ? std::string(".") : dir.string();
  const int fd = ::open(name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) TP_THROW(IoError, "{}: cannot open the directory to sync it: {}", name, std::strerror(errno));
  const int rc = ::fsync(fd), err = errno;
  ::close(fd);
  if (rc != 0) TP_THROW(IoError, "{}: fsync of the directory failed: {}", name, std::strerror(err));
}

/// Renames `from` to `to` (atomically on one file system); "" on success, else the reason, so
/// that a caller in a collective can hand the verdict to the other ranks before throwing.
inline std::string rename_file(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::error_code ec;
  std::filesystem::rename(from, to, ec);
  return ec ? fmt::format("cannot rename {} to {}: {}", from.string(), to.string(), ec.message()) : std::string();
}

/// Writes `text` as the file `target`, whole or not at all: into an exclusive temporary file
/// beside it (create_temp_file), fsynced, then renamed over `target`. Whatever sat at `target`, a
/// planted symbolic link included, is replaced, never written through. `what` names the file's
/// role in errors; the temporary file is removed on failure.
inline void write_file_atomically(const std::filesystem::path& target, std::string_view text, std::string_view what) {
  auto [fd, suffix] = create_temp_file(target);
  const std::filesystem::path tmp = temp_name(target, suffix);
  try {
    fd.write_at(text.data(), text.size(), 0, what);
    fd.sync();
    fd.close();
    if (auto error = rename_file(tmp, target); !error.empty()) TP_THROW(IoError, "{}: {}", target.string(), error);
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
}

}  // namespace tp::detail
