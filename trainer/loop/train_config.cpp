// Parsing, validation and emission of the training config (see the design note in the header).
//
// How it works: the file is loaded into a YAML tree, the overrides are written into that
// tree (each override key checked against the schema first), and then one pass walks the
// schema section by section, reading each key into the typed struct. Readers never throw;
// they add a message to a Context, so that a file with three typos gets three messages.
// At the end, if there is any message, one lmtune::Error carries them all.
#include "trainer/loop/train_config.h"

#include <glob.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>
#include <system_error>

#include "trainer/core/error.h"
#include "trainer/core/strings.h"
#include "trainer/io/file_util.h"

namespace lmtune {
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------
// Schema: the sections and their keys, in the order to_yaml() writes them.

struct SectionSchema {
  std::string path;  // "train", "method.lora"
  std::vector<std::string> keys;
};

const std::vector<SectionSchema>& schema() {
  static const std::vector<SectionSchema> kSchema = {
      {"", {"model", "method", "data", "train", "parallel", "output"}},
      {"model", {"path", "dtype"}},
      {"method", {"type", "lora", "qat"}},
      {"method.lora", {"rank", "alpha", "dropout", "rslora", "target_modules", "init_from"}},
      {"method.qat", {"scheme"}},
      {"data",
       {"format", "train_files", "validation_files", "validation_split", "seq_len", "packing", "add_bos",
        "add_eos", "prompt_template", "chat_template", "parse_special_tokens", "shuffle", "seed"}},
      {"data.validation_split", {"every_nth", "fraction"}},
      {"train",
       {"max_steps", "epochs", "micro_batch_size", "grad_accum_steps", "lr", "min_lr_ratio", "weight_decay",
        "adam_beta1", "adam_beta2", "adam_eps", "warmup_steps", "schedule", "max_grad_norm", "seed", "threads",
        "log_every", "eval_every", "eval_batches", "save_every", "sample_prompt", "sample_tokens", "resume_from"}},
      {"parallel", {"dp", "tp", "pp", "zero", "recompute", "offload", "prefetch", "bucket_mb", "overlap_grad_reduce"}},
      {"output", {"dir", "overwrite"}},
  };
  return kSchema;
}

const SectionSchema* find_section(const std::string& path) {
  for (const auto& s : schema())
    if (s.path == path) return &s;
  return nullptr;
}

std::string join_key(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

std::string join(const std::vector<std::string>& items, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += items[i];
  }
  return out;
}

// closest_match, plus a swap of two neighbouring letters ("trian" for "train"), which
// plain edit distance counts as two edits.
std::string suggest(std::string_view word, const std::vector<std::string>& candidates) {
  std::string near = closest_match(word, candidates);
  if (!near.empty()) return near;
  for (const auto& c : candidates) {
    if (c.size() != word.size() || c.size() < 2) continue;
    for (size_t i = 0; i + 1 < c.size(); ++i) {
      std::string swapped(word);
      std::swap(swapped[i], swapped[i + 1]);
      if (swapped == c) return c;
    }
  }
  return {};
}

// ---------------------------------------------------------------------------------------
// Enum tables. The first entry of each value is its canonical name; later ones are aliases.

template <typename E>
struct EnumEntry {
  std::string_view name;
  E value;
};

constexpr EnumEntry<MethodType> kMethodTypes[] = {
    {"lora", MethodType::lora}, {"full", MethodType::full}, {"qlora", MethodType::qlora}};
constexpr EnumEntry<QatScheme> kQatSchemes[] = {{"none", QatScheme::none}, {"q4_0", QatScheme::q4_0}};
constexpr EnumEntry<LoraTarget> kLoraTargets[] = {
    {"q", LoraTarget::q},         {"k", LoraTarget::k},        {"v", LoraTarget::v},
    {"o", LoraTarget::o},         {"gate", LoraTarget::gate},  {"up", LoraTarget::up},
    {"down", LoraTarget::down},   {"q_proj", LoraTarget::q},   {"k_proj", LoraTarget::k},
    {"v_proj", LoraTarget::v},    {"o_proj", LoraTarget::o},   {"gate_proj", LoraTarget::gate},
    {"up_proj", LoraTarget::up},  {"down_proj", LoraTarget::down}};
constexpr EnumEntry<DataFormat> kDataFormats[] = {
    {"text", DataFormat::text}, {"alpaca", DataFormat::alpaca}, {"chat", DataFormat::chat}};
constexpr EnumEntry<ChatTemplate> kChatTemplates[] = {
    {"auto", ChatTemplate::auto_detect}, {"llama3", ChatTemplate::llama3}, {"qwen3", ChatTemplate::qwen3},
    {"chatml", ChatTemplate::chatml},    {"llama2", ChatTemplate::llama2}, {"plain", ChatTemplate::plain}};
constexpr EnumEntry<LrSchedule> kSchedules[] = {
    {"cosine", LrSchedule::cosine}, {"linear", LrSchedule::linear}, {"constant", LrSchedule::constant}};
constexpr EnumEntry<Recompute> kRecompute[] = {
    {"none", Recompute::none}, {"full", Recompute::full}, {"selective", Recompute::selective}};
constexpr EnumEntry<Offload> kOffload[] = {
    {"none", Offload::none}, {"optimizer", Offload::optimizer}, {"params", Offload::params}};
constexpr EnumEntry<DType> kModelDTypes[] = {
    {"f32", DType::f32},      {"bf16", DType::bf16},    {"f16", DType::f16},     {"fp32", DType::f32},
    {"float32", DType::f32},  {"bfloat16", DType::bf16}, {"fp16", DType::f16},   {"float16", DType::f16}};

template <typename E, size_t N>
std::string_view enum_name(const EnumEntry<E> (&table)[N], E v) {
  for (const auto& e : table)
    if (e.value == v) return e.name;
  LMTUNE_ASSERT(false, "enum value missing from its table");
  return {};
}

template <typename E, size_t N>
std::vector<std::string> canonical_names(const EnumEntry<E> (&table)[N]) {
  std::vector<std::string> out;
  std::set<E> seen;
  for (const auto& e : table)
    if (seen.insert(e.value).second) out.emplace_back(e.name);
  return out;
}

template <typename E, size_t N>
std::optional<E> enum_lookup(const EnumEntry<E> (&table)[N], std::string_view name) {
  for (const auto& e : table)
    if (e.name == name) return e.value;
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------
// Error collection.

std::string quote(std::string_view s) {
  std::string q = "'";  // not "'" + ...: GCC 12 warns (-Wrestrict) on that falsely
  q += s;
  q += "'";
  return q;
}

// "'fast'", "a list [a, b]", "a mapping {x: 1}", "null"
std::string describe_value(const YAML::Node& n) {
  if (!n.IsDefined()) return "nothing";
  if (n.IsNull()) return "null (no value)";
  if (n.IsScalar()) {
    std::string s = n.Scalar();
    if (s.size() > 80) s = s.substr(0, 77) + "...";
    return quote(s);
  }
  YAML::Emitter e;
  e.SetSeqFormat(YAML::Flow);
  e.SetMapFormat(YAML::Flow);
  e << n;
  std::string s = e.c_str();
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return (n.IsSequence() ? "a list " : "a mapping ") + s;
}

class Context {
 public:
  explicit Context(std::string source) : source_(std::move(source)) {}

  const std::string& source() const { return source_; }

  // Where the value of `key` (and of everything under it) came from, when not from the file:
  // an override (named in messages), or an overlay file (whose lines the messages give).
  struct Origin {
    std::string file;      // the file the value's line numbers refer to
    std::string override;  // the override's text; empty for an overlay
  };
  void note_origin(const std::string& key, Origin origin) { origins_[key] = std::move(origin); }

  // "<file>:<line>: <key>: <problem>": the file the value came from, with the line where the
  // YAML has one (not for an override, which is named at the end instead).
  void fail(const std::string& key, const YAML::Mark& mark, const std::string& problem) {
    const Origin* origin = origin_of(key);
    std::string where = origin != nullptr ? origin->file : source_;
    const bool from_override = origin != nullptr && !origin->override.empty();
    if (!from_override && !mark.is_null()) where += ":" + std::to_string(mark.line + 1);
    std::string msg = where + ": " + (key.empty() ? std::string() : key + ": ") + problem;
    if (from_override) msg += " (from the override '" + origin->override + "')";
    errors_.push_back(std::move(msg));
  }
  void fail(const std::string& key, const YAML::Node& node, const std::string& problem) {
    fail(key, node.IsDefined() ? node.Mark() : YAML::Mark::null_mark(), problem);
  }
  void fail_plain(const std::string& message) { errors_.push_back(source_ + ": " + message); }
  // A problem of another file than the config (an overlay): `where` names it.
  void fail_in(const std::string& where, const std::string& message) { errors_.push_back(where + ": " + message); }

  void throw_if_failed() const {
    if (errors_.empty()) return;
    if (errors_.size() == 1) LMTUNE_THROW(errors_[0]);
    LMTUNE_THROW(errors_.size(), " problems in the training config ", source_, ":\n  ", join(errors_, "\n  "));
  }

 private:
  // The origin noted for `key` or one of the sections around it.
  const Origin* origin_of(const std::string& key) const {
    std::string k = key;
    while (true) {
      auto it = origins_.find(k);
      if (it != origins_.end()) return &it->second;
      const size_t dot = k.find_last_of(".[");
      if (dot == std::string::npos) return nullptr;
      k = k.substr(0, dot);
    }
  }

  std::string source_;
  std::map<std::string, Origin> origins_;
  std::vector<std::string> errors_;
};

// ---------------------------------------------------------------------------------------
// A mapping section of the YAML tree, checked for unknown and duplicate keys on construction.

class Section {
 public:
  Section(Context& ctx, const YAML::Node& node, std::string path) : ctx_(ctx), path_(std::move(path)) {
    const SectionSchema* own = find_section(path_);
    LMTUNE_ASSERT(own != nullptr, "no schema for section ", path_);
    if (!node.IsDefined() || node.IsNull()) return;  // absent or empty: all defaults
    if (!node.IsMap()) {
      ctx_.fail(path_.empty() ? std::string() : path_, node,
                (path_.empty() ? "expected a mapping of sections (" : "expected a mapping of keys (") +
                    join(own->keys, ", ") + "), got " + describe_value(node));
      return;
    }
    node_.reset(node);
    std::set<std::string> seen;
    for (auto it = node.begin(); it != node.end(); ++it) {
      const YAML::Node& key_node = it->first;
      if (!key_node.IsScalar()) {
        ctx_.fail(path_, key_node, "a key must be a plain name, got " + describe_value(key_node));
        continue;
      }
      const std::string key = key_node.Scalar();
      const std::string full = join_key(path_, key);
      if (!seen.insert(key).second) {
        ctx_.fail(full, key_node, "the key appears more than once in " + (path_.empty() ? "the file" : "'" + path_ + "'"));
        continue;
      }
      if (std::find(own->keys.begin(), own->keys.end(), key) == own->keys.end())
        ctx_.fail(full, key_node, unknown_key_problem(key, *own));
    }
  }

  // The value of `key`; undefined when absent.
  YAML::Node get(const std::string& key) const {
    if (!node_.IsDefined() || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    const YAML::Node& n = node_;
    return n[key];
  }
  // Present with a non-null value.
  bool has(const std::string& key) const {
    YAML::Node n = get(key);
    return n.IsDefined() && !n.IsNull();
  }
  std::string key_path(const std::string& key) const { return join_key(path_, key); }
  YAML::Mark mark() const { return node_.IsDefined() ? node_.Mark() : YAML::Mark::null_mark(); }
  Context& ctx() const { return ctx_; }

 private:
  std::string unknown_key_problem(const std::string& key, const SectionSchema& own) const {
    std::string problem = path_.empty() ? "unknown section; " : "unknown key; ";
    const std::string near = suggest(key, own.keys);
    if (!near.empty()) return problem + "did you mean '" + join_key(path_, near) + "'?";
    // The right name in the wrong place ("lr" under data, or at the top level)?
    for (const auto& s : schema()) {
      if (s.path == path_) continue;
      if (std::find(s.keys.begin(), s.keys.end(), key) == s.keys.end()) continue;
      if (s.path.empty()) return problem + "'" + key + "' is a top-level section, not a key of '" + path_ + "'";
      return problem + "'" + key + "' belongs in '" + s.path + "' (did you mean '" + join_key(s.path, key) + "'?)";
    }
    return problem + (path_.empty() ? "valid sections are " : "valid keys of '" + path_ + "' are ") +
           join(own.keys, ", ");
  }
  Context& ctx_;
  std::string path_;
  YAML::Node node_{YAML::NodeType::Undefined};
};

// ---------------------------------------------------------------------------------------
// Scalar parsing.

std::optional<int64_t> parse_int(const std::string& s) {
  std::string_view v = s;
  if (!v.empty() && v[0] == '+') v.remove_prefix(1);
  int64_t out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (v.empty() || ec != std::errc() || p != v.data() + v.size()) return std::nullopt;
  return out;
}

std::optional<double> parse_double(const std::string& s) {
  std::string_view v = s;
  if (!v.empty() && v[0] == '+') v.remove_prefix(1);
  double out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (v.empty() || ec != std::errc() || p != v.data() + v.size() || !std::isfinite(out)) return std::nullopt;
  return out;
}

std::optional<bool> parse_bool(const YAML::Node& n) {
  bool b = false;
  if (YAML::convert<bool>::decode(n, b)) return b;
  return std::nullopt;
}

// Each reader leaves `out` as it is when the key is absent (the default) and returns whether
// it stored a value from the YAML. A present but invalid value adds an error.

bool read_int(const Section& s, const std::string& key, int64_t& out, const std::function<bool(int64_t)>& ok,
              const std::string& expected) {
  const YAML::Node n = s.get(key);
  if (!n.IsDefined()) return false;
  std::optional<int64_t> v;
  if (n.IsScalar()) v = parse_int(n.Scalar());
  if (!v || !ok(*v)) {
    s.ctx().fail(s.key_path(key), n, "expected " + expected + ", got " + describe_value(n));
    return false;
  }
  out = *v;
  return true;
}

bool read_uint(const Section& s, const std::string& key, uint64_t& out) {
  int64_t v = 0;
  if (!read_int(s, key, v, [](int64_t x) { return x >= 0; }, "an integer >= 0")) return false;
  out = static_cast<uint64_t>(v);
  return true;
}

bool read_double(const Section& s, const std::string& key, double& out, const std::function<bool(double)>& ok,
                 const std::string& expected) {
  const YAML::Node n = s.get(key);
  if (!n.IsDefined()) return false;
  std::optional<double> v;
  if (n.IsScalar()) v = parse_double(n.Scalar());
  if (!v || !ok(*v)) {
    s.ctx().fail(s.key_path(key), n, "expected " + expected + ", got " + describe_value(n));
    return false;
  }
  out = *v;
  return true;
}

bool read_bool(const Section& s, const std::string& key, bool& out) {
  const YAML::Node n = s.get(key);
  if (!n.IsDefined()) return false;
  std::optional<bool> v;
  if (n.IsScalar()) v = parse_bool(n);
  if (!v) {
    s.ctx().fail(s.key_path(key), n, "expected true or false, got " + describe_value(n));
    return false;
  }
  out = *v;
  return true;
}

bool read_string(const Section& s, const std::string& key, std::string& out, const std::string& expected) {
  const YAML::Node n = s.get(key);
  if (!n.IsDefined()) return false;
  if (!n.IsScalar()) {
    s.ctx().fail(s.key_path(key), n, "expected " + expected + ", got " + describe_value(n));
    return false;
  }
  out = n.Scalar();
  return true;
}

template <typename E, size_t N>
std::string expected_enum(const EnumEntry<E> (&table)[N]) {
  return "one of " + join(canonical_names(table), ", ");
}

template <typename E, size_t N>
bool read_enum(const Section& s, const std::string& key, E& out, const EnumEntry<E> (&table)[N]) {
  const YAML::Node n = s.get(key);
  if (!n.IsDefined()) return false;
  std::optional<E> v;
  if (n.IsScalar()) v = enum_lookup(table, n.Scalar());
  if (!v) {
    std::string problem = "expected " + expected_enum(table) + ", got " + describe_value(n);
    if (n.IsScalar()) {
      std::vector<std::string> all;  // aliases too: "bfloat" is closest to "bfloat16"
      for (const auto& e : table) all.emplace_back(e.name);
      const std::string near = suggest(n.Scalar(), all);
      if (!near.empty()) problem += " (did you mean '" + near + "'?)";
    }
    s.ctx().fail(s.key_path(key), n, problem);
    return false;
  }
  out = *v;
  return true;
}

// A required key that is absent or null.
bool require(const Section& s, const std::string& key, const std::string& what) {
  if (s.has(key)) return true;
  const YAML::Node n = s.get(key);
  s.ctx().fail(s.key_path(key), n.IsDefined() ? n.Mark() : s.mark(),
               std::string(n.IsDefined() ? "required key has no value" : "required key is missing") + " (" + what +
                   ")");
  return false;
}

// ---------------------------------------------------------------------------------------
// Paths.

std::string expand_home(const std::string& p) {
  if (p == "~" || p.rfind("~/", 0) == 0) {
    const char* home = std::getenv("HOME");
    if (home != nullptr) return std::string(home) + p.substr(1);
  }
  return p;
}

fs::path resolve_path(const std::string& written) {
  const fs::path p = expand_home(written);
  std::error_code ec;
  fs::path abs = fs::absolute(p, ec);
  if (ec) abs = p;
  return abs.lexically_normal();
}

// "'models/x'" or "'models/x' (resolved against the current directory to '/w/models/x')"
std::string describe_path(const std::string& written, const fs::path& resolved) {
  if (fs::path(written).is_absolute() || resolved.string() == written) return quote(written);
  return quote(written) + " (relative paths are resolved against the current directory; that is " +
         quote(resolved.string()) + ")";
}

bool has_wildcard(std::string_view s) { return s.find_first_of("*?[{") != std::string_view::npos; }

// Reads a list of path patterns (a list, or one string standing for a one-item list) and
// expands them. Returns false (with errors added) when something is wrong.
bool read_file_patterns(const Section& s, const std::string& key, std::vector<std::string>& patterns,
                        std::vector<fs::path>& paths) {
  const YAML::Node n = s.get(key);
  const std::string full = s.key_path(key);
  std::vector<std::pair<std::string, YAML::Node>> items;
  if (n.IsScalar()) {
    items.emplace_back(n.Scalar(), n);
  } else if (n.IsSequence()) {
    for (size_t i = 0; i < n.size(); ++i) {
      if (!n[i].IsScalar()) {
        s.ctx().fail(full + "[" + std::to_string(i) + "]", n[i],
                     "expected a file path or glob pattern, got " + describe_value(n[i]));
        return false;
      }
      items.emplace_back(n[i].Scalar(), n[i]);
    }
  } else {
    s.ctx().fail(full, n, "expected a list of file paths or glob patterns, got " + describe_value(n));
    return false;
  }
  bool ok = true;
  std::set<fs::path> seen;
  std::vector<std::string> out_patterns;
  std::vector<fs::path> out_paths;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& [written, node] = items[i];
    const std::string item_key = n.IsSequence() ? full + "[" + std::to_string(i) + "]" : full;
    if (written.empty()) {
      s.ctx().fail(item_key, node, "expected a file path or glob pattern, got an empty string");
      ok = false;
      continue;
    }
    const fs::path resolved = resolve_path(written);
    out_patterns.push_back(resolved.string());
    std::vector<fs::path> matches;
    if (has_wildcard(written)) {
      glob_t g{};
      const int rc = ::glob(resolved.c_str(), GLOB_BRACE, nullptr, &g);
      if (rc == 0)
        for (size_t j = 0; j < g.gl_pathc; ++j)
          if (fs::is_regular_file(g.gl_pathv[j])) matches.emplace_back(g.gl_pathv[j]);
      ::globfree(&g);
      if (matches.empty()) {
        s.ctx().fail(item_key, node, "the pattern " + describe_path(written, resolved) + " matches no files");
        ok = false;
        continue;
      }
    } else {
      if (!fs::exists(resolved)) {
        s.ctx().fail(item_key, node, "file " + describe_path(written, resolved) + " does not exist");
        ok = false;
        continue;
      }
      if (!fs::is_regular_file(resolved)) {
        s.ctx().fail(item_key, node,
                     describe_path(written, resolved) + " is not a file (for the files in a directory write '" +
                         (fs::path(written) / "*.txt").string() + "')");
        ok = false;
        continue;
      }
      matches.push_back(resolved);
    }
    for (auto& m : matches)
      if (seen.insert(m).second) out_paths.push_back(std::move(m));
  }
  if (ok && out_patterns.empty()) {
    s.ctx().fail(full, n, "expected at least one file path or glob pattern, got an empty list");
    ok = false;
  }
  if (ok) {
    patterns = std::move(out_patterns);
    paths = std::move(out_paths);
  }
  return ok;
}

enum class PathKind { directory, file };

// A single path that must exist; `out` is set to the resolved path when it does.
bool read_existing_path(const Section& s, const std::string& key, fs::path& out, PathKind kind,
                        const std::string& expected) {
  std::string written;
  if (!read_string(s, key, written, expected)) return false;
  const YAML::Node n = s.get(key);
  if (written.empty()) {
    s.ctx().fail(s.key_path(key), n, "expected " + expected + ", got an empty string");
    return false;
  }
  const fs::path resolved = resolve_path(written);
  const std::string what = kind == PathKind::directory ? "directory " : "file ";
  if (!fs::exists(resolved)) {
    s.ctx().fail(s.key_path(key), n, what + describe_path(written, resolved) + " does not exist");
    return false;
  }
  if (kind == PathKind::directory && !fs::is_directory(resolved)) {
    s.ctx().fail(s.key_path(key), n, describe_path(written, resolved) + " is not a directory (expected " + expected + ")");
    return false;
  }
  if (kind == PathKind::file && !fs::is_regular_file(resolved)) {
    std::string problem = describe_path(written, resolved) + " is not a file (expected " + expected + ")";
    if (fs::is_regular_file(resolved / "adapter_model.safetensors"))
      problem += "; did you mean '" + (fs::path(written) / "adapter_model.safetensors").string() + "'?";
    s.ctx().fail(s.key_path(key), n, problem);
    return false;
  }
  out = resolved;
  return true;
}

// ---------------------------------------------------------------------------------------
// Sections.

void read_model(Context& ctx, const YAML::Node& node, ModelSection& m) {
  Section s(ctx, node, "model");
  if (require(s, "path", "the Hugging Face model directory to fine-tune") &&
      read_existing_path(s, "path", m.path, PathKind::directory, "a Hugging Face model directory")) {
    if (!fs::is_regular_file(m.path / "config.json"))
      ctx.fail("model.path", s.get("path"),
               quote(s.get("path").Scalar()) + " has no config.json (expected a Hugging Face model directory)");
  }
  read_enum(s, "dtype", m.dtype, kModelDTypes);
}

void read_target_modules(const Section& s, std::vector<LoraTarget>& out) {
  const YAML::Node n = s.get("target_modules");
  if (!n.IsDefined()) return;
  const std::string key = s.key_path("target_modules");
  const std::vector<std::string> names = canonical_names(kLoraTargets);
  const std::string expected = "a list of " + join(names, ", ") + " or the string 'all-linear'";
  if (n.IsScalar()) {
    if (n.Scalar() == "all-linear") {
      out = {LoraTarget::q, LoraTarget::k, LoraTarget::v, LoraTarget::o,
             LoraTarget::gate, LoraTarget::up, LoraTarget::down};
      return;
    }
    std::vector<std::string> candidates = names;
    candidates.push_back("all-linear");
    std::string problem = "expected " + expected + ", got " + describe_value(n);
    const std::string near = suggest(n.Scalar(), candidates);
    if (near == "all-linear") problem += " (did you mean 'all-linear'?)";
    else if (!near.empty()) problem += " (for one module write [" + near + "])";
    s.ctx().fail(key, n, problem);
    return;
  }
  if (!n.IsSequence()) {
    s.ctx().fail(key, n, "expected " + expected + ", got " + describe_value(n));
    return;
  }
  if (n.size() == 0) {
    s.ctx().fail(key, n, "expected " + expected + ", got an empty list");
    return;
  }
  std::vector<LoraTarget> targets;
  bool ok = true;
  for (size_t i = 0; i < n.size(); ++i) {
    const std::string item_key = key + "[" + std::to_string(i) + "]";
    std::optional<LoraTarget> t;
    if (n[i].IsScalar()) t = enum_lookup(kLoraTargets, n[i].Scalar());
    if (!t) {
      std::string problem = "unknown module " + describe_value(n[i]) + "; expected one of " + join(names, ", ");
      if (n[i].IsScalar()) {
        const std::string near = suggest(n[i].Scalar(), names);
        if (!near.empty()) problem += " (did you mean '" + near + "'?)";
      }
      s.ctx().fail(item_key, n[i], problem);
      ok = false;
      continue;
    }
    if (std::find(targets.begin(), targets.end(), *t) != targets.end()) {
      s.ctx().fail(item_key, n[i], "module " + describe_value(n[i]) + " is listed more than once");
      ok = false;
      continue;
    }
    targets.push_back(*t);
  }
  if (!ok) return;
  std::sort(targets.begin(), targets.end());
  out = std::move(targets);
}

void read_method(Context& ctx, const YAML::Node& node, MethodSection& m) {
  Section s(ctx, node, "method");
  read_enum(s, "type", m.type, kMethodTypes);
  Section l(ctx, s.get("lora"), "method.lora");
  LoraSection& lora = m.lora;
  read_int(l, "rank", lora.rank, [](int64_t v) { return v >= 1; }, "an integer >= 1");
  read_double(l, "alpha", lora.alpha, [](double v) { return v > 0; }, "a number > 0");
  read_double(l, "dropout", lora.dropout, [](double v) { return v >= 0 && v < 1; }, "a number in [0, 1)");
  read_bool(l, "rslora", lora.rslora);
  read_target_modules(l, lora.target_modules);
  if (l.has("init_from")) {
    fs::path p;
    if (read_existing_path(l, "init_from", p, PathKind::file, "a safetensors file with LoRA adapter weights"))
      lora.init_from = p;
  }
  Section q(ctx, s.get("qat"), "method.qat");
  read_enum(q, "scheme", m.qat.scheme, kQatSchemes);
}

// What the method's keys mean together (and with model.dtype).
void check_method(Context& ctx, const YAML::Node& top, const TrainConfig& c) {
  const YAML::Node method = top.IsMap() ? top["method"] : YAML::Node();
  const auto node = [&](const char* section, const char* key) {
    const YAML::Node s = method.IsDefined() && method.IsMap() ? method[section] : YAML::Node();
    return s.IsDefined() && s.IsMap() ? s[key] : YAML::Node();
  };
  if (c.method.type == MethodType::qlora && c.model.dtype != DType::f32) {
    const YAML::Node model = top.IsMap() ? top["model"] : YAML::Node();
    ctx.fail("model.dtype", model.IsDefined() && model.IsMap() ? model["dtype"] : YAML::Node(),
             "method.type qlora stores the projection matrices as NF4 and the rest of the model in f32; "
             "model.dtype " + std::string(dtype_name(c.model.dtype)) + " has nothing to apply to (leave it at f32)");
  }
  if (c.method.qat.scheme == QatScheme::none) return;
  if (c.method.type == MethodType::qlora)
    ctx.fail("method.qat.scheme", node("qat", "scheme"),
             "QAT trains a float base for Q4_0 arithmetic; method.type qlora stores the base as NF4. Use "
             "method.type lora (or full) with method.qat");
  if (uses_lora(c.method.type) && c.method.lora.dropout > 0.0)
    ctx.fail("method.lora.dropout", node("lora", "dropout"),
             "QAT quantizes the weight the export writes, W + scaling B A, which a dropout on the adapter's input "
             "does not have; set method.lora.dropout to 0 with method.qat");
}

// Unknown {name} placeholders in the alpaca template, and the required {instruction}.
// (Empty stands for the default templates.)
void check_prompt_template(const Section& s, const std::string& tmpl) {
  static const std::vector<std::string> kPlaceholders = {"instruction", "input"};
  if (tmpl.empty()) return;
  const YAML::Node n = s.get("prompt_template");
  bool has_instruction = false;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] != '{') continue;
    size_t j = i + 1;
    while (j < tmpl.size() && (std::isalnum(static_cast<unsigned char>(tmpl[j])) || tmpl[j] == '_')) ++j;
    if (j == i + 1 || j >= tmpl.size() || tmpl[j] != '}') continue;
    const std::string name = tmpl.substr(i + 1, j - i - 1);
    if (name == "instruction") has_instruction = true;
    if (name == "output") {
      s.ctx().fail(s.key_path("prompt_template"), n,
                   "the template has an '{output}' placeholder, but the prompt is only what comes before the "
                   "response: the record's output is appended after it; remove '{output}'");
    } else if (std::find(kPlaceholders.begin(), kPlaceholders.end(), name) == kPlaceholders.end()) {
      std::string problem = "unknown placeholder '{" + name + "}'; the template may use {instruction} and {input}";
      const std::string near = suggest(name, kPlaceholders);
      if (!near.empty()) problem += " (did you mean '{" + near + "}'?)";
      s.ctx().fail(s.key_path("prompt_template"), n, problem);
    }
  }
  if (!has_instruction)
    s.ctx().fail(s.key_path("prompt_template"), n,
                 "the template must contain {instruction}, got " + describe_value(n));
}

