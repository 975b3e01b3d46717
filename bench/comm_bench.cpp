/// tp_bench_comm: all_reduce, all_gather and reduce_scatter of float32 buffers from 1 KiB to
/// 64 MiB, through tp's communicator and, beside it, the library called directly (MPI_Allreduce,
/// gloo::allreduce, ...), so the price of tp's abstraction shows. nccl-tests' conventions: the size
/// is the larger buffer (all_gather's output, reduce_scatter's input); algbw = size / time;
/// busbw = algbw * 2(n-1)/n for all_reduce and (n-1)/n for the other two; `wrong` counts elements
/// that differ from the expected result in a check run after the timed loop.
///
/// The `tp_unverified` rows call tp with collective verification off (the signature exchange
/// before each collective, Communicator::set_verify_collectives); their `tp_over_raw` is the price
/// of verification: time with it over time without, measured alternately as for the raw rows. The
/// raw rows time all three side by side: `tp_over_raw` (verification on) and
/// `tp_unverified_over_raw` (off), each the ratio of the summed times, and `..._median`, the median
/// of the per-iteration ratios (each iteration times the calls back to back, so one slow TCP round
/// trip, common with Gloo, moves the sums but not the median).
///
///   tp_bench_comm --backend=local --world=2
///   mpirun -np 2 tp_bench_comm --backend=mpi --benchmark_format=json
#include <algorithm>
#include <cstring>
#include <vector>

#include "common/bench_world.hpp"
#include "common/stopwatch.hpp"
#ifdef TP_HAS_GLOO
#include <gloo/allgather.h>
#endif

namespace tp::bench {
namespace {

enum class Coll { all_reduce, all_gather, reduce_scatter };
constexpr const char* coll_name(Coll c) {
  return c == Coll::all_reduce ? "all_reduce" : c == Coll::all_gather ? "all_gather" : "reduce_scatter";
}

/// Multiples of 1/4 below 2^10, so sums are exact in any order (as in the conformance suite).
inline float value(int rank, std::size_t i) {
  return static_cast<float>(static_cast<std::int64_t>((rank * 131 + static_cast<std::int64_t>(i % 1000003) * 7) % 97) - 48) * 0.25f;
}

class CollRunner : public Runner {
 public:
  /// `elements`: float elements of the larger buffer, a multiple of the world size.
  CollRunner(std::shared_ptr<Communicator> comm, Coll coll, std::string impl, std::size_t elements)
      : comm_(std::move(comm)), coll_(coll), impl_(std::move(impl)), n_(elements) {
    const int world = comm_->size(), rank = comm_->rank();
    block_ = n_ / static_cast<std::size_t>(world);
    const std::size_t in = coll_ == Coll::all_gather ? block_ : n_, out = coll_ == Coll::reduce_scatter ? block_ : n_;
    send_.resize(in);
    recv_.resize(out);
    for (std::size_t i = 0; i < in; ++i) send_[i] = value(rank, i);
#ifdef TP_HAS_GLOO
    if (impl_ == "gloo") {
      gloo_ = dynamic_cast<GlooCommunicator*>(comm_.get());
      TP_CHECK(gloo_ != nullptr, "raw gloo rows need --backend=gloo");
    }
#endif
  }

  /// Every implementation a step runs, once, outside the ratios.
  void warm_up() override {
    for (const char* impl : {"tp", "tp_unverified"}) op(impl);
    if (!impl_.starts_with("tp")) op(impl_);
  }

