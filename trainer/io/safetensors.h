// safetensors: reading (memory-mapped, single file, model directory or sharded via
// model.safetensors.index.json) and writing (single file or shards + index), with every
// header checked before it is trusted. See the design note in safetensors.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "trainer/core/dtype.h"
#include "trainer/core/tensor.h"
#include "trainer/io/file_util.h"

namespace lmtune {

// safetensors dtype names ("F32", "BF16", ...) <-> DType. Unknown names throw.
std::string_view safetensors_dtype_name(DType t);

// One tensor of an open file: points into the read-only mapping (valid while the reader lives).
struct SafeTensorInfo {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  const void* data = nullptr;  // not necessarily aligned to the element size
  size_t nbytes = 0;
  std::filesystem::path file;  // the .safetensors file it came from
  int64_t numel() const { return shape_numel(shape); }
};

class SafeTensorsReader {
 public:
  // `path` is a .safetensors file, or a directory holding model.safetensors.index.json
  // (sharded; preferred when present) or model.safetensors.
  static SafeTensorsReader open(const std::filesystem::path& path);

  SafeTensorsReader(SafeTensorsReader&&) noexcept = default;
  SafeTensorsReader& operator=(SafeTensorsReader&&) noexcept = default;

  bool contains(std::string_view name) const;
  std::vector<std::string> names() const;  // sorted
  size_t size() const { return tensors_.size(); }
  // Missing name -> Error naming the tensor and the file/directory.
  const SafeTensorInfo& get(std::string_view name) const;
  // Checks the shape equals dst.shape() and copies with dtype conversion (f32/bf16/f16 any
  // way; integer types only into the same type). On a meta tensor only the checks run.
  void load_into(std::string_view name, Tensor& dst) const;
  // "__metadata__" of the (first) file, or "metadata" of the index.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::filesystem::path& source() const { return source_; }  // what open() was given
  std::vector<std::filesystem::path> files() const;

 private:
  SafeTensorsReader() = default;
  void add_file(const std::filesystem::path& file);

  std::filesystem::path source_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::unordered_map<std::string, SafeTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

class SafeTensorsWriter {
 public:
  static constexpr size_t kNoShardLimit = SIZE_MAX;

  // Registers a tensor; `data` (numel(shape) * dtype_size(dtype) bytes) is not copied and
  // must stay valid until the last write call. A name added twice is an error.
  void add(std::string name, DType dtype, Shape shape, const void* data);
  // Convenience: the tensor's own dtype, shape and memory (not on meta).
  void add(std::string name, const Tensor& t);
  void set_metadata(std::string key, std::string value);
  size_t size() const { return entries_.size(); }
  size_t total_bytes() const;

  // One file: 8-byte little-endian header length, JSON header ("__metadata__" has
  // "format": "pt"), padded with spaces to 8-byte alignment, then the data. Tensors are
  // ordered by element size (largest first, so every tensor is naturally aligned), then name.
  void write(const std::filesystem::path& path) const;
  // model-0000i-of-0000N.safetensors (each at most max_shard_bytes of data, except a single
  // tensor larger than that) + model.safetensors.index.json in `dir` (created if needed).
  // Leftovers of an earlier save in `dir` (model.safetensors, other model-*-of-*.safetensors)
  // are removed after the new index is in place.
  void write_sharded(const std::filesystem::path& dir, size_t max_shard_bytes) const;
  // What HF save_pretrained does: dir/model.safetensors when everything fits in one shard,
  // write_sharded otherwise; stale files of the other layout are removed.
  void write_model(const std::filesystem::path& dir, size_t max_shard_bytes = kNoShardLimit) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    const void* data;
    size_t nbytes;
  };
  std::vector<const Entry*> ordered() const;
  void write_entries(const std::filesystem::path& path, const std::vector<const Entry*>& entries) const;

  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes named tensors (their own dtypes, shapes and memory; not on meta) as one file.
void write_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, Tensor>>& tensors);

}  // namespace lmtune