void read_validation_split(const Section& data, ValidationSplit& out) {
  const YAML::Node n = data.get("validation_split");
  if (!n.IsDefined() || n.IsNull()) return;
  const std::string key = data.key_path("validation_split");
  const std::string expected = "a mapping {every_nth: N} (N >= 2) or {fraction: F} (0 < F < 1)";
  if (!n.IsMap()) {
    data.ctx().fail(key, n, "expected " + expected + ", got " + describe_value(n));
    return;
  }
  Section s(data.ctx(), n, key);
  const bool nth = s.has("every_nth"), frac = s.has("fraction");
  if (nth && frac) {
    data.ctx().fail(key, n, "set only one of every_nth and fraction, got " + describe_value(n));
    return;
  }
  if (!nth && !frac) {
    data.ctx().fail(key, n, "expected " + expected + ", got " + describe_value(n));
    return;
  }
  if (nth && read_int(s, "every_nth", out.every_nth, [](int64_t v) { return v >= 2; }, "an integer >= 2"))
    out.kind = ValidationSplitKind::every_nth;
  if (frac && read_double(s, "fraction", out.fraction, [](double v) { return v > 0 && v < 1; },
                          "a number in (0, 1)"))
    out.kind = ValidationSplitKind::fraction;
}

void read_data(Context& ctx, const YAML::Node& node, DataSection& d) {
  Section s(ctx, node, "data");
  read_enum(s, "format", d.format, kDataFormats);
  if (require(s, "train_files", "a list of training files or glob patterns, e.g. [data/train/*.txt]"))
    read_file_patterns(s, "train_files", d.train_files, d.train_paths);
  const YAML::Node vf = s.get("validation_files");
  const bool has_vf = vf.IsDefined() && !vf.IsNull() && !(vf.IsSequence() && vf.size() == 0);
  if (has_vf) read_file_patterns(s, "validation_files", d.validation_files, d.validation_paths);
  if (has_vf && s.has("validation_split"))
    ctx.fail(s.key_path("validation_split"), s.get("validation_split"),
             "set either data.validation_files or data.validation_split, not both");
  else
    read_validation_split(s, d.validation_split);
  read_int(s, "seq_len", d.seq_len, [](int64_t v) { return v >= 2; }, "an integer >= 2");
  read_bool(s, "packing", d.packing);
  read_bool(s, "add_bos", d.add_bos);
  read_bool(s, "add_eos", d.add_eos);
  if (read_string(s, "prompt_template", d.prompt_template, "a string with {instruction} (or \"\" for the default)"))
    check_prompt_template(s, d.prompt_template);
  read_enum(s, "chat_template", d.chat_template, kChatTemplates);
  read_bool(s, "parse_special_tokens", d.parse_special_tokens);
  read_bool(s, "shuffle", d.shuffle);
  read_uint(s, "seed", d.seed);
}

