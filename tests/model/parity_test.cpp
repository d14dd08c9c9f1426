// Parity of lmtune's hand-written LLaMA forward/backward with an independent PyTorch
// reference (tests/reference/llama_ref.py, float64 autograd):
//   * random models with awkward sizes (6 heads, grouped-query 6:2, head_dim 8, H = 100,
//     V = 97, rope_theta 50000, untied; tied + attention biases on q, k, v, o), and the
//     families beyond Llama 2: Llama 3.1's rope scaling (llama3 bands, and linear), Qwen3
//     (per-head q/k RMSNorm, head_dim 12 != 48 / 6), Qwen2 (q/k/v biases implied by
//     model_type, tied): logits, loss sum and count, and every parameter gradient,
//     max |ours - ref| / max |ref| <= 1e-4 per tensor;
//   * stories15M (when models/stories15M is present): imported with `lmtune import llama2c`,
//     a real sentence tokenized by lmtune (and checked against the reference's own llama2.c
//     BPE encoder); the reference reads model.bin directly in
//     llama2.c's own layout (interleaved RoPE), so the importer's q/k permutation is checked
//     too. Mean loss within 1e-4 relative, logits within 1e-4 of their max.
// The reference also checks itself (RoPE/attention against loops, gradcheck): ReferenceSelfTest.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kernels/ops.h"
#include "model/reference_util.h"
#include "trainer/core/allocator.h"
#include "trainer/data/tokenizer.h"
#include "trainer/model/llama.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;
using test_util::compare_tensors;
using test_util::Deviation;
using test_util::HostTensor;
using test_util::run_reference;
using test_util::TempDir;

constexpr double kTolerance = 1e-4;

std::string fmt(double v) {
  std::ostringstream os;
  os << std::setprecision(3) << std::scientific << v;
  return os.str();
}

// Holds the worst deviation over a set of tensors, for the failure message and the log.
struct Worst {
  std::string name;
  Deviation dev;
  void update(const std::string& n, const Deviation& d) {
    if (name.empty() || d.rel > dev.rel) {
      name = n;
      dev = d;
    }
  }
};

const HostTensor& get(const std::map<std::string, HostTensor>& m, const std::string& name) {
  auto it = m.find(name);
  if (it == m.end()) throw std::runtime_error("the reference output has no tensor '" + name + "'");
  return it->second;
}

// B x T tokens and targets; a few targets ignored (both -100 and -1 spellings).
void make_batch(int64_t B, int64_t T, int32_t V, uint32_t seed, std::vector<int32_t>& tokens,
                std::vector<int32_t>& targets) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  tokens.resize(B * T);
  targets.resize(B * T);
  for (auto& t : tokens) t = tok(rng);
  for (int64_t i = 0; i < B * T; ++i) targets[i] = i + 1 < B * T ? tokens[i + 1] : tok(rng);
  targets[3] = -100;
  targets[T - 1] = -1;
  targets[T] = -100;
  targets[2 * T - 2] = -100;
}

struct RandomParityResult {
  double logits_rel = 0, loss_rel = 0;
  Worst grad;
  std::vector<float> logits;  // ours, (B*T, V)
  std::vector<int32_t> tokens;
};

