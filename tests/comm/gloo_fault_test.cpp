/// Gloo peers that die: two processes (tp_gloo_fault_peer) all-reduce megabytes over TCP, one is
/// killed with SIGKILL at a random moment, and the survivor must report a CommError and exit, never
/// die of SIGPIPE (gloo writes with writev, which raises it on a socket whose peer is gone).
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tp/core/error.hpp"

extern char** environ;

namespace tp {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

/// Starts `args`, its standard error going to the file `err`.
pid_t spawn(const std::vector<std::string>& args, const fs::path& err) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) TP_THROW(Error, "cannot start {}: {}", args[0], std::strerror(rc));
  return pid;
}

std::string read_all(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// The wait status of `pid`, or nullopt if it is still running after `limit` (then it is killed).
std::optional<int> wait_for(pid_t pid, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return std::nullopt;
    }
    std::this_thread::sleep_for(5ms);
  }
}

std::string describe(std::optional<int> status) {
  if (!status) return "hung";
  if (WIFSIGNALED(*status)) return fmt::format("killed by signal {} ({})", WTERMSIG(*status), strsignal(WTERMSIG(*status)));
  return fmt::format("exit {}", WEXITSTATUS(*status));
}

TEST(GlooFaults, KilledPeerIsACommErrorNeverSigpipe) {
  constexpr int runs = 20;
  const auto base = fs::temp_directory_path() / fmt::format("tp_gloo_fault_{}", ::getpid());
  std::mt19937 random(12345);
  std::vector<std::string> outcomes;
  int comm_errors = 0;
  for (int run = 0; run < runs; ++run) {
    const auto dir = base / std::to_string(run);
    fs::remove_all(dir);
    fs::create_directories(dir);
    // 4 MB all-reduces for up to a minute: the peer dies while the survivor is writing.
    const auto peer = [&](int rank) {
      return spawn({TP_GLOO_FAULT_PEER, dir.string(), std::to_string(rank), "2", "5000", "1000000", "100000"},
                   dir / fmt::format("stderr.{}", rank));
    };
    const pid_t pids[2] = {peer(0), peer(1)};
    const int victim = run % 2, survivor = 1 - victim;
    const auto ready_by = std::chrono::steady_clock::now() + 30s;
    while ((!fs::exists(dir / "ready.0") || !fs::exists(dir / "ready.1")) && std::chrono::steady_clock::now() < ready_by)
      std::this_thread::sleep_for(2ms);
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 60)(random)));
    kill(pids[victim], SIGKILL);
    wait_for(pids[victim], 10s);
    const auto status = wait_for(pids[survivor], 30s);
    const bool comm_error = status && WIFEXITED(*status) && WEXITSTATUS(*status) == 3;
    comm_errors += comm_error;
    outcomes.push_back(fmt::format("run {} (rank {} killed): survivor {}: {}", run, victim, describe(status),
                                   read_all(dir / fmt::format("stderr.{}", survivor))));
    fs::remove_all(dir);
  }
  fs::remove_all(base);
  std::string all;
  for (const auto& o : outcomes) all += o + "\n";
  EXPECT_EQ(comm_errors, runs) << "survivors that reported a CommError, of " << runs << ":\n" << all;
  std::printf("%s", all.c_str());  // the outcome of every run, for the record
}

}  // namespace
}  // namespace tp
