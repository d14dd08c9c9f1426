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

// W (out, in) += s * B (out, r) A (r, in), in double.
void merge_lora(Tensor& w, const Tensor& a, const Tensor& b, double s) {
  const int64_t out = w.size(0), in = w.size(1), r = a.size(0);
  float* W = w.data<float>();
  const float* A = a.data<float>();
  const float* B = b.data<float>();
#pragma omp parallel for
  for (int64_t i = 0; i < out; ++i)
    for (int64_t j = 0; j < in; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < r; ++k) acc += static_cast<double>(B[i * r + k]) * A[k * in + j];
      W[i * in + j] += static_cast<float>(s * acc);
    }
}

DType parse_float_dtype(const std::string& s) {
  LMTUNE_CHECK(s == "f32" || s == "f16" || s == "bf16", "--dtype '", s, "' is not valid for this format (expected f32, f16 or bf16)");
  return dtype_from_name(s);
}

std::string torch_dtype_name(DType t) {
  return t == DType::f32 ? "float32" : t == DType::f16 ? "float16" : "bfloat16";
}

// Writes `tensors` converted to `dtype` into dir/<file> (buffers kept alive until written).
void write_converted(const fs::path& file, const std::vector<std::pair<std::string, Tensor>>& tensors, DType dtype) {
  SafeTensorsWriter w;
  std::vector<std::vector<uint8_t>> keep;
  for (const auto& [name, t] : tensors) {
    std::vector<uint8_t> buf(static_cast<size_t>(t.numel()) * dtype_size(dtype));
    convert_elements(t.raw(), t.dtype(), buf.data(), dtype, t.numel());
    w.add(name, dtype, t.shape(), buf.data());
    keep.push_back(std::move(buf));
  }
  w.write(file);
}

void export_hf(const fs::path& ckpt, const fs::path& out, DType dtype, Allocator& alloc) {
  TrainConfig cfg;
  auto model = load_trained(ckpt, alloc, cfg);
  std::vector<ParamRef> params = model->parameters();
  // fold every adapter into its base weight
  for (const ParamRef& p : params) {
    if (p.name.size() < 20 || p.name.find(".lora_A.weight") == std::string::npos) continue;
    const std::string module = p.name.substr(0, p.name.find(".lora_A.weight"));
    const ParamRef* base = nullptr;
    const ParamRef* b = nullptr;
    for (const ParamRef& q : params) {
      if (q.name == module + ".weight") base = &q;
      if (q.name == module + ".lora_B.weight") b = &q;
    }
    LMTUNE_ASSERT(base && b, "adapter without base for ", module);
    Tensor w = base->value;
    merge_lora(w, p.value, b->value, cfg.method.lora.scale());
  }
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ParamRef& p : params)
    if (!is_adapter_name(p.name)) tensors.emplace_back(p.name, p.value);
  const fs::path tmp = out.parent_path() / (out.filename().string() + ".tmp." + std::to_string(getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  LlamaConfig lc = model->config();
  lc.torch_dtype = torch_dtype_name(dtype);
  save_llama_config(tmp / "config.json", lc);
  write_converted(tmp / "model.safetensors", tensors, dtype);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    if (fs::exists(cfg.model.path / f)) fs::copy_file(cfg.model.path / f, tmp / f);
  if (fs::exists(out)) fs::remove_all(out);
  fs::rename(tmp, out);
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
  const fs::path tmp = out.parent_path() / (out.filename().string() + ".tmp." + std::to_string(getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  write_file_atomic(tmp / "adapter_config.json", config.dump(2) + "\n");
  write_converted(tmp / "adapter_model.safetensors", tensors, dtype);
  if (fs::exists(out)) fs::remove_all(out);
  fs::rename(tmp, out);
}

}  // namespace

MemoryStats predict_export_memory(const fs::path& source) {
  auto meta = Allocator::create(Device::meta());
  TrainConfig cfg;
  load_trained(resolve_checkpoint(source), *meta, cfg);
  return meta->stats();
}

void export_run(const fs::path& source, ExportFormat format, const fs::path& out, const std::string& dtype,
                Allocator& alloc) {
  LMTUNE_CHECK(alloc.device().is_cpu(), "export runs on the CPU, not on ", alloc.device().str());
  const fs::path ckpt = resolve_checkpoint(source);
  if (!out.parent_path().empty()) fs::create_directories(out.parent_path());
  switch (format) {
    case ExportFormat::hf: export_hf(ckpt, out, parse_float_dtype(dtype), alloc); return;
    case ExportFormat::peft: export_peft(ckpt, out, parse_float_dtype(dtype), alloc); return;
    case ExportFormat::gguf: {
      const GgufType type = parse_gguf_type(dtype);
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
