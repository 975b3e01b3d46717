/// Trains a small byte-level language model (a tp::models::Transformer, GPT-2 style, or Llama
/// style with --arch llama; tiny_lm.hpp) on examples/data/genesis.txt through tp::Trainer on a
/// TP x DP mesh, printing the loss and tokens per second, saving checkpoints and resuming from
/// them at any mesh, and saving the final model as a Hugging Face checkpoint (--save-hf, llama)
/// that examples/generate and transformers load.
///
///   mpirun -np 2 train_tiny_lm                                  # 2 MPI ranks, TP 2, the defaults
///   mpirun -np 4 train_tiny_lm --tp 2 --dp 2 --zero 1           # TP 2 x DP 2, ZeRO-1
///   mpirun -np 2 train_tiny_lm --arch llama --save-hf tiny      # Llama style; tiny/config.json + model.safetensors
///   train_tiny_lm --backend local --world 4 --steps 100
///   train_tiny_lm --backend local --world 2 --precision bf16   # bf16 weights, fp32 master weights
///   train_tiny_lm --steps 600 --stop-after 300 --checkpoint ck  # stop half-way, saving ck/step-000300/
///   train_tiny_lm --steps 600 --resume ck                       # continue from ck's latest step

#include <CLI/CLI.hpp>
#include <tp/comm/launch.hpp>
#include <tp/train/precision.hpp>
#include <tp/tp.hpp>

#include <chrono>
#include <cmath>
#include <ctime>
#include <optional>

#include "train_tiny_lm/tiny_lm.hpp"

#ifndef TP_TINY_LM_DATA
#define TP_TINY_LM_DATA "examples/data/genesis.txt"
#endif

