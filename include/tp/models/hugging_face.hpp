#pragma once
/// Hugging Face model directories (config.json + model.safetensors, or a sharded
/// model.safetensors.index.json) in and out of tp::models::Transformer, at any TP degree.
///
///   auto model = tp::models::open_hugging_face<float>(ctx, "path/to/Llama-3.2-1B");
///   tp::models::save_hugging_face(*ctx.comm, *model, "out");  // transformers' from_pretrained reads it
///
/// The mapping (hugging_face_layout) lists each Hugging Face tensor as a block of one of tp's full
/// tensors: q_proj, k_proj and v_proj (BERT's query, key, value) are row blocks of the fused
/// attention.qkv weight; gate_proj and up_proj row blocks of the stacked mlp.fc1 weight; GPT-2's
/// Conv1D weights ([in, out]) the transposes of tp's [out, in]. Loading goes the other way, per
/// record of the model's parameters(): each rank reads only the parts of each tensor its shards
/// hold (SafetensorsFile::read_block), so no rank ever holds a full matrix it does not own.
///
/// Errors name the directory, the file and the tensor: tensors of another architecture than the
/// config's, a tensor whose shape does not match the config, a missing tensor; heads that cannot
/// be split over the group are refused by the attention layers.

#ifndef TP_HAS_IO
#error "tp/models/hugging_face.hpp needs the tp::io CMake component: target_link_libraries(... tp::io)"
#endif

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "tp/comm/communicator.hpp"
#include "tp/io/checkpoint.hpp"
#include "tp/io/file.hpp"
#include "tp/io/safetensors.hpp"
#include "tp/models/config.hpp"
#include "tp/models/transformer.hpp"
#include "tp/optim/adamw.hpp"

