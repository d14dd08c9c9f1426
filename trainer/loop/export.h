// Export of a training run (`lmtune export`):
//   hf    merged weights (LoRA folded into the base: W += scaling * B A) as an HF model
//         directory that loads like the input did (config.json, model.safetensors, the
//         tokenizer files copied from the base model); --dtype nf4 writes the blocks'
//         projections in bitsandbytes' 4-bit layout. A QLoRA run merges into the values
//         its NF4 base stands for; a QAT run over a bf16/f16 base into that dtype's values.
//   peft  adapter_config.json + adapter_model.safetensors with PEFT's key names
//   gguf  GGUF v3 of the merged model (via a merged HF directory), F32 / F16 / BF16 / Q8_0 /
//         Q4_0
//
// What an export may do to its --out (it never removes anything it did not write):
//  - hf / peft write a directory, staged under a temporary sibling name and moved into place
//    (AtomicDirectory), with lmtune_export.json naming the format, dtype, checkpoint and
//    files. --out may be new or an empty directory. A directory holding an earlier export of
//    the same format (its lmtune_export.json, and nothing but that format's files) is
//    replaced only with Overwrite::yes; the old files are removed only once the new ones are
//    in place. Any other non-empty directory — a project folder, the run directory, the base
//    model's directory — is an error naming it, whatever `overwrite` says.
//  - gguf writes one file through a temporary name and renames it into place. An existing
//    --out is replaced only with Overwrite::yes and only when it is a GGUF file.
//  - Errors name --out, the path and the OS reason.
#pragma once

#include <filesystem>
#include <string>

#include "trainer/core/allocator.h"
#include "trainer/core/dtype.h"
#include "trainer/io/file_util.h"  // Overwrite

namespace lmtune {

enum class ExportFormat { hf, peft, gguf };
ExportFormat parse_export_format(const std::string& s);

// `source` is a run directory (its latest checkpoint is used) or a checkpoint directory.
// dtype: "f32" | "f16" | "bf16" for hf/peft, "nf4" for hf; "f32" | "f16" | "bf16" | "q8_0" |
// "q4_0" for gguf.
// The model (and any dtype-converted copies of its tensors) are held on `alloc`. On a meta
// allocator the same steps run up to the file writes, which are skipped.
void export_run(const std::filesystem::path& source, ExportFormat format, const std::filesystem::path& out,
                const std::string& dtype, Allocator& alloc, Overwrite overwrite = Overwrite::no);
// The tracked memory of export_run, predicted by running it on the meta device.
MemoryStats predict_export_memory(const std::filesystem::path& source, ExportFormat format, const std::string& dtype);

}  // namespace lmtune
