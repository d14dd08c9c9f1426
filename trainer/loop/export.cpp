#include "trainer/loop/export.h"

#include <stdlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <list>

#include <nlohmann/json.hpp>

#include "trainer/io/file_util.h"
#include "trainer/io/gguf.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/checkpoint.h"
#include "trainer/loop/train_config.h"
#include "trainer/loop/trainer.h"
#include "trainer/model/llama.h"
#include "trainer/peft/nf4.h"

namespace lmtune {

namespace fs = std::filesystem;

namespace {

// The projection matrices (the base group) rounded to `dtype`'s values, kept in f32.
void round_base_to(LlamaModel& model, DType dtype) {
  const ModelLayout& layout = model.layout();
  std::vector<ParamRef> params = model.parameters();
  size_t i = 0;
  std::vector<uint16_t> tmp;
  for (const UnitLayout& u : layout.units) {
    for (const ParamRow& row : u.rows) {
      Tensor& w = params[i++].value;
      if (u.groups[static_cast<size_t>(row.group)].kind != ParamGroupKind::base) continue;
      tmp.resize(static_cast<size_t>(w.numel()));
      convert_elements(w.raw(), DType::f32, tmp.data(), dtype, w.numel());
      convert_elements(tmp.data(), dtype, w.raw(), DType::f32, w.numel());
    }
  }
}

}  // namespace

ExportFormat parse_export_format(const std::string& s) {
  if (s == "hf") return ExportFormat::hf;
  if (s == "peft") return ExportFormat::peft;
  if (s == "gguf") return ExportFormat::gguf;
  LMTUNE_THROW("unknown export format '", s, "' (expected hf, peft or gguf)");
}

namespace {

constexpr const char* kExportMarker = "lmtune_export.json";

fs::path resolve_checkpoint(const fs::path& source) {
  LMTUNE_CHECK(fs::is_directory(source), "'", source.string(), "' is not a run or checkpoint directory");
  if (fs::exists(source / "trainer_state.json")) return source;
  const auto latest = latest_checkpoint(source);
  LMTUNE_CHECK(latest.has_value(), "run directory '", source.string(), "' has no checkpoint-N directory to export");
  return *latest;
}

// The model of the checkpoint: base weights from the config's model.path, in f32 so the
// merge is exact — for a QLoRA run the values its NF4 storage stands for (what it trained
// on), for a QAT run over a bf16/f16 base the values that dtype rounds to (what its merged
// weight was computed from) — and the trained weights from the checkpoint.
std::unique_ptr<LlamaModel> load_trained(const fs::path& ckpt, Allocator& alloc, TrainConfig& cfg) {
  const fs::path cfg_file = ckpt / "config.yaml";
  LMTUNE_CHECK(fs::is_regular_file(cfg_file), "checkpoint '", ckpt.string(), "' has no config.yaml");
  cfg = load_train_config(cfg_file, {});
  const DType trained_dtype = cfg.model.dtype;
  cfg.model.dtype = DType::f32;
  cfg.method.lora.init_from.reset();
  ModelOptions opts = model_options(cfg);
  if (opts.base_quant == BaseQuant::nf4) opts.base_quant = BaseQuant::nf4_values;
  auto model = LlamaModel::load(cfg.model.path, alloc, opts);
  if (cfg.method.qat.scheme != QatScheme::none && trained_dtype != DType::f32 && !alloc.device().is_meta())
    round_base_to(*model, trained_dtype);
  // what trained: the adapters under LoRA, every parameter under full fine-tuning
  // (any layout's checkpoint: tensors are read by their logical names)
  const CheckpointReader r = CheckpointReader::open(ckpt);
  size_t loaded = 0, in_checkpoint = 0;
  for (ParamRef& p : model->parameters()) {
    if (uses_lora(cfg.method.type) && !is_adapter_name(p.name)) continue;
    r.read_full(p.name, p.value);
    ++loaded;
  }
  for (const std::string& n : r.names()) in_checkpoint += !(n.ends_with(".exp_avg") || n.ends_with(".exp_avg_sq"));
  LMTUNE_CHECK(loaded == in_checkpoint, "checkpoint '", ckpt.string(), "' holds ", in_checkpoint,
               " trained tensors; the run's config.yaml describes ", loaded);
  return model;
}

// What an hf / peft export writes: every tensor in `floats`, or (hf only, `nf4`) the blocks'
// projection matrices in bitsandbytes' NF4 layout and the rest in f32.
struct ExportDtype {
  DType floats = DType::f32;
  bool nf4 = false;
  std::string name() const { return nf4 ? "nf4" : std::string(dtype_name(floats)); }
};

ExportDtype parse_export_dtype(const std::string& s, ExportFormat format) {
  if (s == "nf4" && format == ExportFormat::hf) return {DType::f32, true};
  LMTUNE_CHECK(s == "f32" || s == "f16" || s == "bf16", "--dtype '", s,
               "' is not valid for this format (expected f32, f16 or bf16",
               format == ExportFormat::hf ? ", or nf4 for bitsandbytes' 4-bit layout)" : ")");
  return {dtype_from_name(s), false};
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

const std::vector<std::string>& hf_file_names() {
  static const std::vector<std::string> names = {"config.json", "model.safetensors", "tokenizer.json",
                                                 "tokenizer_config.json", "generation_config.json", kExportMarker};
  return names;
}

const std::vector<std::string>& peft_file_names() {
  static const std::vector<std::string> names = {"adapter_config.json", "adapter_model.safetensors", kExportMarker};
  return names;
}

// The merged model's HF files, written into the existing directory `dir`. On a meta
// allocator everything up to the file writes runs (the memory prediction), and `dir` is unused.
void write_hf(const fs::path& ckpt, const fs::path& dir, const ExportDtype& dtype, Allocator& alloc) {
  TrainConfig cfg;
  auto model = load_trained(ckpt, alloc, cfg);
  model->merge_adapters();
  std::vector<std::pair<std::string, Tensor>> tensors, projections;
  {
    const std::vector<ParamRef> params = model->parameters();
    size_t i = 0;
    for (const UnitLayout& u : model->layout().units) {
      for (const ParamRow& row : u.rows) {
        const ParamRef& p = params[i++];
        if (is_adapter_name(p.name)) continue;
        const bool projection = u.groups[static_cast<size_t>(row.group)].kind == ParamGroupKind::base;
        (dtype.nf4 && projection ? projections : tensors).emplace_back(p.name, p.value);
      }
    }
  }
  const auto staged = as_dtype(tensors, dtype.floats, alloc);
  std::vector<ops::Nf4Weight> nf4;  // the projections quantized (workspace)
  for (const auto& [name, w] : projections) {
    ops::Nf4Weight q = nf4_workspace(alloc, w.shape());
    ops::nf4_quantize(q, w);
    nf4.push_back(std::move(q));
  }
  if (alloc.device().is_meta()) return;
  LlamaConfig lc = model->config();
  lc.torch_dtype = torch_dtype_name(dtype.floats);
  save_llama_config(dir / "config.json", lc);
  if (dtype.nf4) {
    auto j = nlohmann::ordered_json::parse(read_file_to_string(dir / "config.json", "config.json"));
    j["quantization_config"] = nlohmann::ordered_json::parse(bnb_quantization_config_json());
    write_file_atomic(dir / "config.json", j.dump(2) + "\n");
  }
  SafeTensorsWriter w;
  for (const auto& [name, t] : staged) w.add(name, t);
  std::list<std::string> keep;
  for (size_t i = 0; i < nf4.size(); ++i) nf4_add_bnb_tensors(w, projections[i].first, nf4[i], "float32", keep);
  w.write(dir / "model.safetensors");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    std::error_code ec;
    if (fs::exists(cfg.model.path / f)) fs::copy_file(cfg.model.path / f, dir / f, ec);
    LMTUNE_CHECK(!ec, "cannot copy '", (cfg.model.path / f).string(), "' to '", (dir / f).string(), "': ", ec.message());
  }
}

void write_peft(const fs::path& ckpt, const fs::path& dir, const ExportDtype& dtype, Allocator& alloc) {
  TrainConfig cfg;
  auto model = load_trained(ckpt, alloc, cfg);
  LMTUNE_CHECK(uses_lora(cfg.method.type), "a PEFT adapter needs a LoRA run; '", ckpt.string(),
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
  const auto staged = as_dtype(tensors, dtype.floats, alloc);
  if (alloc.device().is_meta()) return;
  write_file_atomic(dir / "adapter_config.json", config.dump(2) + "\n");
  write_safetensors(dir / "adapter_model.safetensors", staged);
}

// `out` absolute and without a trailing separator or dot segments ("." names the current
// directory by its own name).
fs::path normalized(const fs::path& out) {
  std::error_code ec;
  fs::path p = fs::absolute(out, ec).lexically_normal();
  LMTUNE_CHECK(!ec, "--out '", out.string(), "': ", ec.message());
  if (p.filename().empty()) p = p.parent_path();
  LMTUNE_CHECK(!p.filename().empty() && p != p.root_path(), "--out '", out.string(), "' cannot be written to");
  return p;
}

void create_parent(const fs::path& out) {
  std::error_code ec;
  fs::create_directories(out.parent_path(), ec);
  LMTUNE_CHECK(!ec, "cannot write --out '", out.string(), "': cannot create '", out.parent_path().string(), "': ",
               ec.message());
}

const char* format_name(ExportFormat f) { return f == ExportFormat::hf ? "hf" : f == ExportFormat::peft ? "peft" : "gguf"; }

// What an hf / peft export may do to the directory `out` (see export.h).
void check_export_dir(const fs::path& out, ExportFormat format, Overwrite overwrite) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(out, ec);
  if (!fs::exists(st)) return create_parent(out);
  LMTUNE_CHECK(fs::is_directory(st), "--out '", out.string(), "' exists and is not a directory; an ", format_name(format),
               " export is a directory");
  std::vector<std::string> entries;
  for (fs::directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec))
    entries.push_back(it->path().filename().string());
  LMTUNE_CHECK(!ec, "cannot read --out '", out.string(), "': ", ec.message());
  if (entries.empty()) return;
  std::sort(entries.begin(), entries.end());
  std::string marker_format;
  if (fs::is_regular_file(out / kExportMarker, ec)) {
    const auto j = nlohmann::json::parse(read_file_to_string(out / kExportMarker, kExportMarker), nullptr, false);
    if (j.is_object() && j.contains("format") && j["format"].is_string()) marker_format = j["format"];
  }
  const auto& names = format == ExportFormat::hf ? hf_file_names() : peft_file_names();
  const std::string foreign = first_foreign_entry(out, names);
  if (marker_format == format_name(format) && foreign.empty()) {
    LMTUNE_CHECK(overwrite == Overwrite::yes, "--out '", out.string(), "' holds an earlier ", format_name(format),
                 " export; pass --overwrite to replace it, or choose another --out");
    return;
  }
  std::string listed;
  for (size_t i = 0; i < entries.size() && i < 3; ++i) listed += (i ? ", '" : "'") + entries[i] + "'";
  if (entries.size() > 3) listed += " and " + std::to_string(entries.size() - 3) + " more";
  LMTUNE_THROW("--out '", out.string(), "' is not empty (", listed, ") and is not an earlier ", format_name(format),
               " export", marker_format.empty() ? "" : " (it holds a " + marker_format + " export)",
               "; lmtune does not write into it, with or without --overwrite. Choose a new or empty directory");
}

// What a GGUF export may do to the file `out`.
void check_export_file(const fs::path& out, Overwrite overwrite) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(out, ec);
  if (!fs::exists(st)) return create_parent(out);
  LMTUNE_CHECK(fs::is_regular_file(st), "--out '", out.string(),
               "' exists and is not a file; a GGUF export is one file (give its name, such as model.gguf)");
  LMTUNE_CHECK(overwrite == Overwrite::yes, "--out '", out.string(),
               "' exists; pass --overwrite to replace it, or choose another --out");
  char magic[4] = {};
  std::ifstream f(out, std::ios::binary);
  f.read(magic, 4);
  LMTUNE_CHECK(f.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0, "--out '", out.string(),
               "' is not a GGUF file; --overwrite replaces only a GGUF file, so choose another --out");
}

