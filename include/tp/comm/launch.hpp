#pragma once
/// Starts the ranks of a job on a backend named by a string ("local", "mpi", "gloo"), as a
/// program's `--backend` and `--world` flags ask:
///   local  `world` threads in this process over LocalCommunicator;
///   mpi    this process is one rank of the MPI world (start it with `mpirun -np N`);
///   gloo   Gloo over TCP. Started by mpirun (or a PMI launcher such as srun), this process is one
///          rank, and the ranks meet through gloo's FileStore in $TP_GLOO_STORE when that is set
///          (GlooCommunicator::from_env), else over MPI. Otherwise, with TP_WORLD_SIZE set, the
///          ranks come from the environment (from_env, TP_RANK / TP_WORLD_SIZE / TP_GLOO_STORE);
///          else `world` threads in this process meet through an in-memory gloo HashStore.
///
/// This is a public header, not a file of the examples, because the examples, the benchmarks and
/// the test harnesses all start their ranks this way and are separate trees that share only
/// include/, and because a user's own trainer wants the same flags. It includes the MPI and Gloo
/// backends only when their components are linked (TP_HAS_MPI, TP_HAS_GLOO), so it compiles in
/// every build, and names the backends a build has when asked for one it lacks.

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tp/comm/communicator.hpp"
#include "tp/comm/detail/process_env.hpp"
#include "tp/comm/local_communicator.hpp"
#include "tp/core/error.hpp"
#ifdef TP_HAS_MPI
#include "tp/comm/mpi_communicator.hpp"
#endif
#ifdef TP_HAS_GLOO
#include <gloo/rendezvous/hash_store.h>

#include "tp/comm/gloo_communicator.hpp"
#endif

namespace tp {

struct LaunchOptions {
  /// "local", "mpi" or "gloo".
  std::string backend = "local";
  /// Ranks in this process (local; gloo outside a launcher). Under mpirun the job's size rules.
  int world = 1;
  /// How long a rank waits for its peers in any collective before failing with a CommError, on
  /// every backend (MPI: MpiOptions::timeout, non-blocking calls polled against this deadline);
  /// zero waits forever on MPI.
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
  /// Whether every collective first checks that all ranks made the same call
  /// (Communicator::set_verify_collectives); off only for benchmarks of the bare collectives.
  bool verify_collectives = true;
};

/// Whether mpirun (or a PMI launcher such as srun) started this process.
inline bool started_by_launcher() { return detail::started_by_mpi_launcher(); }

/// The backends this build can start: "local", then "mpi" and "gloo" when their components are there.
inline std::vector<std::string> available_backends() {
  std::vector<std::string> names{"local"};
#ifdef TP_HAS_MPI
  names.emplace_back("mpi");
#endif
#ifdef TP_HAS_GLOO
  names.emplace_back("gloo");
#endif
  return names;
}

/// The ranks of a job that live in this process, started as `options` say. MPI, when used, is
/// initialised for the object's lifetime (and finalised after the communicators are gone).
class Launch {
 public:
  using Body = std::function<void(std::shared_ptr<Communicator>)>;

  explicit Launch(LaunchOptions options) : Launch(std::move(options), no_argc_, no_argv_) {}

  /// `argc` / `argv` go to MPI_Init, which may take its own arguments out of them.
  Launch(LaunchOptions options, int& argc, char**& argv) : options_(std::move(options)) {
    const std::string& backend = options_.backend;
    TP_CHECK(options_.world > 0, "launch: --world must be positive, got {}", options_.world);
    if (backend == "local") {
      ranks_ = LocalCommunicator::create(options_.world, {.timeout = options_.timeout});
      apply_options();
      return;
    }
#ifdef TP_HAS_MPI
    if (backend == "mpi") {
      mpi_ = std::make_unique<MpiEnvironment>(argc, argv);
      ranks_ = {std::make_shared<MpiCommunicator>(MPI_COMM_WORLD, MpiOptions{.timeout = options_.timeout})};
      apply_options();
      return;
    }
#endif
#ifdef TP_HAS_GLOO
    if (backend == "gloo") {
      start_gloo(argc, argv);
      apply_options();
      return;
    }
#endif
    (void)argc;
    (void)argv;
    std::string have;
    for (const auto& name : available_backends()) have += (have.empty() ? "" : ", ") + name;
    TP_THROW(InvalidArgument, "unknown or unavailable backend '{}' (this build has: {})", backend, have);
  }

