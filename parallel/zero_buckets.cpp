// ZeRO stages 1 and 2: parameters in flat buckets, optimizer state (and, at stage 2, the
// gradients) in chunks. See zero.h for the design.
#include <deque>
#include <vector>

#include "kernels/ops.h"
#include "parallel/shard_layout.h"
#include "parallel/zero.h"
#include "trainer/core/error.h"
#include "trainer/loop/train_setup.h"

namespace lmtune {

namespace {

class ZeroBucketState final : public TrainingState {
 public:
  ZeroBucketState(LlamaModel& model, const ModelSource& source, Communicator& dp, const ZeroOptions& o)
      : model_(model), layout_(model.layout()), alloc_(model.allocator()), dp_(dp), o_(o) {
    LMTUNE_ASSERT(o.stage == 1 || o.stage == 2, "ZeroBucketState for stage ", o.stage);
    const int U = layout_.num_units();
    bucket_of_.assign(static_cast<size_t>(U), -1);
    for (const std::vector<int>& units : grad_bucket_units(layout_, o.bucket_bytes)) {
      Bucket b;
      b.units = units;
      std::vector<std::pair<int, int>> segs;
      for (int u : units) {
        bucket_of_[u] = static_cast<int>(buckets_.size());
        for (size_t g = 0; g < layout_.units[u].groups.size(); ++g)
          if (layout_.units[u].groups[g].trains) segs.emplace_back(u, static_cast<int>(g));
      }
      b.flat = make_flat_buffer(layout_, segs, dp.size());
      b.params = Tensor::zeros(alloc_, {b.flat.padded}, DType::f32, MemCategory::trainable);
      if (o.stage == 1) b.grads = Tensor::zeros(alloc_, {b.flat.padded}, DType::f32, MemCategory::grads);
      else b.shard = Tensor::zeros(alloc_, {b.flat.chunk()}, DType::f32, MemCategory::grads);
      buckets_.push_back(std::move(b));
    }
    // Parameters: trainable groups as views of their bucket, frozen ones dense.
    for (int u = 0; u < U; ++u) {
      UnitBuffers p;
      for (size_t g = 0; g < layout_.units[u].groups.size(); ++g) {
        const ParamGroup& pg = layout_.units[u].groups[g];
        p.groups.push_back(pg.trains ? bucket_view(buckets_[bucket_of_[u]].params, u, static_cast<int>(g))
                                     : Tensor::zeros(alloc_, {pg.numel}, pg.dtype, pg.category));
      }
      model.bind_params(u, p);
      if (o.stage == 1 && bucket_of_[u] >= 0) model.bind_grads(u, unit_views(buckets_[bucket_of_[u]].grads, u));
    }
    source.check(model);
    for (int u = 0; u < U; ++u) source.fill(model, u);
    source.finish(model);
    for (Bucket& b : buckets_) {
      const FlatView values{b.params, 0};
      const FlatView grads = o.stage == 1 ? FlatView{b.grads, 0} : FlatView{b.shard, b.flat.chunk() * dp.rank()};
      for (ParamRef& p : chunk_pieces(layout_, b.flat, dp.rank(), values, grads)) owned_.push_back(std::move(p));
    }
    for (int u = 0; u < U; ++u)
      for (size_t i = 0; i < layout_.units[u].rows.size(); ++i) {
        const ParamRow& r = layout_.units[u].rows[i];
        if (layout_.units[u].groups[r.group].trains) held_.push_back({r.name, model.unit_params(u)[i], Tensor(), {}, 0});
      }
  }

  void begin_step() override {
    for (Bucket& b : buckets_) (o_.stage == 1 ? b.grads : b.shard).zero_();
    reduced_ = gathered_ = 0;
  }

  void begin_micro_batch(bool last) override {
    drain();
    last_ = last;
    for (Bucket& b : buckets_) b.remaining = static_cast<int>(b.units.size());
  }

  void before_backward(int unit) override {
    if (o_.stage != 2) return;
    // stage 2: this micro-batch's gradients of a bucket, from the first unit that writes
    // them on (the head writes the tied embedding's)
    for (int v : units_used_by(model_, unit)) {
      const int b = bucket_of_[v];
      if (b < 0 || buckets_[b].full.defined()) continue;
      Bucket& bk = buckets_[b];
      bk.full = Tensor::zeros(alloc_, {bk.flat.padded}, DType::f32, MemCategory::comm);
      for (int u : bk.units) model_.bind_grads(u, unit_views(bk.full, u));
    }
  }

