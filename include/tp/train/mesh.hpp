#pragma once
/// The device mesh of a training job: tensor parallel (TP) inside data parallel (DP), both groups
/// made from one world communicator by `split`, in Megatron's rank order:
///
///   world rank r  ->  tp_rank = r % tp,  dp_rank = r / tp
///   TP group d    =  ranks [d tp, (d + 1) tp)          (consecutive: TP stays inside a node)
///   DP group t    =  ranks t, t + tp, t + 2 tp, ...     (the same TP rank in every TP group)
///
/// e.g. TP 2 x DP 2 on 4 ranks: TP groups {0, 1} and {2, 3}, DP groups {0, 2} and {1, 3}.
/// Layers see only their TP `Context`; the data-parallel code (tp/train/grad_buffer.hpp,
/// tp/train/distributed_adamw.hpp) sees the DP communicator. A world that is not tp x dp is refused,
/// naming both. Later axes (pipeline, context) would extend this object, not add a second one.

#include <memory>
#include <utility>

#include "tp/comm/communicator.hpp"
#include "tp/core/context.hpp"
#include "tp/core/error.hpp"

namespace tp {

/// The degrees of a mesh; dp = 0 means world / tp.
struct MeshDims {
  int tp = 1;
  int dp = 0;
};

template <class Device = Cpu>
class Mesh {
 public:
  /// Collective over `world`: every rank passes the same dims. Throws InvalidArgument if tp or dp
  /// is not positive or tp x dp is not the world size.
  Mesh(std::shared_ptr<Communicator> world, MeshDims dims, std::shared_ptr<Device> device = nullptr)
      : world_(std::move(world)) {
    TP_CHECK(world_ != nullptr, "Mesh needs a world communicator");
    const int n = world_->size();
    TP_CHECK(dims.tp > 0, "Mesh: tensor-parallel size must be positive, got tp = {}", dims.tp);
    TP_CHECK(dims.dp >= 0, "Mesh: data-parallel size must be positive, got dp = {}", dims.dp);
    const int dp = dims.dp > 0 ? dims.dp : n / dims.tp;
    TP_CHECK(dims.tp * dp == n && n % dims.tp == 0,
             "Mesh: tp {} x dp {} = {} ranks, but the world has {} (the world size must be tp x dp)", dims.tp,
             dims.dp > 0 ? dims.dp : dp, dims.tp * dp, n);
    tp_ = dims.tp;
    dp_ = dp;
    const int r = world_->rank();
    // split orders each group by (key, rank): TP group r / tp ordered by tp rank, DP group r % tp by dp rank.
    auto tp_comm = tp_ == n ? world_ : world_->split(r / tp_, r % tp_);
    dp_comm_ = dp_ == n ? world_ : world_->split(r % tp_, r / tp_);
    tp_ctx_ = std::make_shared<Context<Device>>(std::move(tp_comm), std::move(device));
  }

  int tp() const { return tp_; }
  int dp() const { return dp_; }
  int tp_rank() const { return tp_ctx_->rank(); }
  int dp_rank() const { return dp_comm_->rank(); }
  int rank() const { return world_->rank(); }
  int world_size() const { return world_->size(); }

  /// What every layer of this rank is built with: the TP group and the device.
  const Context<Device>& tp_context() const { return *tp_ctx_; }
  Communicator& tp_comm() const { return *tp_ctx_->comm; }
  Communicator& dp_comm() const { return *dp_comm_; }
  Communicator& world() const { return *world_; }
  const std::shared_ptr<Communicator>& world_ptr() const { return world_; }

 private:
  std::shared_ptr<Communicator> world_, dp_comm_;
  std::shared_ptr<Context<Device>> tp_ctx_;
  int tp_ = 1, dp_ = 1;
};

}  // namespace tp
