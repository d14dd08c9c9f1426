// ZeRO stage 3: every parameter group of every unit a flat shard; units gathered just before
// use (with prefetch) and released after; gradients reduce-scattered into shards. See
// zero.h for the design.
#include <deque>
#include <set>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "parallel/shard_layout.h"
#include "parallel/zero.h"
#include "trainer/core/error.h"
#include "trainer/loop/train_setup.h"

namespace lmtune {

namespace {

class Zero3State final : public TrainingState {
 public:
  Zero3State(LlamaModel& model, const ModelSource& source, Communicator& dp, Allocator& host, const ZeroOptions& o)
      : model_(model), layout_(model.layout()), device_(model.allocator()), dp_(dp), o_(o) {
    Allocator& keep = o.offload_params ? host : device_;  // where the shards live
    const int U = layout_.num_units();
    units_.resize(static_cast<size_t>(U));
    for (int u = 0; u < U; ++u) {
      Unit& unit = units_[u];
      for (size_t g = 0; g < layout_.units[u].groups.size(); ++g) {
        const ParamGroup& pg = layout_.units[u].groups[g];
        Group gr;
        gr.flat = make_flat_buffer(layout_, {{u, static_cast<int>(g)}}, dp.size());
        gr.shard = Tensor::zeros(keep, {gr.flat.chunk()}, pg.dtype, pg.category);
        if (pg.trains) {
          gr.grad_shard = Tensor::zeros(keep, {gr.flat.chunk()}, DType::f32, MemCategory::grads);
          unit.trains = true;
        }
        unit.groups.push_back(std::move(gr));
      }
    }
    // Built unit by unit: a full unit is filled, its chunk kept, the rest freed.
    source.check(model);
    for (int u = 0; u < U; ++u) {
      UnitBuffers full;
      for (size_t g = 0; g < units_[u].groups.size(); ++g) {
        const ParamGroup& pg = layout_.units[u].groups[g];
        full.groups.push_back(Tensor::zeros(device_, {units_[u].groups[g].flat.padded}, pg.dtype, MemCategory::comm));
      }
      model.bind_params(u, full);
      source.fill(model, u);
      for (size_t g = 0; g < full.groups.size(); ++g) units_[u].groups[g].shard.copy_(chunk_of(full.groups[g], u, g));
      unbind_params(u);
    }
    source.finish(model);
    for (int u = 0; u < U; ++u)
      for (size_t g = 0; g < units_[u].groups.size(); ++g) {
        Group& gr = units_[u].groups[g];
        if (!gr.grad_shard.defined()) continue;
        const int64_t lo = gr.flat.chunk() * dp.rank();
        for (ParamRef& p : chunk_pieces(layout_, gr.flat, dp.rank(), {gr.shard, lo}, {gr.grad_shard, lo})) {
          held_.push_back({p.name, p.value, Tensor(), p.full_shape, p.start});
          owned_.push_back(std::move(p));
        }
      }
  }

  // ---- the hooks: gather before use, release after, reduce the gradients ----
  void before_forward(int unit) override {
    acquire(unit, Grads::no);
    prefetch(unit, +1);
    trace("compute " + std::to_string(unit));
  }
  void after_forward(int unit) override {
    trace("computed " + std::to_string(unit));
    release(unit);
  }
  void before_backward(int unit) override {
    acquire(unit, Grads::yes);
    prefetch(unit, -1);
    trace("compute " + std::to_string(unit));
  }
  void after_backward(int unit) override {
    trace("computed " + std::to_string(unit));
    release(unit);
    if (!units_[unit].trains) return;
    if (!pending_.empty()) {  // at most two units' gradients in flight
      complete(pending_.front());
      pending_.pop_front();
    }
    start_reduce(unit);
  }

  void begin_step() override {
    for (Unit& u : units_)
      for (Group& g : u.groups)
        if (g.grad_shard.defined()) g.grad_shard.zero_();
    reduced_ = gathered_ = 0;
  }
  void begin_micro_batch(bool) override { drain(); }
  void finish_grads() override { drain(); }
  const std::vector<ParamRef>& owned() const override { return owned_; }
  bool owned_partitioned() const override { return true; }
  void after_update() override {}
  std::vector<ParamRef> held_params() const override { return held_; }
  bool params_partitioned() const override { return true; }
  void after_load() override {}
  bool forward_needs_every_rank() const override { return true; }
  int64_t bytes_reduced() const override { return reduced_; }
  int64_t bytes_gathered() const override { return gathered_; }

  void set_trace(Zero3Trace* t) { trace_ = t; }

 private:
  enum class Grads { no, yes };
  enum class Gathered { no, in_flight, ready };
  struct Group {
    FlatBuffer flat;
    Tensor shard;       // (chunk) this rank's part of the parameters
    Tensor grad_shard;  // (chunk) f32, this rank's summed gradients (trainable groups only)
    Tensor full;        // (padded) while gathered
    Tensor grad_full;   // (padded) f32, while this micro-batch's gradients are written and reduced
  };
  struct Unit {
    std::vector<Group> groups;
    bool trains = false;
    Gathered gathered = Gathered::no;
    std::vector<CommHandle> gathers;
    std::set<int> users;  // units whose forward or backward is using these parameters now
  };
  struct Pending {
    int unit;
    std::vector<CommHandle> handles;
  };

