// Flat buffers split evenly over the ranks of a data-parallel group.
//
// ZeRO keeps state as flat buffers made of consecutive (unit, parameter group) segments —
// a gradient bucket's trainable groups (stages 1 and 2), or one group of one unit (stage
// 3) — padded with zeros to a multiple of the group's size (times the group's shard
// quantum: an NF4 codes group is split on whole blocks), so that rank r holds the chunk
// [r c, (r + 1) c) with c = padded / ranks; collectives then move equal chunks. A
// chunk cuts through the logical parameters (rows of the layout table) anywhere: row_spans
// says which rows, and which elements of each, a range of the flat buffer holds — the
// pieces an optimizer updates, a checkpoint names by (row, first element), and a loader
// fills. The padding belongs to no row.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "trainer/model/llama.h"
#include "trainer/model/param_layout.h"

namespace lmtune {

struct FlatSegment {
  int unit = 0, group = 0;
  int64_t offset = 0;  // elements into the flat buffer
  int64_t numel = 0;
};

struct FlatBuffer {
  std::vector<FlatSegment> segments;
  int64_t numel = 0;   // of the segments together
  int64_t padded = 0;  // numel rounded up to a multiple of `ranks`
  int ranks = 1;
  int64_t chunk() const { return padded / ranks; }
};

// The flat buffer of these (unit, group) segments, in this order, over `ranks` ranks.
FlatBuffer make_flat_buffer(const ModelLayout& layout, const std::vector<std::pair<int, int>>& segments, int ranks);

// Elements [lo, hi) of `flat`, cut at the rows of the layout: each span is elements
// [row_start, row_start + numel) of row `row` of `unit`, at `offset` in the flat buffer.
struct RowSpan {
  int unit = 0, row = 0;
  int64_t row_start = 0, offset = 0, numel = 0;
};
std::vector<RowSpan> row_spans(const ModelLayout& layout, const FlatBuffer& flat, int64_t lo, int64_t hi);

// The units whose parameters (and gradients) the forward or backward of `unit` uses: the
// unit itself, and for the head of a model with tied embeddings also the embedding (unit 0).
std::vector<int> units_used_by(const LlamaModel& model, int unit);

// A flat tensor laid out as a part of a FlatBuffer: `base` is the flat index of its
// element 0 (0 for a full buffer, the chunk's start for a chunk).
struct FlatView {
  Tensor t;
  int64_t base = 0;
  Tensor at(int64_t offset, int64_t numel) const { return t.view(offset - base, {numel}); }
};

// The optimizer's pieces of rank `rank`'s chunk of `flat`: ParamRefs named by their rows,
// whose value and grad are views of `values` and `grads`.
std::vector<ParamRef> chunk_pieces(const ModelLayout& layout, const FlatBuffer& flat, int rank, const FlatView& values,
                                   const FlatView& grads);

}  // namespace lmtune
