// QLoRA's frozen base: projection matrices stored as NF4 with double-quantized absmax, in
// the layout bitsandbytes uses — design note.
//
// Rows. A projection "<module>.weight" of shape (out, in), n = out * in values, becomes five
// rows of its unit (the layout table, trainer/model/param_layout.h), named as bitsandbytes'
// state dict names them where it has a tensor for them:
//   <module>.weight                   nf4_codes   u8   ceil(n / 64) * 32 bytes: the packed codes
//                                                      (bitsandbytes stores the first (n + 1) / 2)
//   <module>.weight.absmax            nf4_absmax  u8   ceil(n / 64): 8-bit codes of absmax - offset
//   <module>.weight.nested_absmax     nf4_tables  f32  ceil(blocks / 256)
//   <module>.weight.nested_offset     nf4_tables  f32  1 (quant_state's "nested_offset")
//   <module>.weight.nested_quant_map  nf4_tables  f32  256: the 8-bit map of the absmax
// All are category `quant` and never train. A weight's codes are padded to whole blocks, so
// every weight starts on a block boundary of its group; the 4-bit map (NF4's 16 values) is
// a constant and is not stored; the 8-bit map is, because a checkpoint carries its own.
//
// Sharding. ZeRO-3 pads and splits each group on its shard_quantum: 32 bytes for the codes
// (one block of 64 values), 1 for the absmax codes (one per block) — so a rank holds whole
// blocks of codes, and the absmax codes of exactly those blocks are at the same block
// indices of the absmax group. The tables are small and gathered whole. Tensor parallelism
// slices the one-process quantization (never requantizes a slice: the offset is the mean
// over the whole weight): a column-parallel split at output row r is block-aligned when
// r * in % 64 == 0; a row-parallel split at input column c needs in % 64 == 0 and c % 64 ==
// 0; each rank then holds its blocks, their absmax codes, the nested absmax entries that
// cover them, and the replicated offset and map. A tp that cannot be aligned is refused.
//
// Compute. Nf4Linear dequantizes its weight into an (out, in) f32 workspace just before its
// matmul (forward, and again for the input gradient in backward) and releases it right
// after: one projection at a time, never the whole model.
//
// Files. A float checkpoint (f32 / bf16 / f16) is quantized at load (an f32 staging copy of
// one weight in workspace). A bitsandbytes 4-bit checkpoint — <w> u8 ((n+1)/2, 1),
// <w>.absmax u8, <w>.quant_map f32 (16), <w>.nested_absmax f32, <w>.nested_quant_map f32
// (256), <w>.quant_state.bitsandbytes__nf4 (u8 JSON: quant_type, blocksize, dtype, shape,
// nested_blocksize, nested_dtype, nested_offset) — loads its bytes directly; loaded into a
// float model it is dequantized. What is refused, naming the tensor: FP4, a blocksize other
// than 64, absmax without double quantization, a 4-bit map other than NF4's. bitsandbytes
// rounds dequantized values to the checkpoint's dtype (bf16 / f16) before its matmul;
// lmtune computes with the f32 values.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "trainer/model/linear.h"
#include "trainer/model/param_layout.h"

namespace lmtune {

class SafeTensorsReader;
class SafeTensorsWriter;

// Bytes of one block of 64 NF4 codes: the shard quantum of the codes group.
constexpr int64_t nf4_block_bytes() { return 32; }

// Adds the NF4 rows of `weight_name` ((out, in) = weight_shape) to the unit being laid out.
void nf4_declare(UnitLayoutBuilder& b, const std::string& weight_name, const Shape& weight_shape);

// The row indices of one NF4 weight in its unit.
struct Nf4Rows {
  int codes = -1, absmax = -1, nested_absmax = -1, offset = -1, nested_code = -1;
};
Nf4Rows nf4_rows(const UnitLayout& unit, const std::string& weight_name);
// The weight as the kernels take it, from views of the unit's rows.
ops::Nf4Weight nf4_weight(const Nf4Rows& rows, std::span<const Tensor> views, const Shape& weight_shape);

// Tensors for an NF4 weight of `weight_shape` from `alloc`, category workspace, sized as
// bitsandbytes stores them (codes (n + 1) / 2 bytes): a staging copy.
ops::Nf4Weight nf4_workspace(Allocator& alloc, const Shape& weight_shape);

// y = x dequantize(W)^T (+ b), W frozen as NF4.
class Nf4Linear final : public Linear {
 public:
  Nf4Linear(int64_t out, int64_t in, Nf4Rows rows, int bias_row) : out_(out), in_(in), rows_(rows), bias_row_(bias_row) {}
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  void bind(std::span<const Tensor> params, std::span<const Tensor> grads) override;
  void forward(Tensor& out, const Tensor& inp, const LinearContext& ctx) const override;
  void backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, const LinearContext& ctx,
                ops::GradWrite mode) override;

 private:
  Tensor dequantized(Allocator& alloc) const;  // (out, in) f32, category workspace
  int64_t out_, in_;
  Nf4Rows rows_;
  int bias_row_;
  ops::Nf4Weight q_;
  Tensor bias_;
};

// Loads row `row` of `unit` where NF4 is involved: the codes row of an NF4 weight (with its
// table rows: from a float tensor quantized, from a bitsandbytes tensor copied), a table row
// (nothing: loaded with its codes), a float weight stored as bitsandbytes NF4 in the file
// (dequantized) or loaded under BaseQuant::nf4_values (quantized and dequantized). Returns
// the names of the reader's tensors used, or nullopt when the row is none of these (the
// caller loads it as it is). On the meta device only the checks and the allocations run.
std::optional<std::vector<std::string>> nf4_load_row(const SafeTensorsReader& reader, const UnitLayout& unit, int row,
                                                     std::span<const Tensor> views, BaseQuant mode);

// The six tensors bitsandbytes' state dict holds for an NF4 weight, added to `w`; their
// data (q's tensors, and the packed quant state kept in `keep`) must live until the write.
// `dtype` is what quant_state records as the weight's dtype ("float32").
void nf4_add_bnb_tensors(SafeTensorsWriter& w, const std::string& weight_name, const ops::Nf4Weight& q,
                         const std::string& dtype, std::list<std::string>& keep);

// config.json's "quantization_config" of a checkpoint in that layout (transformers'
// BitsAndBytesConfig: load_in_4bit, nf4, double quantization, compute dtype float32).
std::string bnb_quantization_config_json();

}  // namespace lmtune