void read_train(Context& ctx, const YAML::Node& node, TrainSection& t) {
  Section s(ctx, node, "train");
  const bool has_steps = s.has("max_steps"), has_epochs = s.has("epochs");
  if (has_steps && has_epochs) {
    ctx.fail("train.max_steps", s.get("max_steps"),
             "train.max_steps and train.epochs are both set (to " + describe_value(s.get("max_steps")) + " and " +
                 describe_value(s.get("epochs")) + "); set exactly one");
  } else if (!has_steps && !has_epochs) {
    ctx.fail("train.max_steps", s.mark(),
             "required key is missing: set exactly one of train.max_steps (optimizer steps) or train.epochs "
             "(passes over the data)");
  }
  if (has_steps) {
    int64_t v = 0;
    if (read_int(s, "max_steps", v, [](int64_t x) { return x >= 1; }, "an integer >= 1")) t.max_steps = v;
  }
  if (has_epochs) {
    double v = 0;
    if (read_double(s, "epochs", v, [](double x) { return x > 0; }, "a number > 0")) t.epochs = v;
  }
  const auto at_least = [](int64_t lo) { return [lo](int64_t v) { return v >= lo; }; };
  read_int(s, "micro_batch_size", t.micro_batch_size, at_least(1), "an integer >= 1");
  read_int(s, "grad_accum_steps", t.grad_accum_steps, at_least(1), "an integer >= 1");
  read_double(s, "lr", t.lr, [](double v) { return v > 0; }, "a number > 0");
  read_double(s, "min_lr_ratio", t.min_lr_ratio, [](double v) { return v >= 0 && v <= 1; }, "a number in [0, 1]");
  read_double(s, "weight_decay", t.weight_decay, [](double v) { return v >= 0; }, "a number >= 0");
  read_double(s, "adam_beta1", t.adam_beta1, [](double v) { return v >= 0 && v < 1; }, "a number in [0, 1)");
  read_double(s, "adam_beta2", t.adam_beta2, [](double v) { return v >= 0 && v < 1; }, "a number in [0, 1)");
  read_double(s, "adam_eps", t.adam_eps, [](double v) { return v > 0; }, "a number > 0");
  // A warmup longer than the run is allowed, as in HF and torchtune (a short smoke test of
  // a long config): the learning rate then rises for the whole run; the trainer says so.
  read_int(s, "warmup_steps", t.warmup_steps, at_least(0), "an integer >= 0");
  read_enum(s, "schedule", t.schedule, kSchedules);
  read_double(s, "max_grad_norm", t.max_grad_norm, [](double v) { return v >= 0; },
              "a number > 0 (or 0 to disable clipping)");
  read_uint(s, "seed", t.seed);
  read_int(s, "threads", t.threads, at_least(0), "an integer >= 0 (0 = all cores)");
  read_int(s, "log_every", t.log_every, at_least(1), "an integer >= 1");
  read_int(s, "eval_every", t.eval_every, at_least(0), "an integer >= 0 (0 = only at the end)");
  read_int(s, "eval_batches", t.eval_batches, at_least(1), "an integer >= 1");
  read_int(s, "save_every", t.save_every, at_least(0), "an integer >= 0 (0 = only at the end)");
  read_string(s, "sample_prompt", t.sample_prompt, "a string");
  read_int(s, "sample_tokens", t.sample_tokens, at_least(0), "an integer >= 0");
  if (s.has("resume_from")) {
    const YAML::Node n = s.get("resume_from");
    if (n.IsScalar() && n.Scalar() == "auto") {
      t.resume_from = {ResumeMode::latest, {}};
    } else {
      fs::path dir;
      if (read_existing_path(s, "resume_from", dir, PathKind::directory, "a checkpoint directory or 'auto'"))
        t.resume_from = {ResumeMode::checkpoint, dir};
    }
  }
}

