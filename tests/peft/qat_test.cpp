// QAT's layer against the formula it implements, and the export of a QAT run over a bf16
// base: the weight the export merges (and quantizes) is the one training fake-quantized,
// bf16(W) + scaling B A, to the last bit.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>

#include "common/test_models.h"
#include "kernels/cpu/quant.h"
#include "kernels/ops.h"
#include "trainer/io/safetensors.h"
#include "trainer/loop/export.h"
#include "trainer/loop/train_config.h"
#include "trainer/loop/trainer.h"
#include "trainer/peft/qat.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

// y = fq8(x) fq4(W + s B A)^T + b, computed here from the codecs with a plain loop.
TEST(Qat, LinearComputesTheFakeQuantizedProduct) {
  auto alloc = Allocator::create(Device::cpu());
  const int64_t N = 3, in = 64, out = 5, r = 2;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  auto make = [&](Shape s) {
    Tensor t = Tensor::empty(*alloc, s, DType::f32, MemCategory::weights);
    std::vector<float> v(static_cast<size_t>(t.numel()));
    for (float& x : v) x = nd(rng);
    t.copy_from_host(v.data(), DType::f32);
    return t;
  };
  const std::vector<Tensor> params = {make({out, in}), make({out}), make({r, in}), make({out, r})};
  QatLinear layer(out, in, 0, 1, 2, 3, 1.5f);
  layer.bind(params, {});
  const Tensor x = make({N, in});
  Tensor y = Tensor::empty(*alloc, {N, out}, DType::f32, MemCategory::activations);
  layer.forward(y, x, {});
  const std::vector<float> W = params[0].to_f32(), b = params[1].to_f32(), A = params[2].to_f32(),
                           B = params[3].to_f32(), X = x.to_f32(), Y = y.to_f32();
  std::vector<float> merged(W), wq(W.size()), xq(X.size());
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      double acc = 0;
      for (int64_t k = 0; k < r; ++k) acc += static_cast<double>(B[o * r + k]) * A[k * in + i];
      merged[o * in + i] += static_cast<float>(1.5 * acc);
    }
  cpu::fake_quant_q4_0(wq.data(), merged.data(), static_cast<int64_t>(merged.size()));
  cpu::fake_quant_q8_0(xq.data(), X.data(), static_cast<int64_t>(X.size()));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double want = b[o];
      for (int64_t i = 0; i < in; ++i) want += static_cast<double>(xq[n * in + i]) * wq[o * in + i];
      EXPECT_NEAR(Y[n * out + o], want, 1e-5 * (1 + std::abs(want))) << n << ", " << o;
    }
}

TEST(Qat, ExportOfABf16BaseMergesWhatTrainingQuantized) {
  if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
  const fs::path root = testing::temp_dir("lmtune-qat-bf16");
  const fs::path model = testing::write_tiny_train_model(root / "model");
  std::ofstream(root / "text.txt") << "The little fox ran to the river to drink and to look at the silver fish.\n";
  std::ofstream(root / "cfg.yaml") << "model: {path: " << model.string() << ", dtype: bf16}\n"
                                   << "method: {type: lora, lora: {rank: 4, alpha: 8, target_modules: all-linear}, "
                                      "qat: {scheme: q4_0}}\n"
                                   << "data: {train_files: [" << (root / "text.txt").string() << "], seq_len: 16}\n"
                                   << "train: {max_steps: 2, micro_batch_size: 2, lr: 0.02, eval_every: 0, "
                                      "sample_tokens: 0, threads: 1}\n"
                                   << "output: {dir: " << (root / "run").string() << "}\n";
  {
    auto alloc = Allocator::create(Device::cpu());
    std::ostringstream log;
    train(load_train_config(root / "cfg.yaml", {}), *alloc, Progress::quiet, log);
  }
  auto alloc = Allocator::create(Device::cpu());
  export_run(root / "run", ExportFormat::hf, root / "hf", "f32", *alloc);
  const SafeTensorsReader base = SafeTensorsReader::open(model), merged = SafeTensorsReader::open(root / "hf");
  const auto trained = testing::read_checkpoint_tensors(root / "run" / "checkpoint-2");
  const std::string m = "model.layers.1.mlp.down_proj";
  const SafeTensorInfo& w = base.get(m + ".weight");
  const int64_t rows = w.shape[0], cols = w.shape[1], r = 4;
  std::vector<float> want(static_cast<size_t>(w.numel()));
  std::memcpy(want.data(), w.data, want.size() * 4);
  const std::vector<float>& A = trained.at(m + ".lora_A.weight");
  const std::vector<float>& B = trained.at(m + ".lora_B.weight");
  for (int64_t o = 0; o < rows; ++o)
    for (int64_t i = 0; i < cols; ++i) {
      float& v = want[static_cast<size_t>(o * cols + i)];
      v = bf16_to_f32(f32_to_bf16(v));
      double acc = 0;
      for (int64_t k = 0; k < r; ++k) acc += static_cast<double>(B[o * r + k]) * A[k * cols + i];
      v += static_cast<float>(2.0 * acc);
    }
  const SafeTensorInfo& got = merged.get(m + ".weight");
  ASSERT_EQ(got.numel(), w.numel());
  EXPECT_EQ(std::memcmp(got.data, want.data(), want.size() * 4), 0)
      << "the export did not merge into the bf16 values the QAT run trained with";
}

}  // namespace
}  // namespace lmtune