  Tensor chunk_of(const Tensor& full, int u, size_t g) const {
    const int64_t c = units_[u].groups[g].flat.chunk();
    return full.view(c * dp_.rank(), {c});
  }
  void trace(const std::string& e) const {
    if (trace_ != nullptr) trace_->record(e);
  }
  void unbind_params(int u) { model_.bind_params(u, UnitBuffers{std::vector<Tensor>(units_[u].groups.size())}); }
  void unbind_grads(int u) { model_.bind_grads(u, UnitBuffers{std::vector<Tensor>(units_[u].groups.size())}); }

  void start_gather(int u) {
    Unit& unit = units_[u];
    if (unit.gathered != Gathered::no) return;
    for (size_t g = 0; g < unit.groups.size(); ++g) {
      Group& gr = unit.groups[g];
      const ParamGroup& pg = layout_.units[u].groups[g];
      gr.full = Tensor::empty(device_, {gr.flat.padded}, pg.dtype, MemCategory::comm);
      Tensor mine = chunk_of(gr.full, u, g);
      if (o_.offload_params) {  // host shard -> its chunk of the device buffer, then in place
        mine.copy_(gr.shard);
        unit.gathers.push_back(dp_.all_gather_async(mine, gr.full));
      } else {
        unit.gathers.push_back(dp_.all_gather_async(gr.shard, gr.full));
      }
      gathered_ += static_cast<int64_t>(gr.full.nbytes());
    }
    unit.gathered = Gathered::in_flight;
    trace("gather issued " + std::to_string(u));
  }
  void wait_gather(int u) {
    Unit& unit = units_[u];
    if (unit.gathered == Gathered::ready) return;
    start_gather(u);
    for (CommHandle& h : unit.gathers) h->wait();
    unit.gathers.clear();
    UnitBuffers b;
    for (Group& gr : unit.groups) b.groups.push_back(gr.full);
    model_.bind_params(u, b);
    unit.gathered = Gathered::ready;
    trace("gather waited " + std::to_string(u));
  }
  void acquire(int unit, Grads grads) {
    for (int v : units_used_by(model_, unit)) {
      units_[v].users.insert(unit);
      wait_gather(v);
      if (grads == Grads::no || !units_[v].trains || has_grad_full(v)) continue;
      UnitBuffers b;
      for (Group& gr : units_[v].groups)
        b.groups.push_back(gr.grad_shard.defined()
                               ? (gr.grad_full = Tensor::zeros(device_, {gr.flat.padded}, DType::f32, MemCategory::comm))
                               : Tensor());
      model_.bind_grads(v, b);
    }
  }
  bool has_grad_full(int u) const {
    for (const Group& gr : units_[u].groups)
      if (gr.grad_full.defined()) return true;
    return false;
  }
  void release(int unit) {
    for (int v : units_used_by(model_, unit)) {
      Unit& uv = units_[v];
      if (uv.users.erase(unit) == 0 || !uv.users.empty()) continue;
      LMTUNE_ASSERT(uv.gathered == Gathered::ready, "unit ", v, " released while not gathered");
      unbind_params(v);
      for (Group& gr : uv.groups) gr.full = Tensor();
      uv.gathered = Gathered::no;
    }
  }
  void prefetch(int unit, int direction) {
    for (int k = 1; k <= o_.prefetch; ++k) {
      const int w = unit + direction * k;
      if (w < 0 || w >= layout_.num_units()) break;
      for (int v : units_used_by(model_, w)) start_gather(v);
    }
  }

  void start_reduce(int u) {
    Pending p{u, {}};
    for (size_t g = 0; g < units_[u].groups.size(); ++g) {
      Group& gr = units_[u].groups[g];
      if (!gr.grad_full.defined()) continue;
      Tensor out = chunk_of(gr.grad_full, u, g);
      p.handles.push_back(dp_.reduce_scatter_async(gr.grad_full, out, ReduceOp::sum));
      reduced_ += static_cast<int64_t>(gr.grad_full.nbytes());
    }
    pending_.push_back(std::move(p));
  }
  // Waits for a unit's reduce-scatters and adds its chunks to the gradient shards.
  void complete(Pending& p) {
    for (CommHandle& h : p.handles) h->wait();
    for (size_t g = 0; g < units_[p.unit].groups.size(); ++g) {
      Group& gr = units_[p.unit].groups[g];
      if (!gr.grad_full.defined()) continue;
      ops::add_inplace(gr.grad_shard, chunk_of(gr.grad_full, p.unit, g));
      gr.grad_full = Tensor();
    }
    unbind_grads(p.unit);
  }
  void drain() {
    while (!pending_.empty()) {
      complete(pending_.front());
      pending_.pop_front();
    }
    for (const Unit& u : units_)
      LMTUNE_ASSERT(u.gathered == Gathered::no && u.users.empty(), "a unit is still gathered between micro-batches");
  }

  LlamaModel& model_;
  const ModelLayout& layout_;
  Allocator& device_;
  Communicator& dp_;
  ZeroOptions o_;
  std::vector<Unit> units_;
  std::vector<ParamRef> owned_, held_;
  std::deque<Pending> pending_;
  int64_t reduced_ = 0, gathered_ = 0;
  Zero3Trace* trace_ = nullptr;
};

}  // namespace

std::unique_ptr<TrainingState> make_zero3_state(LlamaModel& model, const ModelSource& source, Communicator& dp,
                                                Allocator& host, const ZeroOptions& options) {
  return std::make_unique<Zero3State>(model, source, dp, host, options);
}

void set_zero3_trace(TrainingState& state, Zero3Trace* trace) {
  auto* z = dynamic_cast<Zero3State*>(&state);
  LMTUNE_CHECK(z != nullptr, "set_zero3_trace on a state that is not ZeRO-3");
  z->set_trace(trace);
}

}  // namespace lmtune
