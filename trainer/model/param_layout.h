// The parameter layout table — design note.
//
// model_param_layout(config, options) is a pure function that says, for every unit of the
// model — the embedding, each transformer block, the head (final norm + lm_head) — which
// flat buffers ("groups") hold its parameters and where each parameter sits in them:
//     rows {name, logical shape, dtype, group, element offset}.
// It allocates nothing and is tested on its own. Everything that needs to know where a
// parameter lives reads it instead of carving buffers by hand:
//   * the model binds its views from it (LlamaModel::bind_params, LlamaBlock::bind);
//   * a parameter store allocates the groups it lists — densely, or as ZeRO-3 shards of
//     each group padded to divide evenly, or on the host;
//   * gradient buckets, checkpoints (by logical name and offset), the loader (by HF name)
//     and the estimator's closed form (bytes per group) read it.
// Groups: one per (dtype, role) so that a group is one homogeneous flat buffer:
//   base      the projection matrices, in model.dtype (f32, or bf16/f16 while frozen)
//   base_f32  everything else of the base model — norms (also Qwen3's per-head q_norm and
//             k_norm), attention biases, embedding, lm_head
//   adapters  LoRA A and B of the unit's targets (f32, always trainable)
//   nf4_codes, nf4_absmax, nf4_tables   the projections stored as NF4 (BaseQuant::nf4,
//             QLoRA; category quant, never trained): packed 4-bit codes (u8), the 8-bit
//             block absmax codes (u8), and per weight its nested absmax, offset and 8-bit
//             code map (f32); see trainer/peft/nf4.h for the rows and how they shard.
// Within a unit, groups appear in that order (only those with rows), and rows in the
// order the model has always used: a block's projections q, k, v, o, gate, up, down; its
// vectors input_layernorm, post_attention_layernorm, q_norm and k_norm (Qwen3), then the
// attention biases (q, k, v; o where the family has one); each adapter's A then B in
// projection order.
// A group's shard_quantum is the number of elements a shard boundary must be a multiple of
// (ZeRO-3 pads and splits every group on it): 32 for NF4 codes, so that no quantization
// block of 64 values is ever split across ranks; 1 elsewhere.
// Extension point (later issues): a tensor-parallel rank's local slice of each row.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "trainer/core/allocator.h"
#include "trainer/core/dtype.h"
#include "trainer/core/tensor.h"
#include "trainer/model/config.h"
#include "trainer/model/recompute.h"
#include "trainer/peft/lora_options.h"
#include "trainer/peft/quant_options.h"

namespace lmtune {

// Frozen parameters are category `weights`; trainable ones `trainable` (and get grads).
enum class ParamRole { frozen, trainable };

struct ModelOptions {
  ParamRole role = ParamRole::frozen;  // of the base model's parameters
  // Storage dtype of the blocks' projection matrices (bf16/f16 only while frozen).
  DType weight_dtype = DType::f32;
  // LoRA adapters (trainable, f32) on the listed projections of every block.
  std::optional<LoraOptions> lora;
  // The projection matrices stored as NF4 (QLoRA), and trained for quantized arithmetic (QAT).
  BaseQuant base_quant = BaseQuant::none;
  QatScheme qat = QatScheme::none;
  uint64_t seed = 0;  // initialisation of the LoRA A matrices
  // What a training forward keeps and its backward rebuilds (recompute.h); no effect on
  // the layout.
  Recompute recompute = Recompute::none;
};

enum class ParamGroupKind : uint8_t { base, base_f32, adapters, nf4_codes, nf4_absmax, nf4_tables };
const char* param_group_kind_name(ParamGroupKind k);

struct ParamGroup {
  ParamGroupKind kind = ParamGroupKind::base;
  DType dtype = DType::f32;
  MemCategory category = MemCategory::weights;  // of the parameters (their grads are `grads`)
  bool trains = false;                          // has gradients
  int64_t numel = 0;
  int64_t shard_quantum = 1;                    // a shard boundary is a multiple of this
  int64_t nbytes() const { return numel * static_cast<int64_t>(dtype_size(dtype)); }
};

struct ParamRow {
  std::string name;  // HF name: "model.layers.3.self_attn.q_proj.weight", "...lora_A.weight"
  Shape shape;       // logical shape
  DType dtype = DType::f32;
  int group = 0;       // index into UnitLayout::groups
  int64_t offset = 0;  // elements into the group's flat buffer
  Shape weight_shape;  // rows of NF4 storage: the (out, in) of the weight they encode; else empty
  int64_t numel() const { return shape_numel(shape); }
  int64_t byte_offset() const { return offset * static_cast<int64_t>(dtype_size(dtype)); }
};

struct UnitLayout {
  std::string name;  // "embed", "layers.3", "head"
  std::vector<ParamGroup> groups;
  std::vector<ParamRow> rows;
  int find(std::string_view row_name) const;        // -1 when absent
  int index(std::string_view row_name) const;       // the row's index; it must exist
  int group_of(ParamGroupKind kind) const;           // -1 when the unit has no such group
  bool trains() const;                               // some group has gradients
  int64_t trainable_numel() const;                   // elements of the groups that train
};

struct ModelLayout {
  std::vector<UnitLayout> units;  // embed, layers.0 .. layers.(L-1), head
  int num_units() const { return static_cast<int>(units.size()); }
  int num_blocks() const { return num_units() - 2; }
  static constexpr int embed_unit() { return 0; }
  static constexpr int block_unit(int layer) { return layer + 1; }
  int head_unit() const { return num_units() - 1; }
};

ModelLayout model_param_layout(const LlamaConfig& cfg, const ModelOptions& opts);

// The gradient buckets of data parallelism: consecutive units with something to train, in
// backward order (highest unit first), grouped so that a group's trainable elements take at
// most bucket_bytes as f32 (a unit larger than that is a group of its own). A bucket's flat
// buffer holds, unit after unit in this order, each trainable group of the unit.
std::vector<std::vector<int>> grad_bucket_units(const ModelLayout& layout, int64_t bucket_bytes);

// Collects a unit's rows, placing each in its group's buffer in the order added. The
// dtype and category of a row follow from its group kind and the model options.
class UnitLayoutBuilder {
 public:
  UnitLayoutBuilder(std::string unit_name, const ModelOptions& opts);
  void add(ParamGroupKind kind, std::string name, Shape shape, Shape weight_shape = {});
  UnitLayout finish();

 private:
  UnitLayout unit_;
  const ModelOptions& opts_;
  std::vector<std::pair<ParamGroupKind, ParamRow>> pending_;
};

// A unit's storage: one flat tensor per group of its layout (undefined: not held — e.g. the
// gradient of a frozen group).
struct UnitBuffers {
  std::vector<Tensor> groups;
};

// Views of every row of `layout` into `buffers` (undefined where the row's group is).
std::vector<Tensor> row_views(const UnitLayout& layout, const UnitBuffers& buffers);

}  // namespace lmtune
