#pragma once
/// Data-parallel gradient reduction in contiguous buckets (Megatron-Core's ParamAndGradBuffer and
/// DistributedDataParallel): every parameter's gradient gets a segment of a "main gradient" buffer
/// in the master type M (float for float, bf16 and f16 models; double for double), the segments
/// packed into buckets in backward order (the last parameters first), each bucket at least
/// `bucket_size` elements (Megatron's default: max(40M, 1M x dp)). After a backward:
///
///   accumulate(first, last)  the model's hook (Transformer::set_grad_ready_hook) reports that the
///                            gradients of parameters [first, last) are final for this backward:
///                            main += grad (converted to M), grad = 0. On the last micro-batch of a
///                            step (set_last_micro_batch) a bucket whose every parameter has been
///                            reported starts its reduction over the DP group at once (overlap: an
///                            asynchronous all-reduce; ZeRO-1: an asynchronous reduce-scatter into
///                            the bucket's shard buffer), while the backward of the earlier layers
///                            goes on.
///   finish()                 starts the buckets not started (no overlap: all of them, ZeRO-1's
///                            reduce-scatters then blocking), waits for every started one
///                            (Work::wait) and, under ZeRO-1, copies each reduced shard into its
///                            place in the bucket: call it before the optimizer.
///
/// The loss gradient is scaled by 1 / (the global batch's token count), so the sum over the DP
/// group is the global mean: no division after the reduction. Gradient accumulation over
/// micro-batches adds into the main gradients and reduces once per step.
///
/// A parameter block that several TP ranks hold (Parameter::copy, replicated GQA kv heads) is
/// reduced as it is, in its own DP group; norms and checkpoints count copy 0 only.
///
/// Every DP rank must build the same layout: the constructor checks it collectively (the bucket
/// sizes and a hash of the parameter names and shapes, all-gathered over the DP group) and throws
/// naming the first rank and bucket that differ.
///
/// The buffers live in host memory on every device. On tp::Cuda (Device::on_host false) a
/// parameter's gradient is copied to the host when the hook reports it, and the DP reductions go
/// through device buffers (tp/train/host_collectives.hpp) and block: the CUDA path is correct but
/// does not overlap communication with the backward nor keep the main gradients on the GPU
/// (docs/design.md, "Training at scale").

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tp/comm/communicator.hpp"
#include "tp/core/parameter.hpp"
#include "tp/train/host_collectives.hpp"
#include "tp/train/mesh.hpp"

namespace tp {

struct GradBufferOptions {
  /// Elements per bucket (at least; a bucket holds whole parameters). 0: Megatron's default,
  /// max(40'000'000, 1'000'000 x dp).
  std::int64_t bucket_size = 0;
  /// Start each bucket's reduction from the backward hook (true) or all of them in finish().
  bool overlap = true;
  /// ZeRO-1: reduce-scatter each bucket, each DP rank keeping its 1/dp shard (DistributedAdamW).
  bool shard = false;
  /// ZeRO-1: DistributedAdamW all-gathers each bucket's new weights asynchronously after its
  /// update, and the model's forward waits for a bucket before its first layer reads it
  /// (Megatron's overlap_param_gather); false: a blocking all-gather inside the step.
  bool overlap_param_gather = true;
};

/// Where parameter i's gradient lives: bucket, element offset in it, element count.
struct GradSegment {
  std::size_t bucket = 0;
  std::int64_t offset = 0, size = 0;
};

template <class T, class M, class Device = Cpu>
class GradBuffer {
 public:
  struct Bucket {
    std::vector<std::size_t> params;  ///< indices into the parameter list, in backward order
    std::int64_t size = 0;            ///< elements, padded to a multiple of dp
    std::vector<M> data;              ///< main gradients (ZeRO-1: after finish(), only the shard is reduced)
    std::int64_t pending = 0;         ///< parameters not reported yet in this step's last backward
    bool started = false;
    std::unique_ptr<Work> work;
    std::vector<M> reduced;  ///< ZeRO-1, overlapped: the asynchronous reduce-scatter's shard, until finish()
  };

