// safetensors reader and writer — design note.
//
// Format (https://github.com/huggingface/safetensors): 8 bytes little-endian u64 N, then N
// bytes of JSON header {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
// ..., "__metadata__": {str: str}}, then the data section; offsets are relative to the
// start of the data section (8 + N).
//
// Reading: a file is mmapped read-only and nothing in it is trusted until checked. In order:
// the file is at least 8 bytes; N fits in the file; the header is valid JSON and an
// object; every entry has a known dtype, a shape of non-negative integers whose byte size
// does not overflow, and data_offsets [begin, end] with begin <= end <= data section size
// and end - begin == numel * dtype size. Overlapping tensors are not rejected (harmless for
// a read-only map). Every error names the file and the tensor/key at fault. A directory is
// read through model.safetensors.index.json when present (each shard named in weight_map
// must exist and hold the tensors the map assigns to it), else model.safetensors.
// SafeTensorInfo::data points into the mapping: no copy until load_into(), which converts
// into the destination tensor's dtype (and on the meta device only checks).
//
// Writing: the writer holds pointers to the caller's data, orders tensors deterministically
// (element size descending, then name — every tensor lands naturally aligned because the
// header is space-padded to a multiple of 8), and writes each file to a temporary file that
// is renamed into place. Shards are written first and the index last, so an index never
// names a shard that is not complete.
#include "trainer/io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "trainer/core/error.h"

namespace lmtune {

namespace {

using nlohmann::json;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

struct DTypeName {
  DType dtype;
  const char* name;
};
constexpr DTypeName kDTypeNames[] = {
    {DType::f32, "F32"}, {DType::bf16, "BF16"}, {DType::f16, "F16"},
    {DType::i32, "I32"}, {DType::i64, "I64"},   {DType::u8, "U8"},
};

bool dtype_from_safetensors(std::string_view s, DType& out) {
  for (const auto& d : kDTypeNames)
    if (s == d.name) {
      out = d.dtype;
      return true;
    }
  return false;
}

bool is_float(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16; }

// a * b, or false on overflow (both non-negative).
bool mul_ok(uint64_t a, uint64_t b, uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

bool is_shard_name(const std::string& f) {
  // model-NNNNN-of-NNNNN.safetensors
  if (f.size() != std::strlen("model-00001-of-00001.safetensors")) return false;
  if (f.rfind("model-", 0) != 0 || f.substr(11, 4) != "-of-" || f.substr(20) != ".safetensors") return false;
  for (size_t i : {6, 7, 8, 9, 10, 15, 16, 17, 18, 19})
    if (f[i] < '0' || f[i] > '9') return false;
  return true;
}

// Removes dir/model.safetensors and shard files not in `keep` (the files of an earlier save).
void remove_stale(const std::filesystem::path& dir, const std::set<std::string>& keep) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    const bool stale = (f == kSingleName || is_shard_name(f)) && !keep.count(f);
    if (stale) std::filesystem::remove(e.path(), ec);
  }
}

}  // namespace

std::string_view safetensors_dtype_name(DType t) {
  for (const auto& d : kDTypeNames)
    if (d.dtype == t) return d.name;
  LMTUNE_ASSERT(false, "dtype without a safetensors name");
}

// ---------------------------------------------------------------------------------------
// Reader

