#include "trainer/loop/training_state.h"

namespace lmtune {

LocalState::LocalState(LlamaModel& model, int64_t bucket_bytes) : model_(model) {
  model.allocate_grads(bucket_bytes);
  trainable_ = model.trainable_parameters();
}

void LocalState::begin_step() { model_.zero_grads(); }

}  // namespace lmtune
