// NF4 with double quantization (QLoRA's storage, bitsandbytes' layout) against the
// independent numpy reference tests/reference/nf4_ref.py: the same bytes (codes, absmax
// codes, nested absmax, offset, map) and the same dequantized values to the last bit, on
// random tensors chosen for their edges (partial blocks, odd sizes, zero blocks, outliers,
// values exactly on the NF4 midpoints, more than one nested block) and on every projection
// matrix of stories15M. Then the layout rows, a bitsandbytes checkpoint written by the
// reference loaded as it is (and dequantized into a float model), and `export --dtype nf4`
// read back by the reference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "common/test_models.h"
#include "kernels/cpu/quant.h"
#include "kernels/ops.h"
#include "trainer/io/safetensors.h"
#include "trainer/loop/export.h"
#include "trainer/peft/lora.h"
#include "trainer/model/llama.h"
#include "trainer/peft/nf4.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string nf4_ref(const std::string& args) {
  return quote(LMTUNE_PYTHON) + " " +
         quote((fs::path(LMTUNE_SOURCE_DIR) / "tests" / "reference" / "nf4_ref.py").string()) + " " + args;
}

#define REQUIRE_PYTHON()                                                                   \
  if (!fs::exists(LMTUNE_PYTHON)) GTEST_SKIP() << LMTUNE_PYTHON << " (with numpy) not found"

// lmtune's NF4 of w (f32 values) on the CPU.
struct Ours {
  std::vector<uint8_t> codes, absmax;
  std::vector<float> nested, offset, map, dequantized;
};

Ours quantize(const std::vector<float>& w) {
  auto alloc = Allocator::create(Device::cpu());
  const int64_t n = static_cast<int64_t>(w.size());
  Tensor t = Tensor::empty(*alloc, {n}, DType::f32, MemCategory::weights);
  t.copy_from_host(w.data(), DType::f32);
  ops::Nf4Weight q = nf4_workspace(*alloc, {n});
  ops::nf4_quantize(q, t);
  Tensor d = Tensor::empty(*alloc, {n}, DType::f32, MemCategory::weights);
  ops::nf4_dequantize(d, q);
  auto bytes = [](const Tensor& x) {
    const auto* p = static_cast<const uint8_t*>(x.raw());
    return std::vector<uint8_t>(p, p + x.numel());
  };
  return {bytes(q.codes), bytes(q.absmax), q.nested_absmax.to_f32(), q.offset.to_f32(), q.nested_code.to_f32(),
          d.to_f32()};
}

std::vector<uint8_t> u8_of(const SafeTensorInfo& t) {
  EXPECT_EQ(t.dtype, DType::u8) << t.name;
  const auto* p = static_cast<const uint8_t*>(t.data);
  return std::vector<uint8_t>(p, p + t.numel());
}

std::vector<float> f32_of(const SafeTensorInfo& t) {
  EXPECT_EQ(t.dtype, DType::f32) << t.name;
  std::vector<float> v(static_cast<size_t>(t.numel()));
  std::memcpy(v.data(), t.data, v.size() * 4);
  return v;
}

// Bitwise equality of float vectors (so -0 != 0 and NaN would be caught), with the first
// difference in the message.
void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], 4) != 0) {
      ADD_FAILURE() << what << ": element " << i << " is " << a[i] << " in lmtune, " << b[i] << " in the reference";
      return;
    }
}

void expect_matches_reference(const std::string& name, const std::vector<float>& w, const SafeTensorsReader& ref,
                              int64_t* compared_values) {
  SCOPED_TRACE(name);
  const Ours ours = quantize(w);
  EXPECT_EQ(ours.codes, u8_of(ref.get(name + ".codes")));
  EXPECT_EQ(ours.absmax, u8_of(ref.get(name + ".absmax")));
  expect_same_bits(ours.nested, f32_of(ref.get(name + ".nested_absmax")), "nested absmax");
  expect_same_bits(ours.offset, f32_of(ref.get(name + ".nested_offset")), "offset");
  expect_same_bits(ours.map, f32_of(ref.get(name + ".nested_quant_map")), "8-bit map");
  expect_same_bits(ours.dequantized, f32_of(ref.get(name + ".dequantized")), "dequantized values");
  *compared_values += static_cast<int64_t>(w.size());
}

