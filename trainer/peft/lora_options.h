// LoRA's options and the names of the projections it can adapt — plain values the model's
// parameter layout reads (trainer/model/param_layout.h) without knowing the LoRA layer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lmtune {

enum class RsLora { no, yes };

struct LoraOptions {
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  RsLora rslora = RsLora::no;
  // Any of q, k, v, o, gate, up, down.
  std::vector<std::string> targets = {"q", "v"};
  double scaling() const;
  bool targets_projection(const std::string& short_name) const;
};

// The short names and their HF module paths inside a block.
const std::vector<std::string>& lora_target_names();      // q, k, v, o, gate, up, down
std::string lora_module_path(const std::string& target);  // "self_attn.q_proj", "mlp.up_proj", ...

}  // namespace lmtune