  /// A raw row runs tp's call (verification on), tp's call with verification off and the
  /// library's, every iteration, in an order that rotates each time, and reports the library's
  /// time; `tp_over_raw` and `tp_unverified_over_raw` are the ratios of the sums, measured under the
  /// same conditions (this machine's load changes faster than a row takes), `..._median` the
  /// medians of the per-iteration ratios. A tp_unverified row does the same with tp's verified call
  /// alone beside it. Times are the slowest rank's, as for every row.
  double step() override {
    if (impl_ == "tp") return seconds([&] { op(impl_); });
    std::vector<std::string> impls{impl_, "tp"};
    if (impl_ != "tp_unverified") impls.push_back("tp_unverified");
    const int n = static_cast<int>(impls.size()), first = static_cast<int>(steps_++ % n);
    double times[3] = {};
    for (int j = 0; j < n; ++j) {
      const int which = (first + j) % n;
      times[which] = seconds([&] { op(impls[which]); });
    }
    double slowest[3] = {};
    comm_->all_reduce(times, slowest, static_cast<std::size_t>(n), DType::f64, ReduceOp::max);
    tp_total_ += slowest[1];
    unverified_total_ += slowest[2];
    tp_ratios_.push_back(slowest[1] / slowest[0]);
    if (n == 3) unverified_ratios_.push_back(slowest[2] / slowest[0]);
    return times[0];
  }

  Counters finish(double t) override {
    std::fill(recv_.begin(), recv_.end(), -1.f);
    op(impl_);
    const int world = comm_->size(), rank = comm_->rank();
    std::int64_t wrong = 0;
    for (std::size_t i = 0; i < recv_.size(); ++i) {
      float want = 0;
      if (coll_ == Coll::all_gather) {
        want = value(static_cast<int>(i / block_), i % block_);
      } else {
        const std::size_t at = coll_ == Coll::reduce_scatter ? rank * block_ + i : i;
        for (int q = 0; q < world; ++q) want += value(q, at);
      }
      wrong += recv_[i] != want;
    }
    comm_->all_reduce(std::span<std::int64_t>(&wrong, 1));
    const double bytes = static_cast<double>(n_) * sizeof(float), algbw = bytes / t / 1e9;
    const double factor = coll_ == Coll::all_reduce ? 2.0 * (world - 1) / world : double(world - 1) / world;
    Counters counters{{"bytes", bytes}, {"algbw_GBps", algbw}, {"busbw_GBps", algbw * factor}, {"wrong", double(wrong)},
                      {"world", double(world)}};
    if (impl_ != "tp" && steps_ > 0) {
      counters["tp_over_raw"] = tp_total_ / (t * static_cast<double>(steps_));
      counters["tp_over_raw_median"] = median(tp_ratios_);
    }
    if (!impl_.starts_with("tp") && steps_ > 0) {
      counters["tp_unverified_over_raw"] = unverified_total_ / (t * static_cast<double>(steps_));
      counters["tp_unverified_over_raw_median"] = median(unverified_ratios_);
    }
    return counters;
  }

 private:
  void op(const std::string& impl) {
    if (impl == "tp" || impl == "tp_unverified") {
      comm_->set_verify_collectives(impl == "tp");  // every rank runs the same row in step
      switch (coll_) {
        case Coll::all_reduce: comm_->all_reduce(send_.data(), recv_.data(), n_, DType::f32); break;
        case Coll::all_gather: comm_->all_gather(send_.data(), recv_.data(), block_, DType::f32); break;
        case Coll::reduce_scatter: comm_->reduce_scatter(send_.data(), recv_.data(), block_, DType::f32); break;
      }
      comm_->set_verify_collectives(true);
      return;
    }
#ifdef TP_HAS_MPI
    if (impl == "mpi") {
      const MPI_Comm c = static_cast<MpiCommunicator&>(*comm_).native();
      const int count = static_cast<int>(coll_ == Coll::all_reduce ? n_ : block_);
      switch (coll_) {
        case Coll::all_reduce: MPI_Allreduce(send_.data(), recv_.data(), count, MPI_FLOAT, MPI_SUM, c); return;
        case Coll::all_gather: MPI_Allgather(send_.data(), count, MPI_FLOAT, recv_.data(), count, MPI_FLOAT, c); return;
        case Coll::reduce_scatter: MPI_Reduce_scatter_block(send_.data(), recv_.data(), count, MPI_FLOAT, MPI_SUM, c); return;
      }
    }
#endif
#ifdef TP_HAS_GLOO
    if (impl == "gloo") {
      const auto& context = gloo_->native();
      if (!context) {  // world size 1: gloo has nothing to do but the copy
        std::memcpy(recv_.data(), send_.data(), send_.size() * sizeof(float));
        return;
      }
      if (coll_ == Coll::all_reduce) {
        ::gloo::AllreduceOptions opts(context);
        opts.setTimeout(gloo_->timeout());
        opts.setInput(send_.data(), n_);
        opts.setOutput(recv_.data(), n_);
        opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, std::size_t)>(&::gloo::sum<float>));
        ::gloo::allreduce(opts);
      } else {
        ::gloo::AllgatherOptions opts(context);
        opts.setTimeout(gloo_->timeout());
        opts.setInput(send_.data(), block_);
        opts.setOutput(recv_.data(), n_);
        ::gloo::allgather(opts);
      }
      return;
    }
#endif
    TP_THROW(InvalidArgument, "no implementation '{}' of {}", impl, coll_name(coll_));
  }

