#pragma once
/// The BPE model of tokenizer.json ("type": "BPE"): a piece starts as one symbol per character
/// (with continuing_subword_prefix / end_of_word_suffix where set; a character outside the
/// vocabulary as its <0xNN> byte pieces under byte_fallback, else the unk_token, fused runs of it
/// under fuse_unk, else nothing), then the adjacent pair with the lowest merge rank is merged,
/// the leftmost of equal ranks first, until no pair has a merge. With ignore_merges a piece that
/// is itself a token is that token. This is the `tokenizers` library's algorithm step for step
/// (its word.rs: a priority queue of (rank, position)), so that ids agree where two orders of
/// merging would disagree.
///
/// Merges come as "a b" strings or ["a", "b"] pairs; each merge's two sides and their
/// concatenation must be tokens, or the file is refused naming the merge.

#ifndef TP_HAS_TEXT
#error "tp/text/bpe.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tp/io/json_file.hpp"
#include "tp/text/model.hpp"
#include "tp/text/unicode.hpp"

namespace tp::text {

class Bpe final : public Model {
 public:
  explicit Bpe(const JsonNode& node) : vocab_(node.at("vocab")) {
    if (const auto dropout = node.find("dropout"); dropout && dropout->number() != 0.0)
      dropout->fail("BPE dropout {} samples merges at random (a training aid); tp encodes deterministically and "
                    "refuses it",
                    dropout->number());
    if (const auto unk = node.find("unk_token")) unk_token_ = unk->string();
    prefix_ = node.string_or("continuing_subword_prefix", "");
    suffix_ = node.string_or("end_of_word_suffix", "");
    fuse_unk_ = node.boolean_or("fuse_unk", false);
    byte_fallback_ = node.boolean_or("byte_fallback", false);
    ignore_merges_ = node.boolean_or("ignore_merges", false);
    for (int b = 0; b < 256; ++b)
      byte_ids_[static_cast<std::size_t>(b)] = vocab_.id(fmt::format("<0x{:02X}>", b)).value_or(-1);
    read_merges(node.at("merges"));
  }

  const Vocabulary& vocabulary() const override { return vocab_; }
  const std::optional<std::string>& unk_token() const override { return unk_token_; }

  void tokenize(std::string_view word, std::vector<std::int64_t>& ids) const override {
    if (ignore_merges_)
      if (const auto id = vocab_.id(word)) {
        ids.push_back(*id);
        return;
      }
    std::vector<Symbol> symbols = initial_symbols(word);
    merge(symbols);
    for (const Symbol& s : symbols)
      if (s.len > 0) ids.push_back(s.id);
  }

 private:
  struct Symbol {
    std::int64_t id;
    std::int64_t prev, next;  ///< neighbours' indices, -1 at the ends
    std::size_t len;          ///< bytes of the word it covers; 0 once merged into its left neighbour
  };
  struct Merge {
    std::int32_t rank;
    std::int64_t new_id;
  };
  static std::uint64_t key(std::int64_t a, std::int64_t b) {
    return (static_cast<std::uint64_t>(a) << 32) | static_cast<std::uint64_t>(b);
  }

  void read_merges(const JsonNode& merges) {
    const std::size_t n = merges.size();
    if (n > static_cast<std::size_t>(max_token_id)) merges.fail("{} merges are more than ids can name", n);
    merges_.reserve(n);
    std::int32_t rank = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const JsonNode m = merges[i];
      std::string a, b;
      if (m.json().is_string()) {
        const std::string& line = m.string();
        if (line.starts_with("#version")) continue;
        const std::size_t space = line.find(' ');
        if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
          m.fail("merge \"{}\" is not two tokens separated by one space", line);
        a = line.substr(0, space);
        b = line.substr(space + 1);
      } else {
        if (m.size() != 2) m.fail("expected a pair of tokens, found {} entries", m.size());
        a = m[0].string();
        b = m[1].string();
      }
      if (!b.starts_with(prefix_))
        m.fail("merge (\"{}\", \"{}\"): the second token lacks the continuing_subword_prefix \"{}\"", a, b, prefix_);
      const auto a_id = vocab_.id(a), b_id = vocab_.id(b);
      const std::string joined = a + b.substr(prefix_.size());
      const auto new_id = vocab_.id(joined);
      if (!a_id || !b_id || !new_id)
        m.fail("merge (\"{}\", \"{}\") names \"{}\", which is not in the vocabulary", a, b, !a_id ? a : !b_id ? b : joined);
      merges_.insert_or_assign(key(*a_id, *b_id), Merge{rank++, *new_id});  // a repeated pair: the last rank, as the reference
    }
  }

