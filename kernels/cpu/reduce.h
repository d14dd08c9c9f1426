// Reductions: argmax of a row, sum of squares.
#pragma once

#include <cstdint>

namespace lmtune::cpu {

// Index of the largest element (the first one on ties; NaN never wins).
int64_t argmax(const float* x,  // (n)
               int64_t n);

// sum x^2, accumulated in double.
double sum_squares(const float* x,  // (n)
                   int64_t n);

}  // namespace lmtune::cpu
