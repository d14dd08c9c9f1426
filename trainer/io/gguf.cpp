// GGUF export and reading.
//
// Design note
// -----------
// What: export_gguf turns an HF LLaMA-family directory into the GGUF v3 file that llama.cpp's
// convert_hf_to_gguf.py (LlamaModel, Qwen2Model, Qwen3Model) would write for it, so that
// llama.cpp and everything built on it (ollama, LM Studio, node-llama-cpp) run our
// fine-tuned models. The architecture is config.json's model_type: llama, qwen2 or qwen3. read_gguf is a
// small validating reader, used by the tests and by anyone who wants to look inside a file.
//
// File layout (all little-endian):
//   "GGUF" u32 version=3 u64 n_tensors u64 n_kv
//   n_kv x   { string key, u32 value_type, value }       strings: u64 length + UTF-8 bytes
//   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//   zero padding to general.alignment (32), then the data section; each tensor's offset is
//   relative to the section's start and a multiple of 32 (zero padding between tensors).
//
// Metadata, in the converter's order: general.architecture (ARCH = llama | qwen2 | qwen3),
// general.type "model", general.name (the directory's name, the converter's fallback),
// ARCH.block_count, context_length, embedding_length, feed_forward_length,
// attention.head_count, attention.head_count_kv (u32), rope.freq_base,
// attention.layer_norm_rms_epsilon (f32), attention.key_length and value_length (head_dim),
// for linear RoPE scaling rope.scaling.type "linear" and rope.scaling.factor,
// general.file_type, ARCH.vocab_size, rope.dimension_count (head_dim),
// general.quantization_version 2, general.alignment 32 (written although it is the default,
// so the file says what it relies on), then the tokenizer (trainer/io/gguf_vocab.h):
// tokenizer.ggml.model "llama" (SentencePiece) or "gpt2" (byte-level BPE, with its merges
// and llama.cpp's name for the pre-tokenizer), tokens, scores (SentencePiece), token types,
// BOS/EOS/EOT/unknown ids, add_bos_token, add_eos_token.
//
// Tensors: token_embd, blk.{i}.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
// ffn_gate, ffn_up, ffn_down} (+ attn_{q,k,v,output}.bias when present; + attn_q_norm and
// attn_k_norm for qwen3), output_norm, output unless tie_word_embeddings (llama.cpp then
// reuses token_embd), and for llama3 RoPE scaling rope_freqs (D/2, F32): the divisor of
// each pair's frequency (trainer/model/rope.h), which llama.cpp's llama graph applies.
// Every HF tensor must map to one of these (rotary_emb.inv_freq buffers are skipped);
// anything else is an error, never silently dropped. ne lists dims innermost first: an
// (out, in) matrix is {in, out}. What llama.cpp's graphs cannot express (llama3 scaling on
// qwen2/qwen3, an o_proj bias on qwen3) is refused before anything is written.
//
// RoPE permutation (llama only): HF checkpoints hold q_proj/k_proj rows in rotate-half
// order (row j and row j + hd/2 of a head form a rotation pair); llama.cpp's LLaMA graph
// rotates adjacent pairs. As the converter does (w.reshape(n_head, 2, hd/2, in)
// .swapaxes(1, 2)), GGUF row h*hd + 2j + s is HF row h*hd + s*hd/2 + j, with n_head =
// num_key_value_heads for k. llama.cpp's qwen2/qwen3 graphs rotate halves, as HF does, so
// their rows are written as they are.
//
// Types: 1-D tensors are F32 always; 2-D weights F32 / F16 / BF16 / Q8_0 by the requested
// type, Q8_0 falling back to F16 where ne[0] is not a multiple of 32 (as the converter
// does). Q4_0 (a type llama.cpp's converter does not write; its llama-quantize does) puts
// the blocks' projection matrices in Q4_0 and token_embd / output in Q8_0, each falling
// back to F16 likewise: the arithmetic QAT trains for (trainer/peft/qat.h). Conversions
// round to nearest even (F16, BF16); Q8_0 and Q4_0 are bit-exact with ggml's reference
// quantizers (kernels/cpu/quant.h).
//
// Invariants: the whole plan (names, shapes, types, sizes, offsets) is computed and checked
// before a byte is written; data are then streamed one tensor at a time (peak memory: one
// tensor in f32 plus its encoding), through AtomicFileWriter, so a failed export leaves no
// file and an old one intact. The reader checks every length against the bytes that remain
// before allocating or reading, so a corrupt file raises an Error, never a crash.
#include "trainer/io/gguf.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <set>

#include "kernels/cpu/quant.h"
#include "trainer/core/dtype.h"
#include "trainer/core/error.h"
#include "trainer/data/tokenizer.h"
#include "trainer/io/gguf_vocab.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/config.h"
#include "trainer/model/rope.h"

namespace lmtune {

namespace fs = std::filesystem;

namespace {

constexpr uint32_t kGgufVersion = 3;
constexpr uint64_t kAlignment = 32;
constexpr uint32_t kQuantizationVersion = 2;  // GGML_QNT_VERSION

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }


}  // namespace