  std::vector<Symbol> initial_symbols(std::string_view word) const {
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    auto add = [&](std::int64_t id, std::size_t len) {
      const auto n = static_cast<std::int64_t>(symbols.size());
      if (!symbols.empty()) symbols.back().next = n;
      symbols.push_back({id, n - 1, -1, len});
    };
    std::optional<std::pair<std::int64_t, std::size_t>> unk;  // pending (id, bytes)
    std::string s;
    for (std::size_t i = 0; i < word.size();) {
      const std::size_t begin = i;
      unicode::next_code_point(word, i);
      s.assign(begin > 0 ? prefix_ : std::string());
      s.append(word.substr(begin, i - begin));
      if (i == word.size()) s += suffix_;
      const std::size_t len = i - begin;
      if (const auto id = vocab_.id(s)) {
        if (unk) add(unk->first, unk->second), unk.reset();
        add(*id, len);
        continue;
      }
      if (byte_fallback_ && std::all_of(s.begin(), s.end(), [&](char c) { return byte_ids_[static_cast<unsigned char>(c)] >= 0; })) {
        for (char c : s) add(byte_ids_[static_cast<unsigned char>(c)], 1);
        continue;
      }
      if (!unk_token_) continue;  // no unk token: the reference drops the character
      const std::int64_t unk_id = unk_id_or_throw();
      if (unk && fuse_unk_) {
        unk->second += len;
      } else {
        if (unk) add(unk->first, unk->second);
        unk = std::make_pair(unk_id, len);
      }
    }
    if (unk) add(unk->first, unk->second);
    return symbols;
  }

  std::int64_t unk_id_or_throw() const {
    const auto id = vocab_.id(*unk_token_);
    if (!id) TP_THROW(IoError, "BPE: the unk_token \"{}\" is not in the vocabulary", *unk_token_);
    return *id;
  }

  void merge(std::vector<Symbol>& symbols) const {
    struct Candidate {
      std::int32_t rank;
      std::int64_t pos, new_id;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    auto find = [&](std::int64_t a, std::int64_t b) -> const Merge* {
      const auto it = merges_.find(key(a, b));
      return it == merges_.end() ? nullptr : &it->second;
    };
    for (std::size_t i = 0; i + 1 < symbols.size(); ++i)
      if (const Merge* m = find(symbols[i].id, symbols[i + 1].id))
        queue.push({m->rank, static_cast<std::int64_t>(i), m->new_id});
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[static_cast<std::size_t>(top.pos)];
      if (left.len == 0 || left.next == -1) continue;
      const Symbol right = symbols[static_cast<std::size_t>(left.next)];
      const Merge* m = find(left.id, right.id);
      if (!m || m->new_id != top.new_id) continue;  // stale: a neighbour has changed since
      left.id = top.new_id;
      left.len += right.len;
      symbols[static_cast<std::size_t>(left.next)].len = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = top.pos;
      if (left.prev >= 0)
        if (const Merge* p = find(symbols[static_cast<std::size_t>(left.prev)].id, left.id))
          queue.push({p->rank, left.prev, p->new_id});
      if (left.next >= 0)
        if (const Merge* n = find(left.id, symbols[static_cast<std::size_t>(left.next)].id))
          queue.push({n->rank, top.pos, n->new_id});
    }
  }

  Vocabulary vocab_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::optional<std::string> unk_token_;
  std::string prefix_, suffix_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::array<std::int64_t, 256> byte_ids_{};
};

}  // namespace tp::text
