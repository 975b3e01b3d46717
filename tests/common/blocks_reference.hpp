#pragma once
/// Unsharded double-precision references for the transformer blocks (embedding, MLP, attention,
/// cross-entropy), forward and backward, as plain loops; plus helpers that check a layer's
/// parameter records against full gradients.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "common/devices.hpp"
#include "common/reference.hpp"
#include "tp/core/parameter.hpp"

namespace tp::ref {

// ---- Embedding

inline Matrix embedding(const std::vector<std::int64_t>& ids, const Matrix& table) {
  Matrix y(static_cast<std::int64_t>(ids.size()), table.cols);
  for (std::size_t t = 0; t < ids.size(); ++t)
    for (std::int64_t c = 0; c < table.cols; ++c) y(static_cast<std::int64_t>(t), c) = table(ids[t], c);
  return y;
}

inline Matrix embedding_grad(const std::vector<std::int64_t>& ids, const Matrix& dy, std::int64_t vocab) {
  Matrix d(vocab, dy.cols);
  for (std::size_t t = 0; t < ids.size(); ++t)
    for (std::int64_t c = 0; c < dy.cols; ++c) d(ids[t], c) += dy(static_cast<std::int64_t>(t), c);
  return d;
}

// ---- MLP

enum class Act { gelu_exact, gelu_tanh, swiglu };

inline double silu(double x) { return x / (1.0 + std::exp(-x)); }

struct Mlp {
  Matrix y, dx, dw1, db1, dw2, db2;
};

/// y = fc2(act(fc1(x))); under swiglu fc1 is [2 ffn, hidden] = [gate; up] and act = silu(gate) * up.
inline Mlp mlp(const Matrix& x, const Matrix& w1, const Matrix& b1, const Matrix& w2, const Matrix& b2,
               const Matrix& dy, Act act, bool bias) {
  const Matrix h = bias ? add_bias(matmul(x, false, w1, true), b1) : matmul(x, false, w1, true);
  const std::int64_t ffn = w2.cols;
  Matrix a(x.rows, ffn);
  for (std::int64_t t = 0; t < x.rows; ++t)
    for (std::int64_t j = 0; j < ffn; ++j)
      a(t, j) = act == Act::swiglu ? silu(h(t, j)) * h(t, ffn + j) : gelu(h(t, j), act == Act::gelu_tanh);
  const Linear second = linear(a, w2, bias ? &b2 : nullptr, dy);
  Matrix dh(h.rows, h.cols);
  for (std::int64_t t = 0; t < x.rows; ++t)
    for (std::int64_t j = 0; j < ffn; ++j) {
      const double da = second.dx(t, j);
      if (act == Act::swiglu) {
        const double g = h(t, j), u = h(t, ffn + j), s = 1.0 / (1.0 + std::exp(-g));
        dh(t, j) = da * u * (s + g * s * (1.0 - s));
        dh(t, ffn + j) = da * silu(g);
      } else {
        dh(t, j) = da * gelu_slope(h(t, j), act == Act::gelu_tanh);
      }
    }
  const Linear first = linear(x, w1, nullptr, dh);
  return {second.y, first.dx, first.dw, first.db, second.dw, second.db};
}

// ---- Attention

struct Attention {
  Matrix y, dx, dw_qkv, db_qkv, dw_o, db_o;
};

/// Fused QKV [(heads + 2 kv_heads) d, hidden] = [Wq; Wk; Wv], query head h reads kv head h / (heads /
/// kv_heads), sequences of seq_len tokens, scores scaled by 1 / sqrt(d), then the [hidden, heads d]
/// output projection.
inline Attention attention(const Matrix& x, const Matrix& w_qkv, const Matrix& b_qkv, const Matrix& w_o,
                           const Matrix& b_o, const Matrix& dy, std::int64_t heads, std::int64_t kv_heads,
                           std::int64_t d, std::int64_t seq_len, bool causal, bool bias) {
  const std::int64_t tokens = x.rows, batch = tokens / seq_len, group = heads / kv_heads;
  const std::int64_t k_off = heads * d, v_off = (heads + kv_heads) * d;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const Matrix qkv = bias ? add_bias(matmul(x, false, w_qkv, true), b_qkv) : matmul(x, false, w_qkv, true);
  // probs[b][h] is [seq, seq].
  std::vector<Matrix> probs(static_cast<std::size_t>(batch * heads));
  Matrix ctx(tokens, heads * d);
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t h = 0; h < heads; ++h) {
      const std::int64_t kv = h / group;
      Matrix& p = probs[b * heads + h];
      p = Matrix(seq_len, seq_len);
      for (std::int64_t i = 0; i < seq_len; ++i) {
        double m = -std::numeric_limits<double>::infinity();
        const std::int64_t visible = causal ? i + 1 : seq_len;
        for (std::int64_t j = 0; j < visible; ++j) {
          double s = 0;
          for (std::int64_t e = 0; e < d; ++e) s += qkv(b * seq_len + i, h * d + e) * qkv(b * seq_len + j, k_off + kv * d + e);
          p(i, j) = s * scale;
          m = std::max(m, p(i, j));
        }
        double sum = 0;
        for (std::int64_t j = 0; j < visible; ++j) sum += p(i, j) = std::exp(p(i, j) - m);
        for (std::int64_t j = 0; j < visible; ++j) p(i, j) /= sum;
        for (std::int64_t e = 0; e < d; ++e) {
          double o = 0;
          for (std::int64_t j = 0; j < visible; ++j) o += p(i, j) * qkv(b * seq_len + j, v_off + kv * d + e);
          ctx(b * seq_len + i, h * d + e) = o;
        }
      }
    }
  const Linear out = linear(ctx, w_o, bias ? &b_o : nullptr, dy);
  Matrix dqkv(tokens, qkv.cols);
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t h = 0; h < heads; ++h) {
      const std::int64_t kv = h / group, r0 = b * seq_len;
      const Matrix& p = probs[b * heads + h];
      for (std::int64_t i = 0; i < seq_len; ++i) {
        std::vector<double> dp(seq_len, 0.0);
        double dot = 0;
        for (std::int64_t j = 0; j < seq_len; ++j) {
          for (std::int64_t e = 0; e < d; ++e) dp[j] += out.dx(r0 + i, h * d + e) * qkv(r0 + j, v_off + kv * d + e);
          dot += p(i, j) * dp[j];
        }
        for (std::int64_t j = 0; j < seq_len; ++j) {
          const double ds = p(i, j) * (dp[j] - dot) * scale;
          for (std::int64_t e = 0; e < d; ++e) {
            dqkv(r0 + i, h * d + e) += ds * qkv(r0 + j, k_off + kv * d + e);
            dqkv(r0 + j, k_off + kv * d + e) += ds * qkv(r0 + i, h * d + e);
            dqkv(r0 + j, v_off + kv * d + e) += p(i, j) * out.dx(r0 + i, h * d + e);
          }
        }
      }
    }
  const Linear in = linear(x, w_qkv, nullptr, dqkv);
  return {out.y, in.dx, in.dw, in.db, out.dw, out.db};
}

