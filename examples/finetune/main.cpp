/// Fine-tunes a Hugging Face checkpoint directory (GPT-2, Llama, Qwen2, Mistral: config.json,
/// model.safetensors, tokenizer.json) on a text file or a JSONL of {"prompt", "completion"} (the
/// loss on the completion only) through tp::Trainer on a TP x DP mesh (the weights split over the
/// TP ranks, the global batch over the DP groups, --zero 1 the optimizer state too), in float32,
/// bf16 or f16 (--precision; 16-bit weights and activations, fp32 main gradients; f16 with dynamic
/// loss scaling) with fp32 AdamW master weights, micro-batches, recomputation, a cosine learning
/// rate after a linear warmup and gradient clipping (finetune.hpp holds the data, the batches and
/// the run).
///
///   mpirun -np 2 finetune --model SmolLM2-135M --data qa.jsonl --train-iters 200 --lr 1e-4 \
///       --save ckpt --save-interval 50 --save-hf tuned
///   mpirun -np 4 finetune --tp 2 --dp 2 --zero 1 --global-batch-size 8 --micro-batches 2 ...
///   finetune --backend local --world 2 --dp 2 --model SmolLM2-135M --data notes.txt --load ckpt ...  # resume
///
/// Every --log-interval steps rank 0 prints the step, the loss (mean over the counted tokens of
/// the step), the learning rate, the gradient norm before clipping, tokens per second and the
/// time left. --save DIR writes DIR/step-NNNNNN/{resume,model}.safetensors (fp32 master weights,
/// AdamW moments, step; the model's weights) every --save-interval steps and at the end, each step
/// as one unit (tp/train/checkpoint.hpp); --load continues from one at any TP x DP. --save-hf DIR
/// writes a Hugging Face directory (config.json, model.safetensors and the tokenizer files of
/// --model) that transformers' from_pretrained and examples/generate load.

#include <CLI/CLI.hpp>
#include <tp/comm/launch.hpp>
#include <tp/train/precision.hpp>
#include <tp/io/file.hpp>

#include "finetune/finetune.hpp"