std::map<std::string, std::vector<float>> edge_tensors() {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::student_t_distribution<float> heavy(2.0f);
  auto fill = [&](size_t n, auto& dist) {
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
  };
  std::map<std::string, std::vector<float>> t;
  t["normal_64x64"] = fill(64 * 64, normal);
  t["odd_partial_7x9"] = fill(63, normal);           // one partial block, an odd count
  t["partial_33x50"] = fill(33 * 50, normal);        // 25 full blocks + 50 values
  t["nested_blocks"] = fill(300 * 64 + 17, heavy);   // 301 blocks: two nested blocks, the last partial
  std::vector<float> z = fill(64 * 8, normal);
  std::fill(z.begin(), z.begin() + 64, 0.0f);        // an all-zero block
  z[64 * 2 + 5] = 40.0f;                             // an outlier
  for (int i = 64 * 3; i < 64 * 4; ++i) z[i] = -std::fabs(z[i]) - 1e-3f;  // all negative
  z[64 * 5 + 1] = -0.0f;
  t["zeros_outliers"] = z;
  // Values exactly on the NF4 midpoints (absmax 1: scaled = x): ties take the lower code.
  std::vector<float> m(64, 0.0f);
  const float* c = cpu::nf4_code();
  m[0] = 1.0f;
  for (int i = 0; i < 15; ++i) m[1 + i] = (c[i] + c[i + 1]) / 2.0f;
  for (int i = 0; i < 15; ++i) m[16 + i] = std::nextafter(m[1 + i], 2.0f);
  t["midpoints"] = m;
  return t;
}

TEST(Nf4, MatchesTheNumpyReferenceOnEdgeCases) {
  REQUIRE_PYTHON();
  const fs::path dir = testing::temp_dir("lmtune-nf4-edges");
  const auto tensors = edge_tensors();
  SafeTensorsWriter w;
  for (const auto& [name, v] : tensors) w.add(name, DType::f32, {static_cast<int64_t>(v.size())}, v.data());
  w.write(dir / "in.safetensors");
  const auto r = testing::run_command(nf4_ref("quantize " + quote((dir / "in.safetensors").string()) + " " +
                                              quote((dir / "ref.safetensors").string())));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const SafeTensorsReader ref = SafeTensorsReader::open(dir / "ref.safetensors");
  int64_t n = 0;
  for (const auto& [name, v] : tensors) expect_matches_reference(name, v, ref, &n);
  // The midpoints took the lower code, the next floats above them the upper one.
  const Ours mid = quantize(tensors.at("midpoints"));
  for (int i = 0; i < 15; ++i) {
    const int at = 1 + i, above = 16 + i;
    EXPECT_EQ((mid.codes[at / 2] >> (at % 2 ? 0 : 4)) & 0xF, i) << "midpoint " << i;
    EXPECT_EQ((mid.codes[above / 2] >> (above % 2 ? 0 : 4)) & 0xF, i + 1) << "above midpoint " << i;
  }
  // The all-zero block: the code of 0 (7) everywhere, and it dequantizes to exactly 0 times
  // its (double-quantized, nonzero) absmax.
  const Ours zo = quantize(tensors.at("zeros_outliers"));
  for (int i = 0; i < 32; ++i) EXPECT_EQ(zo.codes[i], 0x77) << i;
  std::cout << "[ nf4 ] " << n << " values: identical bytes and dequantized values\n";
}