// Writes an hf / peft export atomically: staged, then moved onto `out` (replacing only an
// earlier export's files), with the marker that says what it is.
void export_dir(const fs::path& ckpt, const fs::path& out, ExportFormat format, const ExportDtype& dtype,
                Allocator& alloc) {
  const auto& names = format == ExportFormat::hf ? hf_file_names() : peft_file_names();
  AtomicDirectory dir(out, names, "--out");
  if (format == ExportFormat::hf) write_hf(ckpt, dir.staging(), dtype, alloc);
  else write_peft(ckpt, dir.staging(), dtype, alloc);
  nlohmann::json files = nlohmann::json::array();
  for (const std::string& n : names)
    if (n != kExportMarker && fs::exists(dir.staging() / n)) files.push_back(n);
  const nlohmann::json marker = {{"format", format_name(format)},
                                 {"dtype", dtype.name()},
                                 {"checkpoint", ckpt.string()},
                                 {"files", files}};
  write_file_atomic(dir.staging() / kExportMarker, marker.dump(2) + "\n");
  dir.commit();
}

// GGUF goes through a merged HF directory: a fresh one (mkdtemp: it can never be a path of
// the user's) next to the output, named inside after the output so that general.name is
// the output's stem; removed, file by file, whatever happens.
void export_gguf_file(const fs::path& ckpt, const fs::path& out, GgufType type, Allocator& alloc) {
  std::string templ = (out.parent_path() / ("." + out.filename().string() + ".merged-hf.XXXXXX")).string();
  LMTUNE_CHECK(::mkdtemp(templ.data()) != nullptr, "cannot write --out '", out.string(), "': cannot create a "
               "temporary directory next to it: ", std::strerror(errno));
  const fs::path tmp(templ);
  std::string stem = out.stem().string();
  if (stem.empty() || stem[0] == '.') stem = "model";
  const fs::path hf = tmp / stem;
  auto cleanup = [&] {
    std::error_code ec;
    for (const std::string& n : hf_file_names()) fs::remove(hf / n, ec);
    fs::remove(hf, ec);
    fs::remove(tmp, ec);
  };
  try {
    fs::create_directory(hf);
    write_hf(ckpt, hf, ExportDtype{}, alloc);
    export_gguf(hf, out, type);
  } catch (...) {
    cleanup();
    throw;
  }
  cleanup();
}

}  // namespace

