#include "trainer/loop/export.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "trainer/io/file_util.h"
#include "trainer/io/gguf.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/checkpoint.h"
#include "trainer/loop/train_config.h"
#include "trainer/loop/trainer.h"
#include "trainer/model/llama.h"

namespace lmtune {

namespace fs = std::filesystem;

ExportFormat parse_export_format(const std::string& s) {
  if (s == "hf") return ExportFormat::hf;
  if (s == "peft") return ExportFormat::peft;
  if (s == "gguf") return ExportFormat::gguf;
  LMTUNE_THROW("unknown export format '", s, "' (expected hf, peft or gguf)");
}

namespace {

fs::path resolve_checkpoint(const fs::path& source) {
  LMTUNE_CHECK(fs::is_directory(source), "'", source.string(), "' is not a run or checkpoint directory");
  if (fs::exists(source / "trainer_state.json")) return source;
  const auto latest = latest_checkpoint(source);
  LMTUNE_CHECK(latest.has_value(), "run directory '", source.string(), "' has no checkpoint-N directory to export");
  return *latest;
}

// The model of the checkpoint: base weights from the config's model.path (always f32 here,
// so the merge is exact), trainable weights from the checkpoint.
std::unique_ptr<LlamaModel> load_trained(const fs::path& ckpt, Allocator& alloc, TrainConfig& cfg) {
  const fs::path cfg_file = ckpt / "config.yaml";
  LMTUNE_CHECK(fs::is_regular_file(cfg_file), "checkpoint '", ckpt.string(), "' has no config.yaml");
  cfg = load_train_config(cfg_file, {});
  cfg.model.dtype = DType::f32;
  cfg.method.lora.init_from.reset();
  auto model = build_model(cfg, alloc);
  // what trained: the adapters under LoRA, every parameter under full fine-tuning
  const SafeTensorsReader r = SafeTensorsReader::open(ckpt / "trainable.safetensors");
  size_t loaded = 0;
  for (ParamRef& p : model->parameters()) {
    if (cfg.method.type == MethodType::lora && !is_adapter_name(p.name)) continue;
    r.load_into(p.name, p.value);
    ++loaded;
  }
  LMTUNE_CHECK(loaded == r.size(), "'", (ckpt / "trainable.safetensors").string(), "' holds ", r.size(),
               " tensors; the run's config.yaml describes ", loaded);
  return model;
}

DType parse_float_dtype(const std::string& s) {
  LMTUNE_CHECK(s == "f32" || s == "f16" || s == "bf16", "--dtype '", s, "' is not valid for this format (expected f32, f16 or bf16)");
  return dtype_from_name(s);
}

std::string torch_dtype_name(DType t) {
  return t == DType::f32 ? "float32" : t == DType::f16 ? "float16" : "bfloat16";
}

// The tensors as `dtype`: the model's own where they already are, else converted copies
// from `alloc` (category workspace, so the memory report sees them).
std::vector<std::pair<std::string, Tensor>> as_dtype(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                                     DType dtype, Allocator& alloc) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [name, t] : tensors) {
    if (t.dtype() == dtype) {
      out.emplace_back(name, t);
      continue;
    }
    Tensor c = Tensor::empty(alloc, t.shape(), dtype, MemCategory::workspace);
    if (!c.is_meta()) convert_elements(t.raw(), t.dtype(), c.raw(), dtype, t.numel());
    out.emplace_back(name, std::move(c));
  }
  return out;
}