// Generates a random model with `overrides`, runs the reference and lmtune, compares all.
// `inspect` (optional) sees the model directory before it is removed.
void run_random_model_parity(const std::string& tag, const nlohmann::json& overrides, RandomParityResult* result,
                             const std::function<void(const fs::path&)>& inspect = nullptr) {
  TempDir dir("parity_" + tag);
  {
    std::ofstream(dir / "config_overrides.json") << overrides.dump(2) << "\n";
  }
  const fs::path model_dir = dir / "model";
  auto made = run_reference({"make-model", "--out", model_dir.string(), "--config",
                             (dir / "config_overrides.json").string(), "--seed", "1234"},
                            dir.path());
  ASSERT_TRUE(made.ok()) << made.describe();

  const int64_t B = 2, T = 11;
  const int32_t V = overrides.at("vocab_size").get<int32_t>();
  std::vector<int32_t> tokens, targets;
  make_batch(B, T, V, 42, tokens, targets);
  test_util::write_batch_json(dir / "batch.json", tokens, targets, B, T);
  auto ran = run_reference({"grads", "--model", model_dir.string(), "--input", (dir / "batch.json").string(), "--out",
                            (dir / "ref.safetensors").string()},
                           dir.path());
  ASSERT_TRUE(ran.ok()) << ran.describe();
  const auto ref = test_util::read_safetensors_file(dir / "ref.safetensors");

  auto alloc = Allocator::create(Device::cpu());
  ModelOptions opts;
  opts.role = ParamRole::trainable;
  auto model = LlamaModel::load(model_dir, *alloc, opts);
  model->allocate_grads();
  Tensor tok = make_token_tensor(*alloc, tokens, B, T);
  Tensor tgt = make_token_tensor(*alloc, targets, B, T);

  // Logits.
  {
    Tensor logits = model->forward_logits(tok);
    ASSERT_EQ(logits.shape(), (Shape{B * T, V}));
    const HostTensor& r = get(ref, "logits");
    result->logits = logits.to_f32();
    result->tokens = tokens;
    const Deviation d = compare_tensors(result->logits, r.data);
    result->logits_rel = d.rel;
    EXPECT_LE(d.rel, kTolerance) << tag << " logits: max |ours - ref| " << fmt(d.max_abs) << " / max |ref| "
                                 << fmt(d.ref_max) << " at flat index " << d.worst;
  }

  // Loss and gradients of the summed loss (loss_scale = 1).
  const double ref_sum = get(ref, "loss_sum_f64").data.at(0);
  const int64_t ref_count = static_cast<int64_t>(get(ref, "count").data.at(0));
  ASSERT_EQ(ref_count, B * T - 4);
  const LossResult loss = model->forward_backward(tok, tgt, 1.0f);
  EXPECT_EQ(loss.count, ref_count);
  result->loss_rel = std::abs(loss.sum - ref_sum) / std::abs(ref_sum);
  EXPECT_LE(result->loss_rel, kTolerance) << tag << " loss sum: ours " << loss.sum << ", reference " << ref_sum;
  EXPECT_GT(loss.mean(), 1.0);  // a random model over 97 tokens: around log(97) = 4.6
  EXPECT_LT(loss.mean(), 10.0);

  std::vector<ParamRef> params = model->parameters();
  size_t ref_grads = 0;
  for (const auto& [name, t] : ref) ref_grads += name.rfind("grad.", 0) == 0;
  EXPECT_EQ(params.size(), ref_grads) << tag << ": lmtune and the reference disagree on the parameter list";
  std::vector<std::string> failures;
  for (ParamRef& p : params) {
    ASSERT_TRUE(p.grad.defined()) << p.name << " has no gradient";
    auto it = ref.find("grad." + p.name);
    if (it == ref.end()) {
      failures.push_back(p.name + ": not in the reference");
      continue;
    }
    ASSERT_EQ(p.grad.numel(), it->second.numel()) << p.name;
    const Deviation d = compare_tensors(p.grad.to_f32(), it->second.data);
    EXPECT_GT(d.ref_max, 1e-3) << p.name << ": the reference gradient is too small to test anything";
    result->grad.update(p.name, d);
    if (!(d.rel <= kTolerance))
      failures.push_back(p.name + ": rel " + fmt(d.rel) + " (max abs " + fmt(d.max_abs) + ", max |ref| " +
                         fmt(d.ref_max) + ", index " + std::to_string(d.worst) + ")");
  }
  std::ostringstream all;
  for (const auto& f : failures) all << "\n  " << f;
  EXPECT_TRUE(failures.empty()) << tag << ": " << failures.size() << " gradient(s) off; worst "
                                << result->grad.name << " rel " << fmt(result->grad.dev.rel) << all.str();

  // Gradients accumulate and follow loss_scale: a second call with scale 2 leaves 3x the
  // reference; forward_loss gives the same loss without touching the gradients.
  const LossResult again = model->forward_backward(tok, tgt, 2.0f);
  EXPECT_NEAR(again.sum, loss.sum, 1e-6 * std::abs(loss.sum));
  const LossResult eval = model->forward_loss(tok, tgt);
  EXPECT_NEAR(eval.sum, loss.sum, 1e-6 * std::abs(loss.sum));
  EXPECT_EQ(eval.count, loss.count);
  Worst tripled;
  for (ParamRef& p : model->parameters()) {
    std::vector<double> r3 = get(ref, "grad." + p.name).data;
    for (double& v : r3) v *= 3.0;
    tripled.update(p.name, compare_tensors(p.grad.to_f32(), r3));
  }
  EXPECT_LE(tripled.dev.rel, kTolerance) << tag << ": after a second step with loss_scale 2, " << tripled.name
                                         << " is off 3x the reference by rel " << fmt(tripled.dev.rel);

  std::cout << "[parity " << tag << "] logits rel " << fmt(result->logits_rel) << ", loss rel "
            << fmt(result->loss_rel) << ", worst grad " << result->grad.name << " rel "
            << fmt(result->grad.dev.rel) << " (" << params.size() << " tensors)\n";
  if (inspect) inspect(model_dir);
}

void expect_parity(const RandomParityResult& res) {
  EXPECT_LE(res.logits_rel, kTolerance);
  EXPECT_LE(res.loss_rel, kTolerance);
  EXPECT_LE(res.grad.dev.rel, kTolerance) << res.grad.name;
}

