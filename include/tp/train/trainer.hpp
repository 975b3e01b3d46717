#pragma once
/// One training step of a tp::models::Transformer on a mesh, everything included: micro-batches
/// with gradient accumulation, activation recomputation, data-parallel reduction in overlapped
/// buckets (tp/train/grad_buffer.hpp), AdamW on fp32 master weights (double for double models),
/// optionally ZeRO-1 sharded over the DP group (tp/train/distributed_adamw.hpp), clipping by the
/// exact global norm, inf/nan handling and dynamic loss scaling (tp/train/loss_scaler.hpp).
///
///   tp::Mesh mesh(world, {.tp = 2, .dp = 2});
///   tp::models::Transformer<float> model(mesh.tp_context(), config, seed);
///   tp::Trainer<float> trainer(mesh, model, {.micro_batches = 2, .zero = 1});
///   for (step ...) trainer.step(ids, targets, schedule(trainer.steps_done()));
///
/// `ids` and `targets` are this DP rank's sequences of the global batch ([rows, seq_len], host
/// memory, rows a multiple of micro_batches); a target of -100 (VocabParallelCrossEntropy's
/// ignore_index) is masked out of the loss, as a fine-tuning loop masks its prompt. The loss is the
/// mean over the global batch's unmasked tokens, so TP x DP takes the steps of TP 1 x DP 1 on the
/// whole batch, to rounding. Checkpoints at any mesh: tp/train/checkpoint.hpp.
///
/// Mixed precision: Trainer<bf16> and Trainer<f16> train a Transformer<bf16/f16> (16-bit weights
/// and activations; the ops compute in float and round their outputs once). Its gradients go into
/// fp32 main gradients after each layer's backward, AdamW updates fp32 master weights and writes
/// the 16-bit weights from them. f16 wants TrainerOptions::loss_scaling (DynamicLossScaler): the
/// loss gradient carries the scale, a step with inf/nan gradients is skipped on every rank and the
/// scale backed off.
///
/// Devices: Trainer<T, tp::Cuda> (float, bf16, f16) runs the model, the loss and the backward on
/// the GPU; the main gradients, master weights and moments stay in host memory (tp/train/
/// grad_buffer.hpp, distributed_adamw.hpp), so each step moves the gradients to the host and the
/// weights back. Training checkpoints (tp/train/checkpoint.hpp) work there too, staged.

#include <cstdint>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

#include "tp/layers/vocab_parallel_cross_entropy.hpp"
#include "tp/models/transformer.hpp"
#include "tp/train/distributed_adamw.hpp"
#include "tp/train/grad_buffer.hpp"
#include "tp/train/loss_scaler.hpp"
#include "tp/train/mesh.hpp"

namespace tp {

struct TrainerOptions {
  int micro_batches = 1;
  /// 0: every DP rank holds the whole optimizer state; 1: ZeRO-1, sharded over the DP group.
  int zero = 0;
  /// Elements per gradient bucket (0: Megatron's default) and whether reductions overlap backward
  /// (Megatron's overlap_grad_reduce).
  std::int64_t bucket_size = 0;
  bool overlap = true;
  /// ZeRO-1: whether the all-gather of the updated weights overlaps the next forward (Megatron's
  /// overlap_param_gather; see tp/train/distributed_adamw.hpp) or blocks inside step().
  bool overlap_param_gather = true;
  AdamWOptions adamw{};
  /// Global gradient norm clip; 0: no clipping.
  double clip = 1.0;
  /// Non-finite gradients: skip the step (true) or throw tp::Error naming the step (false).
  bool skip_non_finite = false;
  /// Dynamic loss scaling (f16); none: scale 1.
  std::optional<LossScalerOptions> loss_scaling{};
  models::Recompute recompute = models::Recompute::none;
};

struct StepResult {
  double loss = 0, grad_norm = 0, lr = 0;
  bool skipped = false;  ///< inf/nan gradients: nothing was updated
};

template <class T, class Device = Cpu>
class Trainer {
 public:
  /// The master type: fp32 for float and 16-bit models, double for double.
  using Master = std::conditional_t<std::is_same_v<T, double>, double, float>;

