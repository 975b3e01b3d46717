/// tp::Trainer at scale on the CPU: one optimizer step of a small Llama-style model (examples/
/// train_tiny_lm's llama architecture, float32, fp32 AdamW) over every TP x DP mesh of the world,
/// with the data-parallel reduction overlapped with backward and without, ZeRO-1 with asynchronous
/// collectives and with blocking ones, and the memory per rank under ZeRO 0/1 and activation
/// recomputation none/full.
///
///   mpirun -np 4 --oversubscribe build/bench/tp_bench_train --backend=mpi
///   build/bench/tp_bench_train --backend=local --world=4
///
/// step/...: tokens/s of the global batch (the slowest rank's time; bench_world.hpp), cases in
/// A B A B order (overlap on, off, on, off for each mesh, --rounds times) so that a shared,
/// loaded machine weighs on both alike: compare the rows of one run, as ratios.
///
/// zero/...: the same at ZeRO-1 on the meshes with DP > 1, async:1 (each bucket's reduce-scatter
/// started by the backward hook, the all-gathers of the new weights waited for by the next
/// forward) against async:0 (blocking reduce-scatters and all-gathers inside the step), A B A B.
///
/// memory/...: the bytes each rank holds, the largest over the ranks, counted where they live:
/// tp::Cpu's allocation counter for the model's tensors (weights and gradients when built; the
/// activation peak above that over the steps, forward and backward), the optimizer's state
/// (DistributedAdamW::state_bytes: fp32 master weights and two moments) and the fp32 main
/// gradients of the GradBuffer; beside them the arithmetic: 12 bytes per parameter of the rank's
/// TP shard for the optimizer (over dp under ZeRO-1), and for recompute full the activation peak
/// of recompute none less (L - 1) layers' buffers plus the kept inputs, (L + 1) x tokens x hidden x 4.

#include <CLI/CLI.hpp>
#include <tp/tp.hpp>
#include <tp/train/trainer.hpp>

#include <algorithm>
#include <vector>

#include "common/bench_world.hpp"
#include "train_tiny_lm/tiny_lm.hpp"

namespace {

using tp::bench::Counters;
using tp::bench::Runner;

struct Setup {
  tiny_lm::ModelConfig model;
  std::int64_t bucket_size = 0;
  int threads = 1;
};

class StepRunner : public Runner {
 public:
  StepRunner(const std::shared_ptr<tp::Communicator>& comm, const Setup& s, tp::MeshDims dims, tp::TrainerOptions o)
      : setup_(s),
        cpu_(std::make_shared<tp::Cpu>(tp::CpuOptions{.threads = s.threads})),
        mesh_(comm, dims, cpu_),
        model_(mesh_.tp_context(), s.model.transformer(), s.model.seed),
        trainer_(mesh_, model_, o) {
    const auto& m = s.model;
    TP_CHECK(m.batch % mesh_.dp() == 0, "--batch {} does not split over dp {}", m.batch, mesh_.dp());
    ids_.resize(static_cast<std::size_t>(m.tokens()));
    targets_.resize(ids_.size());
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      ids_[i] = static_cast<std::int64_t>((i * 7919 + 13) % static_cast<std::size_t>(m.vocab));
      targets_[i] = (ids_[i] * 5 + 3) % m.vocab;
    }
    built_ = cpu_->memory_allocated();
    cpu_->reset_peak_memory_stats();
  }

  double step() override {
    const tp::Range rows = tp::Trainer<float>::dp_rows(mesh_, setup_.model.batch);
    const std::int64_t seq = setup_.model.seq_len;
    const tp::ConstView<std::int64_t> ids(ids_.data() + rows.begin * seq, rows.size(), seq),
        targets(targets_.data() + rows.begin * seq, rows.size(), seq);
    return tp::bench::seconds([&] { trainer_.step(ids, targets, 1e-4); });
  }

  Counters finish(double seconds) override {
    Counters c{{"tokens_per_s", static_cast<double>(setup_.model.tokens()) / seconds}};
    if (!memory_) return c;
    const auto& m = setup_.model;
    std::int64_t params = 0, main_grads = 0;
    for (const auto& p : model_.parameters()) params += p.value.size();
    for (const auto& b : trainer_.grads().buckets()) main_grads += static_cast<std::int64_t>(b.data.size()) * 4;
    const std::int64_t activations = cpu_->max_memory_allocated() - built_;
    // One layer's buffers as the steps left them (recompute none: all of them; full: none).
    const std::int64_t before = cpu_->memory_allocated();
    model_.layer(0).release_activations();
    const std::int64_t layer = before - cpu_->memory_allocated();
    const auto zero = trainer_.options().zero;
    double v[] = {static_cast<double>(built_), static_cast<double>(activations),
                  static_cast<double>(layer), static_cast<double>(trainer_.optimizer().state_bytes()),
                  12.0 * static_cast<double>(params) / (zero == 1 ? mesh_.dp() : 1), static_cast<double>(main_grads)};
    mesh_.world().all_reduce(std::span<double>(v), tp::ReduceOp::max);
    constexpr double MiB = 1.0 / (1 << 20);
    c["weights_grads_MiB"] = v[0] * MiB;
    c["activations_MiB"] = v[1] * MiB;
    c["one_layer_MiB"] = v[2] * MiB;
    c["kept_inputs_MiB"] = trainer_.options().recompute == tp::models::Recompute::full
                               ? static_cast<double>((m.layers + 1) * m.tokens() / mesh_.dp() * m.hidden * 4) * MiB
                               : 0.0;
    c["optimizer_MiB"] = v[3] * MiB;
    c["optimizer_arith_MiB"] = v[4] * MiB;
    c["main_grads_MiB"] = v[5] * MiB;
    return c;
  }