// The logits of the model in `dir` with its config.json's rope_scaling removed, for
// `tokens` (B = 2 rows).
std::vector<float> unscaled_logits(const fs::path& dir, const std::vector<int32_t>& tokens) {
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  cfg["rope_scaling"] = nullptr;
  std::ofstream(dir / "config.json") << cfg.dump(2) << "\n";
  auto alloc = Allocator::create(Device::cpu());
  auto model = LlamaModel::load(dir, *alloc);
  const int64_t T = static_cast<int64_t>(tokens.size()) / 2;
  return model->forward_logits(make_token_tensor(*alloc, tokens, 2, T)).to_f32();
}

// max |a - b| / max |b|: how much the scaling moved the logits.
double moved(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<double> bd(b.begin(), b.end());
  return compare_tensors(a, bd).rel;
}

nlohmann::json awkward_config() {
  return {{"hidden_size", 48},          {"num_attention_heads", 6}, {"num_key_value_heads", 2},
          {"intermediate_size", 100},   {"num_hidden_layers", 2},   {"vocab_size", 97},
          {"rope_theta", 50000.0},      {"rms_norm_eps", 1e-5},     {"tie_word_embeddings", false},
          {"attention_bias", false},    {"max_position_embeddings", 64}};
}

TEST(ParityTest, ReferenceSelfTest) {
  TempDir dir("parity_selftest");
  auto r = run_reference({"selftest"}, dir.path());
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.output.find("selftest: all passed"), std::string::npos) << r.output;
}

TEST(ParityTest, RandomModelGqaUntied) {
  RandomParityResult res;
  run_random_model_parity("gqa_untied", awkward_config(), &res);
  expect_parity(res);
}

// Llama: attention_bias biases q, k, v and o (HF LlamaAttention).
TEST(ParityTest, RandomModelTiedWithAttentionBias) {
  nlohmann::json cfg = awkward_config();
  cfg["tie_word_embeddings"] = true;
  cfg["attention_bias"] = true;
  RandomParityResult res;
  run_random_model_parity("tied_attention_bias", cfg, &res);
  expect_parity(res);
}

