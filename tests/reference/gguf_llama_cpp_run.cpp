// gguf_llama_cpp_run: loads a GGUF with llama.cpp (the prebuilt CPU libraries that
// scripts/fetch_llama_cpp.sh puts in models/llama.cpp) and greedily continues a prompt.
// It is the independent reader of the files trainer/io/gguf.cpp writes; the GGUF tests
// compile it against models/llama.cpp/include (the headers of the same llama.cpp commit as
// the libraries) and run it as a subprocess.
//
//   gguf_llama_cpp_run MODEL.gguf LIB_DIR N_PREDICT PROMPT [FORCED_IDS]
//   gguf_llama_cpp_run quantize q4_0|q8_0 ROW_LENGTH IN.f32 OUT.bin
//   gguf_llama_cpp_run perplexity MODEL.gguf LIB_DIR TEXT_FILE SEQ_LEN [THREADS]
//
// quantize: ggml's own quantizer (ggml_quantize_chunk, the reference quantizers llama.cpp's
// tools write model files with) applied to the raw little-endian float32 values of IN.f32,
// rows of ROW_LENGTH; the blocks are written to OUT.bin.
//
// perplexity: TEXT_FILE tokenized by llama.cpp (BOS first), cut into consecutive windows of
// SEQ_LEN tokens, each decoded from an empty cache with the logits of every position; every
// window predicts its own next tokens (lmtune perplexity's windows). Prints
//   nll=<mean nats per predicted token> ppl=<exp(nll)> tokens=<predictions>
//
// The prompt is tokenized by llama.cpp's own tokenizer with BOS added. Without FORCED_IDS it
// decodes N_PREDICT tokens greedily (argmax; ties -> lowest id) on the CPU. With FORCED_IDS
// (comma-separated, N_PREDICT of them) it feeds those tokens instead of its own choices
// (teacher forcing) and still reports its argmax at every step — the per-step top-1
// agreement of two models on the same context. Output, one item per line:
//   prompt_ids: 1 9038 2501 263 931
//   ids: 29892 727 ...          (argmax at each step)
//   text: , there was ...       (the pieces of `ids`, concatenated)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "llama.h"
#include "ggml-backend.h"