namespace {

std::string duration(double seconds) {
  const auto s = static_cast<std::int64_t>(std::max(0.0, seconds) + 0.5);
  return s >= 3600 ? fmt::format("{}h{:02d}m", s / 3600, (s / 60) % 60) : fmt::format("{}m{:02d}s", s / 60, s % 60);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Fine-tune a Hugging Face checkpoint with tensor and data parallelism"};
  std::string backend = "mpi", model_dir, data_path, save, load, save_hf, precision = "fp32", recompute = "none";
  int world = 2, timeout = 300, threads = 1, keep = 0, tp_size = 0, dp_size = 1;
  std::int64_t seq_length = 256, save_interval = 0, log_interval = 10;
  finetune::Options o;
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--model", model_dir, "Hugging Face checkpoint directory: config.json, model.safetensors, tokenizer.json")
      ->required();
  app.add_option("--data", data_path, "training data: a .jsonl of {\"prompt\", \"completion\"}, or any other file as text")
      ->required();
  app.add_option("--backend", backend, "local (ranks as threads), mpi or gloo (start with mpirun -np N)")
      ->capture_default_str();
  app.add_option("--world", world, "ranks in this process (local, or gloo without mpirun)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--timeout", timeout, "seconds a rank waits for its peers (local, gloo) before failing")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--tp", tp_size, "tensor-parallel size: consecutive ranks (0: world / dp)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--dp", dp_size, "data-parallel size: the global batch split over dp groups (world = tp x dp)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--zero", o.zero, "1: ZeRO-1, optimizer state sharded over the DP group")
      ->check(CLI::IsMember({0, 1}))->capture_default_str();
  app.add_option("--precision", precision, "fp32, bf16 or f16 (16-bit weights and activations, fp32 main gradients and "
                 "master weights; f16 with dynamic loss scaling)")
      ->check(CLI::IsMember({"fp32", "bf16", "f16"}))->capture_default_str();
  app.add_option("--recompute", recompute, "activation recomputation per layer: none, selective (attention core: "
                 "what tp's attention always does) or full")
      ->check(CLI::IsMember({"none", "selective", "full"}))->capture_default_str();
  app.add_option("--threads", threads, "BLAS threads per rank")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seq-length", seq_length, "tokens per sequence (text windows; JSONL records are cut here)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--global-batch-size", o.global_batch_size, "sequences per step, split over the DP ranks")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--micro-batches", o.micro_batches, "gradient accumulation: micro-batches per step per DP rank")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--train-iters", o.train_iters, "optimizer steps")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--lr", o.lr, "peak learning rate")->capture_default_str();
  app.add_option("--min-lr", o.min_lr, "learning rate at the end of the cosine decay")->capture_default_str();
  app.add_option("--lr-warmup-iters", o.lr_warmup_iters, "linear warmup steps")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--weight-decay", o.weight_decay, "AdamW weight decay (weight matrices and embeddings)")
      ->capture_default_str();
  app.add_option("--clip-grad", o.clip_grad, "global gradient norm clip (0: none)")->capture_default_str();
  app.add_option("--seed", o.seed, "data order seed")->capture_default_str();
  app.add_option("--save", save, "checkpoint directory: DIR/step-NNNNNN/resume.safetensors, written at the end");
  app.add_option("--save-interval", save_interval, "also write a checkpoint every N steps")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--keep-checkpoints", keep, "newest checkpoints kept under --save (0: all)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--load", load, "continue from a checkpoint directory (its latest step), a step directory or a resume file");
  app.add_option("--save-hf", save_hf, "at the end, write a Hugging Face checkpoint directory (with --model's tokenizer)");
  app.add_option("--log-interval", log_interval, "print every N steps")->check(CLI::PositiveNumber)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  o.recompute = tp::models::parse_recompute(recompute);
  if (precision == "f16") o.loss_scaling = tp::LossScalerOptions{};

  try {
    const std::filesystem::path dir(model_dir);
    const auto tokenizer = tp::text::Tokenizer::from_directory(dir);
    const auto examples = finetune::read_examples(data_path, tokenizer, seq_length);
    std::int64_t example_tokens = 0;
    for (const auto& e : examples) example_tokens += static_cast<std::int64_t>(e.ids.size());
    // The run in the model type T (float, tp::bf16 or tp::f16), on one rank.
    const auto train = [&]<class T>(std::shared_ptr<tp::Communicator> comm) {
      const tp::Mesh<> mesh(comm, {.tp = tp_size > 0 ? tp_size : comm->size() / dp_size, .dp = dp_size},
                            std::make_shared<tp::Cpu>(tp::CpuOptions{.threads = threads}));
      const bool lead = comm->rank() == 0;
      finetune::Finetune<T> run(mesh, dir, o);
      if (!load.empty()) run.load(load);
      const auto& c = run.model().config();
      if (lead) {
        fmt::print("finetune: {} backend, world {} = TP {} x DP {}, {}: {} (hidden {}, {} layers, {} heads over {} kv heads, vocabulary "
                   "{}), {}: {} examples, {} tokens\n",
                   comm->backend(), comm->size(), mesh.tp(), mesh.dp(), model_dir, c.model_type, c.hidden, c.layers, c.heads, c.kv_heads,
                   c.vocab, data_path, examples.size(), example_tokens);
        fmt::print("  steps {} of {}, {} sequences of up to {} tokens each, lr {} (warmup {}, cosine to {}), weight "
                   "decay {}, clip {}, {} micro-batches, zero {}, recompute {}, precision {}{}{}\n",
                   run.steps_done(), o.train_iters, o.global_batch_size, seq_length, o.lr, o.lr_warmup_iters, o.min_lr,
                   o.weight_decay, o.clip_grad, o.micro_batches, o.zero, recompute, precision,
                   precision == "fp32" ? "" : " (fp32 main gradients and master weights)",
                   load.empty() ? "" : fmt::format(", resumed from {}", load));
      }
      const auto start = std::chrono::steady_clock::now();
      auto t0 = start;
      const std::int64_t first = run.steps_done();
      std::int64_t tokens = 0, all_tokens = 0;
      double loss_sum = 0;
      std::int64_t losses = 0;
      finetune::StepResult r;
      int skipped_in_row = 0;
      while (run.steps_done() < o.train_iters) {
        r = run.step(examples);
        if (r.skipped) {  // f16: inf/nan gradients at this loss scale; the scaler backed off
          // The scale halves per skip: 64 in a row means gradients that overflow at any scale.
          if (++skipped_in_row == 64)
            TP_THROW(tp::Error, "step {}: {} steps in a row skipped for inf/nan gradients (loss scale now {}); the run "
                     "diverged", run.steps_done() + 1, skipped_in_row, run.trainer().loss_scaler()->scale());
          if (lead)
            fmt::print("step {:5d}/{}  skipped: inf/nan gradients, loss scale now {}\n", run.steps_done() + 1,
                       o.train_iters, run.trainer().loss_scaler()->scale());
          continue;
        }
        skipped_in_row = 0;
        tokens += r.tokens;
        all_tokens += r.tokens;
        loss_sum += r.loss;
        ++losses;
        const std::int64_t s = run.steps_done();
        if (s % log_interval == 0 || s == o.train_iters || s == first + 1) {
          const auto t1 = std::chrono::steady_clock::now();
          double wall = std::chrono::duration<double>(t1 - t0).count();
          comm->all_reduce(std::span<double>(&wall, 1), tp::ReduceOp::max);  // the slowest rank's
          const double total = std::chrono::duration<double>(t1 - start).count();
          const double eta = total / static_cast<double>(s - first) * static_cast<double>(o.train_iters - s);
          const auto& scaler = run.trainer().loss_scaler();
          if (lead)
            fmt::print("step {:5d}/{}  loss {:.4f}  lr {:.2e}  grad_norm {:.3f}  {:.0f} tokens/s  ETA {}{}\n", s,
                       o.train_iters, loss_sum / static_cast<double>(losses), r.lr, r.grad_norm,
                       static_cast<double>(tokens) / wall, duration(eta),
                       scaler ? fmt::format("  loss scale {}  skipped {}", scaler->scale(), run.trainer().steps_skipped())
                              : "");
          std::fflush(stdout);
          t0 = t1;
          tokens = 0;
          loss_sum = 0;
          losses = 0;
        }
        if (!save.empty() && save_interval > 0 && s % save_interval == 0 && s != o.train_iters) {
          const auto saved = run.save(save, keep);
          if (lead) fmt::print("  saved {}\n", saved.string());
        }
      }
      if (!save.empty()) {
        const auto saved = run.save(save, keep);
        if (lead) fmt::print("  saved {}\n", saved.string());
      }
      if (!save_hf.empty()) {
        // The DP groups hold the same weights: the ranks of DP group 0 write, the others wait.
        if (mesh.dp_rank() == 0) tp::models::save_hugging_face(mesh.tp_comm(), run.model(), save_hf);
        comm->barrier();
        if (lead) {
          for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                "generation_config.json", "chat_template.jinja"})
            if (std::filesystem::exists(dir / f)) tp::detail::write_file_atomically(std::filesystem::path(save_hf) / f,
                                                tp::read_text_file(dir / f, "tokenizer file"), "tokenizer file");
          fmt::print("  saved a Hugging Face checkpoint in {}\n", save_hf);
        }
        comm->barrier();
      }
      const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (lead)
        fmt::print("done: {} steps, {} tokens in {:.1f} s, {:.0f} tokens/s{}\n", run.steps_done() - first, all_tokens,
                   total, static_cast<double>(all_tokens) / total,
                   run.trainer().loss_scaler()
                       ? fmt::format(", {} steps skipped (f16 overflow)", run.trainer().steps_skipped())
                       : "");
    };
    tp::launch({.backend = backend, .world = world, .timeout = std::chrono::seconds(timeout)}, argc, argv,
               [&](std::shared_ptr<tp::Communicator> comm) {
                 tp::with_precision(precision, [&]<class T>() { train.template operator()<T>(comm); });
               });
  } catch (const std::exception& e) {
    fmt::print(stderr, "finetune: {}\n", e.what());
    return 1;
  }
  return 0;
}