TEST(Nf4, MatchesTheNumpyReferenceOnStories15M) {
  REQUIRE_PYTHON();
  const fs::path hf = testing::stories15m_hf_dir();
  if (hf.empty()) GTEST_SKIP() << "stories15M not fetched";
  const fs::path out = testing::temp_dir("lmtune-nf4-stories") / "ref.safetensors";
  const auto r = testing::run_command(nf4_ref("quantize " + quote(hf.string()) + " " + quote(out.string()) +
                                              " --projections"));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const SafeTensorsReader ref = SafeTensorsReader::open(out);
  const SafeTensorsReader model = SafeTensorsReader::open(hf);
  int64_t n = 0, weights = 0;
  for (const std::string& name : model.names()) {
    if (!ref.contains(name + ".codes")) continue;
    const SafeTensorInfo& t = model.get(name);
    expect_matches_reference(name, f32_of(t), ref, &n);
    ++weights;
  }
  EXPECT_EQ(weights, 6 * 7);
  std::cout << "[ nf4 ] stories15M: " << weights << " projection matrices, " << n
            << " values: identical bytes and dequantized values\n";
}

// The rows of an NF4 projection, their groups, and how they shard.
TEST(Nf4, LayoutRowsAndShardQuantum) {
  LlamaConfig c;
  c.hidden_size = 48;  // q: 48 x 48 = 2304 values = 36 blocks; k: 16 x 48 = 12 blocks
  c.intermediate_size = 100;  // gate: 100 x 48 = 4800 values = 75 blocks
  c.num_hidden_layers = 1;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.vocab_size = 64;
  ModelOptions o;
  o.base_quant = BaseQuant::nf4;
  LoraOptions lo;
  lo.rank = 2;
  o.lora = lo;
  const ModelLayout m = model_param_layout(c, o);
  const UnitLayout& b = m.units[ModelLayout::block_unit(0)];
  EXPECT_EQ(b.group_of(ParamGroupKind::base), -1) << "no float projection matrices under QLoRA";
  const ParamGroup& codes = b.groups[static_cast<size_t>(b.group_of(ParamGroupKind::nf4_codes))];
  const ParamGroup& absmax = b.groups[static_cast<size_t>(b.group_of(ParamGroupKind::nf4_absmax))];
  const ParamGroup& tables = b.groups[static_cast<size_t>(b.group_of(ParamGroupKind::nf4_tables))];
  for (const ParamGroup* g : {&codes, &absmax, &tables}) {
    EXPECT_EQ(g->category, MemCategory::quant);
    EXPECT_FALSE(g->trains);
  }
  EXPECT_EQ(codes.dtype, DType::u8);
  EXPECT_EQ(absmax.dtype, DType::u8);
  EXPECT_EQ(tables.dtype, DType::f32);
  EXPECT_EQ(codes.shard_quantum, 32);
  // blocks: q 36, k 12, v 12, o 36, gate 75, up 75, down 75 (100 x 48 as well)
  const int64_t blocks = 36 + 12 + 12 + 36 + 75 * 3;
  EXPECT_EQ(codes.numel, blocks * 32);
  EXPECT_EQ(absmax.numel, blocks);
  EXPECT_EQ(tables.numel, 7 * (1 + 1 + 256));  // one nested block each, offset, map
  // every weight starts on a block boundary of the codes group, and its absmax codes at the
  // same block index of the absmax group
  int64_t block = 0;
  for (const ParamRow& r : b.rows) {
    if (b.groups[static_cast<size_t>(r.group)].kind != ParamGroupKind::nf4_codes) continue;
    EXPECT_EQ(r.offset % 32, 0) << r.name;
    EXPECT_EQ(r.offset / 32, block) << r.name;
    EXPECT_EQ(b.rows[static_cast<size_t>(b.index(r.name + ".absmax"))].offset, block) << r.name;
    EXPECT_EQ(r.weight_shape.size(), 2u) << r.name;
    block += (shape_numel(r.weight_shape) + 63) / 64;
  }
  EXPECT_EQ(block, blocks);
  EXPECT_EQ(b.trainable_numel(), b.groups[static_cast<size_t>(b.group_of(ParamGroupKind::adapters))].numel);
}

LlamaConfig tiny_config() {
  LlamaConfig c;
  c.hidden_size = 48;
  c.intermediate_size = 100;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.vocab_size = 32000;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = false;
  return c;
}

