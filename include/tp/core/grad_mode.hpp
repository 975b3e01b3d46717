#pragma once
/// Whether the forwards of this thread will be differentiated (torch.no_grad's role). A layer saves
/// the input of its last forward for its backward, one activation per layer; a forward under
/// `tp::NoGrad` (evaluation, a generation step) says that no backward will follow, so the saved
/// input it replaced is marked gone instead of being used silently by a later backward.
///
///   { tp::NoGrad no_grad; model.forward(x_eval); }  // no backward for these
///
/// Per thread, because the in-process harness and LocalCommunicator run one rank per thread.

namespace tp {

namespace detail {
inline bool& grad_enabled_flag() {
  thread_local bool enabled = true;
  return enabled;
}
}  // namespace detail

/// False inside a NoGrad scope of this thread.
inline bool grad_enabled() { return detail::grad_enabled_flag(); }

/// Turns differentiation off for this thread until the scope ends (scopes nest).
class NoGrad {
 public:
  NoGrad() : previous_(detail::grad_enabled_flag()) { detail::grad_enabled_flag() = false; }
  ~NoGrad() { detail::grad_enabled_flag() = previous_; }
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool previous_;
};

}  // namespace tp