namespace tp::models {

/// One Hugging Face tensor as a block of one of tp's full tensors. In tp's tensor `tp`, the block
/// is rows [offset, offset + shape[0]) x all columns of a matrix, or columns [offset, offset +
/// shape[0]) of a [1, n] vector (biases, norm weights). `transposed`: the file stores the block's
/// transpose (GPT-2's Conv1D), shape [columns, rows].
struct HuggingFaceTensor {
  std::string name;                 ///< in the file, e.g. "model.layers.0.self_attn.k_proj.weight"
  std::vector<std::int64_t> shape;  ///< as the file stores it
  std::string tp;                   ///< tp's parameter name, e.g. "layers.0.attention.qkv.weight"
  std::int64_t offset = 0;
  bool transposed = false;
};

/// The tensors of a Hugging Face checkpoint of `c`, with `prefix` before the model's own names
/// ("transformer." for GPT2LMHeadModel, "model." for LlamaForCausalLM, "bert." or "" for BERT).
inline std::vector<HuggingFaceTensor> hugging_face_layout(const TransformerConfig& c, const std::string& prefix) {
  std::vector<HuggingFaceTensor> t;
  const std::int64_t h = c.hidden, q = c.heads * c.head_dim, kv = c.kv_heads * c.head_dim, f = c.ffn;
  auto mat = [&](std::string name, std::int64_t rows, std::int64_t cols, std::string tp, std::int64_t offset = 0) {
    t.push_back({prefix + std::move(name), {rows, cols}, std::move(tp), offset, false});
  };
  auto conv = [&](std::string name, std::int64_t in, std::int64_t out, std::string tp) {
    t.push_back({prefix + std::move(name), {in, out}, std::move(tp), 0, true});
  };
  auto vec = [&](std::string name, std::int64_t n, std::string tp, std::int64_t offset = 0) {
    t.push_back({prefix + std::move(name), {n}, std::move(tp), offset, false});
  };
  auto norm = [&](const std::string& name, const std::string& tp, bool bias) {
    vec(name + ".weight", h, tp + ".weight");
    if (bias) vec(name + ".bias", h, tp + ".bias");
  };
  switch (c.arch) {
    case Architecture::gpt2:
      mat("wte.weight", c.vocab, h, "embed.weight");
      mat("wpe.weight", c.max_positions, h, "position.weight");
      for (std::int64_t i = 0; i < c.layers; ++i) {
        const std::string hf = fmt::format("h.{}.", i), l = fmt::format("layers.{}.", i);
        norm(hf + "ln_1", l + "norm1", true);
        conv(hf + "attn.c_attn.weight", h, 3 * h, l + "attention.qkv.weight");
        vec(hf + "attn.c_attn.bias", 3 * h, l + "attention.qkv.bias");
        conv(hf + "attn.c_proj.weight", h, h, l + "attention.dense.weight");
        vec(hf + "attn.c_proj.bias", h, l + "attention.dense.bias");
        norm(hf + "ln_2", l + "norm2", true);
        conv(hf + "mlp.c_fc.weight", h, f, l + "mlp.fc1.weight");
        vec(hf + "mlp.c_fc.bias", f, l + "mlp.fc1.bias");
        conv(hf + "mlp.c_proj.weight", f, h, l + "mlp.fc2.weight");
        vec(hf + "mlp.c_proj.bias", h, l + "mlp.fc2.bias");
      }
      norm("ln_f", "final_norm", true);
      break;
    case Architecture::llama:
      mat("embed_tokens.weight", c.vocab, h, "embed.weight");
      for (std::int64_t i = 0; i < c.layers; ++i) {
        const std::string hf = fmt::format("layers.{}.", i), l = fmt::format("layers.{}.", i);
        norm(hf + "input_layernorm", l + "norm1", false);
        const char* parts[3] = {"q_proj", "k_proj", "v_proj"};
        const std::int64_t rows[3] = {q, kv, kv}, offsets[3] = {0, q, q + kv};
        for (int p = 0; p < 3; ++p) {
          mat(hf + "self_attn." + parts[p] + ".weight", rows[p], h, l + "attention.qkv.weight", offsets[p]);
          if (c.qkv_bias) vec(hf + "self_attn." + parts[p] + ".bias", rows[p], l + "attention.qkv.bias", offsets[p]);
        }
        mat(hf + "self_attn.o_proj.weight", h, q, l + "attention.dense.weight");
        if (c.dense_bias) vec(hf + "self_attn.o_proj.bias", h, l + "attention.dense.bias");
        norm(hf + "post_attention_layernorm", l + "norm2", false);
        mat(hf + "mlp.gate_proj.weight", f, h, l + "mlp.fc1.weight", 0);
        mat(hf + "mlp.up_proj.weight", f, h, l + "mlp.fc1.weight", f);
        mat(hf + "mlp.down_proj.weight", h, f, l + "mlp.fc2.weight");
        if (c.mlp_bias) {
          vec(hf + "mlp.gate_proj.bias", f, l + "mlp.fc1.bias", 0);
          vec(hf + "mlp.up_proj.bias", f, l + "mlp.fc1.bias", f);
          vec(hf + "mlp.down_proj.bias", h, l + "mlp.fc2.bias");
        }
      }
      norm("norm", "final_norm", false);
      // The untied head sits beside "model.", not in it.
      if (!c.tie_embeddings) t.push_back({"lm_head.weight", {c.vocab, h}, "lm_head.weight", 0, false});
      break;
    case Architecture::bert:
      mat("embeddings.word_embeddings.weight", c.vocab, h, "embed.weight");
      mat("embeddings.position_embeddings.weight", c.max_positions, h, "position.weight");
      mat("embeddings.token_type_embeddings.weight", c.type_vocab, h, "token_type.weight");
      norm("embeddings.LayerNorm", "embed_norm", true);
      for (std::int64_t i = 0; i < c.layers; ++i) {
        const std::string hf = fmt::format("encoder.layer.{}.", i), l = fmt::format("layers.{}.", i);
        const char* parts[3] = {"query", "key", "value"};
        for (int p = 0; p < 3; ++p) {
          mat(hf + "attention.self." + parts[p] + ".weight", h, h, l + "attention.qkv.weight", p * h);
          vec(hf + "attention.self." + parts[p] + ".bias", h, l + "attention.qkv.bias", p * h);
        }
        mat(hf + "attention.output.dense.weight", h, h, l + "attention.dense.weight");
        vec(hf + "attention.output.dense.bias", h, l + "attention.dense.bias");
        norm(hf + "attention.output.LayerNorm", l + "norm1", true);
        mat(hf + "intermediate.dense.weight", f, h, l + "mlp.fc1.weight");
        vec(hf + "intermediate.dense.bias", f, l + "mlp.fc1.bias");
        mat(hf + "output.dense.weight", h, f, l + "mlp.fc2.weight");
        vec(hf + "output.dense.bias", h, l + "mlp.fc2.bias");
        norm(hf + "output.LayerNorm", l + "norm2", true);
      }
      break;
  }
  return t;
}

namespace detail {

inline std::filesystem::path hugging_face_weights(const std::filesystem::path& dir) {
  const auto single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
  if (std::filesystem::exists(single)) return single;
  if (std::filesystem::exists(index)) return index;
  TP_THROW(IoError, "{}: neither model.safetensors nor model.safetensors.index.json is in the directory",
           dir.string());
}

/// The architecture whose tensors the checkpoint holds, and the prefix of their names; "" if none
/// of tp's is recognised.
inline std::pair<std::string, std::string> detect_checkpoint(const SafetensorsCheckpoint& ckpt) {
  struct Probe {
    const char *name, *arch, *prefix;
  };
  for (const Probe& p : {Probe{"transformer.wte.weight", "gpt2", "transformer."}, Probe{"wte.weight", "gpt2", ""},
                         Probe{"model.embed_tokens.weight", "llama", "model."},
                         Probe{"bert.embeddings.word_embeddings.weight", "bert", "bert."},
                         Probe{"embeddings.word_embeddings.weight", "bert", ""}})
    if (ckpt.contains(p.name)) return {p.arch, p.prefix};
  return {"", ""};
}

/// Where a Hugging Face tensor lands in tp's full tensor: [row0, row1) x [col0, col1).
struct Region {
  std::int64_t r0, r1, c0, c1;
};
inline Region region_of(const HuggingFaceTensor& t, std::int64_t tp_cols) {
  if (t.shape.size() == 1) return {0, 1, t.offset, t.offset + t.shape[0]};
  const std::int64_t rows = t.transposed ? t.shape[1] : t.shape[0];
  return {t.offset, t.offset + rows, 0, tp_cols};
}

/// BERT: every floating-point tensor of the checkpoint that the layout does not map (the pooler,
/// a BertForMaskedLM's or BertForPreTraining's heads) is read whole onto every rank and kept, so
/// that save_hugging_face writes the checkpoint whole. Integer buffers (an old checkpoint's
/// embeddings.position_ids) are left out: transformers rebuilds them. Decoders keep nothing.
template <class T, class Device>
void keep_other_tensors(Transformer<T, Device>& model, const SafetensorsCheckpoint& ckpt,
                        const std::vector<HuggingFaceTensor>& layout, const std::string& prefix) {
  model.kept_tensors().clear();
  model.checkpoint_prefix() = prefix;
  if (model.config().arch != Architecture::bert) return;
  std::set<std::string, std::less<>> mapped;
  for (const auto& t : layout) mapped.insert(t.name);
  std::vector<T> host;
  for (const std::string& name : ckpt.names()) {
    // The masked-LM decoder's weight is the word embedding (transformers ties them and
    // save_pretrained leaves it out); a copy kept here would go stale as tp trains the embedding.
    if (mapped.count(name) || name == "cls.predictions.decoder.weight") continue;
    const SafetensorsFile& file = ckpt.file_of(name);
    const SafetensorsTensor& t = file.tensor(name);
    if (t.dtype != "F64" && t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16") continue;
    host.assign(static_cast<std::size_t>(t.numel()), T(0));
    file.read_block(name, 0, 0, MatrixView<T>(host.data(), t.rows(), t.cols()));
    Tensor<T, Device> value(model.context().device, t.rows(), t.cols());
    model.context().device->from_host(ConstView<T>(host.data(), t.rows(), t.cols()), value.view());
    model.kept_tensors().push_back({name, t.shape, std::move(value)});
  }
}

}  // namespace detail

struct HuggingFaceLoadOptions {
  /// Load a checkpoint that holds tensors the config does not use (a config with fewer layers
  /// than the file, say); by default they are refused, naming the first. Buffers that are not
  /// parameters (GPT-2's attn.bias masks, rotary inv_freq, BERT's position_ids), the heads above
  /// tp's BERT encoder (pooler, cls) and a tied model's saved lm_head are never counted as unused.
  bool allow_unused_tensors = false;
};

namespace detail {

/// Tensors in Hugging Face checkpoints that are not parameters of tp's models, and ignored.
inline bool ignorable_tensor(std::string_view name, const TransformerConfig& c) {
  auto ends = [&](std::string_view s) { return name.ends_with(s); };
  if (ends(".attn.bias") && c.arch == Architecture::gpt2) return true;  // the causal mask buffer
  if (ends(".attn.masked_bias") || ends(".rotary_emb.inv_freq") || ends("embeddings.position_ids")) return true;
  if (c.arch == Architecture::bert && (name.starts_with("cls.") || name.find("pooler.") != std::string_view::npos))
    return true;  // tp's BERT is the encoder alone
  return c.tie_embeddings && name == "lm_head.weight";  // a tied head saved anyway: the embedding
}

/// The number of layers the checkpoint's tensors hold: one past the highest index N in a name
/// "<prefix><layers>N.", with <layers> "h." (GPT-2), "layers." (Llama) or "encoder.layer." (BERT).
inline std::int64_t checkpoint_layers(const std::vector<std::string>& names, const std::string& prefix,
                                      Architecture arch) {
  const std::string stem = prefix + (arch == Architecture::gpt2    ? "h."
                                     : arch == Architecture::llama ? "layers."
                                                                   : "encoder.layer.");
  std::int64_t layers = 0;
  for (const auto& n : names) {
    if (!n.starts_with(stem)) continue;
    std::int64_t i = 0;
    const char* first = n.data() + stem.size();
    const auto [end, ec] = std::from_chars(first, n.data() + n.size(), i);
    if (ec == std::errc() && end != first && end != n.data() + n.size() && *end == '.' && i >= 0 &&
        i < max_config_size)
      layers = std::max(layers, i + 1);
  }
  return layers;
}

/// Checks the checkpoint against the config before anything is allocated: the architecture, the
/// layer count, every tensor's presence and shape, and (unless allowed) no tensor left unused.
/// Returns the layout.
inline std::vector<HuggingFaceTensor> check_hugging_face_tensors(const TransformerConfig& c,
                                                                 const SafetensorsCheckpoint& ckpt,
                                                                 const HuggingFaceLoadOptions& options) {
  const std::string& weights = ckpt.path();
  const auto [found, prefix] = detect_checkpoint(ckpt);
  const std::string want = std::string(name(c.arch));
  if (found != want)
    TP_THROW(InvalidArgument, "{}: the config is a {} model ({}), but the tensors are {}", weights, c.model_type, want,
             found.empty() ? "of no architecture tp knows (no GPT-2, Llama or BERT embedding)"
                           : "a " + found + " checkpoint's");
  const std::vector<std::string> names = ckpt.names();
  // The layer count first: a config of 100000 layers must not build a layout of a million names.
  const std::int64_t stored_layers = checkpoint_layers(names, prefix, c.arch);
  if (stored_layers < c.layers || (stored_layers > c.layers && !options.allow_unused_tensors))
    TP_THROW(InvalidArgument,
             "{}: config.json gives {} layers (num_hidden_layers / n_layer), but the checkpoint holds {}{}", weights,
             c.layers, stored_layers,
             stored_layers > c.layers ? "; HuggingFaceLoadOptions::allow_unused_tensors loads the first ones" : "");
  auto layout = hugging_face_layout(c, prefix);
  for (const auto& t : layout) {
    const SafetensorsFile& file = ckpt.file_of(t.name);
    const auto& stored = file.tensor(t.name).shape;
    if (stored != t.shape)
      TP_THROW(InvalidArgument,
               "{}: tensor '{}' has shape [{}], but config.json ({} hidden {}, heads {}, kv_heads {}, head_dim {}, "
               "ffn {}, vocab {}) gives [{}]",
               file.path(), t.name, fmt::join(stored, ", "), c.model_type, c.hidden, c.heads, c.kv_heads, c.head_dim,
               c.ffn, c.vocab, fmt::join(t.shape, ", "));
  }
  if (!options.allow_unused_tensors) {
    std::set<std::string_view> used;
    for (const auto& t : layout) used.insert(t.name);
    for (const auto& n : names)
      if (!used.contains(n) && !ignorable_tensor(n, c))
        TP_THROW(InvalidArgument,
                 "{}: tensor '{}' is not used by config.json's {} model ({} layers); refusing to drop it silently "
                 "(HuggingFaceLoadOptions::allow_unused_tensors loads the rest)",
                 weights, n, c.model_type, c.layers);
  }
  return layout;
}

/// Reads each rank's blocks of the checked `layout` from `ckpt` into the model's parameters.
template <class T, class Device>
void load_hugging_face_tensors(Transformer<T, Device>& model, const SafetensorsCheckpoint& ckpt,
                               const std::filesystem::path& dir, const std::vector<HuggingFaceTensor>& layout) {
  const Device& dev = *model.context().device;
  std::vector<T> host, block;
  for (const auto& p : model.parameters()) {
    host.assign(static_cast<std::size_t>(p.rows.size() * p.cols.size()), T(0));
    std::int64_t filled = 0;
    for (const auto& t : layout) {
      if (t.tp != p.name) continue;
      const detail::Region g = detail::region_of(t, p.full_cols);
      const std::int64_t r0 = std::max(g.r0, p.rows.begin), r1 = std::min(g.r1, p.rows.end);
      const std::int64_t c0 = std::max(g.c0, p.cols.begin), c1 = std::min(g.c1, p.cols.end);
      if (r0 >= r1 || c0 >= c1) continue;
      const SafetensorsFile& file = ckpt.file_of(t.name);
      const MatrixView<T> out(host.data() + (r0 - p.rows.begin) * p.cols.size() + (c0 - p.cols.begin), r1 - r0,
                              c1 - c0, p.cols.size());
      if (!t.transposed) {
        file.read_block(t.name, r0 - g.r0, c0 - g.c0, out);
      } else {  // the file holds [cols, rows]
        block.resize(static_cast<std::size_t>((r1 - r0) * (c1 - c0)));
        const MatrixView<T> tr(block.data(), c1 - c0, r1 - r0);
        file.read_block(t.name, c0, r0 - g.r0, tr);
        for (std::int64_t i = 0; i < r1 - r0; ++i)
          for (std::int64_t j = 0; j < c1 - c0; ++j) out(i, j) = tr(j, i);
      }
      filled += (r1 - r0) * (c1 - c0);
    }
    TP_CHECK(filled == p.rows.size() * p.cols.size(),
             "{}: the Hugging Face tensors fill {} of the {} elements of '{}' rows [{}, {}) x columns [{}, {}) on "
             "rank {}", dir.string(), filled, p.rows.size() * p.cols.size(), p.name, p.rows.begin, p.rows.end,
             p.cols.begin, p.cols.end, model.context().rank());
    dev.from_host(ConstView<T>(host.data(), p.rows.size(), p.cols.size()), p.value);
  }
  detail::keep_other_tensors(model, ckpt, layout, detect_checkpoint(ckpt).second);
}

}  // namespace detail

/// Loads the weights of a Hugging Face directory into `model`, whose config must be the
/// directory's (open_hugging_face reads both). Each rank reads only its blocks.
template <class T, class Device>
void load_hugging_face(Transformer<T, Device>& model, const std::filesystem::path& dir,
                       const HuggingFaceLoadOptions& options = {}) {
  const SafetensorsCheckpoint ckpt(detail::hugging_face_weights(dir));
  detail::load_hugging_face_tensors(model, ckpt, dir, detail::check_hugging_face_tensors(model.config(), ckpt, options));
}


/// Reads config.json and the weights of a Hugging Face directory into a new model on `ctx`. The
/// tensors are checked against the config (architecture, layer count, shapes, nothing unused)
/// before the model is built, so a config whose sizes the file does not hold allocates nothing.
template <class T, class Device>
std::unique_ptr<Transformer<T, Device>> open_hugging_face(const Context<Device>& ctx, const std::filesystem::path& dir,
                                                          const HuggingFaceLoadOptions& options = {}) {
  const TransformerConfig config = read_hugging_face_config(dir / "config.json");
  const SafetensorsCheckpoint ckpt(detail::hugging_face_weights(dir));
  const auto layout = detail::check_hugging_face_tensors(config, ckpt, options);
  auto model = std::make_unique<Transformer<T, Device>>(ctx, config);
  detail::load_hugging_face_tensors(*model, ckpt, dir, layout);
  return model;
}

namespace detail {

/// The model's parameters (or, with `gradients`, their gradients) as records of Hugging Face's
/// tensors, for save_safetensors; `buffers` holds the transposed copies GPT-2's Conv1D needs.
/// Records named `strip` + tp's name (AdamW's moments: "adamw.exp_avg.") come out as `add` + Hugging
/// Face's name.
template <class T, class Device>
std::vector<Parameter<T>> hugging_face_records(const Context<Device>& ctx, const std::vector<Parameter<T>>& params,
                                               const std::vector<HuggingFaceTensor>& layout, bool gradients,
                                               std::vector<Tensor<T, Device>>& buffers, std::string_view strip = {},
                                               std::string_view add = {}) {
  std::vector<Parameter<T>> out;
  std::vector<T> a, b;
  for (const auto& p : params) {
    if (!std::string_view(p.name).starts_with(strip)) continue;
    const std::string_view tp_name = std::string_view(p.name).substr(strip.size());
    const MatrixView<T> src = gradients ? p.grad : p.value;
    for (const auto& t : layout) {
      if (t.tp != tp_name) continue;
      const Region g = region_of(t, p.full_cols);
      const std::int64_t r0 = std::max(g.r0, p.rows.begin), r1 = std::min(g.r1, p.rows.end);
      const std::int64_t c0 = std::max(g.c0, p.cols.begin), c1 = std::min(g.c1, p.cols.end);
      if (r0 >= r1 || c0 >= c1) continue;
      const MatrixView<T> part = src.block(r0 - p.rows.begin, c0 - p.cols.begin, r1 - r0, c1 - c0);
      Parameter<T> q{std::string(add) + t.name, part, part, 0, 0, {}, {}, p.copy, p.weight_decay};
      if (t.shape.size() == 1) {
        q.full_rows = 1;
        q.full_cols = t.shape[0];
        q.rows = {0, 1};
        q.cols = {c0 - g.c0, c1 - g.c0};
      } else if (!t.transposed) {
        q.full_rows = t.shape[0];
        q.full_cols = t.shape[1];
        q.rows = {r0 - g.r0, r1 - g.r0};
        q.cols = {c0, c1};
      } else {
        a.resize(static_cast<std::size_t>(part.size()));
        b.resize(a.size());
        const MatrixView<T> ha(a.data(), part.rows, part.cols), hb(b.data(), part.cols, part.rows);
        ctx.device->to_host(ConstView<T>(part), ha);
        for (std::int64_t i = 0; i < part.rows; ++i)
          for (std::int64_t j = 0; j < part.cols; ++j) hb(j, i) = ha(i, j);
        buffers.emplace_back(ctx.device, part.cols, part.rows);
        ctx.device->from_host(ConstView<T>(hb), buffers.back().view());
        q.value = q.grad = buffers.back().view();
        q.full_rows = t.shape[0];
        q.full_cols = t.shape[1];
        q.rows = {c0, c1};
        q.cols = {r0 - g.r0, r1 - g.r0};
      }
      out.push_back(q);
    }
  }
  return out;
}

template <class T, class Device>
std::vector<Parameter<T>> hugging_face_records(Transformer<T, Device>& model, const std::vector<HuggingFaceTensor>& layout,
                                               bool gradients, std::vector<Tensor<T, Device>>& buffers) {
  return hugging_face_records(model.context(), model.parameters(), layout, gradients, buffers);
}

/// The prefix of the model's own tensor names in what tp saves: the checkpoint's it was loaded
/// from ("bert." beside a BERT's heads), else the architecture's (GPT2LMHeadModel's
/// "transformer.", LlamaForCausalLM's "model.", BertModel's none).
template <class T, class Device>
std::string save_prefix(Transformer<T, Device>& model) {
  const TransformerConfig& c = model.config();
  if (c.arch == Architecture::bert && !model.checkpoint_prefix().empty()) return model.checkpoint_prefix();
  return c.arch == Architecture::gpt2 ? "transformer." : c.arch == Architecture::llama ? "model." : "";
}

/// A record of a whole tensor every rank holds (rank 0 writes it).
template <class T>
Parameter<T> whole_record(const std::string& name, MatrixView<T> value) {
  return Parameter<T>{name, value, value, value.rows, value.cols, {0, value.rows}, {0, value.cols}, 0, false};
}

/// Writes the model's weights (or gradients) as Hugging Face's model.safetensors at `path`.
template <class T, class Device>
void save_hugging_face_tensors(Communicator& comm, Transformer<T, Device>& model, const std::filesystem::path& path,
                               bool gradients) {
  const auto layout = hugging_face_layout(model.config(), save_prefix(model));
  std::vector<Tensor<T, Device>> buffers;
  buffers.reserve(layout.size() * 4);  // views into them must stay valid
  auto records = hugging_face_records(model, layout, gradients, buffers);
  std::map<std::string, std::vector<std::int64_t>, std::less<>> shapes;
  for (const auto& t : layout)
    if (t.shape.size() == 1) shapes[t.name] = t.shape;
  // The tensors tp kept but does not train have no gradient: they are weights only.
  if (!gradients)
    for (auto& k : model.kept_tensors()) {
      records.push_back(whole_record(k.name, k.value.view()));
      if (k.shape.size() != 2) shapes[k.name] = k.shape;
    }
  // transformers' from_pretrained reads only files whose metadata says "pt".
  save_safetensors<T>(comm, *model.context().device, records, path, {{"format", "pt"}}, shapes);
}

}  // namespace detail

/// Writes `dir`/config.json and `dir`/model.safetensors in Hugging Face's names and layout (GPT-2's
/// Conv1D weights transposed back, q/k/v and gate/up split, biases and norms 1-D, a tied head left
/// out as save_pretrained does), so that transformers' from_pretrained loads what tp trained.
/// Collective over `comm`, the model's group; the ranks must share the file system. On a device
/// `comm` may be the model's (NCCL): its collectives over host buffers are staged through device
/// buffers (detail::HostComm), and the weights are copied to the host a block at a time.
///
/// The directory is written as one unit, as step checkpoints are (tp/io/checkpoint.hpp): into a
/// fresh temporary directory beside it (created exclusively, so nothing planted is followed),
/// fsynced, then renamed to `dir`, last. A `dir` that exists already is replaced; the regular
/// files in it that tp does not write (a tokenizer.json, say) are carried over into the new
/// directory (hard links, else copies), and anything else in it (a subdirectory, a symbolic link)
/// is refused before anything is written.
template <class T, class Device>
void save_hugging_face(Communicator& comm, Transformer<T, Device>& model, const std::filesystem::path& dir) {
  const tp::detail::HostComm<Device> group(comm, *model.context().device);  // staged on a device
  namespace fs = std::filesystem;
  const fs::path target = dir.filename().empty() ? dir.parent_path() : dir;  // "out/" names "out"
  std::int64_t created[2] = {0, 0};  // {failed, suffix}
  std::string error;
  if (group->rank() == 0) {
    try {
      const auto status = fs::symlink_status(target);
      if (fs::exists(status)) {
        TP_CHECK(fs::is_directory(status), "{}: exists and is not a directory", target.string());
        for (const auto& entry : fs::directory_iterator(target)) {
          const auto name = entry.path().filename().string();
          if (name == "config.json" || name == "model.safetensors") continue;
          if (!entry.is_regular_file() || entry.is_symlink())
            TP_THROW(IoError, "{}: holds '{}', which is not a regular file; save_hugging_face replaces the directory "
                     "as a unit and carries over only regular files", target.string(), name);
        }
      }
      if (target.has_parent_path()) fs::create_directories(target.parent_path());
      created[1] = static_cast<std::int64_t>(tp::detail::create_temp_directory(target));
      const fs::path tmp = tp::detail::temp_name(target, static_cast<std::uint64_t>(created[1]));
      constexpr DType dtype = dtype_of<T>;
      write_hugging_face_config(model.config(), tmp / "config.json",
                                dtype == DType::f64   ? "float64"
                                : dtype == DType::f16 ? "float16"
                                : dtype == DType::bf16 ? "bfloat16"
                                                       : "float32");
    } catch (const std::exception& e) {
      created[0] = 1;
      error = e.what();
    }
  }
  group->broadcast(std::span<std::int64_t>(created, 2), 0);
  const fs::path tmp = tp::detail::temp_name(target, static_cast<std::uint64_t>(created[1]));
  auto remove_tmp = [&] {
    std::error_code ignored;
    if (group->rank() == 0 && created[1] != 0) fs::remove_all(tmp, ignored);
  };
  if (created[0]) {
    remove_tmp();
    TP_THROW(IoError, "{}: {}", target.string(), group->rank() == 0 ? error : "rank 0 could not start the directory");
  }
  try {
    detail::save_hugging_face_tensors(*group, model, tmp / "model.safetensors", false);
  } catch (...) {
    remove_tmp();
    throw;
  }
  std::int32_t failed = 0;
  if (group->rank() == 0) {
    try {
      if (fs::exists(fs::symlink_status(target)))
        for (const auto& entry : fs::directory_iterator(target)) {
          const fs::path to = tmp / entry.path().filename();
          if (fs::exists(fs::symlink_status(to))) continue;  // what tp just wrote
          std::error_code ec;
          fs::create_hard_link(entry.path(), to, ec);
          if (ec) fs::copy_file(entry.path(), to);
        }
      error = tp::detail::commit_checkpoint(tmp, target);
    } catch (const std::exception& e) {
      error = e.what();
    }
    failed = error.empty() ? 0 : 1;
    if (failed) remove_tmp();
  }
  group->broadcast(std::span<std::int32_t>(&failed, 1), 0);
  if (failed)
    TP_THROW(IoError, "{}: not saved: {}", target.string(), group->rank() == 0 ? error : "rank 0 could not commit it");
}

/// Tensors of a model under Hugging Face's names and in its layout (GPT-2's Conv1D transposed, q/k/v
/// and gate/up apart), as this rank holds them: records for save_safetensors (several may share a
/// name: disjoint blocks of one tensor; Parameter::rows/cols place each block in the full tensor).
/// `buffers` hold the transposed copies some records point into; both live as long as the struct.
/// The records point into the model (or optimizer) otherwise: read them before the next step.
template <class T, class Device>
struct HuggingFaceTensors {
  std::vector<Parameter<T>> records;
  std::vector<Tensor<T, Device>> buffers;
};

/// The model's gradients under Hugging Face's names (record.value is the gradient), e.g. to compare
/// with PyTorch's param.grad of the same checkpoint. Local: no communication.
template <class T, class Device>
HuggingFaceTensors<T, Device> hugging_face_gradients(Transformer<T, Device>& model) {
  HuggingFaceTensors<T, Device> out;
  const auto layout = hugging_face_layout(model.config(), detail::save_prefix(model));
  out.buffers.reserve(layout.size() * 4);  // views into them must stay valid
  out.records = detail::hugging_face_records(model, layout, /*gradients=*/true, out.buffers);
  return out;
}

/// AdamW's moments of the model's parameters under Hugging Face's names: "exp_avg.<name>" and
/// "exp_avg_sq.<name>" (PyTorch's AdamW state keys). `optimizer` must hold the model's parameters
/// (as built from model.parameters()). Local: no communication.
template <class T, class Device>
HuggingFaceTensors<T, Device> hugging_face_moments(Transformer<T, Device>& model, AdamW<T, Device>& optimizer) {
  HuggingFaceTensors<T, Device> out;
  const auto layout = hugging_face_layout(model.config(), detail::save_prefix(model));
  out.buffers.reserve(layout.size() * 8);
  const auto state = optimizer.state();
  for (const char* kind : {"exp_avg.", "exp_avg_sq."}) {
    auto r = detail::hugging_face_records(model.context(), state, layout, /*gradients=*/false, out.buffers,
                                          std::string("adamw.") + kind, kind);
    out.records.insert(out.records.end(), r.begin(), r.end());
  }
  TP_CHECK(!out.records.empty() || state.empty(),
           "hugging_face_moments: the optimizer's {} moments are of no parameter of the model", state.size());
  return out;
}

/// Writes `tensors` (hugging_face_gradients or hugging_face_moments) as one full safetensors file
/// at `path`, atomically, biases and norms 1-D as Hugging Face stores them. Collective over `comm`,
/// the model's group (on a device, its collectives staged as save_safetensors stages them).
template <class T, class Device>
void save_hugging_face_tensors(Communicator& comm, Transformer<T, Device>& model,
                               const HuggingFaceTensors<T, Device>& tensors, const std::filesystem::path& path) {
  std::map<std::string, std::vector<std::int64_t>, std::less<>> shapes;
  const auto layout = hugging_face_layout(model.config(), detail::save_prefix(model));
  for (const auto& r : tensors.records)
    for (const auto& t : layout)
      if (t.shape.size() == 1 && std::string_view(r.name).ends_with(t.name) &&
          (r.name.size() == t.name.size() || r.name[r.name.size() - t.name.size() - 1] == '.'))
        shapes[r.name] = t.shape;
  save_safetensors<T>(comm, *model.context().device, tensors.records, path, {{"format", "pt"}}, shapes);
}

}  // namespace tp::models