SafeTensorsReader SafeTensorsReader::open(const std::filesystem::path& path) {
  SafeTensorsReader r;
  r.source_ = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    const auto index = path / kIndexName;
    const auto single = path / kSingleName;
    if (std::filesystem::exists(index, ec)) {
      const std::string text = read_file_to_string(index, "safetensors index");
      json j;
      try {
        j = json::parse(text);
      } catch (const json::parse_error& e) {
        LMTUNE_THROW("safetensors index ", index.string(), ": not valid JSON: ", e.what());
      }
      LMTUNE_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), "safetensors index ",
                   index.string(), ": expected an object with a 'weight_map' object");
      std::map<std::string, std::vector<std::string>> by_shard;
      for (const auto& [name, file] : j["weight_map"].items()) {
        LMTUNE_CHECK(file.is_string(), "safetensors index ", index.string(), ": weight_map['", name,
                     "'] must be a file name string");
        const std::string f = file.get<std::string>();
        LMTUNE_CHECK(!f.empty() && f.find('/') == std::string::npos && f != "." && f != "..", "safetensors index ",
                     index.string(), ": weight_map['", name, "'] = '", f, "' is not a file name in the directory");
        by_shard[f].push_back(name);
      }
      LMTUNE_CHECK(!by_shard.empty(), "safetensors index ", index.string(), ": weight_map is empty");
      for (const auto& [f, tensor_names] : by_shard) {
        LMTUNE_CHECK(std::filesystem::is_regular_file(path / f, ec), "safetensors index ", index.string(),
                     ": shard file '", f, "' (holding ", tensor_names.front(), " and ", tensor_names.size() - 1,
                     " other tensors) does not exist");
      }
      for (const auto& [f, tensor_names] : by_shard) {
        r.add_file(path / f);
        for (const auto& n : tensor_names) {
          auto it = r.tensors_.find(n);
          LMTUNE_CHECK(it != r.tensors_.end() && it->second.file == path / f, "safetensors index ", index.string(),
                       ": tensor '", n, "' is mapped to shard '", f, "' but that shard does not contain it");
        }
      }
      r.metadata_.clear();
      if (j.contains("metadata") && j["metadata"].is_object())
        for (const auto& [k, v] : j["metadata"].items()) r.metadata_[k] = v.is_string() ? v.get<std::string>() : v.dump();
    } else if (std::filesystem::exists(single, ec)) {
      r.add_file(single);
    } else {
      LMTUNE_THROW("model directory '", path.string(), "' holds neither ", kSingleName, " nor ", kIndexName);
    }
  } else {
    LMTUNE_CHECK(std::filesystem::exists(path, ec), "safetensors file '", path.string(), "' does not exist");
    r.add_file(path);
  }
  return r;
}

void SafeTensorsReader::add_file(const std::filesystem::path& file) {
  const std::string fname = file.string();
  auto mapped = std::make_unique<MappedFile>(file);
  const uint8_t* base = mapped->data();
  const size_t size = mapped->size();
  LMTUNE_CHECK(size >= 8, "safetensors file ", fname, ": truncated: ", size,
               " bytes is shorter than the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  LMTUNE_CHECK(n <= size - 8, "safetensors file ", fname, ": header length ", n, " runs past the end of the file (",
               size, " bytes, so at most ", size - 8, ")");
  LMTUNE_CHECK(n >= 2, "safetensors file ", fname, ": header length ", n, " is too small for a JSON object");
  const char* hbegin = reinterpret_cast<const char*>(base + 8);
  json header;
  try {
    header = json::parse(hbegin, hbegin + n);
  } catch (const json::parse_error& e) {
    LMTUNE_THROW("safetensors file ", fname, ": header is not valid JSON: ", e.what());
  }
  LMTUNE_CHECK(header.is_object(), "safetensors file ", fname, ": header is not a JSON object");
  const uint8_t* data_begin = base + 8 + n;
  const uint64_t data_size = size - 8 - n;

  std::vector<SafeTensorInfo> found;
  for (const auto& [name, e] : header.items()) {
    if (name == "__metadata__") {
      LMTUNE_CHECK(e.is_object() || e.is_null(), "safetensors file ", fname, ": __metadata__ is not an object");
      if (files_.empty() && e.is_object())
        for (const auto& [k, v] : e.items()) metadata_[k] = v.is_string() ? v.get<std::string>() : v.dump();
      continue;
    }
    const std::string where = "safetensors file " + fname + ": tensor '" + name + "'";
    LMTUNE_CHECK(e.is_object(), where, ": entry is not an object");
    LMTUNE_CHECK(e.contains("dtype") && e["dtype"].is_string(), where, ": missing 'dtype' string");
    LMTUNE_CHECK(e.contains("shape") && e["shape"].is_array(), where, ": missing 'shape' array");
    LMTUNE_CHECK(e.contains("data_offsets") && e["data_offsets"].is_array(), where, ": missing 'data_offsets' array");
    SafeTensorInfo info;
    info.name = name;
    info.file = file;
    const std::string dt = e["dtype"].get<std::string>();
    LMTUNE_CHECK(dtype_from_safetensors(dt, info.dtype), where, ": unknown or unsupported dtype '", dt,
                 "' (supported: F32, BF16, F16, I32, I64, U8)");
    uint64_t numel = 1;
    for (const auto& d : e["shape"]) {
      LMTUNE_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), where,
                   ": shape ", e["shape"].dump(), " has an entry that is not a non-negative integer");
      const uint64_t dim = d.get<uint64_t>();
      LMTUNE_CHECK(dim <= static_cast<uint64_t>(INT64_MAX) && mul_ok(numel, dim, numel), where, ": shape ",
                   e["shape"].dump(), " overflows");
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t nbytes = 0;
    LMTUNE_CHECK(mul_ok(numel, dtype_size(info.dtype), nbytes), where, ": shape ", e["shape"].dump(), " overflows");
    const json& off = e["data_offsets"];
    LMTUNE_CHECK(off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(), where,
                 ": data_offsets ", off.dump(), " must be [begin, end] with non-negative integers");
    const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    LMTUNE_CHECK(b <= en, where, ": data_offsets ", off.dump(), " has begin > end");
    LMTUNE_CHECK(en <= data_size, where, ": data_offsets ", off.dump(), " run past the end of the data section (",
                 data_size, " bytes; the file may be truncated)");
    LMTUNE_CHECK(en - b == nbytes, where, ": data_offsets ", off.dump(), " span ", en - b, " bytes but dtype ", dt,
                 " x shape ", shape_str(info.shape), " needs ", nbytes, " bytes");
    info.data = data_begin + b;
    info.nbytes = static_cast<size_t>(nbytes);
    found.push_back(std::move(info));
  }
  for (auto& info : found) {
    auto it = tensors_.find(info.name);
    LMTUNE_CHECK(it == tensors_.end(), "safetensors file ", fname, ": tensor '", info.name, "' also appears in ",
                 it->second.file.string());
    std::string key = info.name;
    tensors_.emplace(std::move(key), std::move(info));
  }
  files_.push_back(std::move(mapped));
}