void read_parallel(Context& ctx, const YAML::Node& node, ParallelSection& p) {
  Section s(ctx, node, "parallel");
  const std::string later =
      " is not supported yet: this release runs data parallelism with ZeRO 0-3, offload and recompute (any "
      "dp, tp=1, pp=1); the other strategies come in a later release";
  const YAML::Node dp = s.get("dp");
  if (dp.IsDefined() && dp.IsScalar() && dp.Scalar() == "auto") p.dp = ParallelSection::kAuto;
  else read_int(s, "dp", p.dp, [](int64_t v) { return v >= 1; }, "an integer >= 1 or 'auto'");
  for (const char* key : {"tp", "pp"}) {
    int64_t& field = key[0] == 't' ? p.tp : p.pp;
    if (read_int(s, key, field, [](int64_t v) { return v >= 1; }, "an integer >= 1") && field != 1)
      ctx.fail(s.key_path(key), s.get(key), std::string(key) + "=" + std::to_string(field) + later);
  }
  read_int(s, "zero", p.zero, [](int64_t v) { return v >= 0 && v <= 3; }, "one of 0, 1, 2, 3");
  read_enum(s, "recompute", p.recompute, kRecompute);
  if (read_enum(s, "offload", p.offload, kOffload) && p.offload == Offload::params && p.zero != 3)
    ctx.fail("parallel.offload", s.get("offload"),
             "offload=params keeps the parameter shards of ZeRO-3 on the host: set parallel.zero=3 (now " +
                 std::to_string(p.zero) + "), or offload=optimizer");
  read_int(s, "prefetch", p.prefetch, [](int64_t v) { return v >= 0 && v <= 64; }, "an integer in [0, 64]");
  read_double(s, "bucket_mb", p.bucket_mb, [](double v) { return v > 0 && v <= 1e6; }, "a number of MiB in (0, 1e6]");
  read_bool(s, "overlap_grad_reduce", p.overlap_grad_reduce);
}

