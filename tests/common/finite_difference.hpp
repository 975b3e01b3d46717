#pragma once
/// Gradients by central differences, in double on the host: independent of every hand-written
/// backward and reference. The scalar is L = sum(y * dy) over the whole output for a fixed random
/// dy, so dL/dx is exactly what backward(dy) returns.
///
/// For layers at any world size, every rank takes part in every forward (they are collective): an
/// element of the full input or of a full parameter is perturbed on every rank that holds it (all
/// ranks for a replicated tensor, which is one tied value), and L sums the ranks' parts of the
/// output when the output is split, or takes the rank's copy when it is replicated.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/reference.hpp"
#include "tp/comm/communicator.hpp"
#include "tp/core/parameter.hpp"
#include "tp/core/partition.hpp"

namespace tp::test {

/// Step and normwise relative tolerance. With O(1) values the truncation error is ~h^2 = 1e-12 and
/// the rounding error ~1e-16 / h = 1e-10, both far inside the tolerance; a wrong backward (a
/// missing term, a factor, a transposed block) is off by O(1).
inline constexpr double kFdStep = 1e-6;
inline constexpr double kFdTolerance = 1e-6;

/// (f(v + h) - f(v - h)) / 2h, restoring v.
template <class F>
double central_difference(double& v, F&& f) {
  const double saved = v;
  v = saved + kFdStep;
  const double plus = f();
  v = saved - kFdStep;
  const double minus = f();
  v = saved;
  return (plus - minus) / (2 * kFdStep);
}

/// dL/dm for every element of m, L = loss() (which reads m).
template <class F>
ref::Matrix numeric_gradient(ref::Matrix& m, F&& loss) {
  ref::Matrix g(m.rows, m.cols);
  for (std::size_t i = 0; i < m.data.size(); ++i) g.data[i] = central_difference(m.data[i], loss);
  return g;
}

/// sum(y * dy) over two equally shaped views.
inline double dot(ConstView<double> y, ConstView<double> dy) {
  TP_CHECK(y.rows == dy.rows && y.cols == dy.cols, "finite differences: output {}x{}, gradient {}x{}", y.rows, y.cols,
           dy.rows, dy.cols);
  double s = 0;
  for (std::int64_t r = 0; r < y.rows; ++r)
    for (std::int64_t c = 0; c < y.cols; ++c) s += y(r, c) * dy(r, c);
  return s;
}

/// Where a rank's part of a full [rows, cols] matrix sits (the whole matrix when replicated).
struct Block {
  Range rows, cols;
  bool contains(std::int64_t r, std::int64_t c) const {
    return r >= rows.begin && r < rows.end && c >= cols.begin && c < cols.end;
  }
};

/// One rank's view of a layer under test: `forward()` runs the layer on the current input and
/// parameters and returns this rank's output; `dy` is this rank's block of the output gradient;
/// `output_split` says whether the ranks' outputs are parts to be summed (column shards, token
/// shards) or copies of one output.
struct LayerProbe {
  std::shared_ptr<Communicator> comm;
  std::function<ConstView<double>()> forward;
  ConstView<double> dy;
  bool output_split = false;

  double loss() const {
    double l = dot(forward(), dy);
    if (output_split && comm->size() > 1) comm->all_reduce(&l, &l, 1, DType::f64);
    return l;
  }

  /// dL/dX for the full input of `full_rows` x `full_cols`, this rank holding `mine` of it in `x`
  /// (host memory the forward reads).
  ref::Matrix input_gradient(MatrixView<double> x, Block mine, std::int64_t full_rows, std::int64_t full_cols) const {
    ref::Matrix g(full_rows, full_cols);
    double unused = 0;
    for (std::int64_t r = 0; r < full_rows; ++r)
      for (std::int64_t c = 0; c < full_cols; ++c) {
        double& v = mine.contains(r, c) ? x(r - mine.rows.begin, c - mine.cols.begin) : unused;
        g(r, c) = central_difference(v, [&] { return loss(); });
      }
    return g;
  }

  /// dL/dP for every parameter name, as full tensors: each element perturbed in every record (on
  /// every rank) that holds it, so replicated copies move together.
  std::map<std::string, ref::Matrix> parameter_gradients(const std::vector<Parameter<double>>& ps) const {
    std::map<std::string, ref::Matrix> out;
    std::vector<std::string> names;  // in order of first appearance, the same on every rank
    for (const auto& p : ps)
      if (std::find(names.begin(), names.end(), p.name) == names.end()) names.push_back(p.name);
    for (const auto& name : names) {
      const auto first = std::find_if(ps.begin(), ps.end(), [&](const auto& p) { return p.name == name; });
      ref::Matrix g(first->full_rows, first->full_cols);
      for (std::int64_t r = 0; r < g.rows; ++r)
        for (std::int64_t c = 0; c < g.cols; ++c) {
          std::vector<double*> held;
          for (const auto& p : ps)
            if (p.name == name && Block{p.rows, p.cols}.contains(r, c))
              held.push_back(&p.value(r - p.rows.begin, c - p.cols.begin));
          std::vector<double> saved;
          for (double* v : held) saved.push_back(*v);
          auto at = [&](double delta) {
            for (std::size_t i = 0; i < held.size(); ++i) *held[i] = saved[i] + delta;
            return loss();
          };
          const double plus = at(kFdStep), minus = at(-kFdStep);
          for (std::size_t i = 0; i < held.size(); ++i) *held[i] = saved[i];
          g(r, c) = (plus - minus) / (2 * kFdStep);
        }
      out.emplace(name, std::move(g));
    }
    return out;
  }
};

/// Each rank's gradient records against the numeric full gradients, the records of one name compared
/// as one normwise whole (as test::expect_grads does): a block can be zero in exact arithmetic.
inline void expect_fd_grads(const std::vector<Parameter<double>>& ps,
                            const std::map<std::string, ref::Matrix>& numeric) {
  std::map<std::string, std::pair<ref::Matrix, ref::Matrix>> got_want;
  for (const auto& p : ps) {
    const auto it = numeric.find(p.name);
    ASSERT_NE(it, numeric.end()) << p.name;
    auto& [got, want] = got_want[p.name];
    for (std::int64_t r = 0; r < p.rows.size(); ++r)
      for (std::int64_t c = 0; c < p.cols.size(); ++c) {
        got.data.push_back(p.grad(r, c));
        want.data.push_back(it->second(p.rows.begin + r, p.cols.begin + c));
      }
    got.rows = want.rows = 1;
    got.cols = want.cols = static_cast<std::int64_t>(got.data.size());
  }
  for (const auto& [name, gw] : got_want) EXPECT_LE(ref::rel_error(gw.first, gw.second), kFdTolerance) << name;
}

/// Expects `analytic` (this rank's block of a gradient) to match the numeric full gradient's block.
#define TP_EXPECT_FD_CLOSE(analytic, numeric, where)                                                                \
  EXPECT_LE(::tp::ref::rel_error(                                                                                   \
                ::tp::test::as_matrix<double>(analytic),                                                            \
                (numeric).block((where).rows.begin, (where).cols.begin, (where).rows.size(), (where).cols.size())), \
            ::tp::test::kFdTolerance)                                                                               \
      << #analytic

}  // namespace tp::test
