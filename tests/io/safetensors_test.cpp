#include "trainer/io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <numeric>

#include "io/io_test_util.h"
#include "trainer/core/allocator.h"

namespace lmtune {
namespace {

using test::expect_error;
using test::TempDir;

struct Sample {
  std::string name;
  DType dtype;
  Shape shape;
  std::vector<uint8_t> bytes;
};

std::vector<Sample> samples() {
  std::vector<Sample> s;
  auto make = [&](std::string name, DType dt, Shape shape) {
    Sample x{std::move(name), dt, std::move(shape), {}};
    x.bytes.resize(static_cast<size_t>(shape_numel(x.shape)) * dtype_size(dt));
    for (size_t i = 0; i < x.bytes.size(); ++i) x.bytes[i] = static_cast<uint8_t>(i * 31 + x.name.size() * 7);
    s.push_back(std::move(x));
  };
  make("a.f32", DType::f32, {3, 5});
  make("b.bf16", DType::bf16, {7});
  make("c.f16", DType::f16, {2, 3, 1});
  make("d.i32", DType::i32, {4});
  make("e.i64", DType::i64, {3});
  make("f.u8", DType::u8, {9});
  make("g.scalar", DType::f32, {});
  make("h.empty", DType::f16, {0, 4});
  return s;
}

SafeTensorsWriter writer_for(const std::vector<Sample>& s) {
  SafeTensorsWriter w;
  for (const auto& x : s) w.add(x.name, x.dtype, x.shape, x.bytes.data());
  return w;
}

// A file with a hand-written header and `data_bytes` bytes of data.
void write_raw(const std::filesystem::path& p, const std::string& header, size_t data_bytes, int64_t len_override = -1) {
  std::string out(8, '\0');
  const uint64_t n = len_override >= 0 ? static_cast<uint64_t>(len_override) : header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  out += header;
  out.append(data_bytes, '\x11');
  test::write_bytes(p, out);
}

TEST(SafeTensors, RoundTripAllDtypes) {
  TempDir dir;
  const auto s = samples();
  const auto path = dir / "t.safetensors";
  SafeTensorsWriter w = writer_for(s);
  w.set_metadata("note", "hello");
  w.write(path);
  const auto r = SafeTensorsReader::open(path);
  EXPECT_EQ(r.size(), s.size());
  EXPECT_EQ(r.metadata().at("format"), "pt");
  EXPECT_EQ(r.metadata().at("note"), "hello");
  for (const auto& x : s) {
    ASSERT_TRUE(r.contains(x.name));
    const SafeTensorInfo& t = r.get(x.name);
    EXPECT_EQ(t.dtype, x.dtype) << x.name;
    EXPECT_EQ(t.shape, x.shape) << x.name;
    EXPECT_EQ(t.nbytes, x.bytes.size()) << x.name;
    EXPECT_EQ(t.file, path);
    EXPECT_EQ(0, std::memcmp(t.data, x.bytes.data(), x.bytes.size())) << x.name;
  }
  std::vector<std::string> expected;
  for (const auto& x : s) expected.push_back(x.name);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(r.names(), expected);
  EXPECT_FALSE(r.contains("nope"));
  // No temporary files left behind.
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) ++files, (void)e;
  EXPECT_EQ(files, 1);
}

// The on-disk layout, checked by hand: LE length, space-padded JSON header with
// __metadata__, offsets contiguous from 0 in element-size-then-name order, data verbatim.
TEST(SafeTensors, FileLayoutByHand) {
  TempDir dir;
  const auto s = samples();
  const auto path = dir / "t.safetensors";
  writer_for(s).write(path);
  const std::string bytes = test::read_bytes(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_LE(8 + n, bytes.size());
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  const size_t last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}');
  EXPECT_LT(header.size() - 1 - last, 8u);  // at most 7 padding spaces
  const auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["__metadata__"]["format"], "pt");
  EXPECT_EQ(j.size(), s.size() + 1);
  // Expected order: element size descending, then name.
  std::vector<const Sample*> order;
  for (const auto& x : s) order.push_back(&x);
  std::sort(order.begin(), order.end(), [](const Sample* a, const Sample* b) {
    const size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });
  const std::map<DType, std::string> names{{DType::f32, "F32"}, {DType::bf16, "BF16"}, {DType::f16, "F16"},
                                           {DType::i32, "I32"}, {DType::i64, "I64"},   {DType::u8, "U8"}};
  uint64_t offset = 0;
  for (const Sample* x : order) {
    const auto& e = j[x->name];
    EXPECT_EQ(e["dtype"], names.at(x->dtype)) << x->name;
    EXPECT_EQ(e["shape"].get<std::vector<int64_t>>(), x->shape) << x->name;
    EXPECT_EQ(e["data_offsets"][0].get<uint64_t>(), offset) << x->name;
    EXPECT_EQ(e["data_offsets"][1].get<uint64_t>(), offset + x->bytes.size()) << x->name;
    EXPECT_EQ(offset % dtype_size(x->dtype), 0u) << x->name << " is not naturally aligned";
    EXPECT_EQ(0, std::memcmp(bytes.data() + 8 + n + offset, x->bytes.data(), x->bytes.size())) << x->name;
    offset += x->bytes.size();
  }
  EXPECT_EQ(bytes.size(), 8 + n + offset);
}

