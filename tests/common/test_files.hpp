#pragma once
/// What the file tests (tests/io) share: a fresh directory per test, and the guard for tests that
/// work on one process's files or run their own in-process worlds.

#include <gtest/gtest.h>

#include <filesystem>

#include "common/harness.hpp"
#include "tp/core/error.hpp"

/// Under mpirun every process would run such a test at once on the same files, so it runs in
/// tp_tests (the in-process harness) only.
#define TP_LOCAL_ONLY() \
  if (::tp::test::harness_backend() != "local") GTEST_SKIP() << "in-process test; runs in tp_tests"

namespace tp::test {

/// An empty directory named after the harness and the running test, under the system's temp dir.
inline std::filesystem::path test_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    fmt::format("tp_{}_{}_{}", harness_backend(), info->test_suite_name(), info->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace tp::test
