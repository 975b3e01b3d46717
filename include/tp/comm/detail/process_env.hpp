#pragma once
/// Where a process learns its place in a job from the environment, read in one place for every
/// backend and launcher: tp's own TP_RANK / TP_WORLD_SIZE first, then Open MPI's mpirun
/// (OMPI_COMM_WORLD_RANK / _SIZE), then PMI launchers such as srun or MPICH's hydra (PMI_RANK /
/// PMI_SIZE).

#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tp/core/error.hpp"

namespace tp::detail {

/// $name, or `fallback` when it is unset or empty.
inline std::string env_or(const char* name, std::string fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : std::move(fallback);
}

inline constexpr std::initializer_list<const char*> rank_variables = {"TP_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"};
inline constexpr std::initializer_list<const char*> size_variables = {"TP_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE",
                                                                      "PMI_SIZE"};

/// The first of `names` that is set, as a non-negative integer; nullopt when none is. `who` and
/// `what` ("rank", "world size") name the caller and the number in the error for a malformed value.
inline std::optional<int> env_number(std::initializer_list<const char*> names, std::string_view who,
                                     std::string_view what) {
  for (const char* name : names)
    if (const char* v = std::getenv(name); v != nullptr && *v != '\0') {
      char* end = nullptr;
      const long value = std::strtol(v, &end, 10);
      TP_CHECK(*end == '\0' && value >= 0, "{}: {}='{}' is not a {}", who, name, v, what);
      return static_cast<int>(value);
    }
  return std::nullopt;
}

/// This process's rank and the job's size from the environment; throws InvalidArgument naming
/// every variable looked at when one of the two is missing.
struct EnvWorld {
  int rank = 0, size = 1;
};
inline EnvWorld world_from_env(std::string_view who) {
  const auto need = [&](std::initializer_list<const char*> names, std::string_view what) {
    const auto value = env_number(names, who, what);
    if (!value)
      TP_THROW(InvalidArgument, "{}: none of {} is set; cannot tell the {}", who,
               std::vector<std::string>(names.begin(), names.end()), what);
    return *value;
  };
  EnvWorld world;
  world.rank = need(rank_variables, "rank");
  world.size = need(size_variables, "world size");
  TP_CHECK(world.size > 0 && world.rank < world.size, "{}: rank {} is outside world size {} (from the environment)",
           who, world.rank, world.size);
  return world;
}

/// Whether an MPI-style launcher (mpirun, or a PMI one such as srun) started this process, so
/// that MPI_Init joins a job rather than making a world of one.
inline bool started_by_mpi_launcher() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr;
}

}  // namespace tp::detail
