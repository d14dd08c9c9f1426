// ZeRO-3's schedule of gathers, seen in one process on the meta device with the fake
// communicator of rank 0 of 4 (it moves no data; the allocations and the order of events
// are those of a real rank):
//   * the allocator's timeline shows at most (1 + prefetch) blocks gathered at once while a
//     block computes — and exactly that many, so the prefetch really happens;
//   * the gather of the next block is issued before this block computes and waited for only
//     after it has computed: it is in flight during the compute.
// (Equivalence with one process, and the exactness of the meta prediction, are tested under
// real mpirun in tests/cli/zero_test.cpp.)
#include <gtest/gtest.h>

#include <fstream>
#include <map>

#include "common/test_models.h"
#include "parallel/fake_communicator.h"
#include "parallel/rank_model.h"
#include "parallel/shard_layout.h"
#include "parallel/zero.h"
#include "trainer/loop/step_engine.h"
#include "trainer/loop/train_config.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

constexpr int kLayers = 6;

class Zero3Schedule : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
    root_ = testing::temp_dir("lmtune-zero3-schedule");
    LlamaConfig cfg;
    cfg.hidden_size = 32;
    cfg.intermediate_size = 48;
    cfg.num_hidden_layers = kLayers;
    cfg.num_attention_heads = 4;
    cfg.num_key_value_heads = 2;
    cfg.vocab_size = 32000;
    cfg.max_position_embeddings = 64;
    testing::write_random_model(root_ / "model", cfg, 3);
    fs::create_directories(root_ / "data");
    std::ofstream(root_ / "data" / "a.txt") << "Call me Ishmael. Some years ago, never mind how long precisely.\n";
  }

  TrainConfig config(int prefetch) const {
    const fs::path file = root_ / "cfg.yaml";
    std::ofstream(file) << "model: {path: " << (root_ / "model").string() << "}\n"
                        << "method: {type: lora, lora: {rank: 4, alpha: 8, target_modules: all-linear}}\n"
                        << "data: {format: text, train_files: [" << (root_ / "data" / "a.txt").string()
                        << "], seq_len: 16}\n"
                        << "train: {max_steps: 1, micro_batch_size: 1}\n"
                        << "parallel: {dp: 4, zero: 3, prefetch: " << prefetch << "}\n"
                        << "output: {dir: " << (root_ / "run").string() << "}\n";
    return load_train_config(file, {});
  }

  // One training step of rank 0 of 4 on meta; the allocator's timeline is on.
  struct Step {
    std::unique_ptr<Allocator> alloc = Allocator::create(Device::meta()), host = Allocator::create(Device::meta());
    std::unique_ptr<Communicator> dp = make_fake_communicator(0, 4), one = make_fake_communicator(0, 1);
    RankModel rm;
  };
  std::unique_ptr<Step> step(const TrainConfig& c, Zero3Trace* trace = nullptr) {
    auto s = std::make_unique<Step>();
    const ModelSource source(c);
    s->rm = build_rank_model(c, source, *s->alloc, *s->host, {s->dp.get(), s->one.get(), s->one.get()});
    if (trace != nullptr) set_zero3_trace(*s->rm.state, trace);
    AdamW adam(s->rm.state->owned(), *s->alloc, {});
    StepEngine engine(*s->rm.model, adam, *s->dp, *s->rm.state, {0, 1.0});
    Batch b;
    b.B = 1;
    b.T = 16;
    b.tokens.assign(16, 0);
    b.targets.assign(16, 0);
    b.num_targets = 16;
    s->alloc->enable_timeline(true);
    engine.step(std::span<const Batch>(&b, 1), 0, 1e-3);
    return s;
  }

  fs::path root_;
};

TEST_F(Zero3Schedule, AtMostOnePlusPrefetchBlocksAreGatheredAtOnce) {
  for (int prefetch : {1, 2}) {
    const TrainConfig c = config(prefetch);
    const auto s = step(c);
    // the bytes one block's gathered groups take (every block alike)
    const ModelLayout& layout = s->rm.model->layout();
    int64_t block = 0;
    for (const ParamGroup& g : layout.units[ModelLayout::block_unit(0)].groups)
      block += static_cast<int64_t>(Allocator::round_size(
          static_cast<size_t>((g.numel + 3) / 4 * 4) * dtype_size(g.dtype)));
    // replay the timeline: live `comm` bytes, the largest while each block's forward runs
    std::map<std::string, int64_t> most;
    int64_t live = 0;
    for (const TimelineEvent& e : s->alloc->timeline()) {
      if (e.category != MemCategory::comm) continue;
      live += e.delta;
      most[e.phase] = std::max(most[e.phase], live);
    }
    // blocks 0 .. L-1-prefetch look ahead only at blocks (the head is bigger)
    for (int l = 0; l + prefetch < kLayers; ++l) {
      const std::string phase = "forward layer " + std::to_string(l);
      ASSERT_TRUE(most.count(phase)) << phase;
      EXPECT_EQ(most[phase], (1 + prefetch) * block) << phase << ", prefetch " << prefetch;
    }
    EXPECT_EQ(live, 0) << "everything gathered was freed";
  }
}

class Events : public Zero3Trace {
 public:
  void record(const std::string& e) override { events.push_back(e); }
  size_t at(const std::string& e) const {
    for (size_t i = 0; i < events.size(); ++i)
      if (events[i] == e) return i;
    ADD_FAILURE() << "no event '" << e << "'";
    return 0;
  }
  // The first occurrence of `e` after position `from`.
  size_t after(size_t from, const std::string& e) const {
    for (size_t i = from + 1; i < events.size(); ++i)
      if (events[i] == e) return i;
    ADD_FAILURE() << "no event '" << e << "' after " << from;
    return 0;
  }
  std::vector<std::string> events;
};

TEST_F(Zero3Schedule, TheNextBlocksGatherIsInFlightWhileABlockComputes) {
  Events ev;
  const auto s = step(config(1), &ev);
  for (int l = 0; l + 1 < kLayers; ++l) {
    const std::string u = std::to_string(ModelLayout::block_unit(l)), next = std::to_string(ModelLayout::block_unit(l + 1));
    const size_t compute = ev.at("compute " + u);  // the forward of block l begins
    const size_t computed = ev.after(compute, "computed " + u);
    const size_t issued = ev.at("gather issued " + next);
    const size_t waited = ev.at("gather waited " + next);
    EXPECT_LT(issued, compute) << "block " << l + 1 << "'s gather is started before block " << l << " computes";
    EXPECT_GT(waited, computed) << "and waited for only after it has computed";
  }
  // in the backward, the block below is prefetched the same way
  const std::string last = std::to_string(ModelLayout::block_unit(kLayers - 1));
  const std::string below = std::to_string(ModelLayout::block_unit(kLayers - 2));
  const size_t back = ev.after(ev.at("computed " + last), "compute " + last);  // its backward
  const size_t issued = ev.after(ev.at("gather waited " + below), "gather issued " + below);
  EXPECT_LT(issued, back);
  EXPECT_GT(ev.after(issued, "gather waited " + below), ev.after(back, "computed " + last));
}

}  // namespace
}  // namespace lmtune
