#include "parallel/shard_layout.h"

#include <algorithm>

#include "trainer/core/error.h"

namespace lmtune {

FlatBuffer make_flat_buffer(const ModelLayout& layout, const std::vector<std::pair<int, int>>& segments, int ranks) {
  LMTUNE_ASSERT(ranks >= 1, "a flat buffer over ", ranks, " ranks");
  FlatBuffer f;
  f.ranks = ranks;
  int64_t quantum = 1;  // a chunk is a multiple of every segment's shard quantum (NF4: whole blocks)
  for (const auto& [unit, group] : segments) {
    const ParamGroup& g = layout.units[unit].groups[group];
    LMTUNE_ASSERT(segments.size() == 1 || g.shard_quantum == 1, "a flat buffer of several groups, one of them with a "
                  "shard quantum of ", g.shard_quantum);
    quantum = std::max(quantum, g.shard_quantum);
    f.segments.push_back({unit, group, f.numel, g.numel});
    f.numel += g.numel;
  }
  const int64_t step = quantum * ranks;
  f.padded = (f.numel + step - 1) / step * step;
  return f;
}

std::vector<int> units_used_by(const LlamaModel& model, int unit) {
  if (unit == model.layout().head_unit() && model.config().tie_word_embeddings) return {unit, ModelLayout::embed_unit()};
  return {unit};
}

std::vector<RowSpan> row_spans(const ModelLayout& layout, const FlatBuffer& flat, int64_t lo, int64_t hi) {
  std::vector<RowSpan> out;
  for (const FlatSegment& s : flat.segments) {
    if (s.offset >= hi || s.offset + s.numel <= lo) continue;
    const UnitLayout& u = layout.units[s.unit];
    for (size_t i = 0; i < u.rows.size(); ++i) {
      const ParamRow& r = u.rows[i];
      if (r.group != s.group) continue;
      const int64_t row_lo = s.offset + r.offset, row_hi = row_lo + r.numel();
      const int64_t a = std::max(lo, row_lo), b = std::min(hi, row_hi);
      if (a < b) out.push_back({s.unit, static_cast<int>(i), a - row_lo, a, b - a});
    }
  }
  std::sort(out.begin(), out.end(), [](const RowSpan& x, const RowSpan& y) { return x.offset < y.offset; });
  return out;
}

std::vector<ParamRef> chunk_pieces(const ModelLayout& layout, const FlatBuffer& flat, int rank, const FlatView& values,
                                   const FlatView& grads) {
  const int64_t lo = flat.chunk() * rank, hi = lo + flat.chunk();
  std::vector<ParamRef> out;
  for (const RowSpan& s : row_spans(layout, flat, lo, hi)) {
    const ParamRow& r = layout.units[s.unit].rows[s.row];
    out.push_back({r.name, values.at(s.offset, s.numel), grads.at(s.offset, s.numel), r.shape, s.row_start});
  }
  return out;
}

}  // namespace lmtune