TEST(SafeTensors, ShardedRoundTrip) {
  TempDir dir;
  std::vector<std::vector<float>> data;
  SafeTensorsWriter w;
  for (int i = 0; i < 10; ++i) {
    data.emplace_back(100 + i);
    std::iota(data.back().begin(), data.back().end(), static_cast<float>(i * 1000));
  }
  for (int i = 0; i < 10; ++i)
    w.add("layer." + std::to_string(i) + ".w", DType::f32, {static_cast<int64_t>(data[i].size())}, data[i].data());
  // A stale single file and a stale shard of an earlier save must go.
  test::write_bytes(dir / "model.safetensors", "stale");
  test::write_bytes(dir / "model-00007-of-00009.safetensors", "stale");
  w.write_sharded(dir.path(), 1200);  // ~ 2-3 tensors per shard
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir / "model-00007-of-00009.safetensors"));
  const auto index = nlohmann::json::parse(test::read_bytes(dir / "model.safetensors.index.json"));
  std::set<std::string> shard_files;
  for (const auto& [name, f] : index["weight_map"].items()) shard_files.insert(f.get<std::string>());
  ASSERT_GT(shard_files.size(), 2u);
  const size_t n = shard_files.size();
  for (size_t i = 0; i < n; ++i) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    EXPECT_TRUE(shard_files.count(buf)) << buf;
    EXPECT_TRUE(std::filesystem::exists(dir / buf)) << buf;
    EXPECT_LE(std::filesystem::file_size(dir / buf), 1200u + 1024u);
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<size_t>(), w.total_bytes());

  const auto r = SafeTensorsReader::open(dir.path());
  EXPECT_EQ(r.size(), 10u);
  EXPECT_EQ(r.files().size(), n);
  auto alloc = Allocator::create(Device::cpu());
  for (int i = 0; i < 10; ++i) {
    const std::string name = "layer." + std::to_string(i) + ".w";
    EXPECT_EQ(r.get(name).file.filename().string(), index["weight_map"][name].get<std::string>());
    Tensor t = Tensor::empty(*alloc, {static_cast<int64_t>(data[i].size())}, DType::f32, MemCategory::weights);
    r.load_into(name, t);
    EXPECT_EQ(t.to_f32(), data[i]) << name;
  }

  // Saving again as one file: write_model removes the index and the shards.
  w.write_model(dir.path());
  EXPECT_TRUE(std::filesystem::exists(dir / "model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors.index.json"));
  for (const auto& f : shard_files) EXPECT_FALSE(std::filesystem::exists(dir / f)) << f;
  EXPECT_EQ(SafeTensorsReader::open(dir.path()).size(), 10u);
}

TEST(SafeTensors, LoadIntoConvertsAndChecksOnMeta) {
  TempDir dir;
  const std::vector<float> v{1.0f, -2.5f, 3.140625f, 65504.0f, 1e-3f, 0.0f};
  SafeTensorsWriter w;
  w.add("x", DType::f32, {2, 3}, v.data());
  std::vector<uint16_t> b(6);
  for (size_t i = 0; i < 6; ++i) b[i] = f32_to_bf16(v[i]);
  w.add("y", DType::bf16, {2, 3}, b.data());
  std::vector<int32_t> ints{1, 2, 3};
  w.add("z", DType::i32, {3}, ints.data());
  const auto path = dir / "m.safetensors";
  w.write(path);
  const auto r = SafeTensorsReader::open(path);
  auto cpu = Allocator::create(Device::cpu());
  Tensor tb = Tensor::empty(*cpu, {2, 3}, DType::bf16, MemCategory::weights);
  r.load_into("x", tb);
  const auto got = tb.to_f32();
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(got[i], bf16_to_f32(f32_to_bf16(v[i])));
  Tensor tf = Tensor::empty(*cpu, {2, 3}, DType::f32, MemCategory::weights);
  r.load_into("y", tf);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(tf.to_f32()[i], bf16_to_f32(b[i]));
  Tensor ti = Tensor::empty(*cpu, {3}, DType::i32, MemCategory::weights);
  r.load_into("z", ti);
  EXPECT_EQ(0, std::memcmp(ti.raw(), ints.data(), 12));
  Tensor tzf = Tensor::empty(*cpu, {3}, DType::f32, MemCategory::weights);
  expect_error([&] { r.load_into("z", tzf); }, {"'z'", path.string(), "I32", "cannot be converted"});

  auto meta = Allocator::create(Device::meta());
  Tensor tm = Tensor::empty(*meta, {2, 3}, DType::bf16, MemCategory::weights);
  r.load_into("x", tm);  // checks only
  Tensor tm_bad = Tensor::empty(*meta, {3, 2}, DType::bf16, MemCategory::weights);
  expect_error([&] { r.load_into("x", tm_bad); }, {"'x'", path.string(), "[2, 3]", "[3, 2]"});
}