namespace {

/// CPU seconds of this process (all its threads): on a shared machine a fairer clock than the wall.
double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Train a tiny byte-level language model (GPT-2 or Llama style) with tensor parallelism"};
  std::string backend = "mpi", data_path = TP_TINY_LM_DATA, checkpoint, resume, arch = "gpt2", save_hf;
  int world = 2, timeout = 300;
  std::int64_t log_every = 10, checkpoint_every = 0, stop_after = 0;
  int keep_checkpoints = 2, tp_size = 0, dp_size = 1;
  std::string precision = "fp32", recompute = "none";
  tiny_lm::ModelConfig model;
  tiny_lm::TrainConfig train;
  // A repeated option takes its last value, so scripts/demo.sh's defaults can be overridden after `--`.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  // Not restricted here: launch() knows which backends this build has and names them if wrong.
  app.add_option("--backend", backend, "local (ranks as threads), mpi or gloo (start with mpirun -np N)")
      ->capture_default_str();
  app.add_option("--world", world, "ranks in this process (local, or gloo without mpirun)")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--timeout", timeout, "seconds a rank waits for its peers (local, mpi, gloo) before failing with an error")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--tp", tp_size, "tensor-parallel size: consecutive ranks (0: world / dp)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--dp", dp_size, "data-parallel size: the global batch split over dp groups (world = tp x dp)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--precision", precision, "fp32, bf16 or f16 (16-bit weights and activations, fp32 main gradients and "
                 "master weights; f16 with dynamic loss scaling)")
      ->check(CLI::IsMember({"fp32", "bf16", "f16"}))->capture_default_str();
  app.add_option("--recompute", recompute, "activation recomputation per layer: none, selective (attention core: "
                 "what tp's attention always does) or full")
      ->check(CLI::IsMember({"none", "selective", "full"}))->capture_default_str();
  app.add_option("--micro-batches", train.micro_batches, "gradient accumulation: micro-batches per step per DP rank")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--zero", train.zero, "1: ZeRO-1, optimizer state sharded over the DP group")
      ->check(CLI::IsMember({0, 1}))->capture_default_str();
  app.add_option("--bucket-size", train.bucket_size, "elements per gradient bucket (0: Megatron's default)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_flag("--overlap,!--no-overlap", train.overlap, "start each bucket's DP reduction during backward")
      ->capture_default_str();
  app.add_option("--steps", train.steps, "total optimizer steps (the learning-rate schedule ends here)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--stop-after", stop_after, "stop (and checkpoint) after this step, before --steps; 0: run to --steps");
  app.add_option("--arch", arch, "gpt2 (LayerNorm, learned positions, GELU, untied head) or llama (RMSNorm, RoPE, "
                 "SwiGLU, tied embeddings, no biases); both with grouped-query attention")
      ->check(CLI::IsMember({"gpt2", "llama"}))
      ->capture_default_str();
  app.add_option("--save-hf", save_hf,
                 "at the end, write DIR/config.json and DIR/model.safetensors, a Hugging Face checkpoint (llama only) "
                 "for examples/generate or transformers");
  app.add_option("--seed", model.seed, "weights and data seed")->capture_default_str();
  app.add_option("--data", data_path, "training text (bytes)")->capture_default_str();
  app.add_option("--checkpoint", checkpoint,
                 "directory of checkpoints: DIR/step-NNNNNN/{model,resume}.safetensors, each step written as one unit, at the end");
  app.add_option("--checkpoint-every", checkpoint_every, "also write a checkpoint every K steps");
  app.add_option("--keep-checkpoints", keep_checkpoints, "newest checkpoints kept under --checkpoint (0: all)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--resume", resume,
                 "checkpoint directory (its latest complete step), a step directory or a resume.safetensors to continue from, at any world size");
  app.add_option("--log-every", log_every, "print every N steps")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--hidden", model.hidden, "model width")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--heads", model.heads, "attention heads (a multiple of the TP size)")->capture_default_str();
  app.add_option("--kv-heads", model.kv_heads, "key/value heads (grouped-query attention)")->capture_default_str();
  app.add_option("--layers", model.layers, "transformer blocks")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--ffn", model.ffn, "MLP width (0: 4 * hidden)")->capture_default_str();
  app.add_option("--seq-len", model.seq_len, "tokens per sequence")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--batch", model.batch, "sequences per step (the global batch, split over the DP ranks)")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--lr", train.lr, "peak learning rate")->capture_default_str();
  app.add_option("--min-lr", train.min_lr, "final learning rate of the cosine decay")->capture_default_str();
  app.add_option("--warmup", train.warmup, "linear warmup steps")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--clip", train.clip, "gradient norm clip")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const std::int64_t last = stop_after > 0 ? std::min(stop_after, train.steps) : train.steps;
  model.arch = tiny_lm::parse_arch(arch);
  train.recompute = tp::models::parse_recompute(recompute);
  if (precision == "f16") train.loss_scaling = tp::LossScalerOptions{};
  if (!save_hf.empty() && !model.llama()) {
    fmt::print(stderr, "train_tiny_lm: --save-hf needs --arch llama (Hugging Face's GPT-2 has neither grouped-query "
                       "attention nor an untied head)\n");
    return 2;
  }

  try {
    const tiny_lm::TextData data(data_path);
    // The run in the model type T (float, tp::bf16 or tp::f16), on one rank.
    const auto run = [&]<class T>(std::shared_ptr<tp::Communicator> comm) {
      // One BLAS thread per rank, asked for explicitly: the ranks already share the cores.
      const tp::Mesh<> mesh(comm, {.tp = tp_size > 0 ? tp_size : comm->size() / dp_size, .dp = dp_size},
                            std::make_shared<tp::Cpu>(tp::CpuOptions{.threads = 1}));
      const bool lead = comm->rank() == 0;
      tiny_lm::Training<T> trainer(mesh, model, train);
      if (!resume.empty()) trainer.load(resume);
      // A checkpoint at or past the last step leaves nothing to train: say so rather than report a loss.
      TP_CHECK(trainer.steps_done() < last, "{}: the checkpoint is at step {}, at or past the {} {}; nothing to train",
               resume, trainer.steps_done(), stop_after > 0 && stop_after < train.steps ? "--stop-after" : "--steps",
               last);
      if (lead) {
        fmt::print("train_tiny_lm: {} backend, world {} = TP {} x DP {}, {} parameters ({}), {} bytes of text, {}\n",
                   comm->backend(), comm->size(), mesh.tp(), mesh.dp(), tiny_lm::parameter_count(trainer.model()),
                   model.describe(), data.size(), tp::Cpu::blas_name());
        fmt::print("  steps {} of {}, lr {} (warmup {}, cosine to {}), AdamW weight decay {}, clip {}, {} micro-batches, "
                   "zero {}, recompute {}, {}overlapped DP reduction, precision {}{}{}\n",
                   trainer.steps_done(), train.steps, train.lr, train.warmup, train.min_lr, train.weight_decay,
                   train.clip, train.micro_batches, train.zero, recompute, train.overlap ? "" : "no ", precision,
                   precision == "fp32" ? "" : " (fp32 main gradients and master weights)",
                   resume.empty() ? "" : fmt::format(", resumed from {}", resume));
      }
      auto t0 = std::chrono::steady_clock::now();
      double c0 = cpu_seconds();
      const auto start = t0;
      std::int64_t since = 0;
      tp::StepResult r;
      int skipped_in_row = 0;
      while (trainer.steps_done() < last) {
        r = trainer.step(data);
        const std::int64_t s = trainer.steps_done();
        if (r.skipped) {  // f16: inf/nan gradients at this loss scale; the scaler backed off
          // The scale halves per skip: 64 in a row means gradients that overflow at any scale.
          if (++skipped_in_row == 64)
            TP_THROW(tp::Error, "step {}: {} steps in a row skipped for inf/nan gradients (loss scale now {}); the run "
                     "diverged", s + 1, skipped_in_row, trainer.trainer().loss_scaler()->scale());
          if (lead)
            fmt::print("step {:5d}  skipped: inf/nan gradients, loss scale now {}\n", s + 1,
                       trainer.trainer().loss_scaler()->scale());
          continue;
        }
        skipped_in_row = 0;
        ++since;
        // A diverged run stops at once (its checkpoints would only carry the NaN on).
        if (!std::isfinite(r.loss))
          TP_THROW(tp::Error, "step {}: the loss is {}; stopping (the run diverged; lower --lr or resume from an "
                   "earlier checkpoint)", s, r.loss);
        if (s % log_every == 0 || s == last || s == 1) {
          const auto t1 = std::chrono::steady_clock::now();
          double wall = std::chrono::duration<double>(t1 - t0).count(), cpu = cpu_seconds() - c0;
          // The slowest rank's wall time, and the CPU time of all ranks (processes or threads).
          comm->all_reduce(std::span<double>(&wall, 1), tp::ReduceOp::max);
          if (backend != "local") comm->all_reduce(std::span<double>(&cpu, 1), tp::ReduceOp::sum);
          const double tokens = static_cast<double>(since * model.tokens());
          const auto& scaler = trainer.trainer().loss_scaler();
          if (lead)
            fmt::print("step {:5d}  loss {:.6f}  lr {:.2e}  grad_norm {:.3f}  {:8.0f} tok/s  ({:.0f} tok per CPU s){}\n",
                       s, r.loss, r.lr, r.grad_norm, tokens / wall, tokens / cpu,
                       scaler ? fmt::format("  loss scale {}  skipped {}", scaler->scale(),
                                            trainer.trainer().steps_skipped())
                              : "");
          t0 = t1;
          c0 = cpu_seconds();
          since = 0;
        }
        if (!checkpoint.empty() && checkpoint_every > 0 && s % checkpoint_every == 0 && s != last) {
          const auto saved = trainer.save(checkpoint, keep_checkpoints);
          if (lead) fmt::print("  saved {} at step {}\n", saved.string(), s);
        }
      }
      if (!checkpoint.empty()) {
        const auto saved = trainer.save(checkpoint, keep_checkpoints);
        if (lead) fmt::print("  saved {} at step {}\n", saved.string(), trainer.steps_done());
      }
      if (!save_hf.empty()) {
        // The DP groups hold the same weights: the ranks of DP group 0 write, the others wait.
        if (mesh.dp_rank() == 0) tp::models::save_hugging_face(mesh.tp_comm(), trainer.model(), save_hf);
        comm->barrier();
        if (lead) fmt::print("  saved a Hugging Face checkpoint (LlamaForCausalLM) in {}\n", save_hf);
      }
      if (lead)
        fmt::print("done: {} steps, final loss {:.4f}, {:.1f} s{}\n", trainer.steps_done(), r.loss,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
                   trainer.trainer().loss_scaler()
                       ? fmt::format(", {} steps skipped (f16 overflow)", trainer.trainer().steps_skipped())
                       : "");
    };
    tp::launch({.backend = backend, .world = world, .timeout = std::chrono::seconds(timeout)}, argc, argv,
               [&](std::shared_ptr<tp::Communicator> comm) {
                 tp::with_precision(precision, [&]<class T>() { run.template operator()<T>(comm); });
               });
  } catch (const std::exception& e) {
    fmt::print(stderr, "train_tiny_lm: {}\n", e.what());
    return 1;
  }
  return 0;
}