// ---- type names -------------------------------------------------------------------------

GgufType parse_gguf_type(std::string_view name) {
  std::string s(name);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (s == "f32") return GgufType::f32;
  if (s == "f16") return GgufType::f16;
  if (s == "bf16") return GgufType::bf16;
  if (s == "q8_0") return GgufType::q8_0;
  if (s == "q4_0") return GgufType::q4_0;
  LMTUNE_THROW("unknown GGUF type '", name, "': expected one of f32, f16, bf16, q8_0, q4_0");
}

std::string_view gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::f32: return "f32";
    case GgufType::f16: return "f16";
    case GgufType::bf16: return "bf16";
    case GgufType::q8_0: return "q8_0";
    case GgufType::q4_0: return "q4_0";
  }
  return "?";
}

std::string_view ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::f32: return "F32";
    case GgmlType::f16: return "F16";
    case GgmlType::q4_0: return "Q4_0";
    case GgmlType::q8_0: return "Q8_0";
    case GgmlType::bf16: return "BF16";
  }
  return "?";
}

std::string_view gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::u8: return "u8";
    case GgufValueType::i8: return "i8";
    case GgufValueType::u16: return "u16";
    case GgufValueType::i16: return "i16";
    case GgufValueType::u32: return "u32";
    case GgufValueType::i32: return "i32";
    case GgufValueType::f32: return "f32";
    case GgufValueType::boolean: return "bool";
    case GgufValueType::string: return "string";
    case GgufValueType::array: return "array";
    case GgufValueType::u64: return "u64";
    case GgufValueType::i64: return "i64";
    case GgufValueType::f64: return "f64";
  }
  return "?";
}

uint64_t ggml_nbytes(GgmlType t, int64_t n) {
  LMTUNE_ASSERT(n >= 0);
  const auto un = static_cast<uint64_t>(n);
  switch (t) {
    case GgmlType::f32: return un * 4;
    case GgmlType::f16:
    case GgmlType::bf16: return un * 2;
    case GgmlType::q8_0:
    case GgmlType::q4_0:
      LMTUNE_ASSERT(n % cpu::kGgmlBlockValues == 0, ggml_type_name(t), " needs a multiple of 32 values, got ", n);
      return un / cpu::kGgmlBlockValues * (t == GgmlType::q8_0 ? cpu::kQ8_0BlockBytes : cpu::kQ4_0BlockBytes);
  }
  LMTUNE_ASSERT(false, "unknown ggml type ", static_cast<uint32_t>(t));
  return 0;
}

// ---- writing ----------------------------------------------------------------------------

namespace {

// Little-endian serialization of the header (metadata + tensor infos).
class HeaderBuilder {
 public:
  void u32(uint32_t v) { raw(&v, 4); }
  void i32(int32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void f32(float v) { raw(&v, 4); }
  void str(std::string_view s) {
    u64(s.size());
    raw(s.data(), s.size());
  }
  void raw(const void* p, size_t n) { buf_.append(static_cast<const char*>(p), n); }

  // Key-value pairs.
  void kv_u32(std::string_view key, uint64_t v) {
    LMTUNE_CHECK(v <= std::numeric_limits<uint32_t>::max(), "GGUF export: ", key, " = ", v, " does not fit in u32");
    begin(key, GgufValueType::u32);
    u32(static_cast<uint32_t>(v));
  }
  void kv_f32(std::string_view key, double v) {
    begin(key, GgufValueType::f32);
    f32(static_cast<float>(v));
  }
  void kv_bool(std::string_view key, bool v) {
    begin(key, GgufValueType::boolean);
    const uint8_t b = v ? 1 : 0;
    raw(&b, 1);
  }
  void kv_str(std::string_view key, std::string_view v) {
    begin(key, GgufValueType::string);
    str(v);
  }
  void kv_str_array(std::string_view key, const std::vector<std::string>& v) {
    begin_array(key, GgufValueType::string, v.size());
    for (const auto& s : v) str(s);
  }
  void kv_f32_array(std::string_view key, const std::vector<float>& v) {
    begin_array(key, GgufValueType::f32, v.size());
    for (float f : v) f32(f);
  }
  void kv_i32_array(std::string_view key, const std::vector<int32_t>& v) {
    begin_array(key, GgufValueType::i32, v.size());
    for (int32_t i : v) i32(i);
  }

  uint64_t kv_count() const { return n_kv_; }
  std::string& bytes() { return buf_; }

 private:
  void begin(std::string_view key, GgufValueType t) {
    str(key);
    u32(static_cast<uint32_t>(t));
    ++n_kv_;
  }
  void begin_array(std::string_view key, GgufValueType elem, uint64_t n) {
    begin(key, GgufValueType::array);
    u32(static_cast<uint32_t>(elem));
    u64(n);
  }
  std::string buf_;
  uint64_t n_kv_ = 0;
};

enum class RopePermute { none, rows };

// One tensor of the output file, fully decided before anything is written.
struct PlannedTensor {
  std::string gguf_name;
  std::string hf_name;
  std::vector<int64_t> hf_shape;  // (out, in) or (n), as in the safetensors file
  RopePermute permute = RopePermute::none;
  int64_t permute_heads = 0;
  std::vector<float> values;  // a tensor computed by the export (rope_freqs), when hf_name is empty
  GgmlType type = GgmlType::f32;
  uint64_t offset = 0;
  uint64_t nbytes = 0;
  std::vector<int64_t> ne() const { return {hf_shape.rbegin(), hf_shape.rend()}; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : hf_shape) n *= d;
    return n;
  }
};

std::vector<float> to_f32(const SafeTensorInfo& t, const std::string& src) {
  const int64_t n = t.numel();
  std::vector<float> out(static_cast<size_t>(n));
  const auto* p = static_cast<const uint8_t*>(t.data);
  switch (t.dtype) {
    case DType::f32:
      std::memcpy(out.data(), p, static_cast<size_t>(n) * 4);
      break;
    case DType::bf16:
    case DType::f16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[static_cast<size_t>(i)] = t.dtype == DType::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
      }
      break;
    default:
      LMTUNE_THROW(src, ": tensor '", t.name, "' has dtype ", dtype_name(t.dtype),
                   "; the GGUF export reads F32, BF16 or F16 weights");
  }
  return out;
}

