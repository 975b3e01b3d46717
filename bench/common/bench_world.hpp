#pragma once
/// What both benchmark binaries share: picking the backend from the command line, starting the
/// ranks (tp::Launch: in-process threads, or the processes of an mpirun job), and running Google
/// Benchmark on rank 0 while the other ranks follow.
///
/// Rank 0 alone runs Google Benchmark and reports. Before each run of a benchmark it broadcasts
/// which case to run and how many iterations Google Benchmark asked for; every rank then runs that
/// case for exactly that many iterations. Each iteration's time is reduced with MAX over the
/// ranks (outside the timed region) and given to Google Benchmark as manual time, so the figure
/// is the time of the slowest rank, as in nccl-tests.

#include <benchmark/benchmark.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tp/comm/launch.hpp"
#include "tp/device/cpu.hpp"
#ifdef TP_HAS_MPI
#include "tp/comm/mpi_communicator.hpp"
#endif
#ifdef TP_HAS_GLOO
#include "tp/comm/gloo_communicator.hpp"
#endif

namespace tp::bench {

using Counters = std::map<std::string, double>;

/// One benchmark case on one rank: `step` runs one iteration and returns its seconds on this
/// rank; `finish` may run collectives (the correctness check) and returns the counters to report.
/// `warm_up` runs once, untimed, before the timed steps: a fresh case's first step allocates and
/// faults in its buffers (and oneDNN generates its kernels), which with the few iterations of a
/// slow case would weigh on the mean (measured: the 512-token MLP step, 4 iterations, 76 ms with
/// its first step counted, 65 ms without). A runner that keeps statistics across steps overrides
/// it so the warm-up stays out of them.
class Runner {
 public:
  virtual ~Runner() = default;
  virtual void warm_up() { step(); }
  virtual double step() = 0;
  virtual Counters finish(double seconds_per_iteration) = 0;
};

struct Case {
  std::string name;
  std::function<std::unique_ptr<Runner>(const std::shared_ptr<Communicator>&)> make;
};

struct Options {
  std::string backend = "local";
  int world = 1;  ///< in-process ranks; under mpirun the job's size
  bool raw = true;
  std::vector<std::string> extra;  ///< handed to Google Benchmark
};

/// Seconds elapsed while `f` runs.
template <class F>
double seconds(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

class World {
 public:
  World(std::vector<Case> cases) : cases_(std::move(cases)) {}

  /// Runs case `index` for `iterations` on this rank; `state` is given on rank 0 only.
  Counters run(Communicator& comm, const std::shared_ptr<Communicator>& self, std::size_t index,
               benchmark::IterationCount iterations, benchmark::State* state) const {
    auto runner = cases_[index].make(self);
    runner->warm_up();
    comm.barrier();
    double total = 0;
    const auto one = [&] {
      double t = runner->step(), slowest = 0;
      comm.all_reduce(&t, &slowest, 1, DType::f64, ReduceOp::max);
      total += slowest;
      return slowest;
    };
    if (state != nullptr)
      for (auto _ : *state) state->SetIterationTime(one());
    else
      for (benchmark::IterationCount i = 0; i < iterations; ++i) one();
    return runner->finish(total / static_cast<double>(std::max<benchmark::IterationCount>(iterations, 1)));
  }

  void lead(const std::shared_ptr<Communicator>& comm, std::size_t index, benchmark::State& state) const {
    std::int64_t job[2] = {static_cast<std::int64_t>(index), static_cast<std::int64_t>(state.max_iterations)};
    comm->broadcast(std::span<std::int64_t>(job), 0);
    for (const auto& [key, value] : run(*comm, comm, index, state.max_iterations, &state)) state.counters[key] = value;
  }

  void follow(const std::shared_ptr<Communicator>& comm) const {
    for (;;) {
      std::int64_t job[2] = {0, 0};
      comm->broadcast(std::span<std::int64_t>(job), 0);
      if (job[0] < 0) return;
      run(*comm, comm, static_cast<std::size_t>(job[0]), job[1], nullptr);
    }
  }

  static void stop(const std::shared_ptr<Communicator>& comm) {
    std::int64_t job[2] = {-1, 0};
    comm->broadcast(std::span<std::int64_t>(job), 0);
  }

  const std::vector<Case>& cases() const { return cases_; }

 private:
  std::vector<Case> cases_;
};

/// Parses the common flags (unknown ones go to Google Benchmark), starts the ranks, builds the
/// cases with `make_cases(options, world_size)`, and runs them. Returns main's exit status.
inline int main(int argc, char** argv, CLI::App& app, Options& options,
                const std::function<std::vector<Case>(const Options&, int)>& make_cases) {
  app.add_option("--backend", options.backend, "local (threads in this process), mpi, or gloo")
      ->check(CLI::IsMember({"local", "mpi", "gloo"}));
  app.add_option("--world", options.world, "ranks in this process (local, gloo); under mpirun the job's size")
      ->check(CLI::Range(1, 64));
  app.add_flag("!--no-raw", options.raw, "leave out the rows that call the library directly");
  app.allow_extras();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  options.extra = app.remaining();

  // Ranks are started as the examples start theirs (tp/comm/launch.hpp); a follower waits for
  // the leader between runs, hence the long timeout.
  const bool mpirun = started_by_launcher();
  TP_CHECK(options.backend != "local" || !mpirun,
           "--backend=local runs its ranks as threads; start it without mpirun and give --world");
  TP_CHECK(options.backend != "mpi" || mpirun, "--backend=mpi needs mpirun");
  const Launch launch({.backend = options.backend, .world = options.world, .timeout = std::chrono::minutes(30)}, argc,
                      argv);
  const auto& comms = launch.ranks();  // comms[0] is this process's leader or follower
  const int world_size = comms[0]->size();
  const World world(make_cases(options, world_size));

  // In-process ranks 1.. follow on threads; under mpirun, processes other than rank 0 follow.
  std::vector<std::thread> followers;
  for (std::size_t r = 1; r < comms.size(); ++r) followers.emplace_back([&, r] { world.follow(comms[r]); });
  int status = 0;
  if (comms[0]->rank() != 0) {
    world.follow(comms[0]);
  } else {
    std::vector<std::string> args{argv[0]};
    args.insert(args.end(), options.extra.begin(), options.extra.end());
    std::vector<char*> bargv;
    for (auto& a : args) bargv.push_back(a.data());
    int bargc = static_cast<int>(bargv.size());
    benchmark::Initialize(&bargc, bargv.data());
    if (benchmark::ReportUnrecognizedArguments(bargc, bargv.data())) {
      status = 1;
    } else {
      benchmark::AddCustomContext("tp_backend", std::string(options.backend));
      benchmark::AddCustomContext("tp_world", std::to_string(world_size));
      benchmark::AddCustomContext("tp_blas", Cpu::blas_name());
#ifdef TP_HAS_MPI
      {
        char version[MPI_MAX_LIBRARY_VERSION_STRING];
        int length = 0;
        int initialized = 0;
        MPI_Initialized(&initialized);
        if (initialized) {
          MPI_Get_library_version(version, &length);
          std::string v(version, length);
          benchmark::AddCustomContext("tp_mpi", v.substr(0, v.find_first_of(",\n")));
        }
      }
#endif
#ifdef TP_HAS_GLOO
      benchmark::AddCustomContext("tp_gloo", fmt::format("Gloo {}.{}.{}", GLOO_VERSION_MAJOR, GLOO_VERSION_MINOR,
                                                         GLOO_VERSION_PATCH));
#endif
      const auto lead = comms[0];
      for (std::size_t i = 0; i < world.cases().size(); ++i)
        benchmark::RegisterBenchmark(world.cases()[i].name.c_str(),
                                     [&world, lead, i](benchmark::State& state) { world.lead(lead, i, state); })
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
      benchmark::RunSpecifiedBenchmarks();
      benchmark::Shutdown();
    }
    World::stop(comms[0]);
  }
  for (auto& t : followers) t.join();
  return status;
}

}  // namespace tp::bench
