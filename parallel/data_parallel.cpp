#include "parallel/data_parallel.h"

#include <vector>

#include "trainer/core/error.h"

namespace lmtune {

namespace {

class ReplicatedState final : public TrainingState {
 public:
  ReplicatedState(LlamaModel& model, Communicator& dp, int64_t bucket_bytes, OverlapGradReduce overlap)
      : model_(model), dp_(dp), overlap_(overlap) {
    model.allocate_grads(bucket_bytes);
    trainable_ = model.trainable_parameters();
    const std::vector<GradBucket>& buckets = model.grad_buckets();
    bucket_of_.assign(static_cast<size_t>(model.layout().num_units()), -1);
    for (size_t b = 0; b < buckets.size(); ++b) {
      flats_.push_back(buckets[b].flat);
      units_.push_back(static_cast<int>(buckets[b].units.size()));
      for (int u : buckets[b].units) bucket_of_[u] = static_cast<int>(b);
    }
    remaining_.assign(flats_.size(), 0);
  }

  void begin_step() override {
    model_.zero_grads();
    bytes_ = 0;
  }

  void begin_micro_batch(bool last) override {
    last_ = last;
    if (!last) return;
    remaining_ = units_;
    handles_.clear();
  }

  void after_backward(int unit) override {
    if (!last_ || overlap_ == OverlapGradReduce::off || dp_.size() == 1) return;
    const int b = bucket_of_[unit];
    if (b >= 0 && --remaining_[b] == 0) start(b);
  }

  void finish_grads() override {
    LMTUNE_ASSERT(last_, "finish_grads() before the last micro-batch");
    last_ = false;
    if (dp_.size() == 1) return;
    if (overlap_ == OverlapGradReduce::off)
      for (size_t b = 0; b < flats_.size(); ++b) start(static_cast<int>(b));
    LMTUNE_ASSERT(handles_.size() == flats_.size(), handles_.size(), " of ", flats_.size(),
                  " gradient buckets were reduced: a unit's backward did not run");
    for (CommHandle& h : handles_) h->wait();
    handles_.clear();
  }

  const std::vector<ParamRef>& owned() const override { return trainable_; }
  bool owned_partitioned() const override { return false; }
  void after_update() override {}
  std::vector<ParamRef> held_params() const override { return trainable_; }
  bool params_partitioned() const override { return false; }
  void after_load() override {}
  bool forward_needs_every_rank() const override { return false; }
  int64_t bytes_reduced() const override { return bytes_; }
  int64_t bytes_gathered() const override { return 0; }

 private:
  void start(int b) {
    handles_.push_back(dp_.all_reduce_async(flats_[b], ReduceOp::sum));
    bytes_ += static_cast<int64_t>(flats_[b].nbytes());
  }

  LlamaModel& model_;
  Communicator& dp_;
  OverlapGradReduce overlap_;
  std::vector<ParamRef> trainable_;
  std::vector<Tensor> flats_;  // the buckets' buffers (handles sharing their storage)
  std::vector<int> units_, bucket_of_, remaining_;
  std::vector<CommHandle> handles_;
  bool last_ = false;
  int64_t bytes_ = 0;
};

}  // namespace

std::unique_ptr<TrainingState> make_replicated_state(LlamaModel& model, Communicator& dp, int64_t bucket_bytes,
                                                     OverlapGradReduce overlap) {
  return std::make_unique<ReplicatedState>(model, dp, bucket_bytes, overlap);
}

}  // namespace lmtune