// convert_hf_to_gguf.py's LlamaModel.permute: w.reshape(n_head, 2, rows/n_head/2, cols)
// .swapaxes(1, 2).reshape(rows, cols) — rotate-half rows -> interleaved rows. Also 1-D (bias).
std::vector<float> unpermute_rope_rows(const std::vector<float>& w, int64_t n_head, int64_t rows) {
  const int64_t cols = static_cast<int64_t>(w.size()) / rows;
  const int64_t hd = rows / n_head, half = hd / 2;
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t j = 0; j < half; ++j) {
      for (int64_t s = 0; s < 2; ++s) {
        const float* src = w.data() + (h * hd + s * half + j) * cols;
        float* dst = out.data() + (h * hd + 2 * j + s) * cols;
        std::memcpy(dst, src, static_cast<size_t>(cols) * sizeof(float));
      }
    }
  }
  return out;
}

void encode(const std::vector<float>& x, GgmlType type, std::string& out) {
  const auto n = static_cast<int64_t>(x.size());
  out.resize(ggml_nbytes(type, n));
  auto* o = reinterpret_cast<uint8_t*>(out.data());
  switch (type) {
    case GgmlType::f32:
      std::memcpy(o, x.data(), x.size() * 4);
      break;
    case GgmlType::f16:
    case GgmlType::bf16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = type == GgmlType::f16 ? f32_to_f16(x[static_cast<size_t>(i)])
                                                 : f32_to_bf16(x[static_cast<size_t>(i)]);
        std::memcpy(o + 2 * i, &h, 2);
      }
      break;
    case GgmlType::q8_0:
      cpu::quantize_q8_0(x.data(), n, o);
      break;
    case GgmlType::q4_0:
      cpu::quantize_q4_0(x.data(), n, o);
      break;
  }
}

uint32_t file_type_of(GgufType t) {
  switch (t) {
    case GgufType::f32: return 0;   // ALL_F32
    case GgufType::f16: return 1;   // MOSTLY_F16
    case GgufType::q8_0: return 7;  // MOSTLY_Q8_0
    case GgufType::q4_0: return 2;  // MOSTLY_Q4_0
    case GgufType::bf16: return 32; // MOSTLY_BF16
  }
  return 0;
}

// Which matrices Q4_0 quantizes to 4 bits: a block's projections, not the embedding / head.
enum class WeightRole { projection, other };

GgmlType weight_type(GgufType requested, const std::vector<int64_t>& hf_shape, WeightRole role) {
  if (hf_shape.size() <= 1) return GgmlType::f32;
  const bool blocks_fit = hf_shape.back() % cpu::kGgmlBlockValues == 0;
  switch (requested) {
    case GgufType::f32: return GgmlType::f32;
    case GgufType::f16: return GgmlType::f16;
    case GgufType::bf16: return GgmlType::bf16;
    case GgufType::q8_0: return blocks_fit ? GgmlType::q8_0 : GgmlType::f16;
    case GgufType::q4_0:
      return !blocks_fit ? GgmlType::f16 : role == WeightRole::projection ? GgmlType::q4_0 : GgmlType::q8_0;
  }
  return GgmlType::f32;
}

}  // namespace

