// Helpers shared by the kernel tests: random tensors, naive references, finite differences.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "trainer/core/allocator.h"
#include "trainer/core/tensor.h"

namespace lmtune::test {

// A CPU allocator for one test.
std::unique_ptr<Allocator> cpu_allocator();

// n normally distributed floats (mean 0, stddev `scale`), reproducible from `seed`.
std::vector<float> randn(int64_t n, uint64_t seed, float scale = 1.0f);

// An f32 tensor holding `values` (category activations unless told).
Tensor tensor_from(Allocator& alloc, Shape shape, const std::vector<float>& values,
                   MemCategory category = MemCategory::activations);
// An f32 tensor of normal random values.
Tensor random_tensor(Allocator& alloc, Shape shape, uint64_t seed, float scale = 1.0f);
// An i32 tensor holding `values`.
Tensor int_tensor(Allocator& alloc, Shape shape, const std::vector<int32_t>& values);

// sum_i a[i] * b[i] in double.
double dot(const std::vector<float>& a, const std::vector<float>& b);
// max_i |a[i] - b[i]| / max(max_i |b[i]|, floor): a relative error against reference b.
double rel_error(const std::vector<float>& a, const std::vector<float>& b, double floor = 1e-3);
double rel_error(const std::vector<float>& a, const std::vector<double>& b, double floor = 1e-3);

// Central finite differences of `loss` with respect to every element of `x` (f32, CPU),
// compared with `analytic`: returns max |a - n| / max(max |n|, floor).
double grad_check(Tensor& x, const std::vector<float>& analytic, const std::function<double()>& loss,
                  float eps = 1e-2f, double floor = 1e-2);

}  // namespace lmtune::test
