// LoRA training-step throughput of lmtune on CPU: stories15M (imported to HF format) with
// frozen f32 base weights and rank-8 adapters on all seven linear layers of every block
// (alpha 16, dropout 0), B = 8 sequences of T = 256 random tokens. One step is what the
// trainer does per optimizer step without gradient accumulation: zero the gradients,
// forward + loss + backward, clip the gradient norm to 1, AdamW.
// Its peer is bench/torch_lora.py (the same in PyTorch float32, LoRA through
// tests/reference/train_ref.py's LoraLlamaRef); bench/run.sh lora runs both and prints the
// ratio.
//
// Usage: lora_bench MODEL_DIR [STEPS=5] [THREADS=2]
// Prints one parseable line: lmtune_lora_tokens_per_s=<x>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "trainer/core/allocator.h"
#include "trainer/core/error.h"
#include "trainer/model/llama.h"
#include "trainer/optim/optimizer.h"
#include "trainer/peft/lora.h"

namespace lmtune {
namespace {

constexpr int64_t kBatch = 8;
constexpr int64_t kSeqLen = 256;
constexpr int64_t kRank = 8;

int run(int argc, char** argv) {
  if (argc < 2 || argc > 4) {
    std::fprintf(stderr, "usage: %s MODEL_DIR [STEPS=5] [THREADS=2]\n", argv[0]);
    return 2;
  }
  const std::string model_dir = argv[1];
  const int steps = argc > 2 ? std::atoi(argv[2]) : 5;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 2;
  LMTUNE_CHECK(steps > 0, "STEPS must be positive, got '", argv[2], "'");
  LMTUNE_CHECK(threads > 0, "THREADS must be positive, got '", argv[3], "'");
  ops::set_num_threads(threads);

  auto alloc = Allocator::create(Device::cpu());
  LoraOptions lora;
  lora.rank = kRank;
  lora.alpha = 16.0;
  lora.dropout = 0.0;
  lora.targets = lora_target_names();  // all-linear: q, k, v, o, gate, up, down
  const ModelOptions opts{ParamRole::frozen, DType::f32, lora, /*seed=*/0};
  auto model = LlamaModel::load(model_dir, *alloc, opts);
  model->allocate_grads();
  const LlamaConfig& cfg = model->config();
  LMTUNE_CHECK(cfg.max_position_embeddings >= kSeqLen, "the model's context (", cfg.max_position_embeddings,
               ") is shorter than T = ", kSeqLen);
  const std::vector<ParamRef> trainable = model->trainable_parameters();
  int64_t n_trainable = 0;
  for (const ParamRef& p : trainable) n_trainable += p.value.numel();
  AdamW adam(trainable, *alloc, AdamWOptions{0.9, 0.999, 1e-8, 0.0});

  // Random tokens with a fixed seed; each row predicts its own next token, the last is ignored.
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(cfg.vocab_size) - 1);
  std::vector<int32_t> ids(kBatch * kSeqLen), targets(kBatch * kSeqLen);
  for (auto& t : ids) t = dist(rng);
  for (int64_t b = 0; b < kBatch; ++b)
    for (int64_t t = 0; t < kSeqLen; ++t)
      targets[b * kSeqLen + t] = t + 1 < kSeqLen ? ids[b * kSeqLen + t + 1] : -100;
  Tensor tokens = make_token_tensor(*alloc, ids, kBatch, kSeqLen);
  Tensor tgt = make_token_tensor(*alloc, targets, kBatch, kSeqLen);
  const float scale = 1.0f / static_cast<float>(kBatch * (kSeqLen - 1));  // mean loss, as torch's

  auto step = [&] {
    model->zero_grads();
    const LossResult l = model->forward_backward(tokens, tgt, scale);
    clip_grad_norm(trainable, 1.0);
    adam.step(1e-4);
    return l;
  };
  LossResult loss = step();  // warmup
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  for (int i = 0; i < steps; ++i) loss = step();
  const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
  const double tokens_per_s = static_cast<double>(steps) * kBatch * kSeqLen / seconds;

  const MemoryStats mem = alloc->stats();
  std::printf("lmtune LoRA step: model %s, all-linear r=%lld, %lld trainable, B=%lld T=%lld, %d threads, %d steps, "
              "%.1f ms/step, loss %.4f, peak allocated %.1f MiB, reserved %.1f MiB\n",
              model_dir.c_str(), static_cast<long long>(kRank), static_cast<long long>(n_trainable),
              static_cast<long long>(kBatch), static_cast<long long>(kSeqLen), ops::num_threads(), steps,
              1e3 * seconds / steps, loss.mean(), mem.allocated.peak / 1048576.0, mem.reserved.peak / 1048576.0);
  std::printf("lmtune_lora_tokens_per_s=%.1f\n", tokens_per_s);
  return 0;
}

}  // namespace
}  // namespace lmtune

int main(int argc, char** argv) {
  try {
    return lmtune::run(argc, argv);
  } catch (const lmtune::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.describe().c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
