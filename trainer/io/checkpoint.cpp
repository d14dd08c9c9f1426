#include "trainer/io/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"

namespace lmtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kFormatVersion = 2;
constexpr const char* kIndexName = "index.json";
constexpr const char* kStateName = "trainer_state.json";

std::string shard_file_name(int rank, int world) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard-%05d-of-%05d.safetensors", rank, world);
  return buf;
}

std::string piece_key(const std::string& name, int64_t start) { return name + "@" + std::to_string(start); }

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

json state_json(const TrainerState& s, double save_seconds) {
  json st = {{"format_version", kFormatVersion},
             {"step", s.step},
             {"adam_steps", s.adam_steps},
             {"loader", {{"epoch", s.loader.epoch}, {"position", s.loader.position}}}};
  if (s.train_data) st["train_data"] = {{"rows", s.train_data->rows}, {"hash", hex64(s.train_data->hash)}};
  st["save_seconds"] = save_seconds;
  return st;
}

}  // namespace

TrainerState read_trainer_state(const fs::path& dir) {
  LMTUNE_CHECK(fs::is_directory(dir), "checkpoint directory '", dir.string(), "' does not exist");
  const fs::path file = dir / kStateName;
  const std::string text = read_file_to_string(file, kStateName);
  try {
    const json st = json::parse(text);
    const int version = st.value("format_version", 0);
    LMTUNE_CHECK(version == 1 || version == kFormatVersion, "'", file.string(), "' has format_version ", version,
                 ", expected 1 or ", kFormatVersion, " (written by a newer lmtune?)");
    TrainerState s;
    s.step = st.at("step").get<int64_t>();
    s.adam_steps = st.at("adam_steps").get<int64_t>();
    s.loader.epoch = st.at("loader").at("epoch").get<int64_t>();
    s.loader.position = st.at("loader").at("position").get<int64_t>();
    LMTUNE_CHECK(s.step >= 0 && s.adam_steps >= 0 && s.loader.epoch >= 0 && s.loader.position >= 0, "'",
                 file.string(), "' holds a negative step or position");
    if (st.contains("train_data")) {
      const std::string h = st.at("train_data").at("hash").get<std::string>();
      LMTUNE_CHECK(h.size() == 16 && h.find_first_not_of("0123456789abcdef") == std::string::npos, "'",
                   file.string(), "': train_data.hash '", h, "' is not 16 hex digits");
      s.train_data = DataFingerprint{st.at("train_data").at("rows").get<int64_t>(), std::stoull(h, nullptr, 16)};
    }
    return s;
  } catch (const json::exception& e) {
    LMTUNE_THROW("'", file.string(), "' is not a valid trainer state: ", e.what());
  }
}

std::optional<double> checkpoint_save_seconds(const fs::path& dir) {
  const fs::path file = dir / kStateName;
  try {
    const json st = json::parse(read_file_to_string(file, kStateName));
    if (!st.contains("save_seconds")) return std::nullopt;
    const double s = st.at("save_seconds").get<double>();
    LMTUNE_CHECK(std::isfinite(s) && s >= 0, "'", file.string(), "': save_seconds ", s, " is not a duration");
    return s;
  } catch (const json::exception& e) {
    LMTUNE_THROW("'", file.string(), "' is not a valid trainer state: ", e.what());
  }
}

bool is_checkpoint_file_name(std::string_view n) {
  if (n == kIndexName || n == kStateName || n == "config.yaml" || n == "trainable.safetensors" ||
      n == "optimizer.safetensors")
    return true;
  // shard-RRRRR-of-WWWWW.safetensors
  constexpr std::string_view pre = "shard-", mid = "-of-", ext = ".safetensors";
  if (n.size() != pre.size() + 5 + mid.size() + 5 + ext.size()) return false;
  if (n.substr(0, pre.size()) != pre || n.substr(pre.size() + 5, mid.size()) != mid || !n.ends_with(ext)) return false;
  auto digits = [](std::string_view d) { return d.find_first_not_of("0123456789") == std::string_view::npos; };
  return digits(n.substr(pre.size(), 5)) && digits(n.substr(pre.size() + 5 + mid.size(), 5));
}

