// The cost of activation recompute in step time, measured in one process: three copies of
// the model (parallel.recompute none, selective, full; each with its own allocator) take
// turns — one optimizer step each per round (zero grads, forward + loss + backward, clip
// to norm 1, AdamW), the same B sequences of T = 256 random tokens — so that the load of a
// shared machine falls on all three alike. Per policy it prints the median wall and CPU
// time of a step (CPU: the process's, so with 1 thread the work done, little affected by
// other jobs), the median over rounds of the ratio to none's step in the same round, the
// activation and allocated peaks, and whether the loss equals none's bit for bit.
//
// Usage: recompute_bench lora|full MODEL_DIR [B=4] [ROUNDS=8] [THREADS=1]
// bench/recompute.sh runs it next to the memory of `lmtune train` runs.
#include <time.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
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

constexpr int64_t kSeqLen = 256;
constexpr std::array<Recompute, 3> kPolicies = {Recompute::none, Recompute::selective, Recompute::full};
constexpr std::array<const char*, 3> kNames = {"none", "selective", "full"};

double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Trainee {
  std::unique_ptr<Allocator> alloc;
  std::unique_ptr<LlamaModel> model;
  std::vector<ParamRef> trainable;
  std::unique_ptr<AdamW> adam;
  Tensor tokens, targets;
};

int run(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (argc < 3 || argc > 6 || (mode != "lora" && mode != "full")) {
    std::fprintf(stderr, "usage: %s lora|full MODEL_DIR [B=4] [ROUNDS=8] [THREADS=1]\n", argv[0]);
    return 2;
  }
  const std::string model_dir = argv[2];
  const int64_t B = argc > 3 ? std::atoll(argv[3]) : 4;
  const int rounds = argc > 4 ? std::atoi(argv[4]) : 8;
  const int threads = argc > 5 ? std::atoi(argv[5]) : 1;
  LMTUNE_CHECK(B > 0 && rounds > 0 && threads > 0, "B, ROUNDS and THREADS must be positive");
  ops::set_num_threads(threads);

  std::array<Trainee, 3> t;
  for (size_t i = 0; i < kPolicies.size(); ++i) {
    ModelOptions opts;
    if (mode == "lora") {  // the demo's adapters
      LoraOptions lo;
      lo.rank = 8;
      lo.alpha = 16.0;
      lo.targets = lora_target_names();
      opts.lora = lo;
    } else {
      opts.role = ParamRole::trainable;
    }
    opts.recompute = kPolicies[i];
    t[i].alloc = Allocator::create(Device::cpu());
    t[i].model = LlamaModel::load(model_dir, *t[i].alloc, opts);
    t[i].model->allocate_grads();
    t[i].trainable = t[i].model->trainable_parameters();
    t[i].adam = std::make_unique<AdamW>(t[i].trainable, *t[i].alloc, AdamWOptions{});
    const int64_t V = t[i].model->config().vocab_size;
    std::mt19937 rng(1234);
    std::vector<int32_t> ids(B * kSeqLen), targets(B * kSeqLen);
    for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(V));
    for (int64_t k = 0; k < B * kSeqLen; ++k) targets[k] = (k + 1) % kSeqLen ? ids[k + 1] : -100;
    t[i].tokens = make_token_tensor(*t[i].alloc, ids, B, kSeqLen);
    t[i].targets = make_token_tensor(*t[i].alloc, targets, B, kSeqLen);
  }
  const float scale = 1.0f / static_cast<float>(B * (kSeqLen - 1));
  std::array<double, 3> loss{};
  auto step = [&](size_t i, int64_t n) {
    Trainee& x = t[i];
    x.model->zero_grads();
    loss[i] = x.model->forward_backward(x.tokens, x.targets, scale, {static_cast<uint64_t>(n), 0}).sum;
    clip_grad_norm(x.trainable, 1.0);
    x.adam->step(1e-4);
  };
  for (size_t i = 0; i < t.size(); ++i) step(i, 0);  // warmup: AdamW's state, the allocator's segments
  bool same_loss = true;
  std::array<std::vector<double>, 3> wall, cpu, wall_ratio, cpu_ratio;
  using clock = std::chrono::steady_clock;
  for (int r = 1; r <= rounds; ++r) {
    for (size_t i = 0; i < t.size(); ++i) {
      const auto w0 = clock::now();
      const double c0 = cpu_seconds();
      step(i, r);
      cpu[i].push_back(cpu_seconds() - c0);
      wall[i].push_back(std::chrono::duration<double>(clock::now() - w0).count());
    }
    for (size_t i = 0; i < t.size(); ++i) {
      wall_ratio[i].push_back(wall[i].back() / wall[0].back());
      cpu_ratio[i].push_back(cpu[i].back() / cpu[0].back());
      same_loss = same_loss && loss[i] == loss[0];
    }
  }
  std::printf("recompute_bench %s: %s, B=%lld T=%lld, %d thread(s), %d rounds; medians over rounds\n", mode.c_str(),
              model_dir.c_str(), static_cast<long long>(B), static_cast<long long>(kSeqLen), ops::num_threads(),
              rounds);
  std::printf("  %-9s %12s %8s %12s %8s %12s %11s\n", "recompute", "CPU ms/step", "vs none", "wall ms/step", "vs none",
              "activations", "allocated");
  for (size_t i = 0; i < t.size(); ++i) {
    const MemoryStats m = t[i].alloc->stats();
    std::printf("  %-9s %12.1f %7.3fx %12.1f %7.3fx %8.2f MiB %7.2f MiB\n", kNames[i], 1e3 * median(cpu[i]),
                median(cpu_ratio[i]), 1e3 * median(wall[i]), median(wall_ratio[i]),
                m.of(MemCategory::activations).peak / 1048576.0, m.allocated.peak / 1048576.0);
  }
  std::printf("  losses of every round equal to none's bit for bit: %s\n", same_loss ? "yes" : "NO");
  return same_loss ? 0 : 1;
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
