#include "kernels/kernel_test_util.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace lmtune::test {

std::unique_ptr<Allocator> cpu_allocator() { return Allocator::create(Device::cpu()); }

std::vector<float> randn(int64_t n, uint64_t seed, float scale) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(gen);
  return v;
}

Tensor tensor_from(Allocator& alloc, Shape shape, const std::vector<float>& values, MemCategory category) {
  Tensor t = Tensor::empty(alloc, std::move(shape), DType::f32, category);
  LMTUNE_ASSERT(static_cast<int64_t>(values.size()) == t.numel(), "tensor_from: ", values.size(), " values for ",
                shape_str(t.shape()));
  t.copy_from_host(values.data(), DType::f32);
  return t;
}

Tensor random_tensor(Allocator& alloc, Shape shape, uint64_t seed, float scale) {
  const int64_t n = shape_numel(shape);
  return tensor_from(alloc, std::move(shape), randn(n, seed, scale));
}

Tensor int_tensor(Allocator& alloc, Shape shape, const std::vector<int32_t>& values) {
  Tensor t = Tensor::empty(alloc, std::move(shape), DType::i32, MemCategory::activations);
  LMTUNE_ASSERT(static_cast<int64_t>(values.size()) == t.numel());
  if (!t.is_meta()) std::copy(values.begin(), values.end(), t.data<int32_t>());
  return t;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

double rel_error(const std::vector<float>& a, const std::vector<float>& b, double floor) {
  return rel_error(a, std::vector<double>(b.begin(), b.end()), floor);
}

double rel_error(const std::vector<float>& a, const std::vector<double>& b, double floor) {
  LMTUNE_ASSERT(a.size() == b.size(), "rel_error: sizes ", a.size(), " and ", b.size());
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - b[i]);
    max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
    max_ref = std::max(max_ref, std::abs(b[i]));
  }
  return max_diff / std::max(max_ref, floor);
}

double grad_check(Tensor& x, const std::vector<float>& analytic, const std::function<double()>& loss, float eps,
                  double floor) {
  float* p = x.data<float>();
  const int64_t n = x.numel();
  LMTUNE_ASSERT(static_cast<int64_t>(analytic.size()) == n, "grad_check: ", analytic.size(), " gradients for ", n,
                " elements");
  std::vector<double> numeric(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float orig = p[i];
    p[i] = orig + eps;
    const double fp = loss();
    p[i] = orig - eps;
    const double fm = loss();
    p[i] = orig;
    numeric[static_cast<size_t>(i)] = (fp - fm) / (2.0 * static_cast<double>(eps));
  }
  return rel_error(analytic, numeric, floor);
}

}  // namespace lmtune::test