void export_gguf(const fs::path& hf_dir, const fs::path& out_file, GgufType type) {
  const std::string src = "GGUF export of '" + hf_dir.string() + "'";
  LMTUNE_CHECK(fs::is_directory(hf_dir), src, ": not a directory");
  const fs::path config_json = hf_dir / "config.json";
  const LlamaConfig cfg = load_llama_config(config_json);

  // llama.cpp's architecture names are HF's model_type. Its llama graph rotates adjacent
  // pairs, so q/k rows are permuted; its qwen2 and qwen3 graphs rotate halves, as HF does.
  const std::string arch(model_family_name(cfg.family));
  const RopePermute qk_permute = cfg.family == ModelFamily::llama ? RopePermute::rows : RopePermute::none;
  LMTUNE_CHECK(cfg.rope_scaling.type != RopeScalingType::llama3 || cfg.family == ModelFamily::llama, src,
               ": rope_scaling of type llama3 on a ", arch, " model: llama.cpp reads per-dimension RoPE factors ",
               "(rope_freqs) only for the llama architecture");
  LMTUNE_CHECK(cfg.family != ModelFamily::qwen3 || !cfg.o_bias(), src,
               ": a qwen3 model with attention_bias (which biases o_proj too): llama.cpp's qwen3 architecture ",
               "has no o_proj bias");

  const SafeTensorsReader st = SafeTensorsReader::open(hf_dir);
  const Tokenizer tok = Tokenizer::from_model_dir(hf_dir);

  // ---- plan the tensors ----
  const int64_t C = cfg.hidden_size, H = cfg.intermediate_size, V = cfg.vocab_size, kv = cfg.kv_dim();
  const int64_t qd = cfg.q_dim(), D = cfg.head_dim();
  std::vector<PlannedTensor> plan;
  std::set<std::string> used;
  auto add = [&](std::string gguf_name, const std::string& hf_name, std::vector<int64_t> shape, RopePermute perm,
                 int64_t heads) {
    const SafeTensorInfo& t = st.get(hf_name);
    const std::vector<int64_t> have(t.shape.begin(), t.shape.end());
    LMTUNE_CHECK(have == shape, src, ": tensor '", hf_name, "' has shape ", shape_str(have), ", expected ",
                 shape_str(shape), " from config.json");
    PlannedTensor p;
    p.gguf_name = std::move(gguf_name);
    p.hf_name = hf_name;
    p.hf_shape = std::move(shape);
    p.permute = perm;
    p.permute_heads = heads;
    // every matrix of a block is one of its projections (norms and biases are vectors)
    p.type = weight_type(type, p.hf_shape, p.gguf_name.starts_with("blk.") ? WeightRole::projection : WeightRole::other);
    p.nbytes = ggml_nbytes(p.type, p.numel());
    plan.push_back(std::move(p));
    used.insert(hf_name);
  };
  auto add_optional = [&](std::string gguf_name, const std::string& hf_name, std::vector<int64_t> shape,
                          RopePermute perm, int64_t heads) {
    if (st.contains(hf_name)) add(std::move(gguf_name), hf_name, std::move(shape), perm, heads);
  };

  add("token_embd.weight", "model.embed_tokens.weight", {V, C}, RopePermute::none, 0);
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string hf = "model.layers." + std::to_string(i) + ".";
    const std::string gg = "blk." + std::to_string(i) + ".";
    const int64_t hq = cfg.num_attention_heads, hkv = cfg.num_key_value_heads;
    add(gg + "attn_norm.weight", hf + "input_layernorm.weight", {C}, RopePermute::none, 0);
    add(gg + "attn_q.weight", hf + "self_attn.q_proj.weight", {qd, C}, qk_permute, hq);
    add_optional(gg + "attn_q.bias", hf + "self_attn.q_proj.bias", {qd}, qk_permute, hq);
    add(gg + "attn_k.weight", hf + "self_attn.k_proj.weight", {kv, C}, qk_permute, hkv);
    add_optional(gg + "attn_k.bias", hf + "self_attn.k_proj.bias", {kv}, qk_permute, hkv);
    add(gg + "attn_v.weight", hf + "self_attn.v_proj.weight", {kv, C}, RopePermute::none, 0);
    add_optional(gg + "attn_v.bias", hf + "self_attn.v_proj.bias", {kv}, RopePermute::none, 0);
    add(gg + "attn_output.weight", hf + "self_attn.o_proj.weight", {C, qd}, RopePermute::none, 0);
    add_optional(gg + "attn_output.bias", hf + "self_attn.o_proj.bias", {C}, RopePermute::none, 0);
    if (cfg.qk_norm()) {  // per-head, so untouched by the rows' permutation (and qwen3 has none)
      add(gg + "attn_q_norm.weight", hf + "self_attn.q_norm.weight", {D}, RopePermute::none, 0);
      add(gg + "attn_k_norm.weight", hf + "self_attn.k_norm.weight", {D}, RopePermute::none, 0);
    }
    add(gg + "ffn_norm.weight", hf + "post_attention_layernorm.weight", {C}, RopePermute::none, 0);
    add(gg + "ffn_gate.weight", hf + "mlp.gate_proj.weight", {H, C}, RopePermute::none, 0);
    add(gg + "ffn_up.weight", hf + "mlp.up_proj.weight", {H, C}, RopePermute::none, 0);
    add(gg + "ffn_down.weight", hf + "mlp.down_proj.weight", {C, H}, RopePermute::none, 0);
  }
  add("output_norm.weight", "model.norm.weight", {C}, RopePermute::none, 0);
  if (cfg.tie_word_embeddings) {
    used.insert("lm_head.weight");  // a redundant copy, if the file has one: llama.cpp reuses token_embd
  } else {
    LMTUNE_CHECK(st.contains("lm_head.weight"), src, ": config.json says tie_word_embeddings is false but there is no ",
                 "lm_head.weight");
    add("output.weight", "lm_head.weight", {V, C}, RopePermute::none, 0);
  }
  for (const auto& name : st.names()) {
    if (used.count(name) != 0) continue;
    if (name.ends_with("rotary_emb.inv_freq")) continue;  // a buffer, recomputed by llama.cpp
    LMTUNE_THROW(src, ": tensor '", name, "' has no GGUF counterpart for a ", arch, " model (is it a LoRA adapter ",
                 "that was not merged?)");
  }
  if (cfg.rope_scaling.type == RopeScalingType::llama3) {  // llama.cpp divides theta^(-2i/D) by these
    PlannedTensor p;
    p.gguf_name = "rope_freqs.weight";
    p.hf_shape = {D / 2};
    for (double d : rope_freq_divisors(cfg)) p.values.push_back(static_cast<float>(d));
    p.nbytes = ggml_nbytes(p.type, p.numel());
    plan.push_back(std::move(p));
  }

  uint64_t data_bytes = 0;
  for (auto& p : plan) {
    p.offset = data_bytes;
    data_bytes = align_up(data_bytes + p.nbytes, kAlignment);
  }

  // ---- vocabulary ----
  const GgufVocab vocab = gguf_vocab(tok, cfg, src);

  // ---- header ----
  std::string name = hf_dir.filename().string();
  if (name.empty() || name == "." || name == "..") name = fs::absolute(hf_dir).lexically_normal().parent_path().filename().string();
  if (name.empty()) name = "model";

  HeaderBuilder kvs;
  kvs.kv_str("general.architecture", arch);
  kvs.kv_str("general.type", "model");
  kvs.kv_str("general.name", name);
  kvs.kv_u32(arch + ".block_count", static_cast<uint64_t>(cfg.num_hidden_layers));
  kvs.kv_u32(arch + ".context_length", static_cast<uint64_t>(cfg.max_position_embeddings));
  kvs.kv_u32(arch + ".embedding_length", static_cast<uint64_t>(C));
  kvs.kv_u32(arch + ".feed_forward_length", static_cast<uint64_t>(H));
  kvs.kv_u32(arch + ".attention.head_count", static_cast<uint64_t>(cfg.num_attention_heads));
  kvs.kv_u32(arch + ".attention.head_count_kv", static_cast<uint64_t>(cfg.num_key_value_heads));
  kvs.kv_f32(arch + ".rope.freq_base", cfg.rope_theta);
  kvs.kv_f32(arch + ".attention.layer_norm_rms_epsilon", cfg.rms_norm_eps);
  kvs.kv_u32(arch + ".attention.key_length", static_cast<uint64_t>(D));
  kvs.kv_u32(arch + ".attention.value_length", static_cast<uint64_t>(D));
  if (cfg.rope_scaling.type == RopeScalingType::linear) {
    kvs.kv_str(arch + ".rope.scaling.type", "linear");
    kvs.kv_f32(arch + ".rope.scaling.factor", cfg.rope_scaling.factor);
  }
  kvs.kv_u32("general.file_type", file_type_of(type));
  kvs.kv_u32(arch + ".vocab_size", static_cast<uint64_t>(V));
  kvs.kv_u32(arch + ".rope.dimension_count", static_cast<uint64_t>(D));
  kvs.kv_u32("general.quantization_version", kQuantizationVersion);
  kvs.kv_u32("general.alignment", kAlignment);
  kvs.kv_str("tokenizer.ggml.model", vocab.model);
  kvs.kv_str("tokenizer.ggml.pre", vocab.pre);
  kvs.kv_str_array("tokenizer.ggml.tokens", vocab.tokens);
  if (!vocab.scores.empty()) kvs.kv_f32_array("tokenizer.ggml.scores", vocab.scores);
  kvs.kv_i32_array("tokenizer.ggml.token_type", vocab.token_types);
  if (!vocab.merges.empty()) kvs.kv_str_array("tokenizer.ggml.merges", vocab.merges);
  kvs.kv_u32("tokenizer.ggml.bos_token_id", static_cast<uint64_t>(vocab.bos));
  kvs.kv_u32("tokenizer.ggml.eos_token_id", static_cast<uint64_t>(vocab.eos));
  if (vocab.eot >= 0) kvs.kv_u32("tokenizer.ggml.eot_token_id", static_cast<uint64_t>(vocab.eot));
  if (vocab.unk >= 0) kvs.kv_u32("tokenizer.ggml.unknown_token_id", static_cast<uint64_t>(vocab.unk));
  kvs.kv_bool("tokenizer.ggml.add_bos_token", vocab.add_bos);
  kvs.kv_bool("tokenizer.ggml.add_eos_token", vocab.add_eos);

  HeaderBuilder head;
  head.raw("GGUF", 4);
  head.u32(kGgufVersion);
  head.u64(plan.size());
  head.u64(kvs.kv_count());
  head.raw(kvs.bytes().data(), kvs.bytes().size());
  for (const auto& p : plan) {
    head.str(p.gguf_name);
    const auto ne = p.ne();
    head.u32(static_cast<uint32_t>(ne.size()));
    for (int64_t d : ne) head.u64(static_cast<uint64_t>(d));
    head.u32(static_cast<uint32_t>(p.type));
    head.u64(p.offset);
  }
  std::string& header = head.bytes();
  header.resize(align_up(header.size(), kAlignment), '\0');

  // ---- write ----
  AtomicFileWriter out(out_file);
  out.write(header);
  std::string encoded;
  uint64_t written = 0;
  static const char kZeros[kAlignment] = {};
  for (const auto& p : plan) {
    LMTUNE_ASSERT(written == p.offset);
    std::vector<float> x = p.hf_name.empty() ? p.values : to_f32(st.get(p.hf_name), src);
    if (p.permute == RopePermute::rows) {
      const int64_t rows = p.hf_shape[0];
      LMTUNE_ASSERT(rows % (2 * p.permute_heads) == 0, p.hf_name);
      x = unpermute_rope_rows(x, p.permute_heads, rows);
    }
    encode(x, p.type, encoded);
    LMTUNE_ASSERT(encoded.size() == p.nbytes);
    out.write(encoded);
    written += p.nbytes;
    const uint64_t pad = align_up(written, kAlignment) - written;
    out.write(kZeros, pad);
    written += pad;
  }
  LMTUNE_ASSERT(written == data_bytes);
  out.commit();
}

