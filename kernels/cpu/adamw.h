// AdamW with decoupled weight decay and bias correction.
#pragma once

#include <cstdint>

namespace lmtune::cpu {

// m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  mhat = m / (1-b1^step);  vhat = v / (1-b2^step)
// param -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * param)     (step is 1-based)
void adamw_step(float* param,       // (n)
                const float* grad,  // (n)
                float* m,           // (n)
                float* v,           // (n)
                int64_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step);

}  // namespace lmtune::cpu