// ---- Rotary embeddings, variable-length sequences, key mask

/// RoPE written from its formula: in every head of x [tokens, heads d], the pair (x[i], x[i + d/2])
/// turns by pos * theta^(-2i/d) (by minus that when `inverse`), Hugging Face's rotate-half form.
inline Matrix rope(Matrix x, const std::vector<std::int64_t>& positions, std::int64_t d, double theta,
                   bool inverse = false) {
  for (std::int64_t t = 0; t < x.rows; ++t)
    for (std::int64_t h = 0; h < x.cols / d; ++h)
      for (std::int64_t i = 0; i < d / 2; ++i) {
        const double angle = static_cast<double>(positions[t]) * std::pow(theta, -2.0 * i / static_cast<double>(d));
        const double c = std::cos(angle), sn = inverse ? -std::sin(angle) : std::sin(angle);
        const double a = x(t, h * d + i), b = x(t, h * d + d / 2 + i);
        x(t, h * d + i) = a * c - b * sn;
        x(t, h * d + d / 2 + i) = b * c + a * sn;
      }
  return x;
}

/// What the varlen reference takes beyond the weights: sequence lengths (rows in order), the key
/// mask (empty: none), RoPE positions and theta (0: none), and whether dense has a bias.
struct AttentionInputs {
  std::vector<std::int64_t> lengths;
  std::vector<std::uint8_t> key_mask;
  std::vector<std::int64_t> positions;  // empty: 0, 1, ... within each sequence
  double rope_theta = 0;
  bool dense_bias = true;
};

