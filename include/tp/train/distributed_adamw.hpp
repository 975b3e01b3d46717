#pragma once
/// AdamW on master weights in the type M over the main gradients of a GradBuffer (Megatron-Core's
/// DistributedOptimizer, llm.c's ZeRO-1):
///
///   zero 0  every DP rank holds the master weights and both moments of every parameter it holds
///           (its TP shard) and updates all of them from the all-reduced gradients.
///   zero 1  the buckets are cut into dp equal shards; DP rank d holds the master weights and the
///           moments of shard d only (memory ~1/dp), updates it from the reduce-scattered
///           gradients, and an all-gather of the new master weights over the DP group writes every
///           parameter back.
///
/// Overlapped all-gather (zero 1, GradBufferOptions::overlap_param_gather, Megatron's
/// overlap_param_gather): step() updates every shard, then starts one asynchronous all-gather per
/// bucket (of the new weights in the model's type T, which is what the model receives: half the
/// bytes of fp32 for bf16) in forward order, the bucket of the first layers first, and returns.
/// wait_params(first, last) waits for the buckets holding parameters [first, last) and writes
/// their gathered weights into the model; tp::Trainer calls it from the model's param-use hook
/// (Transformer::set_param_use_hook), so the next forward waits for each bucket just before the
/// first layer that reads it, and any other read of the weights through the model (parameters(),
/// layer(i), an inference forward) waits for all of them. Until then the model's weights of a
/// bucket in flight are the previous step's, whole. finish_param_sync() waits for every bucket;
/// grad_norm, step, write_weights, read_weights, the checkpoints and the destructor call it first.
///
/// The model's weights (type T) are copies of the master weights, rewritten after every update; for
/// T = M they are equal, and the update is element for element tp::AdamW's (tp::ops::adamw_step),
/// so zero 0, zero 1 and tp::AdamW over all-reduced gradients take the same steps.
///
/// The global gradient norm (for clipping and the inf/nan check) counts every element of the full
/// model once: a replicated parameter on TP rank 0 only, a block several TP ranks hold
/// (Parameter::copy) on its copy 0 only, and under zero 1 each DP rank its shard; one all-reduce
/// over the TP group (zero 0) or the world (zero 1); a non-finite element of an uncounted part
/// (a replicated parameter on TP rank 1, say) makes the norm NaN all the same, since this rank
/// updates it. A non-finite norm throws NumericalError
/// naming the step, or (skip_non_finite) skips the step, leaving weights and moments untouched.
///
/// Master weights and moments live in host memory on every device and the update runs on the
/// host (tp::ops::adamw_step on tp::Cpu). On tp::Cuda the model's weights are read from and
/// written to device memory a parameter at a time (Device::to_host / from_host), and the norm's
/// and ZeRO-1's collectives are staged through device buffers (tp/train/host_collectives.hpp).

#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "tp/core/error.hpp"
#include "tp/ops/adamw.hpp"
#include "tp/optim/adamw.hpp"
#include "tp/train/grad_buffer.hpp"

namespace tp {

template <class T, class M, class Device = Cpu>
class DistributedAdamW {
 public:
  /// A part of parameter k that lies in this rank's shard of its bucket: elements [begin, end) of
  /// the parameter (row-major), at `at` in the shard's state.
  struct Piece {
    std::size_t param = 0;
    std::int64_t begin = 0, end = 0, at = 0;
  };
  struct Shard {
    std::int64_t begin = 0, end = 0;  ///< elements of the bucket
    std::vector<M> master, exp_avg, exp_avg_sq;
    std::vector<Piece> pieces;
  };

  DistributedAdamW(GradBuffer<T, M, Device>& grads, AdamWOptions options = {})
      : grads_(&grads), options_(options), gathers_(grads.buckets().size()) {
    // The checks of tp::AdamW's constructor, on no parameters.
    (void)AdamW<M, Device>(grads.mesh().tp_context(), {}, options);
    const auto& segs = grads.segments();
    for (std::size_t i = 0; i < grads.buckets().size(); ++i) {
      Shard s;
      std::tie(s.begin, s.end) = grads.shard(i);
      for (std::size_t k : grads.buckets()[i].params) {
        const GradSegment& g = segs[k];
        const std::int64_t lo = std::max(s.begin, g.offset), hi = std::min(s.end, g.offset + g.size);
        if (lo < hi) s.pieces.push_back({k, lo - g.offset, hi - g.offset, lo - s.begin});
      }
      const auto n = static_cast<std::size_t>(s.end - s.begin);
      s.master.assign(n, M(0));
      s.exp_avg.assign(n, M(0));
      s.exp_avg_sq.assign(n, M(0));
      shards_.push_back(std::move(s));
    }
    read_weights();
  }

  /// Writes the weights of any all-gather still in flight into the model (errors are swallowed:
  /// a destructor cannot throw).
  ~DistributedAdamW() {
    try {
      finish_param_sync();
    } catch (const std::exception&) {
    }
  }
  DistributedAdamW(const DistributedAdamW&) = delete;
  DistributedAdamW& operator=(const DistributedAdamW&) = delete;