bool SafeTensorsReader::contains(std::string_view name) const { return tensors_.count(std::string(name)) != 0; }

std::vector<std::string> SafeTensorsReader::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [n, _] : tensors_) out.push_back(n);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::filesystem::path> SafeTensorsReader::files() const {
  std::vector<std::filesystem::path> out;
  for (const auto& f : files_) out.push_back(f->path());
  return out;
}

const SafeTensorInfo& SafeTensorsReader::get(std::string_view name) const {
  auto it = tensors_.find(std::string(name));
  LMTUNE_CHECK(it != tensors_.end(), "tensor '", name, "' not found in ", source_.string(), " (", tensors_.size(),
               " tensors)");
  return it->second;
}

void SafeTensorsReader::load_into(std::string_view name, Tensor& dst) const {
  const SafeTensorInfo& info = get(name);
  LMTUNE_CHECK(dst.defined(), "load_into('", name, "'): destination tensor is undefined");
  LMTUNE_CHECK(info.shape == dst.shape(), "tensor '", name, "' in ", info.file.string(), " has shape ",
               shape_str(info.shape), " but the model expects ", shape_str(dst.shape()));
  LMTUNE_CHECK(info.dtype == dst.dtype() || (is_float(info.dtype) && is_float(dst.dtype())), "tensor '", name,
               "' in ", info.file.string(), " has dtype ", safetensors_dtype_name(info.dtype),
               " which cannot be converted to ", dtype_name(dst.dtype()));
  dst.copy_from_host(info.data, info.dtype);  // no-op on meta
}

// ---------------------------------------------------------------------------------------
// Writer

void SafeTensorsWriter::add(std::string name, DType dtype, Shape shape, const void* data) {
  LMTUNE_CHECK(!name.empty() && name != "__metadata__", "safetensors writer: invalid tensor name '", name, "'");
  for (const auto& e : entries_) LMTUNE_CHECK(e.name != name, "safetensors writer: tensor '", name, "' added twice");
  for (int64_t d : shape) LMTUNE_CHECK(d >= 0, "safetensors writer: tensor '", name, "' has shape ", shape_str(shape));
  const size_t nbytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  LMTUNE_CHECK(data != nullptr || nbytes == 0, "safetensors writer: tensor '", name, "' has no data");
  entries_.push_back({std::move(name), dtype, std::move(shape), data, nbytes});
}