std::vector<float> logits_of(LlamaModel& m, const std::vector<int32_t>& ids) {
  return m.forward_logits(make_token_tensor(m.allocator(), ids, 1, static_cast<int64_t>(ids.size()))).to_f32();
}

// A bitsandbytes checkpoint written by the reference (its own JSON packing of the quant
// state, its own quantization) loads with its bytes as they are; loaded into a float model
// it is dequantized to the reference's values; both models compute the same logits.
TEST(Nf4, LoadsABitsandbytesCheckpoint) {
  REQUIRE_PYTHON();
  if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
  const fs::path root = testing::temp_dir("lmtune-nf4-bnb");
  testing::write_random_model(root / "f32", tiny_config(), 3);
  auto r = testing::run_command(nf4_ref("to-bnb " + quote((root / "f32").string()) + " " + quote((root / "bnb").string())));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  r = testing::run_command(nf4_ref("dequantize-bnb " + quote((root / "bnb").string()) + " " +
                                   quote((root / "deq.safetensors").string())));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto alloc = Allocator::create(Device::cpu());
  ModelOptions nf4;
  nf4.base_quant = BaseQuant::nf4;
  auto q = LlamaModel::load(root / "bnb", *alloc, nf4);
  auto dense = LlamaModel::load(root / "bnb", *alloc);
  const SafeTensorsReader file = SafeTensorsReader::open(root / "bnb");
  const SafeTensorsReader deq = SafeTensorsReader::open(root / "deq.safetensors");
  int weights = 0;
  for (const ParamRef& p : q->parameters()) {
    if (!deq.contains(p.name) || p.value.dtype() != DType::u8 || p.name.ends_with(".absmax")) continue;
    const std::vector<uint8_t> stored = u8_of(file.get(p.name));
    const auto* held = static_cast<const uint8_t*>(p.value.raw());
    EXPECT_EQ(std::vector<uint8_t>(held, held + stored.size()), stored) << p.name;
    ++weights;
  }
  EXPECT_EQ(weights, 2 * 7);
  for (const ParamRef& p : dense->parameters())
    if (deq.contains(p.name)) expect_same_bits(p.value.to_f32(), f32_of(deq.get(p.name)), p.name);
  const std::vector<int32_t> ids = {1, 450, 4799, 14982, 29871, 432, 2};
  expect_same_bits(logits_of(*q, ids), logits_of(*dense, ids), "logits of the NF4 and the dequantized model");
  // The f32 original quantized by lmtune at load holds the same bytes as the reference's file.
  auto fresh = LlamaModel::load(root / "f32", *alloc, nf4);
  const std::vector<ParamRef> a = fresh->parameters(), b = q->parameters();
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].value.dtype() != DType::u8) continue;
    EXPECT_EQ(std::memcmp(a[i].value.raw(), b[i].value.raw(), a[i].value.nbytes()), 0) << a[i].name;
  }
}

}  // namespace
}  // namespace lmtune

