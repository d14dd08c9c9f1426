// QLoRA's and QAT's memory: the bytes NF4 storage holds per base parameter (measured from
// the allocator's `quant` category, against the layout's closed form), and the meta-device
// prediction of a QLoRA and a QAT training run equal to what the run measured, to the byte,
// category by category.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "common/test_models.h"
#include "kernels/cpu/quant.h"
#include "trainer/loop/train_config.h"
#include "trainer/loop/trainer.h"
#include "trainer/model/llama.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

int64_t projection_params(const LlamaConfig& c) {
  const int64_t C = c.hidden_size, H = c.intermediate_size;
  return c.num_hidden_layers * (C * c.q_dim() * 2 + 2 * C * c.kv_dim() + 3 * C * H);
}

// stories15M's 42 projection matrices (5,971,968 values) as NF4: the bytes held, per value.
TEST(QuantMemory, Nf4BytesPerBaseParameter) {
  const fs::path hf = testing::stories15m_hf_dir();
  if (hf.empty()) GTEST_SKIP() << "stories15M not fetched";
  ModelOptions nf4;
  nf4.base_quant = BaseQuant::nf4;
  auto alloc = Allocator::create(Device::cpu());
  auto model = LlamaModel::load(hf, *alloc, nf4);
  const int64_t n = projection_params(model->config());
  ASSERT_EQ(n, 5'971'968);
  const int64_t held = alloc->stats().of(MemCategory::quant).current;
  // the closed form: per weight (n_w values) 32 bytes per block of 64 + one absmax code per
  // block + 4 bytes per nested block of 256 + the offset + the 256-value 8-bit map; groups
  // rounded up to the allocator's 512-byte blocks
  int64_t expected = 0;
  for (const UnitLayout& u : model->layout().units)
    for (const ParamGroup& g : u.groups)
      if (g.category == MemCategory::quant) expected += (g.nbytes() + 511) / 512 * 512;
  int64_t closed = 0;
  for (int64_t l = 0; l < 6; ++l)
    for (int64_t nw : {288 * 288, 288 * 288, 288 * 288, 288 * 288, 288 * 768, 288 * 768, 288 * 768}) {
      const cpu::Nf4Sizes s = cpu::nf4_sizes(nw);
      closed += s.blocks * 32 + s.blocks + 4 * (s.nested_blocks + 1 + 256);
    }
  EXPECT_EQ(held, expected);
  EXPECT_LE(closed, held);
  EXPECT_LT(held - closed, 6 * 3 * 512);
  const double per_param = static_cast<double>(held) / static_cast<double>(n);
  const double absmax_bits = 8.0 / 64 + 32.0 / (64 * 256);  // the double-quantized scales
  const double map_bytes = 6.0 * 7 * 4 * 257 / static_cast<double>(n);  // per weight: map and offset
  std::printf("[ nf4 ] stories15M: %lld bytes for %lld projection values = %.4f bytes per value "
              "(0.5 codes + %.4f double-quantized absmax (%.3f bits) + %.4f map/offset + allocator rounding)\n",
              static_cast<long long>(held), static_cast<long long>(n), per_param, absmax_bits / 8, absmax_bits,
              map_bytes);
  EXPECT_GT(per_param, 0.5 + absmax_bits / 8);
  EXPECT_LT(per_param, 0.5 + absmax_bits / 8 + map_bytes + 0.001);
  // on the meta device: the same bytes, without the data
  auto meta = Allocator::create(Device::meta());
  auto on_meta = LlamaModel::load(hf, *meta, nf4);
  EXPECT_EQ(meta->stats().of(MemCategory::quant).current, held);
  EXPECT_EQ(meta->stats().allocated.peak, alloc->stats().allocated.peak) << "the load's peak (its staging) differs";
}

TrainConfig tiny_config(const fs::path& root, const std::string& method, const std::string& qat) {
  const fs::path model = root / "model";
  if (!fs::exists(model / "config.json")) testing::write_tiny_train_model(model);
  std::ofstream(root / "text.txt") << "The little fox ran to the river to drink and to look at the silver fish.\n";
  std::ostringstream y;
  y << "model: {path: " << model.string() << "}\n"
    << "method: {type: " << method << ", lora: {rank: 4, alpha: 8, target_modules: all-linear}, qat: {scheme: " << qat
    << "}}\n"
    << "data: {train_files: [" << (root / "text.txt").string() << "], seq_len: 16}\n"
    << "train: {max_steps: 2, micro_batch_size: 2, grad_accum_steps: 2, eval_every: 0, sample_tokens: 0, threads: 1}\n"
    << "output: {dir: " << (root / ("run-" + method + "-" + qat)).string() << "}\n";
  const fs::path file = root / (method + "-" + qat + ".yaml");
  std::ofstream(file) << y.str();
  return load_train_config(file, {});
}

TEST(QuantMemory, QloraAndQatPredictionsAreExact) {
  if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
  const fs::path root = testing::temp_dir("lmtune-quant-memory");
  for (const auto& [method, qat] : {std::pair<std::string, std::string>{"qlora", "none"}, {"lora", "q4_0"},
                                    {"full", "q4_0"}}) {
    SCOPED_TRACE(method + " qat " + qat);
    auto alloc = Allocator::create(Device::cpu());
    std::ostringstream log;
    const TrainSummary s = train(tiny_config(root, method, qat), *alloc, Progress::quiet, log);
    ASSERT_EQ(s.memory.size(), 1u);
    const RankMemory& m = s.memory[0];
    EXPECT_EQ(m.measured.allocated.peak, m.predicted.allocated.peak);
    for (int c = 0; c < kNumMemCategories; ++c)
      EXPECT_EQ(m.measured.category[c].peak, m.predicted.category[c].peak) << mem_category_name(static_cast<MemCategory>(c));
    EXPECT_EQ(m.measured.peak_phase, m.predicted.peak_phase);
    if (method == "qlora") EXPECT_GT(m.measured.of(MemCategory::quant).peak, 0);
    else EXPECT_EQ(m.measured.of(MemCategory::quant).peak, 0);
  }
}

}  // namespace
}  // namespace lmtune