void SafeTensorsWriter::add(std::string name, const Tensor& t) {
  LMTUNE_CHECK(t.defined() && !t.is_meta(), "safetensors writer: tensor '", name,
               "' is undefined or on the meta device");
  add(std::move(name), t.dtype(), t.shape(), t.raw());
}

void SafeTensorsWriter::set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

size_t SafeTensorsWriter::total_bytes() const {
  size_t s = 0;
  for (const auto& e : entries_) s += e.nbytes;
  return s;
}

std::vector<const SafeTensorsWriter::Entry*> SafeTensorsWriter::ordered() const {
  std::vector<const Entry*> v;
  for (const auto& e : entries_) v.push_back(&e);
  std::sort(v.begin(), v.end(), [](const Entry* a, const Entry* b) {
    const size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });
  return v;
}

void SafeTensorsWriter::write_entries(const std::filesystem::path& path, const std::vector<const Entry*>& entries) const {
  nlohmann::ordered_json header;
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  meta["format"] = "pt";
  for (const auto& [k, v] : metadata_) meta[k] = v;
  header["__metadata__"] = meta;
  uint64_t offset = 0;
  for (const Entry* e : entries) {
    nlohmann::ordered_json t;
    t["dtype"] = safetensors_dtype_name(e->dtype);
    t["shape"] = e->shape;
    t["data_offsets"] = {offset, offset + e->nbytes};
    header[e->name] = t;
    offset += e->nbytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(h.size()) >> (8 * i));
  AtomicFileWriter w(path);
  w.write(len, 8);
  w.write(h);
  for (const Entry* e : entries) w.write(e->data, e->nbytes);
  w.commit();
}

void SafeTensorsWriter::write(const std::filesystem::path& path) const { write_entries(path, ordered()); }

void SafeTensorsWriter::write_sharded(const std::filesystem::path& dir, size_t max_shard_bytes) const {
  LMTUNE_CHECK(max_shard_bytes > 0, "write_sharded: max_shard_bytes must be positive");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  LMTUNE_CHECK(std::filesystem::is_directory(dir), "cannot create directory '", dir.string(), "': ", ec.message());
  // Shards in name order (so layers stay together), each shard's own order as in write().
  std::vector<const Entry*> by_name;
  for (const auto& e : entries_) by_name.push_back(&e);
  std::sort(by_name.begin(), by_name.end(), [](const Entry* a, const Entry* b) { return a->name < b->name; });
  std::vector<std::vector<const Entry*>> shards;
  size_t cur = 0;
  for (const Entry* e : by_name) {
    if (shards.empty() || (cur > 0 && cur + e->nbytes > max_shard_bytes)) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(e);
    cur += e->nbytes;
  }
  if (shards.empty()) shards.emplace_back();
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  std::set<std::string> keep{kIndexName};
  std::vector<std::pair<std::string, std::string>> map_entries;
  for (size_t i = 0; i < shards.size(); ++i) {
    auto& s = shards[i];
    std::sort(s.begin(), s.end(), [](const Entry* a, const Entry* b) {
      const size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
      return sa != sb ? sa > sb : a->name < b->name;
    });
    const std::string f = shard_name(i, shards.size());
    write_entries(dir / f, s);
    keep.insert(f);
    for (const Entry* e : s) map_entries.emplace_back(e->name, f);
  }
  std::sort(map_entries.begin(), map_entries.end());
  for (const auto& [n, f] : map_entries) weight_map[n] = f;
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total_bytes()}};
  index["weight_map"] = weight_map;
  write_file_atomic(dir / kIndexName, index.dump(2) + "\n");
  remove_stale(dir, keep);
}

void SafeTensorsWriter::write_model(const std::filesystem::path& dir, size_t max_shard_bytes) const {
  if (total_bytes() > max_shard_bytes && entries_.size() > 1) {
    write_sharded(dir, max_shard_bytes);
    return;
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  LMTUNE_CHECK(std::filesystem::is_directory(dir), "cannot create directory '", dir.string(), "': ", ec.message());
  write(dir / kSingleName);
  // The index first: while it exists, readers prefer it over model.safetensors.
  std::filesystem::remove(dir / kIndexName, ec);
  remove_stale(dir, {kSingleName});
}

void write_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, Tensor>>& tensors) {
  SafeTensorsWriter w;
  for (const auto& [name, t] : tensors) w.add(name, t);
  w.write(path);
}

}  // namespace lmtune