namespace lmtune {
namespace {

// A QLoRA run exported: merged in f32 (the NF4 values plus the scaled adapter product: the
// same function the run trained), and with --dtype nf4 in bitsandbytes' layout — which the
// reference reads back to the values its own quantization of the merged weights gives, which
// lmtune loads as a QLoRA base, and whose export memory the meta device predicts exactly.
TEST(Nf4, QloraRunExportsMergedAndAsBitsandbytes) {
  REQUIRE_PYTHON();
  if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
  const fs::path root = testing::temp_dir("lmtune-nf4-export");
  const fs::path model = testing::write_tiny_train_model(root / "model");
  std::ofstream(root / "text.txt") << "The little fox ran to the river to drink and to look at the silver fish.\n";
  std::ofstream(root / "cfg.yaml") << "model: {path: " << model.string() << "}\n"
                                   << "method: {type: qlora, lora: {rank: 4, alpha: 8, target_modules: all-linear}}\n"
                                   << "data: {train_files: [" << (root / "text.txt").string() << "], seq_len: 16}\n"
                                   << "train: {max_steps: 3, micro_batch_size: 2, lr: 0.02, eval_every: 0, "
                                      "sample_tokens: 0, threads: 1}\n"
                                   << "output: {dir: " << (root / "run").string() << "}\n";
  ASSERT_EQ(testing::run_lmtune("train " + quote((root / "cfg.yaml").string()) + " --quiet").exit_code, 0);
  for (const std::string& args : {"--format hf --out " + quote((root / "f32").string()),
                                  "--format hf --dtype nf4 --out " + quote((root / "nf4").string())}) {
    const auto r = testing::run_lmtune("export " + quote((root / "run").string()) + " " + args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  // the merged model computes what the QLoRA model with its trained adapters computes
  auto alloc = Allocator::create(Device::cpu());
  ModelOptions qlora;
  qlora.base_quant = BaseQuant::nf4;
  LoraOptions lo;
  lo.rank = 4;
  lo.alpha = 8;
  lo.targets = lora_target_names();
  qlora.lora = lo;
  auto trained = LlamaModel::load(model, *alloc, qlora);
  const auto tensors = testing::read_checkpoint_tensors(root / "run" / "checkpoint-3");
  for (ParamRef& p : trained->parameters())
    if (is_adapter_name(p.name)) p.value.copy_from_host(tensors.at(p.name).data(), DType::f32);
  auto merged = LlamaModel::load(root / "f32", *alloc);
  const std::vector<int32_t> ids = {1, 450, 4799, 14982, 29871, 432, 2};
  const std::vector<float> a = logits_of(*trained, ids), b = logits_of(*merged, ids);
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, std::abs(double(a[i]) - b[i])), scale = std::max(scale, std::abs(double(a[i])));
  EXPECT_LT(diff, 1e-5 * scale) << "the merged export computes another function than the QLoRA run";

  // the nf4 export: the reference's reading equals its own NF4 of the merged weights, and lmtune's reading
  auto r = testing::run_command(nf4_ref("dequantize-bnb " + quote((root / "nf4").string()) + " " +
                                        quote((root / "nf4-read.safetensors").string())));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  r = testing::run_command(nf4_ref("quantize " + quote((root / "f32").string()) + " " +
                                   quote((root / "f32-nf4.safetensors").string()) + " --projections"));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const SafeTensorsReader read = SafeTensorsReader::open(root / "nf4-read.safetensors");
  const SafeTensorsReader requant = SafeTensorsReader::open(root / "f32-nf4.safetensors");
  auto dense = LlamaModel::load(root / "nf4", *alloc);
  int weights = 0;
  for (const ParamRef& p : dense->parameters()) {
    if (!read.contains(p.name)) continue;
    expect_same_bits(f32_of(read.get(p.name)), f32_of(requant.get(p.name + ".dequantized")), p.name);
    expect_same_bits(p.value.to_f32(), f32_of(read.get(p.name)), p.name + " (lmtune)");
    ++weights;
  }
  EXPECT_EQ(weights, 2 * 7);
  const auto config = nlohmann::json::parse(std::ifstream(root / "nf4" / "config.json"));
  EXPECT_EQ(config["quantization_config"]["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(config["quantization_config"]["bnb_4bit_use_double_quant"], true);
  auto as_base = LlamaModel::load(root / "nf4", *alloc, qlora);  // loads as a QLoRA base, bytes as they are
  EXPECT_GT(alloc->stats().of(MemCategory::quant).current, 0);
  // the export's memory, predicted on meta
  auto measured = Allocator::create(Device::cpu());
  export_run(root / "run", ExportFormat::hf, root / "nf4-again", "nf4", *measured);
  const MemoryStats predicted = predict_export_memory(root / "run", ExportFormat::hf, "nf4");
  EXPECT_EQ(measured->stats().allocated.peak, predicted.allocated.peak);
  EXPECT_EQ(measured->stats().of(MemCategory::workspace).peak, predicted.of(MemCategory::workspace).peak);
}

}  // namespace
}  // namespace lmtune