  /// Whether step() leaves all-gathers in flight (zero 1 over more than one DP rank, with
  /// overlap_param_gather, on a host device).
  bool overlaps_param_gather() const {
    // Not on a device: its weights are written from the host a whole parameter at a time (store).
    return Device::on_host && grads_->options().shard && grads_->options().overlap_param_gather && grads_->mesh().dp() > 1;
  }

  /// Waits for the all-gathers of the buckets that hold parameters [first, last) and writes their
  /// weights into the model. Cheap when nothing is in flight.
  void wait_params(std::size_t first, std::size_t last) {
    if (in_flight_ == 0) return;
    const auto& segs = grads_->segments();
    last = std::min(last, segs.size());
    for (std::size_t k = first; k < last; ++k) finish_gather(segs[k].bucket);
  }
  /// Waits for every all-gather in flight (see wait_params).
  void finish_param_sync() {
    for (std::size_t i = gathers_.size(); in_flight_ > 0 && i-- > 0;) finish_gather(i);
  }
  /// Buckets whose all-gather is in flight.
  std::size_t params_in_flight() const { return in_flight_; }

  /// The L2 norm of the reduced main gradients over the whole model (see the header comment).
  /// Collective over the world. After GradBuffer::finish().
  double grad_norm() {
    finish_param_sync();
    const Mesh<Device>& mesh = grads_->mesh();
    double local = 0;
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      const M* g = grads_->buckets()[i].data.data();
      for (const Piece& p : shards_[i].pieces) {
        const M* seg = g + grads_->segments()[p.param].offset;
        if (!counted(grads_->parameters()[p.param])) {
          // Not counted here, but updated here: a non-finite element still makes the norm NaN, so
          // that every rank skips (or refuses) the step rather than this one applying it.
          for (std::int64_t e = p.begin; e < p.end; ++e)
            if (!std::isfinite(static_cast<double>(seg[e]))) local = std::numeric_limits<double>::quiet_NaN();
          continue;
        }
        for (std::int64_t e = p.begin; e < p.end; ++e) local += static_cast<double>(seg[e]) * static_cast<double>(seg[e]);
      }
    }
    Communicator& comm = grads_->options().shard ? mesh.world() : mesh.tp_comm();
    detail::host_all_reduce(comm, mesh.tp_context().device, std::span<double>(&local, 1));
    return std::sqrt(local);
  }