// ---- bad inputs: each error names the file and the problem ----

TEST(SafeTensorsErrors, TruncatedFile) {
  TempDir dir;
  const auto p = dir / "short.safetensors";
  test::write_bytes(p, std::string("\x10\x00\x00", 3));
  expect_error([&] { SafeTensorsReader::open(p); }, {p.string(), "truncated", "3 bytes"});
}

TEST(SafeTensorsErrors, HeaderLengthPastEnd) {
  TempDir dir;
  const auto p = dir / "h.safetensors";
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, /*len_override=*/100000);
  expect_error([&] { SafeTensorsReader::open(p); }, {p.string(), "header length 100000", "past the end"});
}

TEST(SafeTensorsErrors, OffsetsPastEnd) {
  TempDir dir;
  const auto p = dir / "o.safetensors";
  write_raw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  expect_error([&] { SafeTensorsReader::open(p); }, {p.string(), "'a'", "past the end of the data section"});
}

TEST(SafeTensorsErrors, OffsetsInconsistentWithShape) {
  TempDir dir;
  const auto p = dir / "i.safetensors";
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 24);
  expect_error([&] { SafeTensorsReader::open(p); }, {p.string(), "'a'", "span 20 bytes", "needs 24 bytes"});
}

TEST(SafeTensorsErrors, BeginAfterEnd) {
  TempDir dir;
  const auto p = dir / "b.safetensors";
  write_raw(p, R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}})", 8);
  expect_error([&] { SafeTensorsReader::open(p); }, {p.string(), "'a'", "begin > end"});
}

TEST(SafeTensorsErrors, UnknownDtype) {
  TempDir dir;
  const auto p = dir / "d.safetensors";
  write_raw(p, R"({"a":{"dtype":"F8_E5M2","shape":[4],"data_offsets":[0,4]}})", 4);
  expect_error([&] { SafeTensorsReader::open(p); }, {p.string(), "'a'", "unknown or unsupported dtype 'F8_E5M2'"});
}

TEST(SafeTensorsErrors, InvalidJsonHeader) {
  TempDir dir;
  const auto p = dir / "j.safetensors";
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4])", 4);
  expect_error([&] { SafeTensorsReader::open(p); }, {p.string(), "header is not valid JSON"});
}

TEST(SafeTensorsErrors, MissingTensor) {
  TempDir dir;
  const float x = 1.0f;
  SafeTensorsWriter w;
  w.add("present", DType::f32, {1}, &x);
  const auto p = dir / "m.safetensors";
  w.write(p);
  const auto r = SafeTensorsReader::open(p);
  expect_error([&] { r.get("model.norm.weight"); }, {"'model.norm.weight'", "not found", p.string()});
}

TEST(SafeTensorsErrors, WrongShapeInLoadInto) {
  TempDir dir;
  std::vector<float> x(6, 1.0f);
  SafeTensorsWriter w;
  w.add("w", DType::f32, {2, 3}, x.data());
  const auto p = dir / "s.safetensors";
  w.write(p);
  const auto r = SafeTensorsReader::open(p);
  auto alloc = Allocator::create(Device::cpu());
  Tensor t = Tensor::empty(*alloc, {3, 2}, DType::f32, MemCategory::weights);
  expect_error([&] { r.load_into("w", t); }, {"'w'", p.string(), "has shape [2, 3]", "expects [3, 2]"});
}

TEST(SafeTensorsErrors, MissingShard) {
  TempDir dir;
  std::vector<float> a(4, 1.0f), b(4, 2.0f);
  SafeTensorsWriter w;
  w.add("a", DType::f32, {4}, a.data());
  w.add("b", DType::f32, {4}, b.data());
  w.write_sharded(dir.path(), 16);
  ASSERT_TRUE(std::filesystem::exists(dir / "model-00002-of-00002.safetensors"));
  std::filesystem::remove(dir / "model-00002-of-00002.safetensors");
  expect_error([&] { SafeTensorsReader::open(dir.path()); },
               {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "does not exist"});
}

TEST(SafeTensorsErrors, IndexNamesTensorNotInShard) {
  TempDir dir;
  std::vector<float> a(4, 1.0f);
  SafeTensorsWriter w;
  w.add("a", DType::f32, {4}, a.data());
  w.write(dir / "model-00001-of-00001.safetensors");
  test::write_bytes(dir / "model.safetensors.index.json",
                    R"({"weight_map": {"a": "model-00001-of-00001.safetensors", "ghost": "model-00001-of-00001.safetensors"}})");
  expect_error([&] { SafeTensorsReader::open(dir.path()); },
               {"model.safetensors.index.json", "'ghost'", "does not contain it"});
}

TEST(SafeTensorsErrors, EmptyDirectory) {
  TempDir dir;
  expect_error([&] { SafeTensorsReader::open(dir.path()); }, {dir.path().string(), "model.safetensors"});
}

}  // namespace
}  // namespace lmtune