void read_output(Context& ctx, const YAML::Node& node, OutputSection& o) {
  Section s(ctx, node, "output");
  std::string dir;
  if (require(s, "dir", "the run directory, e.g. runs/my-run") && read_string(s, "dir", dir, "a directory path")) {
    if (dir.empty()) ctx.fail("output.dir", s.get("dir"), "expected a directory path, got an empty string");
    else if (const fs::path p = resolve_path(dir); fs::exists(p) && !fs::is_directory(p))
      ctx.fail("output.dir", s.get("dir"), describe_path(dir, p) + " exists and is not a directory");
    else
      o.dir = p;
  }
  read_bool(s, "overwrite", o.overwrite);
}

// ---------------------------------------------------------------------------------------
// Overrides.

// Sets the dotted `key` of the tree to `value`, creating the sections on the way that are
// absent or empty; `what` (an override, an overlay) is named when a section on the way is not
// a mapping. Returns whether the value was written.
bool write_key(Context& ctx, YAML::Node& root, const std::string& key, const YAML::Node& value, const std::string& what) {
  std::vector<std::string> parts;
  for (size_t b = 0;;) {
    const size_t d = key.find('.', b);
    parts.push_back(key.substr(b, d == std::string::npos ? std::string::npos : d - b));
    if (d == std::string::npos) break;
    b = d + 1;
  }
  YAML::Node cur;
  cur.reset(root);
  std::string path;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    path = join_key(path, parts[i]);
    const YAML::Node& const_cur = cur;
    const YAML::Node child = const_cur[parts[i]];  // a copy binds; it never assigns
    if (!child.IsDefined() || child.IsNull()) {
      cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
      const YAML::Node created = const_cur[parts[i]];
      cur.reset(created);
    } else if (!child.IsMap()) {
      ctx.fail(path, child, "cannot apply " + what + ": '" + path + "' is " + describe_value(child) +
                                ", not a mapping of keys");
      return false;
    } else {
      cur.reset(child);
    }
  }
  cur[parts.back()] = value;
  return true;
}

