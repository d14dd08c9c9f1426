#include "trainer/model/linear.h"

#include "trainer/peft/lora.h"
#include "trainer/peft/nf4.h"
#include "trainer/peft/qat.h"

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
  if (opts_.base_quant == BaseQuant::nf4) nf4_declare(b, module + ".weight", {p.out, p.in});
  else b.add(ParamGroupKind::base, module + ".weight", {p.out, p.in});
  if (p.bias) b.add(ParamGroupKind::base_f32, module + ".bias", {p.out});
  if (adapted(p)) {
    b.add(ParamGroupKind::adapters, module + ".lora_A.weight", {opts_.lora->rank, p.in});
    b.add(ParamGroupKind::adapters, module + ".lora_B.weight", {p.out, opts_.lora->rank});
  }
}

std::unique_ptr<Linear> LinearFactory::make(const ProjSpec& p, const std::string& prefix,
                                            const UnitLayout& layout) const {
  const std::string module = prefix + lora_module_path(p.target);
  const int bias = p.bias ? layout.index(module + ".bias") : -1;
  const int a = adapted(p) ? layout.index(module + ".lora_A.weight") : -1;
  const int b = adapted(p) ? layout.index(module + ".lora_B.weight") : -1;
  const float scaling = adapted(p) ? static_cast<float>(opts_.lora->scaling()) : 0.0f;
  if (opts_.qat == QatScheme::q4_0) {
    LMTUNE_ASSERT(opts_.base_quant != BaseQuant::nf4, "QAT over an NF4 base");
    LMTUNE_CHECK(!adapted(p) || opts_.lora->dropout == 0.0, "method.qat: LoRA dropout (method.lora.dropout ",
                 opts_.lora->dropout, ") cannot be trained for: QAT quantizes the merged weight W + scaling B A, "
                 "which a dropout on the adapter's input does not have; set method.lora.dropout to 0");
    return std::make_unique<QatLinear>(p.out, p.in, layout.index(module + ".weight"), bias, a, b, scaling);
  }
  std::unique_ptr<Linear> base;
  int merge_row = -1;  // the weight a LoRA merge adds to (none: NF4 is not merged into)
  if (opts_.base_quant == BaseQuant::nf4) {
    base = std::make_unique<Nf4Linear>(p.out, p.in, nf4_rows(layout, module + ".weight"), bias);
  } else {
    merge_row = layout.index(module + ".weight");
    base = std::make_unique<DenseLinear>(p.out, p.in, merge_row, bias);
  }
  if (!adapted(p)) return base;
  return std::make_unique<LoraLinear>(std::move(base), merge_row, a, b, scaling,
                                      static_cast<float>(opts_.lora->dropout));
}

}  // namespace lmtune
