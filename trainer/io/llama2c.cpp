// llama2.c import. model.bin (legacy version 0): 7 int32 header, then float32 arrays in the
// order of llama2.c's checkpoint_init_weights; tokenizer.bin: see trainer/data/tokenizer.h.
// Everything is validated before anything is written; each output file is written
// atomically (temporary file + rename), so out_dir never holds a half-written file.
#include "trainer/io/llama2c.h"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/core/error.h"
#include "trainer/data/tokenizer.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/config.h"

namespace lmtune {

namespace {

constexpr uint64_t kHeaderBytes = 7 * sizeof(int32_t);

// Parameter element counts, in file order.
struct Llama2cLayout {
  uint64_t embed, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq_real, freq_imag, wcls;
  uint64_t total() const {
    return embed + rms_att + wq + wk + wv + wo + rms_ffn + w1 + w2 + w3 + rms_final + freq_real + freq_imag + wcls;
  }
};

Llama2cLayout layout_of(const Llama2cHeader& h) {
  // parse_header bounds every field (dim <= 2^17, hidden <= 2^19, layers <= 2^12,
  // |vocab| <= 2^22, seq_len <= 2^24), so no product below comes near 2^64.
  const uint64_t dim = h.dim, hidden = h.hidden_dim, L = h.n_layers;
  const uint64_t V = static_cast<uint64_t>(std::abs(static_cast<int64_t>(h.vocab_size)));
  const uint64_t head = dim / h.n_heads, kv_dim = head * h.n_kv_heads, T = h.seq_len;
  Llama2cLayout l{};
  l.embed = V * dim;
  l.rms_att = L * dim;
  l.wq = L * dim * dim;
  l.wk = L * kv_dim * dim;
  l.wv = L * kv_dim * dim;
  l.wo = L * dim * dim;
  l.rms_ffn = L * dim;
  l.w1 = L * hidden * dim;
  l.w2 = L * dim * hidden;
  l.w3 = L * hidden * dim;
  l.rms_final = dim;
  l.freq_real = T * head / 2;
  l.freq_imag = T * head / 2;
  l.wcls = h.shared_classifier ? 0 : V * dim;
  return l;
}

std::string header_str(const Llama2cHeader& h) {
  return detail::concat("dim=", h.dim, ", hidden_dim=", h.hidden_dim, ", n_layers=", h.n_layers, ", n_heads=",
                        h.n_heads, ", n_kv_heads=", h.n_kv_heads, ", vocab_size=", h.vocab_size, ", seq_len=",
                        h.seq_len);
}

Llama2cHeader parse_header(const MappedFile& f) {
  const std::string src = "llama2.c model " + f.path().string();
  LMTUNE_CHECK(f.size() >= kHeaderBytes, src, ": truncated: ", f.size(), " bytes, shorter than the ", kHeaderBytes,
               "-byte header");
  int32_t v[7];
  std::memcpy(v, f.data(), sizeof v);
  Llama2cHeader h;
  h.dim = v[0];
  h.hidden_dim = v[1];
  h.n_layers = v[2];
  h.n_heads = v[3];
  h.n_kv_heads = v[4];
  h.vocab_size = v[5];
  h.seq_len = v[6];
  h.shared_classifier = h.vocab_size > 0;
  // Generous upper bounds keep every size computation far from overflow.
  auto in_range = [&](const char* name, int64_t x, int64_t hi) {
    LMTUNE_CHECK(x > 0 && x <= hi, src, ": header field ", name, " = ", x, " is out of range (1..", hi,
                 "); is this a llama2.c legacy (version 0) model.bin? header: ", header_str(h));
  };
  in_range("dim", h.dim, 1 << 17);
  in_range("hidden_dim", h.hidden_dim, 1 << 19);
  in_range("n_layers", h.n_layers, 1 << 12);
  in_range("n_heads", h.n_heads, 1 << 12);
  in_range("n_kv_heads", h.n_kv_heads, 1 << 12);
  in_range("|vocab_size|", std::abs(static_cast<int64_t>(h.vocab_size)), 1 << 22);
  in_range("seq_len", h.seq_len, 1 << 24);
  LMTUNE_CHECK(h.dim % h.n_heads == 0, src, ": n_heads (", h.n_heads, ") does not divide dim (", h.dim, ")");
  LMTUNE_CHECK(h.n_heads % h.n_kv_heads == 0, src, ": n_kv_heads (", h.n_kv_heads, ") does not divide n_heads (",
               h.n_heads, ")");
  LMTUNE_CHECK((h.dim / h.n_heads) % 2 == 0, src, ": head size dim / n_heads = ", h.dim / h.n_heads,
               " must be even for RoPE");
  const uint64_t expected = llama2c_expected_bytes(h);
  if (f.size() != expected) {
    Llama2cHeader other = h;
    other.shared_classifier = !h.shared_classifier;
    const bool other_fits = f.size() == llama2c_expected_bytes(other);
    LMTUNE_THROW(src, ": file size mismatch: the header (", header_str(h), ", ",
                 h.shared_classifier ? "shared" : "unshared", " classifier) implies ", expected,
                 " bytes but the file has ", f.size(), " bytes",
                 other_fits ? " (that is the size with the classifier " +
                                  std::string(h.shared_classifier ? "unshared" : "shared") +
                                  "; the sign of vocab_size is wrong)"
                            : (f.size() < expected ? " (truncated?)" : ""));
  }
  return h;
}

// HF's convert_llama_weights_to_hf permute: w.view(n_heads, rows/n_heads/2, 2, cols)
// .transpose(1, 2).reshape(rows, cols) — interleaved RoPE pairs (2i, 2i+1) become
// rotate-half pairs (i, i + D/2). Output row h*D + k is input row h*D + 2*(k % (D/2)) + k/(D/2).
void permute_rope_rows(const float* in, float* out, int64_t n_heads, int64_t rows, int64_t cols) {
  const int64_t D = rows / n_heads, half = D / 2;
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t k = 0; k < D; ++k) {
      const int64_t src_row = h * D + 2 * (k % half) + k / half;
      std::memcpy(out + (h * D + k) * cols, in + src_row * cols, static_cast<size_t>(cols) * sizeof(float));
    }
}

}  // namespace

