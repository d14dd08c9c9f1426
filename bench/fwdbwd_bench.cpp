// Training-step throughput of lmtune on CPU: forward + loss + backward of a LLaMA model
// (stories15M imported to HF format) on B = 8 sequences of T = 256 random tokens.
// Its peer is bench/torch_fwdbwd.py (the PyTorch reference model, float32, same B, T and
// threads); bench/run.sh fwdbwd runs both and prints the ratio.
//
// Usage: fwdbwd_bench MODEL_DIR [STEPS=5] [THREADS=2]
// Prints one parseable line: lmtune_tokens_per_s=<x>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "trainer/core/allocator.h"
#include "trainer/core/error.h"
#include "trainer/model/llama.h"

namespace lmtune {
namespace {

constexpr int64_t kBatch = 8;
constexpr int64_t kSeqLen = 256;

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
  ModelOptions opts;
  opts.role = ParamRole::trainable;
  auto model = LlamaModel::load(model_dir, *alloc, opts);
  model->allocate_grads();
  const LlamaConfig& cfg = model->config();
  LMTUNE_CHECK(cfg.max_position_embeddings >= kSeqLen, "the model's context (", cfg.max_position_embeddings,
               ") is shorter than T = ", kSeqLen);

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
    return model->forward_backward(tokens, tgt, scale);
  };
  LossResult loss = step();  // warmup
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  for (int i = 0; i < steps; ++i) loss = step();
  const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
  const double tokens_per_s = static_cast<double>(steps) * kBatch * kSeqLen / seconds;

  const MemoryStats mem = alloc->stats();
  std::printf("lmtune fwd+bwd: model %s, B=%lld T=%lld, %d threads, %d steps, %.1f ms/step, loss %.4f, "
              "peak allocated %.1f MiB, reserved %.1f MiB\n",
              model_dir.c_str(), static_cast<long long>(kBatch), static_cast<long long>(kSeqLen), ops::num_threads(),
              steps, 1e3 * seconds / steps, loss.mean(), mem.allocated.peak / 1048576.0,
              mem.reserved.peak / 1048576.0);
  std::printf("lmtune_tokens_per_s=%.1f\n", tokens_per_s);
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