  Launch(const Launch&) = delete;
  Launch& operator=(const Launch&) = delete;
  ~Launch() { ranks_.clear(); }  // before MPI_Finalize

  /// This process's ranks: `world` of them when they are threads, else one.
  const std::vector<std::shared_ptr<Communicator>>& ranks() const { return ranks_; }
  const LaunchOptions& options() const { return options_; }

  /// Runs `body` on every rank of this process: on the calling thread when there is one (MPI
  /// wants its calls there), else on one thread per rank. If a rank throws, in-process local
  /// peers are woken with a CommError (Gloo peers time out), and the first exception is rethrown
  /// once every rank has returned; MPI is then not finalized (that would wait for the peer that
  /// failed), and the launcher ends the job once this process exits non-zero.
  void run(const Body& body) const {
    if (ranks_.size() == 1) {
      try {
        return body(ranks_[0]);
      } catch (...) {
#ifdef TP_HAS_MPI
        if (mpi_) mpi_->mark_failed();
#endif
        throw;
      }
    }
    std::mutex mutex;
    std::exception_ptr first;
    std::vector<std::thread> threads;
    for (std::size_t r = 0; r < ranks_.size(); ++r)
      threads.emplace_back([&, r] {
        try {
          body(ranks_[r]);
        } catch (const std::exception& e) {
          {
            std::lock_guard lock(mutex);
            if (!first) first = std::current_exception();
          }
          if (auto* local = dynamic_cast<LocalCommunicator*>(ranks_[r].get()))
            local->abort(fmt::format("rank {} failed: {}", r, e.what()));
        }
      });
    for (auto& t : threads) t.join();
    if (first) std::rethrow_exception(first);
  }

 private:
  void apply_options() {
    for (auto& rank : ranks_) rank->set_verify_collectives(options_.verify_collectives);
  }

#ifdef TP_HAS_GLOO
  void start_gloo(int& argc, char**& argv) {
    const GlooOptions gloo{.timeout = options_.timeout};
    if (started_by_launcher()) {
#ifdef TP_HAS_MPI
      mpi_ = std::make_unique<MpiEnvironment>(argc, argv);
      if (detail::env_or("TP_GLOO_STORE", "").empty()) {
        MpiCommunicator bootstrap;
        ranks_ = {std::make_shared<GlooCommunicator>(bootstrap, gloo)};
        return;
      }
#endif
      ranks_ = {GlooCommunicator::from_env(gloo)};
      return;
    }
    (void)argc;
    (void)argv;
    if (!detail::env_or("TP_WORLD_SIZE", "").empty()) {
      ranks_ = {GlooCommunicator::from_env(gloo)};
      return;
    }
    // The ranks must meet concurrently: one thread each.
    ::gloo::rendezvous::HashStore store;
    ranks_.resize(static_cast<std::size_t>(options_.world));
    std::mutex mutex;
    std::exception_ptr first;
    std::vector<std::thread> threads;
    for (int r = 0; r < options_.world; ++r)
      threads.emplace_back([&, r] {
        try {
          ranks_[r] = std::make_shared<GlooCommunicator>(store, r, options_.world, gloo);
        } catch (...) {
          std::lock_guard lock(mutex);
          if (!first) first = std::current_exception();
        }
      });
    for (auto& t : threads) t.join();
    if (first) std::rethrow_exception(first);
  }
#endif

  static inline int no_argc_ = 0;
  static inline char** no_argv_ = nullptr;

  LaunchOptions options_;
#ifdef TP_HAS_MPI
  std::unique_ptr<MpiEnvironment> mpi_;  ///< declared before ranks_, so destroyed after them
#endif
  std::vector<std::shared_ptr<Communicator>> ranks_;
};

/// Starts the ranks as `options` say and runs `body` on each of this process's ranks.
inline void launch(const LaunchOptions& options, int& argc, char**& argv, const Launch::Body& body) {
  Launch(options, argc, argv).run(body);
}
inline void launch(const LaunchOptions& options, const Launch::Body& body) { Launch(options).run(body); }

}  // namespace tp