namespace {

void quiet_log(enum ggml_log_level level, const char* text, void*) {
  if (level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

[[noreturn]] void fail(const std::string& msg) {
  std::fprintf(stderr, "gguf_llama_cpp_run: %s\n", msg.c_str());
  std::exit(1);
}

std::string piece_of(const llama_vocab* vocab, llama_token id) {
  char buf[256];
  const int n = llama_token_to_piece(vocab, id, buf, sizeof buf, 0, /*special=*/false);
  if (n < 0) fail("token_to_piece failed for id " + std::to_string(id));
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace

int quantize_main(int argc, char** argv) {
  if (argc != 6) fail("usage: quantize q4_0|q8_0 ROW_LENGTH IN.f32 OUT.bin");
  const std::string type = argv[2];
  const ggml_type t = type == "q4_0" ? GGML_TYPE_Q4_0 : type == "q8_0" ? GGML_TYPE_Q8_0 : GGML_TYPE_COUNT;
  if (t == GGML_TYPE_COUNT) fail("unknown type " + type);
  const int64_t row = std::atoll(argv[3]);
  FILE* in = std::fopen(argv[4], "rb");
  if (in == nullptr) fail(std::string("cannot read ") + argv[4]);
  std::vector<float> x;
  float v;
  while (std::fread(&v, 4, 1, in) == 1) x.push_back(v);
  std::fclose(in);
  if (row <= 0 || x.size() % static_cast<size_t>(row) != 0) fail("IN.f32 does not hold whole rows");
  const int64_t rows = static_cast<int64_t>(x.size()) / row;
  std::vector<uint8_t> out(ggml_row_size(t, row) * static_cast<size_t>(rows));
  ggml_quantize_chunk(t, x.data(), out.data(), 0, rows, row, nullptr);
  FILE* o = std::fopen(argv[5], "wb");
  if (o == nullptr || std::fwrite(out.data(), 1, out.size(), o) != out.size()) fail(std::string("cannot write ") + argv[5]);
  std::fclose(o);
  return 0;
}

// llama.cpp's CPU backends and the model.
llama_model* load_model(const char* model_path, const char* lib_dir) {
  llama_log_set(quiet_log, nullptr);
  ggml_backend_load_all_from_path(lib_dir);  // the CPU backend variant that fits this CPU
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  llama_model* model = llama_model_load_from_file(model_path, mp);
  if (model == nullptr) fail(std::string("llama.cpp could not load ") + model_path);
  return model;
}

// A context of n_ctx positions, decoding up to n_ctx tokens at once.
llama_context* make_context(llama_model* model, int n_ctx, int threads) {
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = static_cast<uint32_t>(n_ctx);
  cp.n_batch = cp.n_ctx;
  cp.n_ubatch = cp.n_ctx;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  cp.no_perf = true;
  // An f32 KV cache (the default is f16) and no flash attention (whose CPU kernel rounds Q to
  // f16), so that llama.cpp computes attention in f32 as lmtune does: with a 128k vocabulary
  // and random weights the top two logits can be 6e-3 apart, which f16 rounding does flip.
  cp.type_k = GGML_TYPE_F32;
  cp.type_v = GGML_TYPE_F32;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (ctx == nullptr) fail("could not create a llama.cpp context");
  return ctx;
}

int perplexity_main(int argc, char** argv) {
  if (argc != 6 && argc != 7) fail("usage: perplexity MODEL.gguf LIB_DIR TEXT_FILE SEQ_LEN [THREADS]");
  const int seq = std::atoi(argv[5]);
  if (seq < 2) fail("SEQ_LEN must be at least 2");
  FILE* f = std::fopen(argv[4], "rb");
  if (f == nullptr) fail(std::string("cannot read ") + argv[4]);
  std::string text;
  char buf[65536];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  std::fclose(f);
  llama_model* model = load_model(argv[2], argv[3]);
  llama_context* ctx = make_context(model, seq, argc == 7 ? std::atoi(argv[6]) : 1);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  std::vector<llama_token> tokens(text.size() + 8);
  const int n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), tokens.data(),
                               static_cast<int32_t>(tokens.size()), /*add_special=*/true, /*parse_special=*/false);
  if (n <= 0) fail("tokenize failed");
  tokens.resize(static_cast<size_t>(n));
  const int n_vocab = llama_vocab_n_tokens(vocab);
  llama_batch batch = llama_batch_init(seq, 0, 1);
  double nll = 0;
  long long predicted = 0;
  for (int w0 = 0; w0 < n; w0 += seq) {
    const int len = std::min(seq, n - w0);
    if (len < 2) break;
    llama_memory_clear(llama_get_memory(ctx), true);
    batch.n_tokens = len;
    for (int i = 0; i < len; ++i) {
      batch.token[i] = tokens[static_cast<size_t>(w0 + i)];
      batch.pos[i] = i;
      batch.n_seq_id[i] = 1;
      batch.seq_id[i][0] = 0;
      batch.logits[i] = 1;
    }
    if (llama_decode(ctx, batch) != 0) fail("llama_decode failed");
    for (int i = 0; i + 1 < len; ++i) {
      const float* lg = llama_get_logits_ith(ctx, i);
      double mx = lg[0];
      for (int t = 1; t < n_vocab; ++t) mx = std::max(mx, static_cast<double>(lg[t]));
      double sum = 0;
      for (int t = 0; t < n_vocab; ++t) sum += std::exp(static_cast<double>(lg[t]) - mx);
      nll += mx + std::log(sum) - lg[tokens[static_cast<size_t>(w0 + i + 1)]];
      ++predicted;
    }
  }
  llama_batch_free(batch);
  const double mean = nll / static_cast<double>(predicted);
  std::printf("nll=%.6f ppl=%.4f tokens=%lld\n", mean, std::exp(mean), predicted);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "quantize") return quantize_main(argc, argv);
  if (argc >= 2 && std::string(argv[1]) == "perplexity") return perplexity_main(argc, argv);
  if (argc != 5 && argc != 6) {
    std::fprintf(stderr, "usage: %s MODEL.gguf LIB_DIR N_PREDICT PROMPT [FORCED_IDS]\n", argv[0]);
    return 2;
  }
  const char* model_path = argv[1];
  const char* lib_dir = argv[2];
  const int n_predict = std::atoi(argv[3]);
  const std::string prompt = argv[4];
  std::vector<llama_token> forced;
  if (argc == 6) {
    const char* p = argv[5];
    while (*p != '\0') {
      char* end = nullptr;
      forced.push_back(static_cast<llama_token>(std::strtol(p, &end, 10)));
      if (end == p) fail("bad FORCED_IDS");
      p = (*end == ',') ? end + 1 : end;
    }
    if (static_cast<int>(forced.size()) != n_predict) fail("FORCED_IDS must hold N_PREDICT ids");
  }

  llama_model* model = load_model(model_path, lib_dir);
  const llama_vocab* vocab = llama_model_get_vocab(model);

  const int n_prompt_max = static_cast<int>(prompt.size()) + 8;
  std::vector<llama_token> tokens(static_cast<size_t>(n_prompt_max));
  const int n_prompt = llama_tokenize(vocab, prompt.data(), static_cast<int32_t>(prompt.size()), tokens.data(),
                                      n_prompt_max, /*add_special=*/true, /*parse_special=*/false);
  if (n_prompt <= 0) fail("tokenize failed");
  tokens.resize(static_cast<size_t>(n_prompt));
  // one thread: a 15M model needs no more; spinning threads on a busy machine cost more
  llama_context* ctx = make_context(model, n_prompt + n_predict + 8, 1);

  std::printf("prompt_ids:");
  for (llama_token t : tokens) std::printf(" %d", t);
  std::printf("\n");

  const int n_vocab = llama_vocab_n_tokens(vocab);
  std::vector<llama_token> out;
  std::string text;
  std::vector<llama_token> next = tokens;
  for (int step = 0; step < n_predict; ++step) {
    llama_batch batch = llama_batch_get_one(next.data(), static_cast<int32_t>(next.size()));
    if (llama_decode(ctx, batch) != 0) fail("llama_decode failed at step " + std::to_string(step));
    const float* logits = llama_get_logits_ith(ctx, -1);
    if (logits == nullptr) fail("no logits");
    llama_token best = 0;
    for (llama_token t = 1; t < n_vocab; ++t) {
      if (logits[t] > logits[best]) best = t;
    }
    out.push_back(best);
    text += piece_of(vocab, best);
    next.assign(1, forced.empty() ? best : forced[static_cast<size_t>(step)]);
  }
  std::printf("ids:");
  for (llama_token t : out) std::printf(" %d", t);
  std::printf("\ntext: %s\n", text.c_str());

  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