// ---- reading ----------------------------------------------------------------------------

namespace {

// Bounds-checked little-endian cursor over the mapped file.
class Cursor {
 public:
  Cursor(const MappedFile& f, std::string src) : p_(f.data()), size_(f.size()), src_(std::move(src)) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  void need(uint64_t n, std::string_view what) const {
    LMTUNE_CHECK(n <= left(), src_, ": truncated: ", what, " needs ", n, " bytes at offset ", pos_, " but only ",
                 left(), " remain");
  }
  template <typename T>
  T get(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(std::string_view what) {
    const auto n = get<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(n));
    pos_ += n;
    return s;
  }
  const std::string& src() const { return src_; }

 private:
  const uint8_t* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::string src_;
};

size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::u8:
    case GgufValueType::i8:
    case GgufValueType::boolean: return 1;
    case GgufValueType::u16:
    case GgufValueType::i16: return 2;
    case GgufValueType::u32:
    case GgufValueType::i32:
    case GgufValueType::f32: return 4;
    case GgufValueType::u64:
    case GgufValueType::i64:
    case GgufValueType::f64: return 8;
    case GgufValueType::string: return 8;  // at least its length
    case GgufValueType::array: return 12;  // at least type + count
  }
  return 1;
}

GgufValueType value_type(uint32_t raw, const Cursor& c, std::string_view key) {
  LMTUNE_CHECK(raw <= static_cast<uint32_t>(GgufValueType::f64), c.src(), ": key '", key, "' has unknown value type ",
               raw);
  return static_cast<GgufValueType>(raw);
}

