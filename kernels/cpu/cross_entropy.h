// lm_head + softmax cross-entropy, chunked over rows so the (N, V) logits never exist.
#pragma once

#include <cstdint>

namespace lmtune::cpu {

// Rows are processed chunk_rows at a time: logits = x_chunk @ weight^T into `logits`
// (workspace), a stable log-softmax per row, loss += lse - logit[target] for targets >= 0
// (targets already checked to be < V). With dx/dweight: dlogits = loss_scale * (softmax -
// onehot) (zero for ignored rows) overwrites the workspace, dx_chunk = dlogits @ weight
// (written), dweight += dlogits^T @ x_chunk. Returns the summed loss; *count = non-ignored rows.
double lm_head_cross_entropy(float* logits,           // (chunk_rows, V) workspace
                             const float* x,          // (N, C)
                             const float* weight,     // (V, C)
                             const int32_t* targets,  // (N)
                             float* row_loss,         // (N) or nullptr
                             float* dx,               // (N, C) or nullptr
                             float* dweight,          // (V, C) or nullptr
                             int64_t N, int64_t C, int64_t V, int64_t chunk_rows, float loss_scale,
                             int64_t* count);

}  // namespace lmtune::cpu