// On a meta allocator everything up to the file writes runs (the memory prediction).
void export_hf(const fs::path& ckpt, const fs::path& out, DType dtype, Allocator& alloc) {
  TrainConfig cfg;
  auto model = load_trained(ckpt, alloc, cfg);
  model->merge_adapters();
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ParamRef& p : model->parameters())
    if (!is_adapter_name(p.name)) tensors.emplace_back(p.name, p.value);
  const auto staged = as_dtype(tensors, dtype, alloc);
  if (alloc.device().is_meta()) return;
  AtomicDirectory dir(out);
  LlamaConfig lc = model->config();
  lc.torch_dtype = torch_dtype_name(dtype);
  save_llama_config(dir.staging() / "config.json", lc);
  write_safetensors(dir.staging() / "model.safetensors", staged);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    if (fs::exists(cfg.model.path / f)) fs::copy_file(cfg.model.path / f, dir.staging() / f);
  dir.commit();
}

void export_peft(const fs::path& ckpt, const fs::path& out, DType dtype, Allocator& alloc) {
  TrainConfig cfg;
  auto model = load_trained(ckpt, alloc, cfg);
  LMTUNE_CHECK(cfg.method.type == MethodType::lora, "a PEFT adapter needs a LoRA run; '", ckpt.string(),
               "' is full fine-tuning (export it with --format hf)");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ParamRef& p : model->parameters())
    if (is_adapter_name(p.name)) tensors.emplace_back("base_model.model." + p.name, p.value);
  const LoraSection& l = cfg.method.lora;
  nlohmann::json targets = nlohmann::json::array();
  for (LoraTarget t : l.target_modules) {
    const std::string path = lora_module_path(std::string(to_string(t)));
    targets.push_back(path.substr(path.find('.') + 1));
  }
  const nlohmann::json config = {{"peft_type", "LORA"},
                                 {"task_type", "CAUSAL_LM"},
                                 {"r", l.rank},
                                 {"lora_alpha", l.alpha},
                                 {"lora_dropout", l.dropout},
                                 {"target_modules", targets},
                                 {"use_rslora", l.rslora},
                                 {"bias", "none"},
                                 {"fan_in_fan_out", false},
                                 {"inference_mode", true},
                                 {"init_lora_weights", true},
                                 {"modules_to_save", nullptr},
                                 {"base_model_name_or_path", cfg.model.path.string()}};
  const auto staged = as_dtype(tensors, dtype, alloc);
  if (alloc.device().is_meta()) return;
  AtomicDirectory dir(out);
  write_file_atomic(dir.staging() / "adapter_config.json", config.dump(2) + "\n");
  write_safetensors(dir.staging() / "adapter_model.safetensors", staged);
  dir.commit();
}

}  // namespace

MemoryStats predict_export_memory(const fs::path& source, ExportFormat format, const std::string& dtype) {
  auto meta = Allocator::create(Device::meta());
  export_run(source, format, fs::path(), dtype, *meta);  // writes nothing on meta
  return meta->stats();
}

void export_run(const fs::path& source, ExportFormat format, const fs::path& out, const std::string& dtype,
                Allocator& alloc) {
  LMTUNE_CHECK(alloc.device().is_cpu() || alloc.device().is_meta(), "export runs on the CPU, not on ",
               alloc.device().str());
  const fs::path ckpt = resolve_checkpoint(source);
  if (!out.parent_path().empty()) fs::create_directories(out.parent_path());
  switch (format) {
    case ExportFormat::hf: export_hf(ckpt, out, parse_float_dtype(dtype), alloc); return;
    case ExportFormat::peft: export_peft(ckpt, out, parse_float_dtype(dtype), alloc); return;
    case ExportFormat::gguf: {
      const GgufType type = parse_gguf_type(dtype);
      if (alloc.device().is_meta()) {  // the GGUF conversion is file to file, one tensor at a time
        export_hf(ckpt, out, DType::f32, alloc);
        return;
      }
      const fs::path tmp_hf = out.parent_path() / (".merged-hf.tmp." + std::to_string(getpid()));
      export_hf(ckpt, tmp_hf, DType::f32, alloc);
      try {
        export_gguf(tmp_hf, out, type);
      } catch (...) {
        fs::remove_all(tmp_hf);
        throw;
      }
      fs::remove_all(tmp_hf);
      return;
    }
  }
}

}  // namespace lmtune