GgufScalar read_scalar(Cursor& c, GgufValueType t, const std::string& key) {
  switch (t) {
    case GgufValueType::u8: return uint64_t{c.get<uint8_t>(key)};
    case GgufValueType::i8: return int64_t{c.get<int8_t>(key)};
    case GgufValueType::u16: return uint64_t{c.get<uint16_t>(key)};
    case GgufValueType::i16: return int64_t{c.get<int16_t>(key)};
    case GgufValueType::u32: return uint64_t{c.get<uint32_t>(key)};
    case GgufValueType::i32: return int64_t{c.get<int32_t>(key)};
    case GgufValueType::u64: return c.get<uint64_t>(key);
    case GgufValueType::i64: return c.get<int64_t>(key);
    case GgufValueType::f32: return double{c.get<float>(key)};
    case GgufValueType::f64: return c.get<double>(key);
    case GgufValueType::boolean: {
      const auto b = c.get<uint8_t>(key);
      LMTUNE_CHECK(b <= 1, c.src(), ": key '", key, "' has a bool value of ", int{b});
      return b == 1;
    }
    case GgufValueType::string: return c.str(key);
    case GgufValueType::array: break;
  }
  LMTUNE_THROW(c.src(), ": key '", key, "': nested arrays are not supported");
}

bool is_unsigned(GgufValueType t) {
  return t == GgufValueType::u8 || t == GgufValueType::u16 || t == GgufValueType::u32 || t == GgufValueType::u64;
}
bool is_signed(GgufValueType t) {
  return t == GgufValueType::i8 || t == GgufValueType::i16 || t == GgufValueType::i32 || t == GgufValueType::i64;
}
bool is_float(GgufValueType t) { return t == GgufValueType::f32 || t == GgufValueType::f64; }