// Writes "a.b.c=value" into the tree. Errors go to ctx.
void apply_override(Context& ctx, YAML::Node& root, const std::string& text) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos) {
    ctx.fail_plain("override '" + text + "': expected key=value with a dotted key, e.g. train.lr=1e-4");
    return;
  }
  auto trim = [](std::string s) {
    const size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
  };
  const std::string key = trim(text.substr(0, eq));
  const std::vector<std::string> keys = train_config_keys();
  if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
    std::string problem = "override '" + text + "': unknown key " + quote(key);
    const std::string near = suggest(key, keys);
    if (!near.empty()) problem += "; did you mean '" + near + "'?";
    else problem += "; keys look like model.path, train.lr, method.lora.rank";
    ctx.fail_plain(problem);
    return;
  }
  // Keys whose value is free text: "train.sample_prompt=Q: hi" means the text, although
  // as YAML it would be a mapping.
  static const std::set<std::string> kTextKeys = {"model.path", "method.lora.init_from", "data.prompt_template",
                                                  "train.sample_prompt", "train.resume_from", "output.dir"};
  const std::string raw = text.substr(eq + 1);
  YAML::Node value;
  try {
    value = YAML::Load(raw);
    if (kTextKeys.count(key) && !value.IsNull() && !value.IsScalar()) value = YAML::Node(raw);
  } catch (const YAML::Exception& e) {
    if (kTextKeys.count(key)) {
      value = YAML::Node(raw);
    } else {
      ctx.fail_plain("override '" + text + "': " + key + ": the value is not valid YAML: " + e.msg);
      return;
    }
  }
  if (write_key(ctx, root, key, value, "the override '" + text + "'")) ctx.note_origin(key, {ctx.source(), text});
}