uint64_t llama2c_expected_bytes(const Llama2cHeader& h) {
  return kHeaderBytes + layout_of(h).total() * sizeof(float);
}

Llama2cHeader read_llama2c_header(const std::filesystem::path& model_bin) {
  LMTUNE_CHECK(std::filesystem::exists(model_bin), "llama2.c model ", model_bin.string(), ": file not found");
  const MappedFile f(model_bin);
  return parse_header(f);
}

void import_llama2c(const std::filesystem::path& model_bin, const std::filesystem::path& tokenizer_bin,
                    const std::filesystem::path& out_dir) {
  LMTUNE_CHECK(std::filesystem::exists(model_bin), "llama2.c model ", model_bin.string(), ": file not found");
  const MappedFile f(model_bin);
  const Llama2cHeader h = parse_header(f);
  const int64_t V = std::abs(static_cast<int64_t>(h.vocab_size));
  // The tokenizer is read (and checked) before anything is written.
  const Tokenizer tok = Tokenizer::from_llama2c(tokenizer_bin, V);

  LlamaConfig cfg;
  cfg.hidden_size = h.dim;
  cfg.intermediate_size = h.hidden_dim;
  cfg.num_hidden_layers = h.n_layers;
  cfg.num_attention_heads = h.n_heads;
  cfg.num_key_value_heads = h.n_kv_heads;
  cfg.vocab_size = V;
  cfg.rms_norm_eps = 1e-5;
  cfg.rope_theta = 10000.0;
  cfg.max_position_embeddings = h.seq_len;
  cfg.tie_word_embeddings = h.shared_classifier;
  cfg.attention_bias = false;
  cfg.bos_token_id = 1;
  cfg.eos_token_id = 2;
  cfg.torch_dtype = "float32";
  cfg.validate("llama2.c model " + model_bin.string());

  const Llama2cLayout l = layout_of(h);
  const auto* p = reinterpret_cast<const float*>(f.data() + kHeaderBytes);
  const float* embed = p;        p += l.embed;
  const float* rms_att = p;      p += l.rms_att;
  const float* wq = p;           p += l.wq;
  const float* wk = p;           p += l.wk;
  const float* wv = p;           p += l.wv;
  const float* wo = p;           p += l.wo;
  const float* rms_ffn = p;      p += l.rms_ffn;
  const float* w1 = p;           p += l.w1;
  const float* w2 = p;           p += l.w2;
  const float* w3 = p;           p += l.w3;
  const float* rms_final = p;    p += l.rms_final;
  p += l.freq_real + l.freq_imag;  // RoPE tables: recomputed, not stored
  const float* wcls = h.shared_classifier ? nullptr : p;

  const int64_t C = h.dim, H = h.hidden_dim, kv = cfg.kv_dim();
  std::vector<float> q_perm(l.wq), k_perm(l.wk);
  SafeTensorsWriter w;
  w.add("model.embed_tokens.weight", DType::f32, {V, C}, embed);
  for (int64_t i = 0; i < h.n_layers; ++i) {
    const std::string pre = "model.layers." + std::to_string(i) + ".";
    permute_rope_rows(wq + i * C * C, q_perm.data() + i * C * C, h.n_heads, C, C);
    permute_rope_rows(wk + i * kv * C, k_perm.data() + i * kv * C, h.n_kv_heads, kv, C);
    w.add(pre + "input_layernorm.weight", DType::f32, {C}, rms_att + i * C);
    w.add(pre + "self_attn.q_proj.weight", DType::f32, {C, C}, q_perm.data() + i * C * C);
    w.add(pre + "self_attn.k_proj.weight", DType::f32, {kv, C}, k_perm.data() + i * kv * C);
    w.add(pre + "self_attn.v_proj.weight", DType::f32, {kv, C}, wv + i * kv * C);
    w.add(pre + "self_attn.o_proj.weight", DType::f32, {C, C}, wo + i * C * C);
    w.add(pre + "post_attention_layernorm.weight", DType::f32, {C}, rms_ffn + i * C);
    w.add(pre + "mlp.gate_proj.weight", DType::f32, {H, C}, w1 + i * H * C);
    w.add(pre + "mlp.down_proj.weight", DType::f32, {C, H}, w2 + i * C * H);
    w.add(pre + "mlp.up_proj.weight", DType::f32, {H, C}, w3 + i * H * C);
  }
  w.add("model.norm.weight", DType::f32, {C}, rms_final);
  if (wcls != nullptr) w.add("lm_head.weight", DType::f32, {V, C}, wcls);

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  LMTUNE_CHECK(std::filesystem::is_directory(out_dir), "cannot create output directory '", out_dir.string(),
               "': ", ec.message());
  w.write_model(out_dir);
  tok.save_hf_json(out_dir / "tokenizer.json");

  nlohmann::ordered_json tc;
  tc["tokenizer_class"] = "LlamaTokenizer";
  tc["bos_token"] = "<s>";
  tc["eos_token"] = "</s>";
  tc["unk_token"] = "<unk>";
  tc["pad_token"] = nullptr;
  tc["add_bos_token"] = true;
  tc["add_eos_token"] = false;
  tc["model_max_length"] = h.seq_len;
  tc["clean_up_tokenization_spaces"] = false;
  tc["legacy"] = false;
  write_file_atomic(out_dir / "tokenizer_config.json", tc.dump(2) + "\n");

  nlohmann::ordered_json gc;
  gc["bos_token_id"] = 1;
  gc["eos_token_id"] = 2;
  write_file_atomic(out_dir / "generation_config.json", gc.dump(2) + "\n");

  save_llama_config(out_dir / "config.json", cfg);  // last: its presence marks a complete import
}

}  // namespace lmtune
