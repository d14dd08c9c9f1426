#include "parallel/data_parallel.h"

#include <vector>

#include "trainer/core/error.h"

namespace lmtune {

namespace {

class BucketAllReduce final : public GradientSync {
 public:
  BucketAllReduce(LlamaModel& model, Communicator& dp, OverlapGradReduce overlap)
      : buckets_(model.grad_buckets()), dp_(dp), overlap_(overlap) {
    LMTUNE_ASSERT(!buckets_.empty(), "data parallelism over a model whose gradients are not allocated");
    bucket_of_.assign(static_cast<size_t>(model.layout().num_units()), -1);
    for (size_t b = 0; b < buckets_.size(); ++b) {
      flats_.push_back(buckets_[b].flat);
      for (int u : buckets_[b].units) bucket_of_[u] = static_cast<int>(b);
    }
    remaining_.assign(buckets_.size(), 0);
  }

  void begin_micro_batch(bool last) override {
    last_ = last;
    if (!last) return;
    for (size_t b = 0; b < buckets_.size(); ++b) remaining_[b] = static_cast<int>(buckets_[b].units.size());
    handles_.clear();
    bytes_ = 0;
  }

  void after_backward(int unit) override {
    if (!last_ || overlap_ == OverlapGradReduce::off) return;
    const int b = bucket_of_[unit];
    if (b >= 0 && --remaining_[b] == 0) start(b);
  }

  void finish() override {
    LMTUNE_ASSERT(last_, "finish() before the last micro-batch");
    if (overlap_ == OverlapGradReduce::off)
      for (size_t b = 0; b < buckets_.size(); ++b) start(static_cast<int>(b));
    LMTUNE_ASSERT(handles_.size() == buckets_.size(), handles_.size(), " of ", buckets_.size(),
                  " gradient buckets were reduced: a unit's backward did not run");
    for (CommHandle& h : handles_) h->wait();
    handles_.clear();
    last_ = false;
  }

  int64_t bytes_reduced() const override { return bytes_; }

 private:
  void start(int b) {
    handles_.push_back(dp_.all_reduce_async(flats_[b], ReduceOp::sum));
    bytes_ += static_cast<int64_t>(flats_[b].nbytes());
  }

  const std::vector<GradBucket>& buckets_;
  Communicator& dp_;
  OverlapGradReduce overlap_;
  std::vector<Tensor> flats_;  // the buckets' buffers (handles sharing their storage)
  std::vector<int> bucket_of_, remaining_;
  std::vector<CommHandle> handles_;
  bool last_ = false;
  int64_t bytes_ = 0;
};

}  // namespace

std::unique_ptr<GradientSync> make_bucket_all_reduce(LlamaModel& model, Communicator& dp, OverlapGradReduce overlap) {
  return std::make_unique<BucketAllReduce>(model, dp, overlap);
}

}  // namespace lmtune
