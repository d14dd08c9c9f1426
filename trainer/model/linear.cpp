#include "trainer/model/linear.h"

#include "trainer/peft/lora.h"

namespace lmtune {

void DenseLinear::bind(std::span<const Tensor> params, std::span<const Tensor> grads) {
  weight_ = params[weight_row_];
  bias_ = bias_row_ >= 0 ? params[bias_row_] : Tensor();
  dweight_ = grads.empty() ? Tensor() : grads[weight_row_];
  dbias_ = grads.empty() || bias_row_ < 0 ? Tensor() : grads[bias_row_];
}

void DenseLinear::forward(Tensor& out, const Tensor& inp, const LinearContext&) const {
  ops::linear_forward(out, inp, weight_, bias_.defined() ? &bias_ : nullptr);
}

void DenseLinear::backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, const LinearContext&,
                           ops::GradWrite mode) {
  ops::linear_backward(dinp, dweight_.defined() ? &dweight_ : nullptr, dbias_.defined() ? &dbias_ : nullptr, dout,
                       inp, weight_, mode);
}

bool LinearFactory::adapted(const ProjSpec& p) const {
  return opts_.lora.has_value() && opts_.lora->targets_projection(p.target);
}

void LinearFactory::declare(const ProjSpec& p, const std::string& prefix, UnitLayoutBuilder& b) const {
  const std::string module = prefix + lora_module_path(p.target);
  b.add(ParamGroupKind::base, module + ".weight", {p.out, p.in});
  if (p.bias) b.add(ParamGroupKind::base_f32, module + ".bias", {p.out});
  if (adapted(p)) {
    b.add(ParamGroupKind::adapters, module + ".lora_A.weight", {opts_.lora->rank, p.in});
    b.add(ParamGroupKind::adapters, module + ".lora_B.weight", {p.out, opts_.lora->rank});
  }
}

std::unique_ptr<Linear> LinearFactory::make(const ProjSpec& p, const std::string& prefix,
                                            const UnitLayout& layout) const {
  const std::string module = prefix + lora_module_path(p.target);
  const int w = layout.index(module + ".weight");
  std::unique_ptr<Linear> dense =
      std::make_unique<DenseLinear>(p.out, p.in, w, p.bias ? layout.index(module + ".bias") : -1);
  if (!adapted(p)) return dense;
  const LoraOptions& lo = *opts_.lora;
  return std::make_unique<LoraLinear>(std::move(dense), w, layout.index(module + ".lora_A.weight"),
                                      layout.index(module + ".lora_B.weight"), static_cast<float>(lo.scaling()),
                                      static_cast<float>(lo.dropout));
}

}  // namespace lmtune