int64_t scalar_int(const GgufScalar& s, GgufValueType t, const std::string& key) {
  if (is_unsigned(t)) {
    const uint64_t u = std::get<uint64_t>(s);
    LMTUNE_CHECK(u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), "GGUF key '", key, "': value ", u,
                 " does not fit in int64");
    return static_cast<int64_t>(u);
  }
  LMTUNE_CHECK(is_signed(t), "GGUF key '", key, "' is ", gguf_value_type_name(t), ", not an integer");
  return std::get<int64_t>(s);
}

void expect_type(const GgufValue& v, bool ok, std::string_view wanted) {
  LMTUNE_CHECK(ok, "GGUF key '", v.key, "' is ", gguf_value_type_name(v.type),
               v.type == GgufValueType::array ? std::string(" of ") + std::string(gguf_value_type_name(v.elem_type)) : "",
               ", not ", wanted);
}

}  // namespace

uint64_t GgufValue::as_uint() const {
  expect_type(*this, is_unsigned(type), "an unsigned integer");
  return std::get<uint64_t>(scalar);
}
int64_t GgufValue::as_int() const {
  expect_type(*this, is_unsigned(type) || is_signed(type), "an integer");
  return scalar_int(scalar, type, key);
}
double GgufValue::as_float() const {
  expect_type(*this, is_float(type), "a float");
  return std::get<double>(scalar);
}
bool GgufValue::as_bool() const {
  expect_type(*this, type == GgufValueType::boolean, "a bool");
  return std::get<bool>(scalar);
}
const std::string& GgufValue::as_string() const {
  expect_type(*this, type == GgufValueType::string, "a string");
  return std::get<std::string>(scalar);
}
std::vector<std::string> GgufValue::strings() const {
  expect_type(*this, type == GgufValueType::array && elem_type == GgufValueType::string, "an array of string");
  std::vector<std::string> r;
  r.reserve(array.size());
  for (const auto& s : array) r.push_back(std::get<std::string>(s));
  return r;
}
std::vector<double> GgufValue::floats() const {
  expect_type(*this, type == GgufValueType::array && is_float(elem_type), "an array of float");
  std::vector<double> r;
  r.reserve(array.size());
  for (const auto& s : array) r.push_back(std::get<double>(s));
  return r;
}
std::vector<int64_t> GgufValue::ints() const {
  expect_type(*this, type == GgufValueType::array && (is_signed(elem_type) || is_unsigned(elem_type)),
              "an array of integers");
  std::vector<int64_t> r;
  r.reserve(array.size());
  for (const auto& s : array) r.push_back(scalar_int(s, elem_type, key));
  return r;
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

bool GgufFile::has(std::string_view key) const {
  return std::any_of(kvs.begin(), kvs.end(), [&](const GgufValue& v) { return v.key == key; });
}

const GgufValue& GgufFile::at(std::string_view key) const {
  for (const auto& v : kvs) {
    if (v.key == key) return v;
  }
  LMTUNE_THROW("GGUF file ", path.string(), ": no metadata key '", key, "'");
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const GgufTensorInfo& GgufFile::tensor(std::string_view name) const {
  const GgufTensorInfo* t = find_tensor(name);
  LMTUNE_CHECK(t != nullptr, "GGUF file ", path.string(), ": no tensor '", name, "'");
  return *t;
}

const uint8_t* GgufFile::tensor_data(const GgufTensorInfo& t) const { return map->data() + data_offset + t.offset; }

std::vector<float> GgufFile::tensor_f32(std::string_view name) const {
  const GgufTensorInfo& t = tensor(name);
  const uint8_t* p = tensor_data(t);
  const int64_t n = t.numel();
  std::vector<float> out(static_cast<size_t>(n));
  switch (t.type) {
    case GgmlType::f32:
      std::memcpy(out.data(), p, static_cast<size_t>(n) * 4);
      break;
    case GgmlType::f16:
    case GgmlType::bf16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[static_cast<size_t>(i)] = t.type == GgmlType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      break;
    case GgmlType::q8_0:
      cpu::dequantize_q8_0(p, n, out.data());
      break;
    case GgmlType::q4_0:
      cpu::dequantize_q4_0(p, n, out.data());
      break;
  }
  return out;
}

GgufFile read_gguf(const fs::path& path) {
  GgufFile g;
  g.path = path;
  g.map = std::make_shared<const MappedFile>(path);
  const MappedFile& f = *g.map;
  Cursor c(f, "GGUF file " + path.string());
  const std::string& src = c.src();

  c.need(24, "the header (magic, version, counts)");
  const auto magic = c.get<uint32_t>("magic");
  LMTUNE_CHECK(std::memcmp(&magic, "GGUF", 4) == 0, src, ": not a GGUF file (the first 4 bytes are not \"GGUF\")");
  g.version = c.get<uint32_t>("version");
  LMTUNE_CHECK(g.version == 2 || g.version == 3, src, ": GGUF version ", g.version,
               " is not supported (only 2 and 3; a big-endian file also shows up here)");
  const auto n_tensors = c.get<uint64_t>("tensor count");
  const auto n_kv = c.get<uint64_t>("metadata count");
  // Every KV takes >= 8 (key length) + 1 (key) + 4 (type) + 1 (value) bytes; every tensor
  // info >= 8 + 1 + 4 + 8 + 4 + 8.
  LMTUNE_CHECK(n_kv <= c.left() / 14, src, ": metadata count ", n_kv, " cannot fit in a file of ", f.size(), " bytes");
  LMTUNE_CHECK(n_tensors <= c.left() / 33, src, ": tensor count ", n_tensors, " cannot fit in a file of ", f.size(),
               " bytes");

  std::set<std::string> keys;
  g.kvs.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    GgufValue v;
    v.key = c.str("metadata key");
    LMTUNE_CHECK(!v.key.empty(), src, ": metadata key ", i, " is empty");
    LMTUNE_CHECK(keys.insert(v.key).second, src, ": metadata key '", v.key, "' appears twice");
    v.type = value_type(c.get<uint32_t>(v.key), c, v.key);
    if (v.type == GgufValueType::array) {
      v.elem_type = value_type(c.get<uint32_t>(v.key), c, v.key);
      const auto n = c.get<uint64_t>(v.key);
      LMTUNE_CHECK(n <= c.left() / scalar_size(v.elem_type), src, ": key '", v.key, "': array of ", n, " ",
                   gguf_value_type_name(v.elem_type), " cannot fit in the ", c.left(), " bytes left");
      v.array.reserve(static_cast<size_t>(n));
      for (uint64_t j = 0; j < n; ++j) v.array.push_back(read_scalar(c, v.elem_type, v.key));
    } else {
      v.scalar = read_scalar(c, v.type, v.key);
    }
    g.kvs.push_back(std::move(v));
  }

  if (g.has("general.alignment")) {
    const GgufValue& a = g.at("general.alignment");
    LMTUNE_CHECK(a.type == GgufValueType::u32, src, ": general.alignment is ", gguf_value_type_name(a.type),
                 ", expected u32");
    g.alignment = a.as_uint();
    LMTUNE_CHECK(g.alignment != 0 && (g.alignment & (g.alignment - 1)) == 0, src, ": general.alignment ", g.alignment,
                 " is not a power of two");
  }

  std::set<std::string> names;
  g.tensors.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.str("tensor name");
    LMTUNE_CHECK(!t.name.empty(), src, ": tensor ", i, " has an empty name");
    LMTUNE_CHECK(names.insert(t.name).second, src, ": tensor '", t.name, "' appears twice");
    const auto n_dims = c.get<uint32_t>(t.name);
    LMTUNE_CHECK(n_dims >= 1 && n_dims <= 4, src, ": tensor '", t.name, "' has ", n_dims, " dims (1 to 4 allowed)");
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const auto ne = c.get<uint64_t>(t.name);
      LMTUNE_CHECK(ne >= 1 && ne <= (uint64_t{1} << 40) && numel <= (uint64_t{1} << 62) / ne, src, ": tensor '",
                   t.name, "' has an invalid dimension ", ne);
      numel *= ne;
      t.dims.push_back(static_cast<int64_t>(ne));
    }
    const auto raw_type = c.get<uint32_t>(t.name);
    LMTUNE_CHECK(raw_type == 0 || raw_type == 1 || raw_type == 2 || raw_type == 8 || raw_type == 30, src,
                 ": tensor '", t.name, "' has ggml type ", raw_type,
                 ", which this reader does not handle (F32, F16, Q4_0, Q8_0, BF16)");
    t.type = static_cast<GgmlType>(raw_type);
    if (t.type == GgmlType::q8_0 || t.type == GgmlType::q4_0) {
      LMTUNE_CHECK(t.dims[0] % cpu::kGgmlBlockValues == 0, src, ": ", ggml_type_name(t.type), " tensor '", t.name,
                   "' has ne[0] = ", t.dims[0], ", not a multiple of 32");
    }
    t.offset = c.get<uint64_t>(t.name);
    LMTUNE_CHECK(t.offset % g.alignment == 0, src, ": tensor '", t.name, "' offset ", t.offset,
                 " is not a multiple of the alignment ", g.alignment);
    t.nbytes = ggml_nbytes(t.type, static_cast<int64_t>(numel));
    g.tensors.push_back(std::move(t));
  }

  g.data_offset = align_up(c.pos(), g.alignment);
  LMTUNE_CHECK(g.data_offset <= f.size() || g.tensors.empty(), src, ": the data section would start at ",
               g.data_offset, ", past the end of the file (", f.size(), " bytes)");
  const uint64_t data_size = f.size() >= g.data_offset ? f.size() - g.data_offset : 0;
  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& t : g.tensors) {
    LMTUNE_CHECK(t.offset <= data_size && t.nbytes <= data_size - t.offset, src, ": tensor '", t.name, "' (",
                 ggml_type_name(t.type), ", ", t.nbytes, " bytes at data offset ", t.offset,
                 ") runs past the end of the file; the data section holds ", data_size, " bytes");
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto* a = by_offset[i - 1];
    const auto* b = by_offset[i];
    LMTUNE_CHECK(a->offset + a->nbytes <= b->offset, src, ": tensors '", a->name, "' and '", b->name, "' overlap");
  }
  return g;
}

}  // namespace lmtune