MemoryStats predict_export_memory(const fs::path& source, ExportFormat format, const std::string& dtype) {
  auto meta = Allocator::create(Device::meta());
  export_run(source, format, fs::path(), dtype, *meta);  // writes nothing on meta
  return meta->stats();
}

void export_run(const fs::path& source, ExportFormat format, const fs::path& out_arg, const std::string& dtype,
                Allocator& alloc, Overwrite overwrite) {
  LMTUNE_CHECK(alloc.device().is_cpu() || alloc.device().is_meta(), "export runs on the CPU, not on ",
               alloc.device().str());
  const fs::path ckpt = resolve_checkpoint(source);
  if (alloc.device().is_meta()) {  // the prediction: the same steps up to the writes (GGUF converts file to file)
    const ExportDtype t = format == ExportFormat::gguf ? ExportDtype{} : parse_export_dtype(dtype, format);
    if (format == ExportFormat::gguf) parse_gguf_type(dtype);
    if (format == ExportFormat::peft) write_peft(ckpt, {}, t, alloc);
    else write_hf(ckpt, {}, t, alloc);
    return;
  }
  const fs::path out = normalized(out_arg);
  switch (format) {
    case ExportFormat::hf:
    case ExportFormat::peft: {
      const ExportDtype t = parse_export_dtype(dtype, format);
      check_export_dir(out, format, overwrite);
      export_dir(ckpt, out, format, t, alloc);
      return;
    }
    case ExportFormat::gguf: {
      const GgufType type = parse_gguf_type(dtype);
      check_export_file(out, overwrite);
      export_gguf_file(ckpt, out, type, alloc);
      return;
    }
  }
}

}  // namespace lmtune
