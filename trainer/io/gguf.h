// GGUF (llama.cpp's model file): export of an HF LLaMA-family directory, written as
// llama.cpp's convert_hf_to_gguf.py writes LlamaForCausalLM / Qwen2ForCausalLM /
// Qwen3ForCausalLM, and a reader that validates every count,
// size and offset before it trusts them. See the design note in gguf.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "trainer/io/file_util.h"

namespace lmtune {

// ---- export -----------------------------------------------------------------------------

// What the 2-D weights of an exported file are stored as. Norm weights and biases (1-D)
// stay F32 in every type, as llama.cpp's converter keeps them.
enum class GgufType {
  f32,   // general.file_type 0 (ALL_F32)
  f16,   // 1 (MOSTLY_F16)
  bf16,  // 32 (MOSTLY_BF16)
  q8_0,  // 7 (MOSTLY_Q8_0); a matrix whose rows are not a multiple of 32 falls back to F16
  // 2 (MOSTLY_Q4_0): the blocks' seven projection matrices Q4_0, token_embd and output
  // Q8_0 (each falling back to F16 where its rows are not a multiple of 32) — the arithmetic
  // QAT (method.qat) trains for.
  q4_0,
};
// "f32", "f16", "bf16", "q8_0", "q4_0" (also upper case); anything else is an Error listing them.
GgufType parse_gguf_type(std::string_view name);
std::string_view gguf_type_name(GgufType t);

// Converts an HF LLaMA-family directory (config.json, model.safetensors or a sharded index,
// tokenizer.json) into one GGUF v3 file that llama.cpp loads as architecture "llama",
// "qwen2" or "qwen3" (config.json's model_type). For llama, q_proj/k_proj rows are
// permuted from HF's rotate-half order back to the interleaved order of llama.cpp's RoPE.
// The file is written atomically.
void export_gguf(const std::filesystem::path& hf_dir, const std::filesystem::path& out_file, GgufType type);

// ---- ggml tensor types ------------------------------------------------------------------

// The ggml element types this code writes and reads (ggml's enum values).
enum class GgmlType : uint32_t { f32 = 0, f16 = 1, q4_0 = 2, q8_0 = 8, bf16 = 30 };
std::string_view ggml_type_name(GgmlType t);

// The Q8_0 and Q4_0 block codecs (bit-exact with ggml's reference quantizers) are in
// kernels/cpu/quant.h, shared with QAT's fake quantization.

// Bytes of n elements of type t (q8_0, q4_0: n must be a multiple of 32).
uint64_t ggml_nbytes(GgmlType t, int64_t n);

// ---- reader -----------------------------------------------------------------------------

enum class GgufValueType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
  string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};
std::string_view gguf_value_type_name(GgufValueType t);

// Unsigned integers are held as uint64_t, signed ones as int64_t, f32/f64 as double.
using GgufScalar = std::variant<uint64_t, int64_t, double, bool, std::string>;

// One metadata value. The accessors throw an Error naming the key when the type differs.
struct GgufValue {
  std::string key;
  GgufValueType type = GgufValueType::u32;
  GgufValueType elem_type = GgufValueType::u32;  // arrays: the element type
  GgufScalar scalar;                             // not arrays
  std::vector<GgufScalar> array;                 // arrays

  uint64_t as_uint() const;  // u8/u16/u32/u64
  int64_t as_int() const;    // any integer type (an u64 above INT64_MAX is an error)
  double as_float() const;   // f32/f64
  bool as_bool() const;
  const std::string& as_string() const;
  std::vector<std::string> strings() const;  // array of string
  std::vector<double> floats() const;        // array of f32/f64
  std::vector<int64_t> ints() const;         // array of an integer type
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::f32;
  std::vector<int64_t> dims;  // ggml's ne: innermost first ((out, in) matrix -> {in, out})
  uint64_t offset = 0;        // from the start of the data section
  uint64_t nbytes = 0;
  int64_t numel() const;
};

struct GgufFile {
  std::filesystem::path path;
  uint32_t version = 0;
  uint64_t alignment = 32;   // general.alignment, or 32
  uint64_t data_offset = 0;  // where the data section starts in the file
  std::vector<GgufValue> kvs;
  std::vector<GgufTensorInfo> tensors;
  std::shared_ptr<const MappedFile> map;

  bool has(std::string_view key) const;
  const GgufValue& at(std::string_view key) const;  // missing -> Error naming key and file
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  const GgufTensorInfo& tensor(std::string_view name) const;  // missing -> Error
  const uint8_t* tensor_data(const GgufTensorInfo& t) const;
  // The tensor's values as f32 (F16/BF16 converted, Q8_0 dequantized), ne[0] fastest.
  std::vector<float> tensor_f32(std::string_view name) const;
};

// Reads and validates a GGUF file (v2 or v3, little-endian): the magic, version, counts
// against the file size, every string and array length, value types, tensor dims and types,
// general.alignment, and that every tensor's data is aligned, inside the file and disjoint
// from the others. Any violation is an Error naming the file and what is wrong.
GgufFile read_gguf(const std::filesystem::path& path);

}  // namespace lmtune
