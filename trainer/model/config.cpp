// config.json <-> LlamaConfig. Reading checks every key it uses (presence for the required
// ones, JSON type for all) and then validate()s the values, so a bad file fails here with
// the file and the key named, not later with a shape mismatch.
#include "trainer/model/config.h"

#include <algorithm>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/core/error.h"
#include "trainer/io/file_util.h"

namespace lmtune {

namespace {

using nlohmann::json;

const char* json_type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    default: return "an unsupported value";
  }
}

struct Reader {
  const json& j;
  std::string src;  // "config.json <path>"

  [[noreturn]] void wrong_type(const std::string& key, const json& v, const char* expected) const {
    LMTUNE_THROW(src, ": key '", key, "' must be ", expected, ", got ", json_type_name(v), " (", v.dump(), ")");
  }
  const json* find(const std::string& key) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return nullptr;
    return &*it;
  }
  int64_t as_int(const std::string& key, const json& v) const {
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) LMTUNE_THROW(src, ": key '", key, "' is out of range (", u, ")");
      return static_cast<int64_t>(u);
    }
    wrong_type(key, v, "an integer");
  }
  int64_t required_int(const std::string& key) const {
    const json* v = find(key);
    LMTUNE_CHECK(v != nullptr, src, ": missing required key '", key, "'");
    return as_int(key, *v);
  }
  void optional_int(const std::string& key, int64_t& out) const {
    if (const json* v = find(key)) out = as_int(key, *v);
  }
  // bos/eos ids: an integer, or a list of integers (some configs list several eos ids; the
  // first is the one we stop on).
  void optional_token_id(const std::string& key, int64_t& out) const {
    const json* v = find(key);
    if (v == nullptr) return;
    if (v->is_array()) {
      LMTUNE_CHECK(!v->empty(), src, ": key '", key, "' is an empty list");
      out = as_int(key, v->front());
      return;
    }
    if (!v->is_number_integer() && !v->is_number_unsigned()) wrong_type(key, *v, "an integer or a list of integers");
    out = as_int(key, *v);
  }
  void optional_double(const std::string& key, double& out) const {
    const json* v = find(key);
    if (v == nullptr) return;
    if (!v->is_number()) wrong_type(key, *v, "a number");
    out = v->get<double>();
  }
  void optional_bool(const std::string& key, bool& out) const {
    const json* v = find(key);
    if (v == nullptr) return;
    if (!v->is_boolean()) wrong_type(key, *v, "a boolean (true or false)");
    out = v->get<bool>();
  }
  void optional_string(const std::string& key, std::string& out) const {
    const json* v = find(key);
    if (v == nullptr) return;
    if (!v->is_string()) wrong_type(key, *v, "a string");
    out = v->get<std::string>();
  }
};


// rope_scaling (or transformers 5's rope_parameters) -> RopeScaling. `key` names the object
// in messages; `theta` receives a rope_theta found inside it (rope_parameters only).
RopeScaling parse_rope_scaling(const Reader& r, const std::string& key, const json& v, double* theta) {
  if (!v.is_object()) r.wrong_type(key, v, "an object or null");
  const std::string& src = r.src;
  auto number = [&](const char* name) -> const json* {
    auto it = v.find(name);
    if (it == v.end() || it->is_null()) return nullptr;
    if (!it->is_number()) r.wrong_type(key + "." + name, *it, "a number");
    return &*it;
  };
  auto required = [&](const char* name, const std::string& type) -> const json& {
    const json* x = number(name);
    LMTUNE_CHECK(x != nullptr, src, ": key '", key, "' of rope_type '", type, "' needs '", name, "'");
    return *x;
  };
  std::string type;
  for (const char* name : {"rope_type", "type"}) {
    auto it = v.find(name);
    if (it == v.end() || it->is_null()) continue;
    if (!it->is_string()) r.wrong_type(key + "." + name, *it, "a string");
    const std::string t = it->get<std::string>();
    LMTUNE_CHECK(type.empty() || type == t, src, ": key '", key, "' says rope_type '", type, "' and type '", t, "'");
    type = t;
  }
  LMTUNE_CHECK(!type.empty(), src, ": key '", key, "' has no 'rope_type' (", v.dump(), ")");
  RopeScaling s;
  std::vector<std::string> allowed = {"rope_type", "type"};
  if (theta != nullptr) {
    allowed.push_back("rope_theta");
    if (const json* t = number("rope_theta")) *theta = t->get<double>();
  }
  if (type == "default") {
    s.type = RopeScalingType::none;
  } else if (type == "linear") {
    s.type = RopeScalingType::linear;
    s.factor = required("factor", type).get<double>();
    allowed.push_back("factor");
  } else if (type == "llama3") {
    s.type = RopeScalingType::llama3;
    s.factor = required("factor", type).get<double>();
    s.low_freq_factor = required("low_freq_factor", type).get<double>();
    s.high_freq_factor = required("high_freq_factor", type).get<double>();
    s.original_max_position_embeddings =
        r.as_int(key + ".original_max_position_embeddings", required("original_max_position_embeddings", type));
    for (const char* k : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
      allowed.push_back(k);
  } else {
    LMTUNE_THROW(src, ": key '", key, "' has rope_type '", type,
                 "', which lmtune does not support (supported: default, linear, llama3)");
  }
  for (const auto& [k, value] : v.items()) {
    if (std::find(allowed.begin(), allowed.end(), k) != allowed.end()) continue;
    std::string list;
    for (const std::string& a : allowed) list += (list.empty() ? "" : ", ") + a;
    LMTUNE_THROW(src, ": key '", key, "' of rope_type '", type, "' has '", k, "', which lmtune does not know (", list,
                 " are)");
  }
  return s;
}

}  // namespace

