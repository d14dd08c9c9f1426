#include "trainer/peft/nf4.h"

#include <charconv>
#include <cstring>

#include <nlohmann/json.hpp>

#include "kernels/cpu/quant.h"
#include "trainer/core/error.h"
#include "trainer/io/safetensors.h"

namespace lmtune {

namespace {

constexpr const char* kAbsmax = ".absmax";
constexpr const char* kNestedAbsmax = ".nested_absmax";
constexpr const char* kNestedOffset = ".nested_offset";
constexpr const char* kNestedQuantMap = ".nested_quant_map";
constexpr const char* kQuantMap = ".quant_map";          // bitsandbytes' tensor only (NF4's table)
constexpr const char* kQuantState = ".quant_state.bitsandbytes__nf4";
constexpr const char* kQuantStateFp4 = ".quant_state.bitsandbytes__fp4";

Tensor staging(Allocator& alloc, Shape shape, DType dtype) {
  return Tensor::empty(alloc, std::move(shape), dtype, MemCategory::workspace);
}

// Copies a file tensor of `dtype` and `numel` elements (any shape) into the first elements of dst.
void copy_exact(const SafeTensorsReader& reader, const std::string& name, DType dtype, int64_t numel, Tensor dst) {
  const SafeTensorInfo& t = reader.get(name);
  LMTUNE_CHECK(t.dtype == dtype && t.numel() == numel, "'", t.file.string(), "': bitsandbytes tensor '", name,
               "' is ", safetensors_dtype_name(t.dtype), " ", shape_str(t.shape), "; expected ",
               safetensors_dtype_name(dtype), " with ", numel, " elements");
  dst.view(0, {numel}).copy_from_host(t.data, dtype);
}

// Reads a bitsandbytes NF4 weight (its six tensors) into q, checking it against shape.
// Returns the names used.
std::vector<std::string> read_bnb(const SafeTensorsReader& reader, const std::string& w, const Shape& shape,
                                  const ops::Nf4Weight& q) {
  const std::string src = "'" + reader.source().string() + "': bitsandbytes weight '" + w + "'";
  const SafeTensorInfo& state = reader.get(w + kQuantState);
  LMTUNE_CHECK(state.dtype == DType::u8, src, ": its quant_state is ", safetensors_dtype_name(state.dtype),
               ", expected U8 (packed JSON)");
  const auto j = nlohmann::json::parse(std::string(static_cast<const char*>(state.data), state.nbytes), nullptr, false);
  LMTUNE_CHECK(j.is_object(), src, ": its quant_state is not a JSON object");
  auto field = [&](const char* key) -> const nlohmann::json& {
    LMTUNE_CHECK(j.contains(key), src, ": quant_state has no \"", key, "\"");
    return j[key];
  };
  LMTUNE_CHECK(field("quant_type") == "nf4", src, ": quant_type ", field("quant_type").dump(), ", expected \"nf4\"");
  LMTUNE_CHECK(field("blocksize") == cpu::kNf4BlockValues, src, ": blocksize ", field("blocksize").dump(),
               "; lmtune reads NF4 in blocks of 64 (bnb_4bit blocksize 64, the default)");
  LMTUNE_CHECK(j.contains("nested_offset") && j.contains("nested_blocksize"), src,
               ": its absmax are not double-quantized (bnb_4bit_use_double_quant: false); lmtune reads "
               "double-quantized NF4 only");
  LMTUNE_CHECK(field("nested_blocksize") == cpu::kNestedBlockValues, src, ": nested_blocksize ",
               field("nested_blocksize").dump(), ", expected 256");
  LMTUNE_CHECK(field("nested_dtype") == "float32", src, ": nested_dtype ", field("nested_dtype").dump(),
               ", expected \"float32\"");
  const nlohmann::json want_shape = nlohmann::json(shape);
  LMTUNE_CHECK(field("shape") == want_shape, src, ": shape ", field("shape").dump(), ", the model expects ",
               want_shape.dump());
  const nlohmann::json& off = field("nested_offset");
  LMTUNE_CHECK(off.is_number(), src, ": nested_offset ", off.dump(), " is not a number");

  const cpu::Nf4Sizes s = cpu::nf4_sizes(shape_numel(shape));
  copy_exact(reader, w, DType::u8, s.code_bytes, q.codes);
  copy_exact(reader, w + kAbsmax, DType::u8, s.blocks, q.absmax);
  copy_exact(reader, w + kNestedAbsmax, DType::f32, s.nested_blocks, q.nested_absmax);
  copy_exact(reader, w + kNestedQuantMap, DType::f32, cpu::kDynamicMapSize, q.nested_code);
  const SafeTensorInfo& map = reader.get(w + kQuantMap);
  LMTUNE_CHECK(map.dtype == DType::f32 && map.numel() == 16 && std::memcmp(map.data, cpu::nf4_code(), 64) == 0, src,
               ": its quant_map is not NF4's 16 values (another 4-bit type?)");
  const float offset = static_cast<float>(off.get<double>());
  Tensor(q.offset).copy_from_host(&offset, DType::f32);
  return {w, w + kAbsmax, w + kQuantMap, w + kNestedAbsmax, w + kNestedQuantMap, w + kQuantState};
}

bool is_bnb_nf4(const SafeTensorsReader& reader, const std::string& w) {
  LMTUNE_CHECK(!reader.contains(w + kQuantStateFp4), "'", reader.source().string(), "': weight '", w,
               "' is bitsandbytes FP4; lmtune reads NF4 only");
  return reader.contains(w + kQuantState);
}

// Python's json.dumps of a float: a number that reads back to the same double.
std::string json_number(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

}  // namespace

void nf4_declare(UnitLayoutBuilder& b, const std::string& w, const Shape& weight_shape) {
  const cpu::Nf4Sizes s = cpu::nf4_sizes(shape_numel(weight_shape));
  b.add(ParamGroupKind::nf4_codes, w, {s.blocks * nf4_block_bytes()}, weight_shape);
  b.add(ParamGroupKind::nf4_absmax, w + kAbsmax, {s.blocks}, weight_shape);
  b.add(ParamGroupKind::nf4_tables, w + kNestedAbsmax, {s.nested_blocks}, weight_shape);
  b.add(ParamGroupKind::nf4_tables, w + kNestedOffset, {1}, weight_shape);
  b.add(ParamGroupKind::nf4_tables, w + kNestedQuantMap, {cpu::kDynamicMapSize}, weight_shape);
}

ops::Nf4Weight nf4_workspace(Allocator& alloc, const Shape& shape) {
  const cpu::Nf4Sizes s = cpu::nf4_sizes(shape_numel(shape));
  return {shape,
          staging(alloc, {s.code_bytes}, DType::u8),
          staging(alloc, {s.blocks}, DType::u8),
          staging(alloc, {s.nested_blocks}, DType::f32),
          staging(alloc, {1}, DType::f32),
          staging(alloc, {cpu::kDynamicMapSize}, DType::f32)};
}

Nf4Rows nf4_rows(const UnitLayout& unit, const std::string& w) {
  return {unit.index(w), unit.index(w + kAbsmax), unit.index(w + kNestedAbsmax), unit.index(w + kNestedOffset),
          unit.index(w + kNestedQuantMap)};
}

ops::Nf4Weight nf4_weight(const Nf4Rows& r, std::span<const Tensor> v, const Shape& weight_shape) {
  return {weight_shape, v[r.codes], v[r.absmax], v[r.nested_absmax], v[r.offset], v[r.nested_code]};
}

void Nf4Linear::bind(std::span<const Tensor> params, std::span<const Tensor>) {
  q_ = nf4_weight(rows_, params, {out_, in_});
  bias_ = bias_row_ >= 0 ? params[bias_row_] : Tensor();
}

Tensor Nf4Linear::dequantized(Allocator& alloc) const {
  Tensor w = Tensor::empty(alloc, {out_, in_}, DType::f32, MemCategory::workspace);
  ops::nf4_dequantize(w, q_);
  return w;
}

void Nf4Linear::forward(Tensor& out, const Tensor& inp, const LinearContext&) const {
  const Tensor w = dequantized(inp.allocator());
  ops::linear_forward(out, inp, w, bias_.defined() ? &bias_ : nullptr);
}

void Nf4Linear::backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, const LinearContext&,
                         ops::GradWrite mode) {
  if (dinp == nullptr) return;  // the weight (and its bias) are frozen
  const Tensor w = dequantized(inp.allocator());
  ops::linear_backward(dinp, nullptr, nullptr, dout, inp, w, mode);
}

std::optional<std::vector<std::string>> nf4_load_row(const SafeTensorsReader& reader, const UnitLayout& unit,
                                                     int row, std::span<const Tensor> views, BaseQuant mode) {
  const ParamRow& r = unit.rows[static_cast<size_t>(row)];
  const ParamGroupKind kind = unit.groups[static_cast<size_t>(r.group)].kind;
  if (kind == ParamGroupKind::nf4_absmax || kind == ParamGroupKind::nf4_tables) return std::vector<std::string>{};
  if (kind == ParamGroupKind::nf4_codes) {
    const ops::Nf4Weight q = nf4_weight(nf4_rows(unit, r.name), views, r.weight_shape);
    if (is_bnb_nf4(reader, r.name)) return read_bnb(reader, r.name, r.weight_shape, q);
    ops::Nf4Weight target = q;
    Tensor w = staging(q.codes.allocator(), r.weight_shape, DType::f32);
    reader.load_into(r.name, w);
    ops::nf4_quantize(target, w);
    return std::vector<std::string>{r.name};
  }
  if (kind != ParamGroupKind::base) return std::nullopt;
  Tensor dst = views[static_cast<size_t>(row)];
  const bool bnb = is_bnb_nf4(reader, r.name);
  if (!bnb && mode != BaseQuant::nf4_values) return std::nullopt;
  Allocator& alloc = dst.allocator();
  ops::Nf4Weight q = nf4_workspace(alloc, r.shape);
  std::vector<std::string> used{r.name};
  if (bnb) {
    used = read_bnb(reader, r.name, r.shape, q);
  } else {
    LMTUNE_ASSERT(dst.dtype() == DType::f32, "NF4 values are loaded into f32 weights, not ", dtype_name(dst.dtype()));
    reader.load_into(r.name, dst);
    ops::nf4_quantize(q, dst);
  }
  if (dst.dtype() == DType::f32) {
    ops::nf4_dequantize(dst, q);
  } else {
    Tensor w = staging(alloc, r.shape, DType::f32);
    ops::nf4_dequantize(w, q);
    if (!w.is_meta()) dst.copy_from_host(w.raw(), DType::f32);
  }
  return used;
}

void nf4_add_bnb_tensors(SafeTensorsWriter& w, const std::string& name, const ops::Nf4Weight& q,
                         const std::string& dtype, std::list<std::string>& keep) {
  const cpu::Nf4Sizes s = cpu::nf4_sizes(shape_numel(q.shape));
  w.add(name, DType::u8, {s.code_bytes, 1}, q.codes.raw());
  w.add(name + kAbsmax, DType::u8, {s.blocks}, q.absmax.raw());
  w.add(name + kQuantMap, DType::f32, {16}, cpu::nf4_code());
  w.add(name + kNestedAbsmax, DType::f32, {s.nested_blocks}, q.nested_absmax.raw());
  w.add(name + kNestedQuantMap, DType::f32, {cpu::kDynamicMapSize}, q.nested_code.raw());
  // bitsandbytes' pack_dict_to_tensor: the non-tensor items of QuantState.as_dict, as JSON bytes
  std::string shape = "[";
  for (size_t i = 0; i < q.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(q.shape[i]);
  shape += "]";
  std::string& json = keep.emplace_back(
      "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"" + dtype + "\", \"shape\": " + shape +
      ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": " +
      json_number(static_cast<double>(q.offset.data<float>()[0])) + "}");
  w.add(name + kQuantState, DType::u8, {static_cast<int64_t>(json.size())}, json.data());
}

std::string bnb_quantization_config_json() {
  return R"({"_load_in_4bit": true, "_load_in_8bit": false, "bnb_4bit_compute_dtype": "float32", )"
         R"("bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true, )"
         R"("llm_int8_enable_fp32_cpu_offload": false, "llm_int8_has_fp16_weight": false, )"
         R"("llm_int8_skip_modules": null, "llm_int8_threshold": 6.0, "load_in_4bit": true, "load_in_8bit": false, )"
         R"("quant_method": "bitsandbytes"})";
}

}  // namespace lmtune