  std::shared_ptr<Communicator> comm_;
  Coll coll_;
  std::string impl_;
  std::size_t n_, block_ = 0;
  std::vector<float> send_, recv_;
  std::int64_t steps_ = 0;
  double tp_total_ = 0, unverified_total_ = 0;
  std::vector<double> tp_ratios_, unverified_ratios_;  // per iteration, for the medians
#ifdef TP_HAS_GLOO
  GlooCommunicator* gloo_ = nullptr;
#endif
};

}  // namespace
}  // namespace tp::bench

int main(int argc, char** argv) {
  using namespace tp::bench;
  CLI::App app{"tp_bench_comm: collectives through tp and through the library directly"};
  Options options;
  std::size_t min_bytes = 1 << 10, max_bytes = 64 << 20;
  int factor = 4;
  std::vector<std::string> colls{"all_reduce", "all_gather", "reduce_scatter"};
  app.add_option("--min-bytes", min_bytes, "smallest buffer");
  app.add_option("--max-bytes", max_bytes, "largest buffer");
  app.add_option("--step-factor", factor, "each size is this many times the last")->check(CLI::Range(2, 1024));
  app.add_option("--ops", colls, "collectives to run")->delimiter(',');
  try {
    return tp::bench::main(argc, argv, app, options, [&](const Options& o, int world) {
      std::vector<Case> cases;
      for (const auto& c : colls) {
        const Coll coll = c == "all_reduce" ? Coll::all_reduce : c == "all_gather" ? Coll::all_gather : Coll::reduce_scatter;
        TP_CHECK(c == coll_name(coll), "unknown collective '{}'", c);
        std::vector<std::string> impls{"tp", "tp_unverified"};
        if (o.raw && o.backend == "mpi") impls.push_back("mpi");
        if (o.raw && o.backend == "gloo" && coll != Coll::reduce_scatter) impls.push_back("gloo");  // gloo has no reduce-scatter of its own
        for (std::size_t bytes = min_bytes; bytes <= max_bytes; bytes *= static_cast<std::size_t>(factor)) {
          const std::size_t per_rank = std::max<std::size_t>(bytes / sizeof(float) / static_cast<std::size_t>(world), 1);
          const std::size_t elements = per_rank * static_cast<std::size_t>(world);
          for (const auto& impl : impls)
            cases.push_back({fmt::format("{}/{}/{}/world:{}/bytes:{}", c, o.backend, impl, world, elements * sizeof(float)),
                             [=](const std::shared_ptr<tp::Communicator>& comm) {
                               return std::make_unique<CollRunner>(comm, coll, impl, elements);
                             }});
        }
      }
      return cases;
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tp_bench_comm: %s\n", e.what());
    return 1;
  }
}