std::string_view model_family_name(ModelFamily f) {
  switch (f) {
    case ModelFamily::llama: return "llama";
    case ModelFamily::qwen2: return "qwen2";
    case ModelFamily::qwen3: return "qwen3";
  }
  return "?";
}

std::string_view rope_scaling_type_name(RopeScalingType t) {
  switch (t) {
    case RopeScalingType::none: return "default";
    case RopeScalingType::linear: return "linear";
    case RopeScalingType::llama3: return "llama3";
  }
  return "?";
}

void LlamaConfig::validate(const std::string& source) const {
  auto positive = [&](const char* key, int64_t v) {
    LMTUNE_CHECK(v > 0, source, ": '", key, "' must be positive, got ", v);
  };
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("num_key_value_heads", num_key_value_heads);
  positive("vocab_size", vocab_size);
  positive("max_position_embeddings", max_position_embeddings);
  LMTUNE_CHECK(attention_head_dim >= 0, source, ": 'head_dim' must be positive, got ", attention_head_dim);
  LMTUNE_CHECK(attention_head_dim > 0 || hidden_size % num_attention_heads == 0, source, ": num_attention_heads (",
               num_attention_heads, ") does not divide hidden_size (", hidden_size, ") and there is no 'head_dim'");
  LMTUNE_CHECK(num_attention_heads % num_key_value_heads == 0, source, ": num_key_value_heads (",
               num_key_value_heads, ") does not divide num_attention_heads (", num_attention_heads, ")");
  LMTUNE_CHECK(head_dim() % 2 == 0, source, ": head dimension ", head_dim(),
               attention_head_dim > 0 ? " ('head_dim')" : " (hidden_size / num_attention_heads)", " must be even for RoPE");
  constexpr int64_t kMaxHeadDim = 256;  // the attention and RoPE kernels' limit (kernels/cpu/common.h)
  LMTUNE_CHECK(head_dim() <= kMaxHeadDim, source, ": head dimension ", head_dim(), " is above ", kMaxHeadDim,
               ", the largest the kernels support");
  LMTUNE_CHECK(rms_norm_eps > 0, source, ": 'rms_norm_eps' must be positive, got ", rms_norm_eps);
  LMTUNE_CHECK(rope_theta > 0, source, ": 'rope_theta' must be positive, got ", rope_theta);
  const RopeScaling& rs = rope_scaling;
  if (rs.type != RopeScalingType::none) {
    LMTUNE_CHECK(rs.factor > 0, source, ": 'rope_scaling.factor' must be positive, got ", rs.factor);
  }
  if (rs.type == RopeScalingType::llama3) {
    LMTUNE_CHECK(rs.low_freq_factor > 0 && rs.high_freq_factor > rs.low_freq_factor, source,
                 ": 'rope_scaling' needs 0 < low_freq_factor < high_freq_factor, got ", rs.low_freq_factor, " and ",
                 rs.high_freq_factor);
    LMTUNE_CHECK(rs.original_max_position_embeddings > 0, source,
                 ": 'rope_scaling.original_max_position_embeddings' must be positive, got ",
                 rs.original_max_position_embeddings);
  }
  LMTUNE_CHECK(bos_token_id < vocab_size && eos_token_id < vocab_size, source, ": bos_token_id (", bos_token_id,
               ") / eos_token_id (", eos_token_id, ") must be below vocab_size (", vocab_size, ")");
}

