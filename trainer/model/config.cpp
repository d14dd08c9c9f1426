// config.json <-> LlamaConfig. Reading checks every key it uses (presence for the required
// ones, JSON type for all) and then validate()s the values, so a bad file fails here with
// the file and the key named, not later with a shape mismatch.
#include "trainer/model/config.h"

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

}  // namespace

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
  LMTUNE_CHECK(hidden_size % num_attention_heads == 0, source, ": num_attention_heads (", num_attention_heads,
               ") does not divide hidden_size (", hidden_size, ")");
  LMTUNE_CHECK(num_attention_heads % num_key_value_heads == 0, source, ": num_key_value_heads (",
               num_key_value_heads, ") does not divide num_attention_heads (", num_attention_heads, ")");
  LMTUNE_CHECK(head_dim() % 2 == 0, source, ": head dimension hidden_size / num_attention_heads = ", head_dim(),
               " must be even for RoPE");
  LMTUNE_CHECK(rms_norm_eps > 0, source, ": 'rms_norm_eps' must be positive, got ", rms_norm_eps);
  LMTUNE_CHECK(rope_theta > 0, source, ": 'rope_theta' must be positive, got ", rope_theta);
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
  c.hidden_size = r.required_int("hidden_size");
  c.intermediate_size = r.required_int("intermediate_size");
  c.num_hidden_layers = r.required_int("num_hidden_layers");
  c.num_attention_heads = r.required_int("num_attention_heads");
  c.vocab_size = r.required_int("vocab_size");
  c.num_key_value_heads = c.num_attention_heads;
  r.optional_int("num_key_value_heads", c.num_key_value_heads);
  r.optional_double("rms_norm_eps", c.rms_norm_eps);
  r.optional_double("rope_theta", c.rope_theta);
  r.optional_int("max_position_embeddings", c.max_position_embeddings);
  r.optional_bool("tie_word_embeddings", c.tie_word_embeddings);
  r.optional_bool("attention_bias", c.attention_bias);
  r.optional_token_id("bos_token_id", c.bos_token_id);
  r.optional_token_id("eos_token_id", c.eos_token_id);
  r.optional_string("torch_dtype", c.torch_dtype);
  if (const json* hd = r.find("head_dim")) {
    const int64_t head_dim = r.as_int("head_dim", *hd);
    LMTUNE_CHECK(c.num_attention_heads <= 0 || head_dim * c.num_attention_heads == c.hidden_size, src,
                 ": 'head_dim' (", head_dim, ") * num_attention_heads (", c.num_attention_heads,
                 ") != hidden_size (", c.hidden_size, "); a decoupled head_dim is not supported");
  }
  // Llama 3.1 / 3.2 (rope_type "llama3") and other scaled-RoPE checkpoints: the model would
  // compute something else without the scaling, so refuse rather than run it wrong.
  if (const json* rs = r.find("rope_scaling")) {
    const std::string type = rs->is_object() && rs->contains("rope_type") && (*rs)["rope_type"].is_string()
                                 ? (*rs)["rope_type"].get<std::string>()
                                 : rs->is_object() && rs->contains("type") && (*rs)["type"].is_string()
                                       ? (*rs)["type"].get<std::string>()
                                       : "?";
    LMTUNE_THROW(src, ": rope_scaling of type '", type, "' (", rs->dump(), ") is not supported yet, and without it ",
                 "the model would compute something else; checkpoints with rope_scaling null (Llama 2, Llama 3.0, ",
                 "Mistral, Qwen2/2.5/3) load");
  }
  if (const json* act = r.find("hidden_act")) {
    LMTUNE_CHECK(act->is_string(), src, ": key 'hidden_act' must be a string, got ", json_type_name(*act));
    LMTUNE_CHECK(act->get<std::string>() == "silu", src, ": hidden_act '", act->get<std::string>(),
                 "' is not supported (LLaMA uses 'silu')");
  }
  c.validate(src);
  return c;
}

void save_llama_config(const std::filesystem::path& config_json, const LlamaConfig& cfg) {
  cfg.validate("config to save as " + config_json.string());
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
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
  j["rope_scaling"] = nullptr;
  j["max_position_embeddings"] = cfg.max_position_embeddings;
  j["tie_word_embeddings"] = cfg.tie_word_embeddings;
  j["attention_bias"] = cfg.attention_bias;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = false;
  j["initializer_range"] = 0.02;
  j["pretraining_tp"] = 1;
  j["use_cache"] = true;
  j["bos_token_id"] = cfg.bos_token_id;
  j["eos_token_id"] = cfg.eos_token_id;
  j["torch_dtype"] = cfg.torch_dtype;
  write_file_atomic(config_json, j.dump(2) + "\n");
}

}  // namespace lmtune