  Trainer(const Mesh<Device>& mesh, models::Transformer<T, Device>& model, TrainerOptions options = {})
      : mesh_(&mesh),
        model_(&model),
        options_(check(options)),
        loss_fn_(mesh.tp_context(), model.config().vocab),
        grads_(mesh, model.parameters(),
               {.bucket_size = options.bucket_size,
                .overlap = options.overlap,
                .shard = options.zero == 1,
                .overlap_param_gather = options.overlap_param_gather}),
        optimizer_(grads_, options.adamw) {
    TP_CHECK(model.config().decoder(), "Trainer: trains decoders (a language-model loss); {} is an encoder",
             model.config().model_type);
    TP_CHECK(model.context().comm.get() == &mesh.tp_comm(),
             "Trainer: the model must be built on the mesh's TP context (mesh.tp_context())");
    if (options_.loss_scaling) scaler_.emplace(*options_.loss_scaling);
    model.set_recompute(options_.recompute);
    model.set_grad_ready_hook([this](std::size_t first, std::size_t last) { grads_.accumulate(first, last); });
    // ZeRO-1's overlapped all-gather: a part of the model waits for its weights before reading them.
    model.set_param_use_hook([this](std::size_t first, std::size_t last) { optimizer_.wait_params(first, last); });
  }
  /// The model keeps the weights of the last step: the optimizer's destructor writes any in flight.
  ~Trainer() {
    model_->set_grad_ready_hook({});
    model_->set_param_use_hook({});
  }
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  /// One optimizer step at learning rate `lr` on this DP rank's part of the global batch.
  StepResult step(ConstView<std::int64_t> ids, ConstView<std::int64_t> targets, double lr) {
    const int mb = options_.micro_batches;
    TP_CHECK(ids.rows == targets.rows && ids.cols == targets.cols && ids.rows > 0 && ids.cols > 0,
             "Trainer: ids are {}x{}, targets {}x{}: expected the same [sequences > 0, seq_len > 0]", ids.rows,
             ids.cols, targets.rows, targets.cols);
    TP_CHECK(ids.rows % mb == 0, "Trainer: {} sequences on DP rank {} do not split into {} micro-batches", ids.rows,
             mesh_->dp_rank(), mb);
    const Device& dev = *mesh_->tp_context().device;
    // The global batch's unmasked tokens: the loss is their mean.
    double tokens = 0;
    for (std::int64_t r = 0; r < targets.rows; ++r)
      for (std::int64_t c = 0; c < targets.cols; ++c) tokens += targets(r, c) != kIgnore ? 1 : 0;
    detail::host_all_reduce(mesh_->dp_comm(), mesh_->tp_context().device, std::span<double>(&tokens, 1));
    TP_CHECK(tokens > 0, "Trainer: every target of the global batch is masked ({}); nothing to learn from", kIgnore);
    const double loss_scale = scaler_ ? scaler_->scale() : 1.0;
    // The loss gradient seeds the backward with loss_scale / tokens in T. A 16-bit T rounds that
    // factor (bf16 by up to 2^-9 relative, the same for every gradient: a bias, not noise), so the
    // main gradients are divided by the factor actually used, times tokens, rather than by
    // loss_scale: the fp32 main gradients are then the unbiased mean. Float and double keep the
    // exact arithmetic of a plain loop (seed 1 / tokens, no division).
    const T seed = static_cast<T>(loss_scale / tokens);
    const double unscale = sizeof(T) == 2 ? static_cast<double>(seed) * tokens : loss_scale;
    TP_CHECK(std::isfinite(unscale) && unscale > 0,
             "Trainer: the loss gradient seed loss_scale {} / {} tokens is {} in {}: out of the type's range (lower "
             "the loss scale or the tokens per step)",
             loss_scale, tokens, static_cast<double>(seed), tp::name(dtype_of<T>));

    grads_.zero();
    double loss_sum = 0;
    const std::int64_t rows = ids.rows / mb, n = rows * ids.cols;
    std::vector<std::int64_t> host(static_cast<std::size_t>(n)), target_host(static_cast<std::size_t>(n));
    std::vector<T> grad_host(static_cast<std::size_t>(n));
    for (int m = 0; m < mb; ++m) {
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < ids.cols; ++c) {
          host[r * ids.cols + c] = ids(m * rows + r, c);
          target_host[r * ids.cols + c] = targets(m * rows + r, c);
        }
      dev.from_host(ConstView<std::int64_t>(host.data(), 1, n), tp::detail::ensure(ids_, mesh_->tp_context(), 1, n));
      dev.from_host(ConstView<std::int64_t>(target_host.data(), 1, n),
                    tp::detail::ensure(targets_, mesh_->tp_context(), 1, n));
      const auto& logits = model_->forward(ids_.view(), AttentionBatch::uniform(rows, ids.cols));
      const auto& loss = loss_fn_.forward(logits.view(), targets_.view());
      dev.to_host(loss.view(), MatrixView<T>(grad_host.data(), n, 1));
      for (std::int64_t i = 0; i < n; ++i) loss_sum += static_cast<double>(grad_host[i]);
      // d(global mean)/d(token loss), times the loss scale; masked tokens get 0 from the loss anyway.
      std::fill(grad_host.begin(), grad_host.end(), seed);
      dev.from_host(ConstView<T>(grad_host.data(), n, 1), tp::detail::ensure(grad_loss_, mesh_->tp_context(), n, 1));
      grads_.set_last_micro_batch(m == mb - 1);
      model_->backward(loss_fn_.backward(grad_loss_.view()).view());
    }
    grads_.finish();
    detail::host_all_reduce(mesh_->dp_comm(), mesh_->tp_context().device, std::span<double>(&loss_sum, 1));

