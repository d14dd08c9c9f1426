#include "trainer/model/linear.h"

namespace lmtune {

void DenseLinear::forward(Tensor& out, const Tensor& inp) const {
  ops::linear_forward(out, inp, weight_, bias_.defined() ? &bias_ : nullptr);
}

void DenseLinear::backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, ops::GradWrite mode) {
  ops::linear_backward(dinp, dweight_.defined() ? &dweight_ : nullptr, dbias_.defined() ? &dbias_ : nullptr, dout,
                       inp, weight_, mode);
}

void DenseLinear::collect_parameters(const std::string& prefix, std::vector<ParamRef>& out) {
  out.push_back({prefix + ".weight", weight_, dweight_});
  if (bias_.defined()) out.push_back({prefix + ".bias", bias_, dbias_});
}

}  // namespace lmtune