  void after_backward(int unit) override {
    const int b = bucket_of_[unit];
    if (b < 0 || --buckets_[b].remaining > 0) return;
    if (o_.stage == 2) {
      if (!pending_.empty()) {  // at most two buckets in flight
        complete(pending_.front());
        pending_.pop_front();
      }
      start(b, buckets_[b].full);
    } else if (last_ && o_.overlap == OverlapGradReduce::on) {
      start(b, buckets_[b].grads);
    }
  }

  void finish_grads() override {
    LMTUNE_ASSERT(last_, "finish_grads() before the last micro-batch");
    if (o_.stage == 1 && o_.overlap == OverlapGradReduce::off)
      for (size_t b = 0; b < buckets_.size(); ++b) start(static_cast<int>(b), buckets_[b].grads);
    drain();
    last_ = false;
  }

  const std::vector<ParamRef>& owned() const override { return owned_; }
  bool owned_partitioned() const override { return true; }

  void after_update() override {
    std::vector<CommHandle> hs;
    for (Bucket& b : buckets_) {
      hs.push_back(dp_.all_gather_async(chunk_of(b.params, b), b.params));
      gathered_ += static_cast<int64_t>(b.params.nbytes());
    }
    for (CommHandle& h : hs) h->wait();
  }

  std::vector<ParamRef> held_params() const override { return held_; }
  bool params_partitioned() const override { return false; }
  void after_load() override {}
  bool forward_needs_every_rank() const override { return false; }
  int64_t bytes_reduced() const override { return reduced_; }
  int64_t bytes_gathered() const override { return gathered_; }

 private:
  struct Bucket {
    std::vector<int> units;
    FlatBuffer flat;
    Tensor params;  // (padded) the units' trainable groups
    Tensor grads;   // stage 1: (padded), persistent
    Tensor shard;   // stage 2: (chunk) this rank's summed gradients
    Tensor full;    // stage 2: (padded) this micro-batch's gradients, while they are reduced
    int remaining = 0;
  };
  struct Pending {
    int bucket;
    CommHandle handle;
  };

  Tensor chunk_of(const Tensor& flat, const Bucket& b) const {
    return flat.view(b.flat.chunk() * dp_.rank(), {b.flat.chunk()});
  }
  // The view of group g of unit u in a buffer laid out as u's bucket.
  Tensor bucket_view(const Tensor& flat, int u, int g) const {
    for (const FlatSegment& s : buckets_[bucket_of_[u]].flat.segments)
      if (s.unit == u && s.group == g) return flat.view(s.offset, {s.numel});
    LMTUNE_ASSERT(false, "group ", g, " of unit ", u, " is not in its bucket");
    return {};
  }
  UnitBuffers unit_views(const Tensor& flat, int u) const {
    UnitBuffers out;
    for (size_t g = 0; g < layout_.units[u].groups.size(); ++g)
      out.groups.push_back(layout_.units[u].groups[g].trains ? bucket_view(flat, u, static_cast<int>(g)) : Tensor());
    return out;
  }

  void start(int b, Tensor& in) {
    Tensor out = chunk_of(in, buckets_[b]);
    pending_.push_back({b, dp_.reduce_scatter_async(in, out, ReduceOp::sum)});
    reduced_ += static_cast<int64_t>(in.nbytes());
  }
  // Waits for a bucket's reduce-scatter; at stage 2 adds the chunk to the shard and frees
  // the full buffer.
  void complete(Pending& p) {
    p.handle->wait();
    if (o_.stage != 2) return;
    Bucket& b = buckets_[p.bucket];
    ops::add_inplace(b.shard, chunk_of(b.full, b));
    for (int u : b.units) model_.bind_grads(u, UnitBuffers{std::vector<Tensor>(layout_.units[u].groups.size())});
    b.full = Tensor();
  }
  void drain() {
    while (!pending_.empty()) {
      complete(pending_.front());
      pending_.pop_front();
    }
  }

  LlamaModel& model_;
  const ModelLayout& layout_;
  Allocator& alloc_;
  Communicator& dp_;
  ZeroOptions o_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_;
  std::vector<ParamRef> owned_, held_;
  std::deque<Pending> pending_;
  bool last_ = false;
  int64_t reduced_ = 0, gathered_ = 0;
};

}  // namespace

std::unique_ptr<TrainingState> make_zero_bucket_state(LlamaModel& model, const ModelSource& source, Communicator& dp,
                                                      const ZeroOptions& options) {
  return std::make_unique<ZeroBucketState>(model, source, dp, options);
}

}  // namespace lmtune