  /// Scales this rank's (shard of the) main gradients by `factor`.
  void scale_grads(double factor) {
    const M f = static_cast<M>(factor);
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      M* g = grads_->buckets()[i].data.data();
      for (const Piece& p : shards_[i].pieces) {
        M* seg = g + grads_->segments()[p.param].offset;
        for (std::int64_t e = p.begin; e < p.end; ++e) seg[e] *= f;
      }
    }
  }

  /// One AdamW update of this rank's shard from the main gradients, then the model's weights
  /// rewritten from the master weights (zero 1: all-gathered over the DP group).
  void step() {
    ++step_;
    const auto& params = grads_->parameters();
    const Cpu host;
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      Shard& s = shards_[i];
      const M* g = grads_->buckets()[i].data.data();
      for (const Piece& p : s.pieces) {
        const Parameter<T>& param = params[p.param];
        const bool decay = options_.decay_vectors || param.weight_decay;
        const std::int64_t n = p.end - p.begin;
        auto view = [&](std::vector<M>& v) { return MatrixView<M>(v.data() + p.at, 1, n); };
        tp::ops::adamw_step(host, view(s.master), ConstView<M>(g + grads_->segments()[p.param].offset + p.begin, 1, n),
                            view(s.exp_avg), view(s.exp_avg_sq), options_.lr, options_.beta1, options_.beta2,
                            options_.eps, decay ? options_.weight_decay : 0.0, step_);
      }
    }
    write_weights();
  }

  /// Rewrites every parameter from the master weights (all-gathered under zero 1: started here
  /// and finished by wait_params when overlapped, see the top).
  void write_weights() {
    finish_param_sync();  // the gathers' buffers are reused, and their weights are older
    const auto& params = grads_->parameters();
    const auto& segs = grads_->segments();
    Communicator& dp = grads_->mesh().dp_comm();
    const auto& dev = grads_->mesh().tp_context().device;
    if (overlaps_param_gather()) {
      // Forward order: the last bucket holds the first layers, which the next forward reads first.
      for (std::size_t i = shards_.size(); i-- > 0;) {
        const Shard& s = shards_[i];
        Gather& g = gathers_[i];
        g.mine.resize(s.master.size());
        for (std::size_t e = 0; e < s.master.size(); ++e) g.mine[e] = static_cast<T>(s.master[e]);
        g.full.resize(static_cast<std::size_t>(grads_->buckets()[i].size));
        g.work = dp.all_gather_async(std::span<const T>(g.mine), std::span<T>(g.full));
        ++in_flight_;
      }
      return;
    }
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      Shard& s = shards_[i];
      if (grads_->options().shard && dp.size() > 1) {
        std::vector<M> full(static_cast<std::size_t>(grads_->buckets()[i].size));
        detail::host_all_gather(dp, dev, std::span<const M>(s.master), std::span<M>(full));
        for (std::size_t k : grads_->buckets()[i].params) store(k, 0, segs[k].size, full.data() + segs[k].offset);
      } else {
        for (const Piece& p : s.pieces) store(p.param, p.begin, p.end, s.master.data() + p.at);
      }
    }
  }

  /// Reads the master weights back from the model's weights (after loading weights into it).
  void read_weights() {
    finish_param_sync();  // else a gather in flight would overwrite the loaded weights later
    const auto& params = grads_->parameters();
    std::vector<T> host;
    for (Shard& s : shards_)
      for (const Piece& p : s.pieces) {
        const MatrixView<T> v = params[p.param].value;
        if constexpr (Device::on_host) {
          for (std::int64_t e = p.begin; e < p.end; ++e) s.master[p.at + e - p.begin] = static_cast<M>(at(v, e));
        } else {
          host.resize(static_cast<std::size_t>(v.size()));
          grads_->mesh().tp_context().device->to_host(ConstView<T>(v), MatrixView<T>(host.data(), v.rows, v.cols));
          for (std::int64_t e = p.begin; e < p.end; ++e) s.master[p.at + e - p.begin] = static_cast<M>(host[e]);
        }
      }
  }

  double lr() const { return options_.lr; }
  void set_lr(double lr) {
    TP_CHECK(std::isfinite(lr) && lr >= 0, "DistributedAdamW: learning rate must be finite and >= 0, got {}", lr);
    options_.lr = lr;
  }
  std::int64_t step_count() const { return step_; }
  void set_step_count(std::int64_t step) {
    TP_CHECK(step >= 0, "DistributedAdamW: step count {} is negative", step);
    step_ = step;
  }
  const AdamWOptions& options() const { return options_; }
  std::vector<Shard>& shards() { return shards_; }
  GradBuffer<T, M, Device>& grads() { return *grads_; }

  /// Bytes of optimizer state on this rank: master weights and two moments, in M.
  std::int64_t state_bytes() const {
    std::int64_t n = 0;
    for (const Shard& s : shards_) n += 3 * static_cast<std::int64_t>(s.master.size());
    return n * static_cast<std::int64_t>(sizeof(M));
  }

  /// Whether parameter p counts in global reductions on this TP rank (see the header comment).
  bool counted(const Parameter<T>& p) const {
    return p.sharded() ? p.copy == 0 : grads_->mesh().tp_rank() == 0;
  }

  /// Writes elements [begin, end) of parameter k's weights (row-major) from `master`, rounded to T.
  /// A device's weights are written whole (from_host): the pieces of a parameter on one rank then
  /// cover it, which they do (without ZeRO-1, or at dp 1, a shard is its whole bucket).
  void store(std::size_t k, std::int64_t begin, std::int64_t end, const M* master) {
    const MatrixView<T> v = grads_->parameters()[k].value;
    if constexpr (Device::on_host) {
      for (std::int64_t e = begin; e < end; ++e) at(v, e) = static_cast<T>(master[e - begin]);
    } else {
      TP_CHECK(begin == 0 && end == v.size(),
               "DistributedAdamW: parameter '{}' ({} elements) written in part ([{}, {})) on a device",
               grads_->parameters()[k].name, v.size(), begin, end);
      staged_.resize(static_cast<std::size_t>(v.size()));
      for (std::int64_t e = 0; e < end; ++e) staged_[e] = static_cast<T>(master[e]);
      grads_->mesh().tp_context().device->from_host(ConstView<T>(staged_.data(), v.rows, v.cols), v);
    }
  }

  /// Element e (row-major) of a parameter's view.
  template <class U>
  static U& at(MatrixView<U> v, std::int64_t e) {
    return v(e / v.cols, e % v.cols);
  }

 private:
  /// One bucket's overlapped all-gather: this rank's shard and the whole bucket, in T.
  struct Gather {
    std::vector<T> mine, full;
    std::unique_ptr<Work> work;
  };

  /// Waits for bucket i's all-gather, if in flight, and writes its parameters' weights.
  void finish_gather(std::size_t i) {
    Gather& g = gathers_[i];
    if (!g.work) return;
    --in_flight_;
    const std::unique_ptr<Work> work = std::move(g.work);
    work->wait();
    const auto& params = grads_->parameters();
    const auto& segs = grads_->segments();
    for (std::size_t k : grads_->buckets()[i].params)
      for (std::int64_t e = 0; e < segs[k].size; ++e) at(params[k].value, e) = g.full[segs[k].offset + e];
  }

  GradBuffer<T, M, Device>* grads_;
  AdamWOptions options_;
  std::vector<Shard> shards_;
  std::vector<Gather> gathers_;
  std::size_t in_flight_ = 0;
  std::int64_t step_ = 0;
  std::vector<T> staged_;  ///< a parameter's new weights on their way to a device
};

}  // namespace tp
