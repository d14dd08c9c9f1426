#include "trainer/loop/config_checks.h"

#include <algorithm>

#include "trainer/core/error.h"
#include "trainer/peft/lora.h"

namespace lmtune {

namespace {

struct LayerShape {
  int64_t in = 0, out = 0;
};

LayerShape target_shape(LoraTarget t, const LlamaConfig& m) {
  switch (t) {
    case LoraTarget::q: return {m.hidden_size, m.head_dim() * m.num_attention_heads};
    case LoraTarget::k:
    case LoraTarget::v: return {m.hidden_size, m.kv_dim()};
    case LoraTarget::o: return {m.head_dim() * m.num_attention_heads, m.hidden_size};
    case LoraTarget::gate:
    case LoraTarget::up: return {m.hidden_size, m.intermediate_size};
    case LoraTarget::down: return {m.intermediate_size, m.hidden_size};
  }
  return {};
}

}  // namespace

void check_config_against_model(const TrainConfig& c, const LlamaConfig& m, const std::filesystem::path& config_json) {
  LMTUNE_CHECK(c.data.seq_len <= m.max_position_embeddings, "data.seq_len = ", c.data.seq_len,
               " is longer than the model's context: max_position_embeddings is ", m.max_position_embeddings, " in '",
               config_json.string(), "'; set data.seq_len to at most ", m.max_position_embeddings);
  if (!uses_lora(c.method.type)) return;
  const int64_t rank = c.method.lora.rank;
  for (LoraTarget t : c.method.lora.target_modules) {
    const LayerShape s = target_shape(t, m);
    const int64_t limit = std::min(s.in, s.out);
    LMTUNE_CHECK(rank <= limit, "method.lora.rank = ", rank, " is larger than the smaller dimension of ",
                 lora_module_path(std::string(to_string(t))), " (in_features ", s.in, ", out_features ", s.out,
                 " in every layer of '", config_json.string(), "'); use a rank of at most ", limit,
                 ", or leave '", to_string(t), "' out of method.lora.target_modules");
  }
}

std::string train_oom_advice(const TrainConfig& c) {
  std::string a;
  auto add = [&a](const std::string& s) { a += (a.empty() ? "" : "; ") + s; };
  if (c.train.micro_batch_size > 1)
    add("a smaller train.micro_batch_size (now " + std::to_string(c.train.micro_batch_size) +
        ") with more train.grad_accum_steps (now " + std::to_string(c.train.grad_accum_steps) +
        ") keeps the batch and lowers activation memory");
  add("a shorter data.seq_len (now " + std::to_string(c.data.seq_len) + ")");
  if (c.parallel.recompute != Recompute::full)
    add(std::string("activation recompute (parallel.recompute: full") +
        (c.parallel.recompute == Recompute::none ? ", or selective" : "") + "; now " +
        std::string(to_string(c.parallel.recompute)) + ")");
  if (c.method.type == MethodType::full)
    add("LoRA instead of full fine-tuning (method.type: lora), whose frozen base can also be stored in bf16 "
        "(model.dtype: bf16)");
  else if (c.method.type == MethodType::lora && c.model.dtype == DType::f32)
    add("model.dtype: bf16 for the frozen base weights, or method.type: qlora to store them as NF4");
  return a;
}

}  // namespace lmtune