// Applies the overlay file `source` (a partial config) to the tree: mappings merge where the
// schema has a section, every other value replaces the one at its dotted key. Errors go to ctx.
void apply_overlay(Context& ctx, YAML::Node& root, const std::string& yaml_text, const std::string& source) {
  YAML::Node overlay;
  try {
    const std::vector<YAML::Node> docs = YAML::LoadAll(yaml_text);
    if (docs.size() > 1) {
      ctx.fail_in(source, "expected one YAML document, got " + std::to_string(docs.size()) + " (separated by '---')");
      return;
    }
    if (!docs.empty()) overlay.reset(docs[0]);
  } catch (const YAML::Exception& e) {
    ctx.fail_in(e.mark.is_null() ? source
                                 : source + ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1),
                "YAML syntax error: " + e.msg);
    return;
  }
  if (!overlay.IsDefined() || overlay.IsNull()) return;  // an empty overlay changes nothing
  const std::vector<std::string> keys = train_config_keys();
  const auto line_of = [&](const YAML::Node& n) {
    return n.Mark().is_null() ? source : source + ":" + std::to_string(n.Mark().line + 1);
  };
  // Writes the entries of the overlay mapping `node` found at `path` ("" is the top).
  std::function<void(const YAML::Node&, const std::string&)> merge = [&](const YAML::Node& node, const std::string& path) {
    const SectionSchema* section = find_section(path);
    if (!node.IsMap()) {
      ctx.fail_in(line_of(node), (path.empty() ? std::string() : path + ": ") + "expected a mapping of " +
                                     (path.empty() ? "sections (" : "keys (") + join(section->keys, ", ") +
                                     "), got " + describe_value(node));
      return;
    }
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string key = it->first.IsScalar() ? join_key(path, it->first.Scalar()) : std::string();
      if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
        std::string problem = "unknown key " + quote(key.empty() ? describe_value(it->first) : key);
        const std::string near = suggest(key, keys);
        if (!near.empty()) problem += "; did you mean '" + near + "'?";
        ctx.fail_in(line_of(it->first), problem + " (the overlay's keys are the config's: model.path, train.lr, ...)");
        continue;
      }
      const YAML::Node& value = it->second;
      if (find_section(key) != nullptr && value.IsMap()) {
        merge(value, key);
      } else if (write_key(ctx, root, key, value, "the overlay '" + source + "'")) {
        ctx.note_origin(key, {source, ""});
      }
    }
  };
  merge(overlay, "");
}

// ---------------------------------------------------------------------------------------
// Emission.

std::string format_double(double v) {
  char buf[64];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
  LMTUNE_ASSERT(ec == std::errc(), "to_chars failed");
  std::string s(buf, p);
  // A dot in the mantissa keeps YAML 1.1 readers (PyYAML) reading it as a float.
  const size_t e = s.find('e');
  if (s.find('.') == std::string::npos) s.insert(e == std::string::npos ? s.size() : e, ".0");
  return s;
}

// Plain when that reads back as the same string; a literal block for multi-line text when
// that reads back; double-quoted otherwise. `indent` is the indentation of the key.
std::string format_string(const std::string& s, int indent) {
  auto reads_back = [&](const std::string& candidate) {
    try {
      const YAML::Node n = YAML::Load(std::string(indent, ' ') + "k: " + candidate + "\n");
      return n.IsMap() && n["k"].IsScalar() && n["k"].Scalar() == s;
    } catch (const YAML::Exception&) {
      return false;
    }
  };
  auto reads_back_as_string = [&](const std::string& candidate) {
    // A plain scalar must also not be one that a YAML reader takes for null, bool or a number.
    if (!reads_back(candidate)) return false;
    YAML::Node n = YAML::Load("k: " + candidate);
    bool b;
    if (n["k"].IsNull() || YAML::convert<bool>::decode(n["k"], b)) return false;
    if (parse_double(s) || s == ".inf" || s == ".nan" || s == "~") return false;
    return true;
  };
  if (s.find('\n') == std::string::npos) {
    YAML::Emitter e;
    e << s;
    const std::string plain = e.c_str();
    if (!plain.empty() && plain[0] != '"' && plain[0] != '\'' && reads_back_as_string(plain)) return plain;
  } else {
    const std::string pad(indent + 2, ' ');
    std::string chomp = "|-";
    if (s.back() == '\n') chomp = (s.size() >= 2 && s[s.size() - 2] == '\n') ? "|+" : "|";
    std::string block = chomp;
    size_t b = 0;
    const std::string body = chomp == "|-" ? s : s.substr(0, s.size() - 1);
    while (true) {
      const size_t nl = body.find('\n', b);
      const std::string line = body.substr(b, nl == std::string::npos ? std::string::npos : nl - b);
      block += '\n';
      if (!line.empty()) block.append(pad).append(line);
      if (nl == std::string::npos) break;
      b = nl + 1;
    }
    if (reads_back(block)) return block;
  }
  YAML::Emitter e;
  e << YAML::DoubleQuoted << s;
  return e.c_str();
}