  GradBuffer(const Mesh<Device>& mesh, std::vector<Parameter<T>> params, GradBufferOptions options = {})
      : mesh_(&mesh), params_(std::move(params)), options_(options) {
    const int dp = mesh.dp();
    if (options_.bucket_size <= 0) options_.bucket_size = std::max<std::int64_t>(40'000'000, 1'000'000LL * dp);
    segments_.resize(params_.size());
    // Backward order: the model's last parameters get their gradients first.
    for (std::size_t k = params_.size(); k-- > 0;) {
      const Parameter<T>& p = params_[k];
      TP_CHECK(p.grad.rows == p.value.rows && p.grad.cols == p.value.cols,
               "GradBuffer: parameter '{}' is {}x{} but its gradient {}x{}", p.name, p.value.rows, p.value.cols,
               p.grad.rows, p.grad.cols);
      if (buckets_.empty() || buckets_.back().size >= options_.bucket_size) buckets_.emplace_back();
      Bucket& b = buckets_.back();
      segments_[k] = {buckets_.size() - 1, b.size, p.value.size()};
      b.params.push_back(k);
      b.size += p.value.size();
    }
    for (auto& b : buckets_) {
      if (options_.shard) b.size = (b.size + dp - 1) / dp * dp;  // equal shards for the reduce-scatter
      b.data.assign(static_cast<std::size_t>(b.size), M(0));
    }
    verify_layout();
    reset();
  }

  GradBuffer(const GradBuffer&) = delete;
  GradBuffer& operator=(const GradBuffer&) = delete;

  /// Whether this backward is the step's last micro-batch (reductions start only then).
  void set_last_micro_batch(bool last) { last_ = last; }

  /// main += grad and grad = 0 for parameters [first, last); on the last micro-batch, starts the
  /// reduction of every bucket this completes (when overlapping).
  void accumulate(std::size_t first, std::size_t last) {
    TP_CHECK(first <= last && last <= params_.size(), "GradBuffer: parameters [{}, {}) of {}", first, last,
             params_.size());
    for (std::size_t k = first; k < last; ++k) {
      const Parameter<T>& p = params_[k];
      const GradSegment& s = segments_[k];
      Bucket& b = buckets_[s.bucket];
      TP_CHECK(!b.started, "GradBuffer: '{}' reported after its bucket {} was reduced", p.name, s.bucket);
      M* out = b.data.data() + s.offset;
      if constexpr (Device::on_host) {
        for (std::int64_t r = 0; r < p.grad.rows; ++r)
          for (std::int64_t c = 0; c < p.grad.cols; ++c) *out++ += static_cast<M>(p.grad(r, c));
      } else {
        staged_.resize(static_cast<std::size_t>(p.grad.size()));
        mesh_->tp_context().device->to_host(ConstView<T>(p.grad), MatrixView<T>(staged_.data(), p.grad.rows, p.grad.cols));
        for (const T& g : staged_) *out++ += static_cast<M>(g);
      }
      mesh_->tp_context().device->fill(p.grad, T(0));
      if (last_ && --b.pending == 0 && options_.overlap) start(s.bucket);
    }
  }

  /// Every bucket reduced: waits for the started ones, reduces the others. Before the optimizer.
  void finish() {
    for (std::size_t i = 0; i < buckets_.size(); ++i) {
      const Bucket& b = buckets_[i];
      // A parameter the backward never reported would be reduced as zeros: refuse, naming it.
      TP_CHECK(!last_ || b.pending == 0,
               "GradBuffer: bucket {} still waits for {} of its {} parameters (it starts with '{}'): the model's backward did "
               "not report them (Transformer::set_grad_ready_hook, or accumulate() by hand)",
               i, b.pending, b.params.size(), params_[b.params.front()].name);
      if (!b.started) start(i);
    }
    for (std::size_t i = 0; i < buckets_.size(); ++i) {
      Bucket& b = buckets_[i];
      if (!b.work) continue;
      b.work->wait();
      b.work.reset();
      if (options_.shard) std::copy(b.reduced.begin(), b.reduced.end(), b.data.begin() + shard(i).first);
    }
  }

  /// Zeroes the main gradients for the next step.
  void zero() {
    for (auto& b : buckets_) std::fill(b.data.begin(), b.data.end(), M(0));
    reset();
  }

  /// This rank's shard of bucket i: [begin, end) elements (the whole bucket without ZeRO-1).
  std::pair<std::int64_t, std::int64_t> shard(std::size_t i) const {
    const Bucket& b = buckets_[i];
    if (!options_.shard) return {0, b.size};
    const std::int64_t n = b.size / mesh_->dp();
    return {n * mesh_->dp_rank(), n * (mesh_->dp_rank() + 1)};
  }

  const std::vector<Parameter<T>>& parameters() const { return params_; }
  const std::vector<GradSegment>& segments() const { return segments_; }
  std::vector<Bucket>& buckets() { return buckets_; }
  const std::vector<Bucket>& buckets() const { return buckets_; }
  const GradBufferOptions& options() const { return options_; }
  const Mesh<Device>& mesh() const { return *mesh_; }
  /// The main gradient of parameter k (its whole segment; valid after finish() without ZeRO-1).
  std::span<M> main_grad(std::size_t k) {
    const GradSegment& s = segments_[k];
    return {buckets_[s.bucket].data.data() + s.offset, static_cast<std::size_t>(s.size)};
  }

