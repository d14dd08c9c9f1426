// Inference on a loaded model: sampling-based generation with a KV cache, and perplexity
// over a token stream. Both run unchanged on the meta device, where they perform the
// allocation sequence of a real run (sampling then picks token 0 and never stops early).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "trainer/model/llama.h"

namespace lmtune {

struct SamplingOptions {
  int64_t max_new_tokens = 64;
  float temperature = 1.0f;  // 0: greedy
  float top_p = 1.0f;        // nucleus sampling threshold, (0, 1]
  uint64_t seed = 0;
};

enum class StopAtEos { no, yes };

// Feeds `prompt` (ids, BOS included by the caller) and samples up to max_new_tokens more,
// calling on_token(id) as each is chosen. Returns the new ids (the EOS that stopped it is
// not included). prompt.size() + max_new_tokens must fit max_position_embeddings.
// `hooks` see every unit of every forward (a parameter store that gathers them).
std::vector<int32_t> generate(LlamaModel& model, const std::vector<int32_t>& prompt, const SamplingOptions& opts,
                              const std::function<void(int32_t)>& on_token, StopAtEos stop = StopAtEos::yes,
                              UnitHooks* hooks = nullptr);

// Picks the next token from logits (V) f32: argmax when temperature == 0, else samples from
// softmax(logits / temperature) restricted to the smallest top-p nucleus.
int32_t sample_token(const float* logits, int64_t V, float temperature, float top_p, uint64_t& rng_state);

struct PerplexityResult {
  double nll = 0.0;  // mean nats per predicted token
  double ppl = 0.0;  // exp(nll)
  int64_t tokens = 0;
};

// Cuts `tokens` into consecutive non-overlapping windows of seq_len; each window predicts
// its own next tokens (window length - 1 predictions; a final window of one token predicts
// nothing).
PerplexityResult perplexity(LlamaModel& model, const std::vector<int32_t>& tokens, int64_t seq_len);

}  // namespace lmtune