LlamaConfig load_llama_config(const std::filesystem::path& config_json) {
  const std::string src = "config.json " + config_json.string();
  LMTUNE_CHECK(std::filesystem::exists(config_json), src, ": file not found");
  const std::string text = read_file_to_string(config_json, "config.json");
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    LMTUNE_THROW(src, ": not valid JSON: ", e.what());
  }
  LMTUNE_CHECK(j.is_object(), src, ": expected a JSON object at the top level, got ", json_type_name(j));
  const Reader r{j, src};

  LlamaConfig c;
  std::string model_type = "llama";
  r.optional_string("model_type", model_type);
  if (model_type == "llama") {
    c.family = ModelFamily::llama;
  } else if (model_type == "qwen2") {
    c.family = ModelFamily::qwen2;
  } else if (model_type == "qwen3") {
    c.family = ModelFamily::qwen3;
  } else {
    LMTUNE_THROW(src, ": model_type '", model_type, "' is not supported (supported: llama, qwen2, qwen3)");
  }
  c.hidden_size = r.required_int("hidden_size");
  c.intermediate_size = r.required_int("intermediate_size");
  c.num_hidden_layers = r.required_int("num_hidden_layers");
  c.num_attention_heads = r.required_int("num_attention_heads");
  c.vocab_size = r.required_int("vocab_size");
  c.num_key_value_heads = c.num_attention_heads;
  r.optional_int("num_key_value_heads", c.num_key_value_heads);
  if (c.family == ModelFamily::qwen3) c.attention_head_dim = 128;  // Qwen3Config's default
  r.optional_int("head_dim", c.attention_head_dim);
  LMTUNE_CHECK(c.attention_head_dim >= 0, src, ": 'head_dim' must be positive, got ", c.attention_head_dim);
  r.optional_double("rms_norm_eps", c.rms_norm_eps);
  r.optional_double("rope_theta", c.rope_theta);
  if (const json* rs = r.find("rope_scaling")) c.rope_scaling = parse_rope_scaling(r, "rope_scaling", *rs, nullptr);
  if (const json* rp = r.find("rope_parameters")) {
    LMTUNE_CHECK(r.find("rope_scaling") == nullptr, src,
                 ": has both 'rope_scaling' and 'rope_parameters'; expected one of them");
    c.rope_scaling = parse_rope_scaling(r, "rope_parameters", *rp, &c.rope_theta);
  }
  r.optional_int("max_position_embeddings", c.max_position_embeddings);
  r.optional_bool("tie_word_embeddings", c.tie_word_embeddings);
  if (c.family != ModelFamily::qwen2) r.optional_bool("attention_bias", c.attention_bias);  // Qwen2 has no such key
  r.optional_token_id("bos_token_id", c.bos_token_id);
  r.optional_token_id("eos_token_id", c.eos_token_id);
  r.optional_string("torch_dtype", c.torch_dtype);
  if (const json* act = r.find("hidden_act")) {
    LMTUNE_CHECK(act->is_string(), src, ": key 'hidden_act' must be a string, got ", json_type_name(*act));
    LMTUNE_CHECK(act->get<std::string>() == "silu", src, ": hidden_act '", act->get<std::string>(),
                 "' is not supported (LLaMA uses 'silu')");
  }
  bool unsupported = false;
  r.optional_bool("mlp_bias", unsupported);
  LMTUNE_CHECK(!unsupported, src, ": 'mlp_bias' true (biases on the MLP projections) is not supported");
  r.optional_bool("use_sliding_window", unsupported);
  LMTUNE_CHECK(!unsupported, src, ": 'use_sliding_window' true (sliding-window attention) is not supported");
  c.validate(src);
  return c;
}

void save_llama_config(const std::filesystem::path& config_json, const LlamaConfig& cfg) {
  cfg.validate("config to save as " + config_json.string());
  nlohmann::ordered_json j;
  switch (cfg.family) {
    case ModelFamily::llama: j["architectures"] = {"LlamaForCausalLM"}; break;
    case ModelFamily::qwen2: j["architectures"] = {"Qwen2ForCausalLM"}; break;
    case ModelFamily::qwen3: j["architectures"] = {"Qwen3ForCausalLM"}; break;
  }
  j["model_type"] = std::string(model_family_name(cfg.family));
  j["hidden_act"] = "silu";
  j["hidden_size"] = cfg.hidden_size;
  j["intermediate_size"] = cfg.intermediate_size;
  j["num_hidden_layers"] = cfg.num_hidden_layers;
  j["num_attention_heads"] = cfg.num_attention_heads;
  j["num_key_value_heads"] = cfg.num_key_value_heads;
  j["head_dim"] = cfg.head_dim();
  j["vocab_size"] = cfg.vocab_size;
  j["rms_norm_eps"] = cfg.rms_norm_eps;
  j["rope_theta"] = cfg.rope_theta;
  const RopeScaling& rs = cfg.rope_scaling;
  switch (rs.type) {
    case RopeScalingType::none: j["rope_scaling"] = nullptr; break;
    case RopeScalingType::linear: j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rs.factor}}; break;
    case RopeScalingType::llama3:
      j["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", rs.factor},
                           {"low_freq_factor", rs.low_freq_factor},
                           {"high_freq_factor", rs.high_freq_factor},
                           {"original_max_position_embeddings", rs.original_max_position_embeddings}};
      break;
  }
  j["max_position_embeddings"] = cfg.max_position_embeddings;
  j["tie_word_embeddings"] = cfg.tie_word_embeddings;
  if (cfg.family != ModelFamily::qwen2) j["attention_bias"] = cfg.attention_bias;
  j["attention_dropout"] = 0.0;
  if (cfg.family == ModelFamily::llama) {
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  } else {
    j["use_sliding_window"] = false;
    j["sliding_window"] = nullptr;
  }
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  j["bos_token_id"] = cfg.bos_token_id;
  j["eos_token_id"] = cfg.eos_token_id;
  j["torch_dtype"] = cfg.torch_dtype;
  write_file_atomic(config_json, j.dump(2) + "\n");
}

}  // namespace lmtune
