// Linear layers — design note.
//
// A transformer block asks a LinearFactory for each of its projections and holds them as
// `Linear` objects; it never names the kind of layer it got (dense, NF4 (QLoRA's base),
// LoRA around either, fake-quantized for QAT; later column-/row-parallel). The factory is
// the one place that decides, from the model options, both which parameter rows a
// projection has (declare(), read by the pure layout table) and which object computes it
// (make()).
//
// Layers own no storage: bind() hands them views of their rows (and of the rows' gradients,
// undefined while frozen) that the owner of the storage made from the layout. The same
// layer therefore runs over dense buffers, over a ZeRO-3 gather, or over nothing (unbound).
//
// Randomness (LoRA dropout) comes from a LinearContext passed to forward and backward —
// the layer's own seed for this micro-batch and the global index of its first row — never
// from state kept in the layer, so any schedule (data parallel, 1F1B) draws the same masks.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "trainer/core/tensor.h"
#include "trainer/model/param_layout.h"

namespace lmtune {

// A named parameter — or a piece of one: elements [start, start + value.numel()) of the
// flattened parameter of shape full_shape, as a shard of it is — with its value and (when
// it trains) its gradient, both views.
struct ParamRef {
  std::string name;  // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  Tensor value;
  Tensor grad;       // undefined for frozen parameters
  Shape full_shape;  // empty: value is the whole parameter
  int64_t start = 0;
  const Shape& logical_shape() const { return full_shape.empty() ? value.shape() : full_shape; }
  bool whole() const { return full_shape.empty(); }
};

// What random draws of one layer depend on, for one micro-batch.
// Training draws dropout masks; evaluation and generation compute the plain function.
enum class Phase { eval, train };
struct LinearContext {
  uint64_t seed = 0;       // the layer's seed for this micro-batch
  int64_t row_offset = 0;  // global index of the first input row (token) of this rank's batch
  Phase phase = Phase::eval;
};

class Linear {
 public:
  virtual ~Linear() = default;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  // Views of the unit's rows (indexed as UnitLayout::rows); grads may be undefined.
  virtual void bind(std::span<const Tensor> params, std::span<const Tensor> grads) = 0;
  // out (N, out_features) = f(inp (N, in_features))
  virtual void forward(Tensor& out, const Tensor& inp, const LinearContext& ctx) const = 0;
  // dinp (N, in_features) = / += (per mode; skipped when null); parameter grads +=.
  virtual void backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, const LinearContext& ctx,
                        ops::GradWrite mode) = 0;
  // Folds an adapter into the base weight and makes the adapter inert (LoRA); else nothing.
  virtual void merge_adapter() {}
};

// y = x W^T (+ b).
class DenseLinear final : public Linear {
 public:
  // Row indices of the weight (out, in) and the bias (out, or -1) in the unit's layout.
  DenseLinear(int64_t out, int64_t in, int weight_row, int bias_row)
      : out_(out), in_(in), weight_row_(weight_row), bias_row_(bias_row) {}
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  void bind(std::span<const Tensor> params, std::span<const Tensor> grads) override;
  void forward(Tensor& out, const Tensor& inp, const LinearContext& ctx) const override;
  void backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, const LinearContext& ctx,
                ops::GradWrite mode) override;
  const Tensor& weight() const { return weight_; }

 private:
  int64_t out_, in_;
  int weight_row_, bias_row_;
  Tensor weight_, bias_, dweight_, dbias_;
};

// One projection of a block.
struct ProjSpec {
  std::string target;  // LoRA's short name: q, k, v, o, gate, up, down
  int index = 0;       // its position in that list (seeds)
  int64_t out = 0, in = 0;
  bool bias = false;
};

// The seven projections of a LLaMA block, in order: q, k, v, o, gate, up, down.
std::vector<ProjSpec> block_proj_specs(const LlamaConfig& cfg);

class LinearFactory {
 public:
  explicit LinearFactory(const ModelOptions& opts) : opts_(opts) {}
  // Appends the projection's rows (prefix = "model.layers.3.") to the unit being laid out.
  void declare(const ProjSpec& p, const std::string& prefix, UnitLayoutBuilder& b) const;
  // The layer computing it, wired to the rows declare() added to `layout`.
  std::unique_ptr<Linear> make(const ProjSpec& p, const std::string& prefix, const UnitLayout& layout) const;

 private:
  bool adapted(const ProjSpec& p) const;
  ModelOptions opts_;
};

}  // namespace lmtune