 private:
  void reset() {
    for (auto& b : buckets_) {
      b.pending = static_cast<std::int64_t>(b.params.size());
      b.started = false;
    }
  }

  void start(std::size_t i) {
    Bucket& b = buckets_[i];
    b.started = true;
    Communicator& dp = mesh_->dp_comm();
    if (dp.size() == 1) return;
    const auto& dev = mesh_->tp_context().device;
    if (options_.shard) {
      // Rank r's shard is reduced into `reduced`, then copied to its own place in the bucket (by
      // finish() when asynchronous). Without overlap the reduce-scatter blocks.
      const auto [begin, end] = shard(i);
      b.reduced.resize(static_cast<std::size_t>(end - begin));
      if constexpr (Device::on_host) {
        if (options_.overlap) {
          b.work = dp.reduce_scatter_async(std::span<const M>(b.data), std::span<M>(b.reduced));
          return;
        }
      }
      detail::host_reduce_scatter(dp, dev, std::span<const M>(b.data), std::span<M>(b.reduced));
      std::copy(b.reduced.begin(), b.reduced.end(), b.data.begin() + begin);
    } else if constexpr (Device::on_host) {
      b.work = dp.all_reduce_async(b.data.data(), b.data.data(), b.data.size(), dtype_of<M>, ReduceOp::sum);
    } else {
      detail::host_all_reduce(dp, dev, std::span<M>(b.data));  // staged through device memory, blocking
    }
  }

  /// All-gathers (bucket count, per bucket: size and a hash of its parameters' names and shapes)
  /// over the DP group and names the first disagreement.
  void verify_layout() {
    Communicator& dp = mesh_->dp_comm();
    if (dp.size() == 1) return;
    std::int64_t count = static_cast<std::int64_t>(buckets_.size());
    std::vector<std::int64_t> counts(static_cast<std::size_t>(dp.size()));
    const auto& dev = mesh_->tp_context().device;
    detail::host_all_gather(dp, dev, std::span<const std::int64_t>(&count, 1), std::span<std::int64_t>(counts));
    for (int r = 0; r < dp.size(); ++r)
      TP_CHECK(counts[r] == count,
               "GradBuffer: DP rank {} has {} gradient buckets, DP rank {} has {}: the ranks of a DP group must "
               "build the same model with the same bucket size",
               dp.rank(), count, r, counts[r]);
    std::vector<std::int64_t> mine;
    for (const auto& b : buckets_) {
      std::uint64_t h = 1469598103934665603ull;
      auto mix = [&](std::uint64_t v) { h = (h ^ v) * 1099511628211ull; };
      for (std::size_t k : b.params) {
        for (char ch : params_[k].name) mix(static_cast<unsigned char>(ch));
        mix(static_cast<std::uint64_t>(params_[k].full_rows));
        mix(static_cast<std::uint64_t>(params_[k].full_cols));
        mix(static_cast<std::uint64_t>(params_[k].rows.begin));
        mix(static_cast<std::uint64_t>(params_[k].cols.begin));
      }
      mine.push_back(b.size);
      mine.push_back(static_cast<std::int64_t>(h));
    }
    std::vector<std::int64_t> all(mine.size() * static_cast<std::size_t>(dp.size()));
    detail::host_all_gather(dp, dev, std::span<const std::int64_t>(mine), std::span<std::int64_t>(all));
    for (int r = 0; r < dp.size(); ++r)
      for (std::size_t i = 0; i < buckets_.size(); ++i) {
        const std::int64_t size = all[r * mine.size() + 2 * i], hash = all[r * mine.size() + 2 * i + 1];
        TP_CHECK(size == mine[2 * i] && hash == mine[2 * i + 1],
                 "GradBuffer: bucket {} differs between DP ranks {} and {} ({} and {} elements{}): the ranks of a DP "
                 "group must hold the same parameters",
                 i, dp.rank(), r, mine[2 * i], size, hash == mine[2 * i + 1] ? "" : ", other parameter names or shapes");
      }
  }

  const Mesh<Device>* mesh_;
  std::vector<Parameter<T>> params_;
  GradBufferOptions options_;
  std::vector<GradSegment> segments_;
  std::vector<Bucket> buckets_;
  bool last_ = true;
  std::vector<T> staged_;  ///< a device's gradient on the host (Device::on_host false)
};

}  // namespace tp
