#include "trainer/loop/inference.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/ops.h"
#include "trainer/core/random.h"

namespace lmtune {


int32_t sample_token(const float* logits, int64_t V, float temperature, float top_p, uint64_t& rng_state) {
  if (temperature <= 0.0f) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  const float mx = *std::max_element(logits, logits + V);
  std::vector<double> p(static_cast<size_t>(V));
  double z = 0;
  for (int64_t i = 0; i < V; ++i) z += (p[i] = std::exp((static_cast<double>(logits[i]) - mx) / temperature));
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  int64_t keep = V;
  if (top_p < 1.0f) {
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] != p[b] ? p[a] > p[b] : a < b; });
    double cum = 0;
    for (keep = 0; keep < V;) {
      cum += p[order[keep++]] / z;
      if (cum >= top_p) break;
    }
  }
  double mass = 0;
  for (int64_t i = 0; i < keep; ++i) mass += p[order[i]];
  double r = splitmix64_unit(rng_state) * mass;
  for (int64_t i = 0; i < keep; ++i) {
    r -= p[order[i]];
    if (r <= 0) return order[i];
  }
  return order[keep - 1];
}

std::vector<int32_t> generate(LlamaModel& model, const std::vector<int32_t>& prompt, const SamplingOptions& opts,
                              const std::function<void(int32_t)>& on_token, StopAtEos stop, UnitHooks* hooks) {
  const LlamaConfig& cfg = model.config();
  LMTUNE_CHECK(!prompt.empty(), "generation needs a non-empty prompt");
  LMTUNE_CHECK(opts.max_new_tokens >= 0, "--max-new-tokens must be >= 0, got ", opts.max_new_tokens);
  LMTUNE_CHECK(opts.temperature >= 0.0f, "--temperature must be >= 0, got ", opts.temperature);
  LMTUNE_CHECK(opts.top_p > 0.0f && opts.top_p <= 1.0f, "--top-p must be in (0, 1], got ", opts.top_p);
  const int64_t total = static_cast<int64_t>(prompt.size()) + opts.max_new_tokens;
  LMTUNE_CHECK(total <= cfg.max_position_embeddings, "the prompt (", prompt.size(), " tokens) plus --max-new-tokens ",
               opts.max_new_tokens, " is ", total, " positions, more than the model's max_position_embeddings (",
               cfg.max_position_embeddings, ")");
  Allocator& alloc = model.allocator();
  const bool meta = alloc.device().is_meta();
  alloc.set_phase("generate: prefill");
  KVCache cache = model.make_kv_cache(1, total);
  std::vector<int32_t> out;
  uint64_t rng = opts.seed;
  Tensor logits =
      model.forward_cached(make_token_tensor(alloc, prompt, 1, static_cast<int64_t>(prompt.size())), cache, hooks);
  for (int64_t i = 0; i < opts.max_new_tokens; ++i) {
    const int32_t next =
        meta ? 0 : sample_token(logits.data<float>(), cfg.vocab_size, opts.temperature, opts.top_p, rng);
    if (!meta && stop == StopAtEos::yes && next == cfg.eos_token_id) break;
    out.push_back(next);
    if (on_token) on_token(next);
    if (i + 1 == opts.max_new_tokens) break;
    alloc.set_phase("generate: decode");
    logits = Tensor();
    logits = model.forward_cached(make_token_tensor(alloc, {next}, 1, 1), cache, hooks);
  }
  alloc.set_phase("");
  return out;
}

PerplexityResult perplexity(LlamaModel& model, const std::vector<int32_t>& tokens, int64_t seq_len) {
  LMTUNE_CHECK(seq_len >= 2, "--seq-len must be at least 2, got ", seq_len);
  LMTUNE_CHECK(seq_len <= model.config().max_position_embeddings, "--seq-len ", seq_len,
               " is longer than the model's max_position_embeddings (", model.config().max_position_embeddings, ")");
  Allocator& alloc = model.allocator();
  double sum = 0;
  int64_t count = 0;
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (int64_t start = 0; start + 1 < n; start += seq_len) {
    const int64_t len = std::min(seq_len, n - start);
    std::vector<int32_t> inp(tokens.begin() + start, tokens.begin() + start + len - 1);
    std::vector<int32_t> tgt(tokens.begin() + start + 1, tokens.begin() + start + len);
    const LossResult r = model.forward_loss(make_token_tensor(alloc, inp, 1, len - 1),
                                            make_token_tensor(alloc, tgt, 1, len - 1));
    sum += r.sum;
    count += r.count;
  }
  LMTUNE_CHECK(count > 0, "perplexity needs at least two tokens (BOS and one more)");
  PerplexityResult res;
  res.tokens = count;
  res.nll = sum / static_cast<double>(count);
  res.ppl = std::exp(res.nll);
  return res;
}

}  // namespace lmtune