/// Attention over packed sequences of `in.lengths`, each on its own: every query attends to the
/// keys of its sequence that are unmasked (and not after it, when causal); one that sees none
/// outputs zeros. RoPE turns q and k after the bias; its backward turns dq and dk back.
inline Attention attention(const Matrix& x, const Matrix& w_qkv, const Matrix& b_qkv, const Matrix& w_o,
                           const Matrix& b_o, const Matrix& dy, std::int64_t heads, std::int64_t kv_heads,
                           std::int64_t d, bool causal, bool bias, const AttentionInputs& in) {
  const std::int64_t tokens = x.rows, group = heads / kv_heads;
  const std::int64_t k_off = heads * d, v_off = (heads + kv_heads) * d;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<std::int64_t> positions = in.positions;
  if (positions.empty())
    for (const std::int64_t n : in.lengths)
      for (std::int64_t i = 0; i < n; ++i) positions.push_back(i);
  Matrix qkv = bias ? add_bias(matmul(x, false, w_qkv, true), b_qkv) : matmul(x, false, w_qkv, true);
  if (in.rope_theta > 0) {
    const Matrix q = rope(qkv.cols_range(0, k_off), positions, d, in.rope_theta);
    const Matrix k = rope(qkv.cols_range(k_off, kv_heads * d), positions, d, in.rope_theta);
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (std::int64_t c = 0; c < k_off; ++c) qkv(t, c) = q(t, c);
      for (std::int64_t c = 0; c < kv_heads * d; ++c) qkv(t, k_off + c) = k(t, c);
    }
  }
  auto seen = [&](std::int64_t r0, std::int64_t i, std::int64_t j) {
    return (!causal || j <= i) && (in.key_mask.empty() || in.key_mask[r0 + j] != 0);
  };
  Matrix ctx(tokens, heads * d);
  std::vector<Matrix> probs;
  std::int64_t r0 = 0;
  for (const std::int64_t n : in.lengths) {
    for (std::int64_t h = 0; h < heads; ++h) {
      const std::int64_t kv = h / group;
      Matrix p(n, n);
      for (std::int64_t i = 0; i < n; ++i) {
        double m = -std::numeric_limits<double>::infinity();
        for (std::int64_t j = 0; j < n; ++j) {
          if (!seen(r0, i, j)) continue;
          double sc = 0;
          for (std::int64_t e = 0; e < d; ++e) sc += qkv(r0 + i, h * d + e) * qkv(r0 + j, k_off + kv * d + e);
          p(i, j) = sc * scale;
          m = std::max(m, p(i, j));
        }
        double sum = 0;
        for (std::int64_t j = 0; j < n; ++j) sum += p(i, j) = seen(r0, i, j) ? std::exp(p(i, j) - m) : 0.0;
        for (std::int64_t j = 0; j < n; ++j) p(i, j) = sum > 0 ? p(i, j) / sum : 0.0;
        for (std::int64_t e = 0; e < d; ++e) {
          double o = 0;
          for (std::int64_t j = 0; j < n; ++j) o += p(i, j) * qkv(r0 + j, v_off + kv * d + e);
          ctx(r0 + i, h * d + e) = o;
        }
      }
      probs.push_back(p);
    }
    r0 += n;
  }
  const Linear out = linear(ctx, w_o, in.dense_bias ? &b_o : nullptr, dy);
  Matrix dqkv(tokens, qkv.cols);
  r0 = 0;
  std::size_t at = 0;
  for (const std::int64_t n : in.lengths) {
    for (std::int64_t h = 0; h < heads; ++h) {
      const std::int64_t kv = h / group;
      const Matrix& p = probs[at++];
      for (std::int64_t i = 0; i < n; ++i) {
        std::vector<double> dp(static_cast<std::size_t>(n), 0.0);
        double dot = 0;
        for (std::int64_t j = 0; j < n; ++j) {
          for (std::int64_t e = 0; e < d; ++e) dp[j] += out.dx(r0 + i, h * d + e) * qkv(r0 + j, v_off + kv * d + e);
          dot += p(i, j) * dp[j];
        }
        for (std::int64_t j = 0; j < n; ++j) {
          const double ds = p(i, j) * (dp[j] - dot) * scale;
          for (std::int64_t e = 0; e < d; ++e) {
            dqkv(r0 + i, h * d + e) += ds * qkv(r0 + j, k_off + kv * d + e);
            dqkv(r0 + j, k_off + kv * d + e) += ds * qkv(r0 + i, h * d + e);
            dqkv(r0 + j, v_off + kv * d + e) += p(i, j) * out.dx(r0 + i, h * d + e);
          }
        }
      }
    }
    r0 += n;
  }
  if (in.rope_theta > 0) {
    const Matrix dq = rope(dqkv.cols_range(0, k_off), positions, d, in.rope_theta, true);
    const Matrix dk = rope(dqkv.cols_range(k_off, kv_heads * d), positions, d, in.rope_theta, true);
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (std::int64_t c = 0; c < k_off; ++c) dqkv(t, c) = dq(t, c);
      for (std::int64_t c = 0; c < kv_heads * d; ++c) dqkv(t, k_off + c) = dk(t, c);
    }
  }
  const Linear inp = linear(x, w_qkv, nullptr, dqkv);
  return {out.y, inp.dx, inp.dw, inp.db, out.dw, out.db};
}