const NameSet& checkpoint_file_names() {
  static const NameSet names(is_checkpoint_file_name);
  return names;
}

bool is_checkpoint_dir(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.rfind("checkpoint-", 0) != 0) return false;
  const std::string num = name.substr(11);
  if (num.empty() || num.size() > 18 || num.find_first_not_of("0123456789") != std::string::npos) return false;
  std::error_code ec;
  if (!fs::is_regular_file(dir / kStateName, ec)) return false;
  return fs::is_regular_file(dir / kIndexName, ec) ||
         (fs::is_regular_file(dir / "trainable.safetensors", ec) && fs::is_regular_file(dir / "optimizer.safetensors", ec));
}

namespace {

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

std::vector<ParamRef> even_share(const std::vector<ParamRef>& whole, int rank, int world) {
  LMTUNE_ASSERT(world >= 1 && rank >= 0 && rank < world, "rank ", rank, " of ", world);
  int64_t total = 0;
  for (const ParamRef& t : whole) total += t.value.numel();
  const int64_t lo = total * rank / world, hi = total * (rank + 1) / world;
  std::vector<ParamRef> out;
  int64_t base = 0;
  for (const ParamRef& t : whole) {
    LMTUNE_ASSERT(t.whole(), "even_share of a piece of '", t.name, "'");
    const int64_t n = t.value.numel();
    const int64_t a = std::max(lo, base), b = std::min(hi, base + n);
    if (a < b) out.push_back({t.name, t.value.reshape({n}).view(a - base, {b - a}), Tensor(), t.value.shape(), a - base});
    base += n;
  }
  return out;
}

fs::path save_checkpoint(const fs::path& run_dir, const std::vector<ParamRef>& mine, const TrainerState& state,
                         const std::string& config_yaml, const RunContext& run, Communicator& world) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path final_dir = run_dir / ("checkpoint-" + std::to_string(state.step));
  // 1. the staging directory, made by the writer
  std::optional<AtomicDirectory> dir;
  if (run.writer()) dir.emplace(final_dir, checkpoint_file_names(), "checkpoint");
  const fs::path staging = world.broadcast_bytes(dir ? dir->staging().string() : std::string(), 0);

  // 2. this rank's shard
  const std::string file = shard_file_name(world.rank(), world.size());
  LMTUNE_CHECK(fs::is_directory(staging), "rank ", world.rank(), " (host ", run.host, ") cannot see the checkpoint directory '",
               staging.string(), "' that rank 0 created: output.dir must be on a file system every rank shares");
  SafeTensorsWriter w;
  json pieces = json::array();
  for (const ParamRef& p : mine) {
    const Tensor flat = p.value.reshape({p.value.numel()});
    w.add(piece_key(p.name, p.start), flat);
    pieces.push_back({{"name", p.name},
                      {"shape", p.logical_shape()},
                      {"dtype", std::string(safetensors_dtype_name(flat.dtype()))},
                      {"start", p.start},
                      {"numel", flat.numel()},
                      {"file", file},
                      {"key", piece_key(p.name, p.start)}});
  }
  w.write(staging / file);
  const std::vector<std::string> all = world.all_gather_bytes(pieces.dump());

  // 3. the index, the state, the commit
  if (run.writer()) {
    json tensors = json::object();
    for (const std::string& text : all)
      for (const json& p : json::parse(text)) {
        json& t = tensors[p.at("name").get<std::string>()];
        t["shape"] = p.at("shape");
        t["dtype"] = p.at("dtype");
        t["pieces"].push_back({{"file", p.at("file")}, {"key", p.at("key")}, {"start", p.at("start")},
                               {"numel", p.at("numel")}});
      }
    for (auto& [name, t] : tensors.items()) {
      auto& ps = t["pieces"];
      std::sort(ps.begin(), ps.end(), [](const json& a, const json& b) { return a["start"] < b["start"]; });
      int64_t next = 0;
      for (const json& p : ps) {
        LMTUNE_ASSERT(p["start"].get<int64_t>() == next, "checkpoint pieces of '", name, "' do not tile it");
        next += p["numel"].get<int64_t>();
      }
      LMTUNE_ASSERT(next == shape_numel(t["shape"].get<Shape>()), "checkpoint pieces of '", name,
                    "' cover ", next, " elements");
    }
    const json index = {{"format_version", kFormatVersion}, {"world", world.size()}, {"tensors", tensors}};
    write_file_atomic(staging / kIndexName, index.dump(1) + "\n");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    write_file_atomic(staging / kStateName, state_json(state, seconds).dump(2) + "\n");
    write_file_atomic(staging / "config.yaml", config_yaml);
    fsync_dir(staging);
    dir->commit();
    fsync_dir(run_dir);
  }
  world.barrier();
  return final_dir;
}

