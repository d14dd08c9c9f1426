// Training-step throughput of lmtune on CPU, on stories15M (imported to HF format), B = 8
// sequences of T = 256 random tokens (fixed seed), each row predicting its own next tokens:
//   fwdbwd  full model trainable; one step = zero grads, forward + loss + backward
//   lora    frozen f32 base, rank-8 adapters (alpha 16, no dropout) on all seven linear
//           layers of every block; one step = zero grads, forward + loss + backward,
//           clip to norm 1, AdamW (what the trainer does per optimizer step)
// Its peers are bench/torch_fwdbwd.py and bench/torch_lora.py; bench/run.sh runs a pair
// and prints the ratio.
//
// Usage: step_bench fwdbwd|lora MODEL_DIR [STEPS=5] [THREADS=2]
// Prints one parseable line: lmtune_tokens_per_s=<x>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
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
  const std::string mode = argc > 1 ? argv[1] : "";
  if (argc < 3 || argc > 5 || (mode != "fwdbwd" && mode != "lora")) {
    std::fprintf(stderr, "usage: %s fwdbwd|lora MODEL_DIR [STEPS=5] [THREADS=2]\n", argv[0]);
    return 2;
  }
  const bool lora = mode == "lora";
  const std::string model_dir = argv[2];
  const int steps = argc > 3 ? std::atoi(argv[3]) : 5;
  const int threads = argc > 4 ? std::atoi(argv[4]) : 2;
  LMTUNE_CHECK(steps > 0, "STEPS must be positive, got '", argv[3], "'");
  LMTUNE_CHECK(threads > 0, "THREADS must be positive, got '", argv[4], "'");
  ops::set_num_threads(threads);

  auto alloc = Allocator::create(Device::cpu());
  ModelOptions opts;
  if (lora) {
    LoraOptions lo;
    lo.rank = kRank;
    lo.alpha = 16.0;
    lo.targets = lora_target_names();  // all-linear
    opts.lora = lo;
  } else {
    opts.role = ParamRole::trainable;
  }
  auto model = LlamaModel::load(model_dir, *alloc, opts);
  model->allocate_grads();
  const LlamaConfig& cfg = model->config();
  LMTUNE_CHECK(cfg.max_position_embeddings >= kSeqLen, "the model's context (", cfg.max_position_embeddings,
               ") is shorter than T = ", kSeqLen);
  const std::vector<ParamRef> trainable = model->trainable_parameters();
  int64_t n_trainable = 0;
  for (const ParamRef& p : trainable) n_trainable += p.value.numel();
  std::optional<AdamW> adam;
  if (lora) adam.emplace(trainable, *alloc, AdamWOptions{});

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(cfg.vocab_size) - 1);
  std::vector<int32_t> ids(kBatch * kSeqLen), targets(kBatch * kSeqLen);
  for (auto& t : ids) t = dist(rng);
  for (int64_t b = 0; b < kBatch; ++b)
    for (int64_t t = 0; t < kSeqLen; ++t)
      targets[b * kSeqLen + t] = t + 1 < kSeqLen ? ids[b * kSeqLen + t + 1] : -100;
  const Tensor tokens = make_token_tensor(*alloc, ids, kBatch, kSeqLen);
  const Tensor tgt = make_token_tensor(*alloc, targets, kBatch, kSeqLen);
  const float scale = 1.0f / static_cast<float>(kBatch * (kSeqLen - 1));  // mean loss, as torch's

  auto step = [&] {
    model->zero_grads();
    const LossResult l = model->forward_backward(tokens, tgt, scale);
    if (adam) {
      clip_grad_norm(trainable, 1.0);
      adam->step(1e-4);
    }
    return l;
  };
  LossResult loss = step();  // warmup
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  for (int i = 0; i < steps; ++i) loss = step();
  const double seconds = std::chrono::duration<double>(clock::now() - t0).count();

  const MemoryStats mem = alloc->stats();
  std::printf("lmtune %s: model %s, %lld trainable, B=%lld T=%lld, %d threads, %d steps, %.1f ms/step, loss %.4f, "
              "peak allocated %.1f MiB, reserved %.1f MiB\n",
              mode.c_str(), model_dir.c_str(), static_cast<long long>(n_trainable), static_cast<long long>(kBatch),
              static_cast<long long>(kSeqLen), ops::num_threads(), steps, 1e3 * seconds / steps, loss.mean(),
              mem.allocated.peak / 1048576.0, mem.reserved.peak / 1048576.0);
  std::printf("lmtune_tokens_per_s=%.1f\n", static_cast<double>(steps) * kBatch * kSeqLen / seconds);
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
