#pragma once
/// Exceptions are tp's only error channel: every status from BLAS, MPI, Gloo, CUDA and NCCL is
/// converted into one of these, with the sizes, ranks or file involved in the message.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>
#include <string>

namespace tp {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The caller passed something that cannot work: wrong shapes, sizes that cannot be split.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

/// A collective failed: a peer died or timed out, ranks disagreed on sizes, a backend reported an error.
class CommError : public Error {
 public:
  using Error::Error;
};

/// A CUDA, cuBLAS or cuBLASLt call failed.
class CudaError : public Error {
 public:
  using Error::Error;
};

/// A file could not be read or written, or its contents are corrupt.
class IoError : public Error {
 public:
  using Error::Error;
};

namespace detail {
inline std::string located(const char* file, int line, const std::string& what) {
  return fmt::format("{} ({}:{})", what, file, line);
}
}  // namespace detail

}  // namespace tp

/// Throws `type` with a {fmt} message plus the throw site.
#define TP_THROW(type, ...) throw type(::tp::detail::located(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)))

/// Throws tp::InvalidArgument unless `cond` holds: `TP_CHECK(x.cols() == in, "input has {} columns", x.cols())`.
#define TP_CHECK(cond, ...)                           \
  do {                                                \
    if (!(cond)) TP_THROW(::tp::InvalidArgument, __VA_ARGS__); \
  } while (0)