// ---- reading -------------------------------------------------------------------------

CheckpointReader::CheckpointReader(CheckpointReader&&) noexcept = default;
CheckpointReader& CheckpointReader::operator=(CheckpointReader&&) noexcept = default;
CheckpointReader::~CheckpointReader() = default;

CheckpointReader CheckpointReader::open(const fs::path& dir) {
  LMTUNE_CHECK(fs::is_directory(dir), "checkpoint directory '", dir.string(), "' does not exist");
  CheckpointReader r;
  r.dir_ = dir;
  r.state_ = read_trainer_state(dir);
  auto add_file = [&](const fs::path& f) {
    LMTUNE_CHECK(fs::is_regular_file(f), "checkpoint file '", f.string(), "' is missing");
    r.files_.push_back(std::make_unique<SafeTensorsReader>(SafeTensorsReader::open(f)));
    return static_cast<int>(r.files_.size()) - 1;
  };
  const fs::path index_file = dir / kIndexName;
  if (!fs::exists(index_file)) {  // format 1: one process, whole tensors in two files
    for (const char* name : {"trainable.safetensors", "optimizer.safetensors"}) {
      const int f = add_file(dir / name);
      for (const std::string& key : r.files_[f]->names()) {
        const SafeTensorInfo& info = r.files_[f]->get(key);
        r.tensors_[key] = Entry{info.shape, {{f, key, 0, info.numel()}}};
      }
    }
    return r;
  }
  const std::string text = read_file_to_string(index_file, kIndexName);
  try {
    const json index = json::parse(text);
    LMTUNE_CHECK(index.value("format_version", 0) == kFormatVersion, "'", index_file.string(), "' has format_version ",
                 index.value("format_version", 0), ", expected ", kFormatVersion);
    std::map<std::string, int> file_ids;
    for (const auto& [name, t] : index.at("tensors").items()) {
      Entry e;
      e.shape = t.at("shape").get<Shape>();
      for (int64_t d : e.shape) LMTUNE_CHECK(d >= 0, "'", index_file.string(), "': tensor '", name, "' has a negative dimension");
      int64_t next = 0;
      for (const json& p : t.at("pieces")) {
        const std::string file = p.at("file").get<std::string>();
        LMTUNE_CHECK(!file.empty() && file.find('/') == std::string::npos && file != "." && file != "..", "'",
                     index_file.string(), "': tensor '", name, "' names the file '", file,
                     "', which is not a file of this checkpoint directory");
        auto it = file_ids.find(file);
        if (it == file_ids.end()) it = file_ids.emplace(file, add_file(dir / file)).first;
        Piece piece{it->second, p.at("key").get<std::string>(), p.at("start").get<int64_t>(),
                    p.at("numel").get<int64_t>()};
        LMTUNE_CHECK(piece.start == next && piece.numel > 0, "'", index_file.string(), "': the pieces of tensor '",
                     name, "' do not tile it (a piece starts at ", piece.start, ", expected ", next, ")");
        const SafeTensorInfo& info = r.files_[piece.file]->get(piece.key);
        LMTUNE_CHECK(info.numel() == piece.numel, "'", info.file.string(), "': '", piece.key, "' holds ", info.numel(),
                     " elements; the index says ", piece.numel);
        next += piece.numel;
        e.pieces.push_back(std::move(piece));
      }
      LMTUNE_CHECK(next == shape_numel(e.shape), "'", index_file.string(), "': the pieces of tensor '", name,
                   "' cover ", next, " of its ", shape_numel(e.shape), " elements");
      r.tensors_[name] = std::move(e);
    }
  } catch (const json::exception& e) {
    LMTUNE_THROW("'", index_file.string(), "' is not a valid checkpoint index: ", e.what());
  }
  return r;
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : tensors_) out.push_back(name);
  return out;
}