class YamlWriter {
 public:
  void section(int indent, const std::string& name) { out_ += std::string(indent, ' ') + name + ":\n"; }
  void raw(int indent, const std::string& key, const std::string& value) {
    out_ += std::string(indent, ' ') + key + ": " + value + "\n";
  }
  void str(int indent, const std::string& key, const std::string& value) { raw(indent, key, format_string(value, indent)); }
  void integer(int indent, const std::string& key, int64_t v) { raw(indent, key, std::to_string(v)); }
  void number(int indent, const std::string& key, double v) { raw(indent, key, format_double(v)); }
  void boolean(int indent, const std::string& key, bool v) { raw(indent, key, v ? "true" : "false"); }
  void list(int indent, const std::string& key, const std::vector<std::string>& items) {
    if (items.empty()) {
      raw(indent, key, "[]");
      return;
    }
    section(indent, key);
    for (const auto& i : items) out_ += std::string(indent + 2, ' ') + "- " + format_string(i, indent + 2) + "\n";
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

}  // namespace

// ---------------------------------------------------------------------------------------

std::string_view to_string(MethodType v) { return enum_name(kMethodTypes, v); }
std::string_view to_string(QatScheme v) { return enum_name(kQatSchemes, v); }
bool uses_lora(MethodType t) { return t == MethodType::lora || t == MethodType::qlora; }
std::string_view to_string(LoraTarget v) { return enum_name(kLoraTargets, v); }
std::string_view to_string(DataFormat v) { return enum_name(kDataFormats, v); }
std::string_view to_string(ChatTemplate v) { return enum_name(kChatTemplates, v); }
std::string_view to_string(LrSchedule v) { return enum_name(kSchedules, v); }
std::string_view to_string(Recompute v) { return enum_name(kRecompute, v); }
std::string_view to_string(Offload v) { return enum_name(kOffload, v); }

double LoraSection::scale() const {
  return rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

std::vector<std::string> train_config_keys() {
  std::vector<std::string> out;
  for (const auto& s : schema())
    for (const auto& k : s.keys) out.push_back(join_key(s.path, k));
  return out;
}

TrainConfig parse_train_config(std::string_view yaml_text, std::string_view source_name,
                               const std::vector<std::string>& overrides, const std::vector<ConfigOverlay>& overlays) {
  const std::string source(source_name);
  YAML::Node root;
  try {
    const std::vector<YAML::Node> docs = YAML::LoadAll(std::string(yaml_text));
    LMTUNE_CHECK(docs.size() <= 1, source, ": expected one YAML document, got ", docs.size(),
                 " (separated by '---')");
    if (!docs.empty()) root.reset(docs[0]);
  } catch (const YAML::Exception& e) {
    if (e.mark.is_null()) LMTUNE_THROW(source, ": YAML syntax error: ", e.msg);
    LMTUNE_THROW(source, ":", e.mark.line + 1, ":", e.mark.column + 1, ": YAML syntax error: ", e.msg);
  }
  if (!root.IsDefined() || root.IsNull()) root.reset(YAML::Node(YAML::NodeType::Map));
  if (!root.IsMap())
    LMTUNE_THROW(source, ": expected a mapping of sections (model, method, data, train, parallel, output), got ",
                 describe_value(root));

  Context ctx(source);
  for (const ConfigOverlay& o : overlays) apply_overlay(ctx, root, o.yaml_text, o.source_name);
  for (const auto& o : overrides) apply_override(ctx, root, o);

  const YAML::Node& r = root;
  Section top(ctx, r, "");
  TrainConfig c;
  read_model(ctx, top.get("model"), c.model);
  read_method(ctx, top.get("method"), c.method);
  read_data(ctx, top.get("data"), c.data);
  read_train(ctx, top.get("train"), c.train);
  read_parallel(ctx, top.get("parallel"), c.parallel);
  read_output(ctx, top.get("output"), c.output);
  check_method(ctx, r, c);
  ctx.throw_if_failed();
  return c;
}

TrainConfig load_train_config(const fs::path& yaml_file, const std::vector<std::string>& overrides,
                              const std::vector<fs::path>& overlay_files) {
  LMTUNE_CHECK(fs::exists(yaml_file), "training config '", yaml_file.string(), "' does not exist");
  LMTUNE_CHECK(fs::is_regular_file(yaml_file), "training config '", yaml_file.string(), "' is not a file");
  const std::string text = read_file_to_string(yaml_file, "training config");
  std::vector<ConfigOverlay> overlays;
  for (const fs::path& f : overlay_files) {
    LMTUNE_CHECK(fs::is_regular_file(f), "config overlay '", f.string(), "' ", fs::exists(f) ? "is not a file" : "does not exist");
    overlays.push_back({read_file_to_string(f, "config overlay"), f.string()});
  }
  return parse_train_config(text, yaml_file.string(), overrides, overlays);
}

std::string to_yaml(const TrainConfig& c) {
  YamlWriter w;
  const auto opt_path = [](const std::optional<fs::path>& p) { return p ? format_string(p->string(), 4) : "null"; };

  w.section(0, "model");
  w.str(2, "path", c.model.path.string());
  w.raw(2, "dtype", std::string(dtype_name(c.model.dtype)));

  w.section(0, "method");
  w.raw(2, "type", std::string(to_string(c.method.type)));
  w.section(2, "lora");
  const LoraSection& l = c.method.lora;
  w.integer(4, "rank", l.rank);
  w.number(4, "alpha", l.alpha);
  w.number(4, "dropout", l.dropout);
  w.boolean(4, "rslora", l.rslora);
  if (l.target_modules.size() == 7) {
    w.raw(4, "target_modules", "all-linear");
  } else {
    std::vector<std::string> names;
    for (LoraTarget t : l.target_modules) names.emplace_back(to_string(t));
    w.raw(4, "target_modules", "[" + join(names, ", ") + "]");
  }
  w.raw(4, "init_from", opt_path(l.init_from));
  w.section(2, "qat");
  w.raw(4, "scheme", std::string(to_string(c.method.qat.scheme)));

  const DataSection& d = c.data;
  w.section(0, "data");
  w.raw(2, "format", std::string(to_string(d.format)));
  w.list(2, "train_files", d.train_files);
  w.list(2, "validation_files", d.validation_files);
  switch (d.validation_split.kind) {
    case ValidationSplitKind::none: w.raw(2, "validation_split", "null"); break;
    case ValidationSplitKind::every_nth:
      w.raw(2, "validation_split", "{every_nth: " + std::to_string(d.validation_split.every_nth) + "}");
      break;
    case ValidationSplitKind::fraction:
      w.raw(2, "validation_split", "{fraction: " + format_double(d.validation_split.fraction) + "}");
      break;
  }
  w.integer(2, "seq_len", d.seq_len);
  w.boolean(2, "packing", d.packing);
  w.boolean(2, "add_bos", d.add_bos);
  w.boolean(2, "add_eos", d.add_eos);
  w.str(2, "prompt_template", d.prompt_template);
  w.raw(2, "chat_template", std::string(to_string(d.chat_template)));
  w.boolean(2, "parse_special_tokens", d.parse_special_tokens);
  w.boolean(2, "shuffle", d.shuffle);
  w.integer(2, "seed", static_cast<int64_t>(d.seed));

  const TrainSection& t = c.train;
  w.section(0, "train");
  w.raw(2, "max_steps", t.max_steps ? std::to_string(*t.max_steps) : "null");
  w.raw(2, "epochs", t.epochs ? format_double(*t.epochs) : "null");
  w.integer(2, "micro_batch_size", t.micro_batch_size);
  w.integer(2, "grad_accum_steps", t.grad_accum_steps);
  w.number(2, "lr", t.lr);
  w.number(2, "min_lr_ratio", t.min_lr_ratio);
  w.number(2, "weight_decay", t.weight_decay);
  w.number(2, "adam_beta1", t.adam_beta1);
  w.number(2, "adam_beta2", t.adam_beta2);
  w.number(2, "adam_eps", t.adam_eps);
  w.integer(2, "warmup_steps", t.warmup_steps);
  w.raw(2, "schedule", std::string(to_string(t.schedule)));
  w.number(2, "max_grad_norm", t.max_grad_norm);
  w.integer(2, "seed", static_cast<int64_t>(t.seed));
  w.integer(2, "threads", t.threads);
  w.integer(2, "log_every", t.log_every);
  w.integer(2, "eval_every", t.eval_every);
  w.integer(2, "eval_batches", t.eval_batches);
  w.integer(2, "save_every", t.save_every);
  w.str(2, "sample_prompt", t.sample_prompt);
  w.integer(2, "sample_tokens", t.sample_tokens);
  switch (t.resume_from.mode) {
    case ResumeMode::none: w.raw(2, "resume_from", "null"); break;
    case ResumeMode::latest: w.raw(2, "resume_from", "auto"); break;
    case ResumeMode::checkpoint: w.str(2, "resume_from", t.resume_from.dir.string()); break;
  }

  const ParallelSection& p = c.parallel;
  w.section(0, "parallel");
  if (p.dp == ParallelSection::kAuto) w.raw(2, "dp", "auto");
  else w.integer(2, "dp", p.dp);
  w.integer(2, "tp", p.tp);
  w.integer(2, "pp", p.pp);
  w.integer(2, "zero", p.zero);
  w.raw(2, "recompute", std::string(to_string(p.recompute)));
  w.raw(2, "offload", std::string(to_string(p.offload)));
  w.integer(2, "prefetch", p.prefetch);
  w.number(2, "bucket_mb", p.bucket_mb);
  w.boolean(2, "overlap_grad_reduce", p.overlap_grad_reduce);

  w.section(0, "output");
  w.str(2, "dir", c.output.dir.string());
  w.boolean(2, "overwrite", c.output.overwrite);
  return "# lmtune training config, fully resolved (every key, defaults filled in)\n" + w.take();
}

}  // namespace lmtune