// Llama 3.1's rope_scaling, shrunk so that T = 11 positions feel it: head_dim 16, theta
// 10000, original_max_position_embeddings 64 put the 8 frequencies in all three bands
// (1 kept, 2 smoothed, 5 divided by the factor 4).
TEST(ParityTest, RandomModelLlama31RopeScaling) {
  nlohmann::json cfg = awkward_config();
  cfg["hidden_size"] = 64;
  cfg["num_attention_heads"] = 4;
  cfg["rope_theta"] = 10000.0;
  cfg["max_position_embeddings"] = 256;
  cfg["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 4.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  RandomParityResult res;
  double scaling_moved = 0;
  run_random_model_parity("llama31_rope_scaling", cfg, &res,
                          [&](const fs::path& dir) { scaling_moved = moved(res.logits, unscaled_logits(dir, res.tokens)); });
  expect_parity(res);
  // The scaling is not a no-op here: without it the logits move by far more than the tolerance.
  EXPECT_GT(scaling_moved, 100 * kTolerance) << "rope_scaling barely changes this model; the test would not see it";
  std::cout << "[parity llama31_rope_scaling] logits without the scaling move by " << fmt(scaling_moved) << "\n";
}

// Qwen3: q_norm / k_norm on each head, head_dim 12 (q: (72, 48), o: (48, 72)), and linear
// rope scaling (positions / 2.5).
TEST(ParityTest, RandomModelQwen3QkNormHeadDim) {
  nlohmann::json cfg = awkward_config();
  cfg["model_type"] = "qwen3";
  cfg["head_dim"] = 12;
  cfg["rope_theta"] = 1000.0;
  cfg["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.5}};
  RandomParityResult res;
  double scaling_moved = 0;
  run_random_model_parity("qwen3_qk_norm_head_dim", cfg, &res,
                          [&](const fs::path& dir) { scaling_moved = moved(res.logits, unscaled_logits(dir, res.tokens)); });
  expect_parity(res);
  EXPECT_GT(scaling_moved, 100 * kTolerance);
}

// Qwen2 / Qwen2.5: q/k/v biases from model_type alone (its config.json has no
// attention_bias key), none on o; tied embeddings as the small Qwen2.5 models have.
TEST(ParityTest, RandomModelQwen2Biases) {
  nlohmann::json cfg = awkward_config();
  cfg["model_type"] = "qwen2";
  cfg.erase("attention_bias");
  cfg["tie_word_embeddings"] = true;
  cfg["rope_theta"] = 1000000.0;
  cfg["rms_norm_eps"] = 1e-6;
  RandomParityResult res;
  run_random_model_parity("qwen2_biases", cfg, &res);
  expect_parity(res);
}

TEST(ParityTest, Stories15MLossAndLogits) {
  const fs::path src = fs::path(LMTUNE_MODELS_DIR) / "stories15M";
  if (!fs::exists(src / "model.bin") || !fs::exists(src / "tokenizer.bin"))
    GTEST_SKIP() << "no " << (src / "model.bin") << " (scripts/fetch_model.sh fetches it)";
  TempDir dir("parity_stories15m");
  const fs::path hf = dir / "stories15M-hf";
  auto imported = test_util::run_command(test_util::shell_quote(LMTUNE_BINARY) + " import llama2c " +
                                             test_util::shell_quote((src / "model.bin").string()) + " " +
                                             test_util::shell_quote((src / "tokenizer.bin").string()) + " " +
                                             test_util::shell_quote(hf.string()),
                                         dir.path());
  ASSERT_TRUE(imported.ok()) << imported.describe();

  const std::string text =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
  const Tokenizer tokenizer = Tokenizer::from_model_dir(hf);
  const std::vector<int32_t> ids = tokenizer.encode(text, AddBos::yes);
  const Tokenizer tokenizer_bin = Tokenizer::from_llama2c(src / "tokenizer.bin");
  EXPECT_EQ(ids, tokenizer_bin.encode(text, AddBos::yes)) << "tokenizer.json and tokenizer.bin encode differently";
  ASSERT_GE(ids.size(), 15u);
  ASSERT_EQ(ids.front(), 1);
  EXPECT_EQ(tokenizer.decode(ids), text);
  // The reference's own llama2.c BPE encoder must agree (it starts "Once upon a time" =
  // 9038 2501 263 931).
  auto encoded = run_reference({"tokenize", "--tokenizer", (src / "tokenizer.bin").string(), "--text", text}, dir.path());
  ASSERT_TRUE(encoded.ok()) << encoded.describe();
  const size_t list_at = encoded.output.rfind('[');
  ASSERT_NE(list_at, std::string::npos) << encoded.describe();
  EXPECT_EQ(ids, nlohmann::json::parse(encoded.output.substr(list_at)).get<std::vector<int32_t>>()) << "lmtune and the reference tokenize differently";
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + 5), (std::vector<int32_t>{1, 9038, 2501, 263, 931}));

  const int64_t T = static_cast<int64_t>(ids.size()) - 1;
  std::vector<int32_t> tokens(ids.begin(), ids.end() - 1), targets(ids.begin() + 1, ids.end());
  test_util::write_batch_json(dir / "batch.json", tokens, targets, 1, T);
  auto ran = run_reference({"forward", "--llama2c", (src / "model.bin").string(), "--input",
                            (dir / "batch.json").string(), "--out", (dir / "ref.safetensors").string()},
                           dir.path());
  ASSERT_TRUE(ran.ok()) << ran.describe();
  const auto ref = test_util::read_safetensors_file(dir / "ref.safetensors");
  const double ref_mean = get(ref, "loss_sum_f64").data.at(0) / get(ref, "count").data.at(0);

  auto alloc = Allocator::create(Device::cpu());
  auto model = LlamaModel::load(hf, *alloc, ModelOptions{});  // frozen f32 weights
  ASSERT_EQ(model->config().vocab_size, 32000);
  Tensor tok = make_token_tensor(*alloc, tokens, 1, T);
  Tensor tgt = make_token_tensor(*alloc, targets, 1, T);
  const LossResult loss = model->forward_loss(tok, tgt);
  EXPECT_EQ(loss.count, T);
  const double loss_rel = std::abs(loss.mean() - ref_mean) / ref_mean;
  EXPECT_LE(loss_rel, kTolerance) << "stories15M mean loss: ours " << loss.mean() << ", reference " << ref_mean;
  // The model knows this sentence (the reference gives 0.274 nats): far below log(32000) = 10.4.
  EXPECT_LT(ref_mean, 1.0);
  EXPECT_GT(ref_mean, 0.05);

  Tensor logits = model->forward_logits(tok);
  const Deviation d = compare_tensors(logits.to_f32(), get(ref, "logits").data);
  EXPECT_LE(d.rel, kTolerance) << "stories15M logits: max |ours - ref| " << fmt(d.max_abs) << " / max |ref| "
                               << fmt(d.ref_max) << " at flat index " << d.worst;
  std::cout << "[parity stories15M] " << T << " tokens, mean loss ours " << std::setprecision(8) << loss.mean()
            << " ref " << ref_mean << " (rel " << fmt(loss_rel) << "), logits rel " << fmt(d.rel) << "\n";
}

}  // namespace
}  // namespace lmtune
