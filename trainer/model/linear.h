// Linear layers. A transformer block holds its projections as `Linear` objects, so a
// projection can be replaced by a tensor-parallel, LoRA, NF4 or fake-quantized variant
// without touching the block (shared/DESIGN.md §5).
#pragma once

#include <string>
#include <vector>

#include "kernels/ops.h"
#include "trainer/core/tensor.h"

namespace lmtune {

// A named parameter: its value and (when it trains) its gradient, both views.
struct ParamRef {
  std::string name;  // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  Tensor value;
  Tensor grad;  // undefined for frozen parameters
};

class Linear {
 public:
  virtual ~Linear() = default;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  // out (N, out_features) = f(inp (N, in_features))
  virtual void forward(Tensor& out, const Tensor& inp) const = 0;
  // dinp (N, in_features) = / += (per mode; skipped when null); parameter grads +=.
  virtual void backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, ops::GradWrite mode) = 0;
  // Appends this layer's parameters, named prefix + ".weight" etc.
  virtual void collect_parameters(const std::string& prefix, std::vector<ParamRef>& out) = 0;
};

// y = x W^T (+ b). weight (out, in) and bias (out) are views the owner provides (they live
// in the block's flat buffers); grads likewise, undefined while frozen.
class DenseLinear final : public Linear {
 public:
  DenseLinear(Tensor weight, Tensor bias) : weight_(std::move(weight)), bias_(std::move(bias)) {}
  void set_grads(Tensor dweight, Tensor dbias) { dweight_ = std::move(dweight); dbias_ = std::move(dbias); }
  int64_t in_features() const override { return weight_.size(1); }
  int64_t out_features() const override { return weight_.size(0); }
  void forward(Tensor& out, const Tensor& inp) const override;
  void backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, ops::GradWrite mode) override;
  void collect_parameters(const std::string& prefix, std::vector<ParamRef>& out) override;
  const Tensor& weight() const { return weight_; }

 private:
  Tensor weight_, bias_, dweight_, dbias_;
};

}  // namespace lmtune
