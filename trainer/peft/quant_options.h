// How the blocks' projection matrices are stored (QLoRA) and what arithmetic training sees
// (QAT) — plain values the model's parameter layout reads (trainer/model/param_layout.h)
// without knowing the layers that implement them (trainer/peft/nf4.h, trainer/peft/qat.h).
#pragma once

namespace lmtune {

enum class BaseQuant {
  none,        // in model.dtype, as loaded
  nf4,         // NF4 with double-quantized absmax (bitsandbytes' layout), category quant
  nf4_values,  // in f32, holding the values NF4 stands for: dequantize(quantize(w)), or the
               // dequantized weight of a bitsandbytes checkpoint (export of a QLoRA run)
};

enum class QatScheme {
  none,
  // llama.cpp's Q4_0 x Q8_0 arithmetic: projection weights (with LoRA: base + scaled
  // adapter product) fake-quantized to Q4_0 and their inputs to Q8_0; the embedding and
  // the lm_head (weight and input) to Q8_0 — what `export --format gguf --dtype q4_0` writes.
  q4_0,
};

}  // namespace lmtune