// ---- Cross-entropy

struct CrossEntropy {
  Matrix loss, dlogits;
};

/// torch.nn.CrossEntropyLoss(reduction = none, ignore_index, label_smoothing) and its gradient for a
/// per-token upstream gradient dloss [tokens, 1].
inline CrossEntropy cross_entropy(const Matrix& logits, const std::vector<std::int64_t>& targets,
                                  std::int64_t ignore_index, double smoothing, const Matrix& dloss) {
  const std::int64_t tokens = logits.rows, vocab = logits.cols;
  CrossEntropy out{Matrix(tokens, 1), Matrix(tokens, vocab)};
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (targets[t] == ignore_index) continue;
    double m = -std::numeric_limits<double>::infinity(), sum = 0, mean_shift = 0;
    for (std::int64_t j = 0; j < vocab; ++j) m = std::max(m, logits(t, j));
    for (std::int64_t j = 0; j < vocab; ++j) {
      sum += std::exp(logits(t, j) - m);
      mean_shift += (logits(t, j) - m) / static_cast<double>(vocab);
    }
    const double lse_shift = std::log(sum);  // lse - m
    const double nll = lse_shift - (logits(t, targets[t]) - m);
    out.loss(t, 0) = (1 - smoothing) * nll + smoothing * (lse_shift - mean_shift);
    for (std::int64_t j = 0; j < vocab; ++j) {
      const double q = (j == targets[t] ? 1 - smoothing : 0.0) + smoothing / static_cast<double>(vocab);
      out.dlogits(t, j) = dloss(t, 0) * (std::exp(logits(t, j) - m) / sum - q);
    }
  }
  return out;
}

/// normal(0, scale^2) entries rounded through T: weights of the size real layers use (1 / sqrt(fan_in)),
/// so that attention scores stay O(1) as in a trained model rather than saturating the softmax.
template <class T>
Matrix random_scaled(std::int64_t rows, std::int64_t cols, std::uint64_t seed, double scale) {
  Matrix m = random_matrix<double>(rows, cols, seed);
  for (auto& v : m.data) v = static_cast<double>(static_cast<T>(v * scale));
  return m;
}

/// Integers uniform in [0, n), the same on every rank for a given seed.
inline std::vector<std::int64_t> random_ids(std::int64_t count, std::int64_t n, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<std::int64_t> dist(0, n - 1);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(count));
  for (auto& id : ids) id = dist(gen);
  return ids;
}

}  // namespace tp::ref

namespace tp::test {

/// test::expect_grads (common/devices.hpp) for host gradients.
template <class T>
void expect_grads(const std::vector<Parameter<T>>& ps, const std::map<std::string, const ref::Matrix*>& full) {
  expect_grads<T>(Cpu(), ps, full);
}

/// Whether ParallelAttention splits `heads` query heads and `kv_heads` key/value heads over `world`
/// ranks: the query heads evenly, the kv heads evenly or, when fewer than the ranks, replicated.
inline bool heads_split(std::int64_t heads, std::int64_t kv_heads, int world) {
  return heads % world == 0 && (kv_heads % world == 0 || world % kv_heads == 0);
}

/// ids as a host int64 tensor of the given shape (rows * cols == ids.size()).
inline Tensor<std::int64_t, Cpu> to_ids(const std::vector<std::int64_t>& ids, std::int64_t rows, std::int64_t cols) {
  Tensor<std::int64_t, Cpu> t(rows, cols);
  std::copy(ids.begin(), ids.end(), t.data());
  return t;
}

}  // namespace tp::test
