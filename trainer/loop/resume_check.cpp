#include "trainer/loop/resume_check.h"

#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <cstdlib>
#include <optional>

#include "trainer/core/error.h"
#include "trainer/io/file_util.h"

namespace lmtune {

namespace fs = std::filesystem;

const std::vector<std::string>& resume_fixed_keys() {
  static const std::vector<std::string> keys = {
      "model.path",         "model.dtype",          "method.type",       "method.lora.rank",
      "method.lora.alpha",  "method.lora.rslora",   "method.lora.target_modules",
      "data.format",        "data.train_files",     "data.validation_split", "data.seq_len",
      "data.packing",       "data.add_bos",         "data.add_eos",      "data.prompt_template",
      "data.chat_template", "data.shuffle",         "data.seed",         "train.grad_accum_steps"};
  return keys;
}

namespace {

YAML::Node parse_yaml(const std::string& text, const std::string& source) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    LMTUNE_THROW("'", source, "' is not valid YAML: ", e.msg);
  }
}

// The node at a dotted key, if the config has it.
std::optional<YAML::Node> lookup(const YAML::Node& root, const std::string& key) {
  YAML::Node n = YAML::Clone(root);
  size_t from = 0;
  while (true) {
    const size_t dot = key.find('.', from);
    const std::string part = key.substr(from, dot == std::string::npos ? std::string::npos : dot - from);
    if (!n.IsMap() || !n[part]) return std::nullopt;
    n = n[part];
    if (dot == std::string::npos) return n;
    from = dot + 1;
  }
}

std::string show(const YAML::Node& n) {
  if (n.IsNull()) return "null";
  if (n.IsScalar()) return n.Scalar().empty() ? "''" : n.Scalar();
  std::string s;
  if (n.IsSequence()) {
    for (const auto& e : n) s += (s.empty() ? "" : ", ") + show(e);
    return "[" + s + "]";
  }
  for (const auto& kv : n) s += (s.empty() ? "" : ", ") + kv.first.Scalar() + ": " + show(kv.second);
  return "{" + s + "}";
}

std::optional<double> as_number(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return std::nullopt;
  return v;
}

bool same(const YAML::Node& a, const YAML::Node& b) {
  if (a.IsScalar() && b.IsScalar()) {
    const auto x = as_number(a.Scalar()), y = as_number(b.Scalar());
    if (x && y) return *x == *y;
  }
  return show(a) == show(b);
}

}  // namespace

void check_resume_config(const TrainConfig& c, const fs::path& checkpoint) {
  const fs::path file = checkpoint / "config.yaml";
  const YAML::Node saved = parse_yaml(read_file_to_string(file, "checkpoint config"), file.string());
  const YAML::Node now = parse_yaml(to_yaml(c), "the current config");
  const auto saved_type = lookup(saved, "method.type");
  const std::string then = saved_type ? show(*saved_type) : std::string(to_string(c.method.type));
  const std::string method_now(to_string(c.method.type));
  if (then == "lora" && method_now == "full")
    LMTUNE_THROW("cannot resume '", checkpoint.string(), "' as full fine-tuning (method.type: full): it holds a LoRA "
                 "run's adapters (method.type: lora). Resume it with method.type=lora, or export the merged model "
                 "(lmtune export RUN_DIR --format hf --out DIR) and start a new full fine-tuning run with model.path=DIR");
  if (then == "full" && method_now == "lora")
    LMTUNE_THROW("cannot resume '", checkpoint.string(), "' with LoRA (method.type: lora): it holds a full "
                 "fine-tuning run's weights (method.type: full). Resume it with method.type=full, or export it "
                 "(lmtune export RUN_DIR --format hf --out DIR) and start a new LoRA run with model.path=DIR");

  std::string changed;
  int n_changed = 0;
  for (const std::string& key : resume_fixed_keys()) {
    if (key.rfind("method.lora.", 0) == 0 && !uses_lora(c.method.type)) continue;
    if (key == "data.prompt_template" && c.data.format != DataFormat::alpaca) continue;
    if (key == "data.chat_template" && c.data.format != DataFormat::chat) continue;
    const auto a = lookup(saved, key);
    const auto b = lookup(now, key);
    if (!a || !b || same(*a, *b)) continue;
    changed += (n_changed++ ? "; " : "") + key + " (saved: " + show(*a) + ", now: " + show(*b) + ")";
  }
  // The rows of one micro-batch over all data-parallel ranks: the layout may change, the
  // global micro-batch may not (the loader's position counts its rows).
  const auto saved_micro = lookup(saved, "train.micro_batch_size");
  const auto saved_dp = lookup(saved, "parallel.dp");
  const std::optional<double> m = saved_micro ? as_number(saved_micro->Scalar()) : std::nullopt;
  const std::optional<double> d = saved_dp ? as_number(saved_dp->Scalar()) : std::optional<double>(1.0);
  if (m && d && c.parallel.dp != ParallelSection::kAuto &&
      *m * *d != static_cast<double>(c.train.micro_batch_size * c.parallel.dp)) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "train.micro_batch_size x parallel.dp, the global micro-batch (saved: %g x %g, now: %lld x %lld)",
                  *m, *d, static_cast<long long>(c.train.micro_batch_size), static_cast<long long>(c.parallel.dp));
    changed += (n_changed++ ? "; " : "") + std::string(buf);
  }
  LMTUNE_CHECK(n_changed == 0, "cannot resume '", checkpoint.string(), "': ", n_changed == 1 ? "a key" : "keys",
               " that must stay the same on resume changed: ", changed,
               ". Set them back, or start a new run (another output.dir, or output.overwrite=true); the keys that "
               "may change on resume are listed in the README");
}

void check_resume_data(const fs::path& checkpoint, const TrainerState& saved, const DataFingerprint& now,
                       const TrainConfig& c) {
  if (!saved.train_data || *saved.train_data == now) return;
  std::string files;
  for (const auto& f : c.data.train_files) files += (files.empty() ? "'" : ", '") + f + "'";
  LMTUNE_THROW("cannot resume '", checkpoint.string(), "': the training data is not what it was trained on (",
               saved.train_data->rows, " rows of ", c.data.seq_len, " tokens then, ", now.rows,
               " now, and their tokens differ) although the config's data keys are the same: the files of "
               "data.train_files (", files, ") or the model's tokenizer changed since. Restore them, or start a new "
               "run (another output.dir, or output.overwrite=true)");
}

}  // namespace lmtune