const Shape& CheckpointReader::shape(const std::string& name) const {
  auto it = tensors_.find(name);
  LMTUNE_CHECK(it != tensors_.end(), "checkpoint '", dir_.string(), "' has no tensor '", name, "'");
  return it->second.shape;
}

void CheckpointReader::read(const std::string& name, int64_t start, Tensor& dst) const {
  auto it = tensors_.find(name);
  LMTUNE_CHECK(it != tensors_.end(), "checkpoint '", dir_.string(), "' has no tensor '", name,
               "' (was it written by a run with another method or model?)");
  const Entry& e = it->second;
  const int64_t n = dst.numel(), end = start + n;
  LMTUNE_ASSERT(start >= 0 && end <= shape_numel(e.shape), "reading elements [", start, ", ", end, ") of '", name,
                "' ", shape_str(e.shape));
  if (dst.is_meta()) return;
  const size_t out_size = dtype_size(dst.dtype());
  for (const Piece& p : e.pieces) {
    const int64_t a = std::max(start, p.start), b = std::min(end, p.start + p.numel);
    if (a >= b) continue;
    const SafeTensorInfo& info = files_[p.file]->get(p.key);
    const char* src = static_cast<const char*>(info.data) + (a - p.start) * dtype_size(info.dtype);
    char* out = static_cast<char*>(dst.raw()) + (a - start) * out_size;
    convert_elements(src, info.dtype, out, dst.dtype(), b - a);
  }
}

void CheckpointReader::read_full(const std::string& name, Tensor& dst) const {
  LMTUNE_CHECK(shape(name) == dst.shape(), "checkpoint '", dir_.string(), "': tensor '", name, "' has shape ",
               shape_str(shape(name)), ", the model expects ", shape_str(dst.shape()),
               " (was it written by a run with another model or LoRA rank?)");
  read(name, 0, dst);
}

TrainerState load_checkpoint(const fs::path& dir, const std::vector<ParamRef>& into,
                             const std::vector<std::string>& expected) {
  const CheckpointReader r = CheckpointReader::open(dir);
  const std::set<std::string> wanted(expected.begin(), expected.end());
  for (const std::string& name : r.names())
    LMTUNE_CHECK(wanted.count(name), "checkpoint '", dir.string(), "' holds tensor '", name,
                 "', which this run does not train (was it written by a run with another method or model?)");
  for (const ParamRef& p : into) {
    LMTUNE_ASSERT(wanted.count(p.name), "'", p.name, "' is not among the run's tensors");
    LMTUNE_CHECK(r.contains(p.name), "checkpoint '", dir.string(), "' has no tensor '", p.name,
                 "' (was it written by a run with another method or model?)");
    LMTUNE_CHECK(r.shape(p.name) == p.logical_shape(), "checkpoint '", dir.string(), "': tensor '", p.name,
                 "' has shape ", shape_str(r.shape(p.name)), ", the model expects ", shape_str(p.logical_shape()),
                 " (was it written by a run with another model or LoRA rank?)");
    Tensor dst = p.value;
    r.read(p.name, p.start, dst);
  }
  return r.state();
}

std::vector<std::string> checkpoint_tensor_names(const ModelLayout& layout) {
  std::vector<std::string> out;
  for (const UnitLayout& u : layout.units)
    for (const ParamRow& r : u.rows)
      if (u.groups[r.group].trains)
        for (const char* suffix : {"", ".exp_avg", ".exp_avg_sq"}) out.push_back(r.name + suffix);
  return out;
}

std::optional<fs::path> latest_checkpoint(const fs::path& run_dir) {
  std::optional<fs::path> best;
  int64_t best_step = -1;
  if (!fs::is_directory(run_dir)) return best;
  for (const auto& e : fs::directory_iterator(run_dir)) {
    if (!e.is_directory() || !is_checkpoint_dir(e.path())) continue;
    const int64_t step = std::stoll(e.path().filename().string().substr(11));
    if (step > best_step) {
      best_step = step;
      best = e.path();
    }
  }
  return best;
}

}  // namespace lmtune