  void count_memory() { memory_ = true; }

 private:
  Setup setup_;
  std::shared_ptr<tp::Cpu> cpu_;
  tp::Mesh<> mesh_;
  tp::models::Transformer<float> model_;
  tp::Trainer<float> trainer_;
  std::vector<std::int64_t> ids_, targets_;
  std::int64_t built_ = 0;
  bool memory_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tp::Trainer steps over TP x DP meshes: tokens/s with and without overlap, memory per rank"};
  tp::bench::Options options;
  Setup s;
  s.model = {.arch = tiny_lm::Arch::llama, .vocab = 256, .hidden = 128, .heads = 4, .kv_heads = 2, .layers = 4,
             .ffn = 0, .seq_len = 64, .batch = 8, .seed = 1};
  s.bucket_size = 65536;
  int rounds = 2;
  std::vector<std::string> parts{"step", "zero", "memory"};
  app.add_option("--hidden", s.model.hidden)->capture_default_str();
  app.add_option("--layers", s.model.layers)->capture_default_str();
  app.add_option("--heads", s.model.heads)->capture_default_str();
  app.add_option("--kv-heads", s.model.kv_heads)->capture_default_str();
  app.add_option("--ffn", s.model.ffn, "0: 4 hidden")->capture_default_str();
  app.add_option("--vocab", s.model.vocab)->capture_default_str();
  app.add_option("--seq-len", s.model.seq_len)->capture_default_str();
  app.add_option("--batch", s.model.batch, "sequences per step, the global batch")->capture_default_str();
  app.add_option("--bucket-size", s.bucket_size,
                 "elements per gradient bucket (the model is far below Megatron's 40M default, which would make one "
                 "bucket and nothing to overlap)")
      ->capture_default_str();
  app.add_option("--threads", s.threads, "BLAS threads per rank")->capture_default_str();
  app.add_option("--rounds", rounds, "A B rounds of the step cases (overlap on, off)")->capture_default_str();
  app.add_option("--parts", parts, "step, zero, memory")->delimiter(',')->capture_default_str();
  try {
    return tp::bench::main(argc, argv, app, options, [&](const tp::bench::Options& o, int world) {
      std::vector<tp::bench::Case> cases;
      std::vector<tp::MeshDims> meshes;  // TP = world first, DP = world last
      for (int tp = world; tp >= 1; --tp)
        if (world % tp == 0 && s.model.heads % tp == 0) meshes.push_back({.tp = tp, .dp = world / tp});
      const bool steps = std::ranges::find(parts, "step") != parts.end();
      const bool memory = std::ranges::find(parts, "memory") != parts.end();
      const bool zero_steps = std::ranges::find(parts, "zero") != parts.end();
      for (int r = 0; steps && r < rounds; ++r)
        for (const auto dims : meshes)
          for (const bool overlap : {true, false})
            cases.push_back({fmt::format("step/{}/world:{}/tp:{}/dp:{}/overlap:{}/round:{}", o.backend, world, dims.tp,
                                         dims.dp, overlap ? 1 : 0, r),
                             [=](const std::shared_ptr<tp::Communicator>& comm) -> std::unique_ptr<Runner> {
                               return std::make_unique<StepRunner>(comm, s, dims, tp::TrainerOptions{.bucket_size = s.bucket_size, .overlap = overlap});
                             }});
      for (int r = 0; zero_steps && r < rounds; ++r)
        for (const auto dims : meshes)
          for (const bool async : {true, false}) {
            if (dims.dp == 1) continue;  // ZeRO-1 shards over DP
            cases.push_back({fmt::format("zero/{}/world:{}/tp:{}/dp:{}/async:{}/round:{}", o.backend, world, dims.tp,
                                         dims.dp, async ? 1 : 0, r),
                             [=](const std::shared_ptr<tp::Communicator>& comm) -> std::unique_ptr<Runner> {
                               return std::make_unique<StepRunner>(
                                   comm, s, dims,
                                   tp::TrainerOptions{.zero = 1, .bucket_size = s.bucket_size, .overlap = async,
                                                      .overlap_param_gather = async});
                             }});
          }
      for (const auto dims : meshes) {
        if (!memory || dims.dp == 1) continue;  // ZeRO-1 shards over DP
        for (const int zero : {0, 1})
          for (const auto recompute : {tp::models::Recompute::none, tp::models::Recompute::full})
            cases.push_back(
                {fmt::format("memory/{}/world:{}/tp:{}/dp:{}/zero:{}/recompute:{}", o.backend, world, dims.tp, dims.dp,
                             zero, recompute == tp::models::Recompute::full ? "full" : "none"),
                 [=](const std::shared_ptr<tp::Communicator>& comm) -> std::unique_ptr<Runner> {
                   auto runner = std::make_unique<StepRunner>(comm, s, dims,
                                                              tp::TrainerOptions{.zero = zero, .bucket_size = s.bucket_size, .recompute = recompute});
                   runner->count_memory();
                   return runner;
                 }});
      }
      return cases;
    });
  } catch (const std::exception& e) {
    fmt::print(stderr, "tp_bench_train: {}\n", e.what());
    return 1;
  }
}
