// Export of a training run (`lmtune export`):
//   hf    merged weights (LoRA folded into the base: W += scaling * B A) as an HF model
//         directory that loads like the input did (config.json, model.safetensors, the
//         tokenizer files copied from the base model)
//   peft  adapter_config.json + adapter_model.safetensors with PEFT's key names
//   gguf  GGUF v3 of the merged model (via a merged HF directory), F32 / F16 / Q8_0
#pragma once

#include <filesystem>
#include <string>

#include "trainer/core/allocator.h"
#include "trainer/core/dtype.h"

namespace lmtune {

enum class ExportFormat { hf, peft, gguf };
ExportFormat parse_export_format(const std::string& s);

// `source` is a run directory (its latest checkpoint is used) or a checkpoint directory.
// dtype: "f32" | "f16" | "bf16" for hf/peft; "f32" | "f16" | "q8_0" for gguf.
// The model (and any dtype-converted copies of its tensors) are held on `alloc`. On a meta
// allocator the same steps run up to the file writes, which are skipped.
void export_run(const std::filesystem::path& source, ExportFormat format, const std::filesystem::path& out,
                const std::string& dtype, Allocator& alloc);
// The tracked memory of export_run, predicted by running it on the meta device.
MemoryStats predict_export_memory(const std::filesystem::path& source, ExportFormat format, const std::string& dtype);

}  // namespace lmtune