    StepResult r{.loss = loss_sum / tokens, .lr = lr};
    if (unscale != 1.0) optimizer_.scale_grads(1.0 / unscale);
    r.grad_norm = optimizer_.grad_norm();
    const bool finite = std::isfinite(r.grad_norm);
    if (scaler_ ? !scaler_->update(finite) : !finite) {
      TP_CHECK(scaler_ || options_.skip_non_finite,
               "Trainer: step {}: the global gradient norm is {} (inf or nan gradients); the step was not applied "
               "(TrainerOptions::skip_non_finite skips such steps instead)",
               optimizer_.step_count(), r.grad_norm);
      r.skipped = true;
      ++skipped_;
      return r;
    }
    if (options_.clip > 0 && r.grad_norm > options_.clip) optimizer_.scale_grads(options_.clip / (r.grad_norm + 1e-6));
    optimizer_.set_lr(lr);
    optimizer_.step();
    return r;
  }

  /// Waits for ZeRO-1's overlapped all-gather of the last step's weights and writes them into the
  /// model. Reads through the model (forward, parameters(), layer(i)) do it by themselves; call it
  /// before reading weights through views taken earlier, or through the layers' own objects.
  void finish_param_sync() { optimizer_.finish_param_sync(); }

  /// Optimizer steps taken (skipped ones not counted).
  std::int64_t steps_done() const { return optimizer_.step_count(); }
  std::int64_t steps_skipped() const { return skipped_; }
  models::Transformer<T, Device>& model() { return *model_; }
  const Mesh<Device>& mesh() const { return *mesh_; }
  DistributedAdamW<T, Master, Device>& optimizer() { return optimizer_; }
  GradBuffer<T, Master, Device>& grads() { return grads_; }
  const TrainerOptions& options() const { return options_; }
  std::optional<DynamicLossScaler>& loss_scaler() { return scaler_; }

  /// Which rows of a global batch of `global_rows` sequences this DP rank trains on.
  static Range dp_rows(const Mesh<Device>& mesh, std::int64_t global_rows) {
    TP_CHECK(global_rows % mesh.dp() == 0, "Trainer: a global batch of {} sequences does not split over dp = {}",
             global_rows, mesh.dp());
    const std::int64_t n = global_rows / mesh.dp();
    return {n * mesh.dp_rank(), n * (mesh.dp_rank() + 1)};
  }

 private:
  static constexpr std::int64_t kIgnore = -100;

  static TrainerOptions check(const TrainerOptions& o) {
    TP_CHECK(o.micro_batches > 0, "Trainer: micro_batches must be positive, got {}", o.micro_batches);
    TP_CHECK(o.zero == 0 || o.zero == 1, "Trainer: zero must be 0 or 1 (ZeRO-1), got {}", o.zero);
    TP_CHECK(o.bucket_size >= 0, "Trainer: bucket_size must be >= 0 (0: the default), got {}", o.bucket_size);
    TP_CHECK(std::isfinite(o.clip) && o.clip >= 0, "Trainer: clip must be finite and >= 0 (0: none), got {}", o.clip);
    return o;
  }

  const Mesh<Device>* mesh_;
  models::Transformer<T, Device>* model_;
  TrainerOptions options_;
  VocabParallelCrossEntropy<T, Device> loss_fn_;
  GradBuffer<T, Master, Device> grads_;
  DistributedAdamW<T, Master, Device> optimizer_;
  std::optional<DynamicLossScaler> scaler_;
  Tensor<std::int64_t, Device> ids_, targets_;
  Tensor<T, Device> grad_loss_;
  std::int64_t skipped_ = 0;
};

}  // namespace tp
