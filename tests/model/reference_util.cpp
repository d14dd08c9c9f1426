#include "model/reference_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace lmtune::test_util {

namespace fs = std::filesystem;

// ---- TempDir ------------------------------------------------------------------------

TempDir::TempDir(const std::string& tag) {
  static std::atomic<int> counter{0};
  const auto ticks = std::chrono::steady_clock::now().time_since_epoch().count();
  path_ = fs::temp_directory_path() /
          ("lmtune_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
           std::to_string(ticks % 1000000));
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  if (std::getenv("LMTUNE_KEEP_TEST_DIRS")) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
}

// ---- commands -----------------------------------------------------------------------

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

std::string CommandResult::describe() const {
  std::ostringstream os;
  os << "command: " << command << "\nexited with " << exit_code << "; output:\n" << output;
  return os.str();
}

CommandResult run_command(const std::string& command, const fs::path& scratch) {
  static std::atomic<int> counter{0};
  const fs::path log = scratch / ("cmd_" + std::to_string(counter++) + ".log");
  CommandResult r;
  r.command = command;
  const std::string full = "(" + command + ") > " + shell_quote(log.string()) + " 2>&1";
  const int status = std::system(full.c_str());
  if (status != -1 && WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  std::ifstream in(log, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  r.output = ss.str();
  constexpr size_t kMaxOutput = 8000;  // the tail is where Python puts the exception
  if (r.output.size() > kMaxOutput) r.output = "...\n" + r.output.substr(r.output.size() - kMaxOutput);
  return r;
}

CommandResult run_reference(const std::vector<std::string>& args, const fs::path& scratch) {
  const fs::path script = fs::path(LMTUNE_SOURCE_DIR) / "tests" / "reference" / "llama_ref.py";
  std::string cmd = shell_quote(LMTUNE_PYTHON);
  cmd += ' ';
  cmd += shell_quote(script.string());
  for (const auto& a : args) {
    cmd += ' ';
    cmd += shell_quote(a);
  }
  return run_command(cmd, scratch);
}

// ---- safetensors --------------------------------------------------------------------

namespace {

uint64_t read_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

double half_to_double(uint16_t h) {
  const int sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  double v;
  if (exp == 0)
    v = std::ldexp(mant, -24);
  else if (exp == 31)
    v = mant ? NAN : INFINITY;
  else
    v = std::ldexp(mant + 1024, exp - 25);
  return sign ? -v : v;
}

}  // namespace

std::map<std::string, HostTensor> read_safetensors_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 8) throw std::runtime_error(path.string() + ": too short");
  const uint64_t header_len = read_le64(bytes.data());
  if (8 + header_len > bytes.size()) throw std::runtime_error(path.string() + ": header length past the end");
  const auto header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<int64_t>(header_len));
  const size_t base = 8 + header_len;
  std::map<std::string, HostTensor> out;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    HostTensor t;
    t.shape = info.at("shape").get<std::vector<int64_t>>();
    int64_t n = 1;
    for (int64_t s : t.shape) n *= s;
    const std::string dt = info.at("dtype").get<std::string>();
    const auto offs = info.at("data_offsets").get<std::vector<uint64_t>>();
    const size_t esize = dt == "F64" || dt == "I64" ? 8 : dt == "F32" || dt == "I32" ? 4 : dt == "F16" || dt == "BF16" ? 2 : 0;
    if (esize == 0) throw std::runtime_error(path.string() + ": " + name + " has unsupported dtype " + dt);
    if (offs.size() != 2 || offs[1] < offs[0] || offs[1] - offs[0] != static_cast<uint64_t>(n) * esize ||
        base + offs[1] > bytes.size())
      throw std::runtime_error(path.string() + ": " + name + " has bad data_offsets");
    const unsigned char* p = bytes.data() + base + offs[0];
    t.data.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i, p += esize) {
      if (dt == "F64") {
        double v;
        std::memcpy(&v, p, 8);
        t.data[i] = v;
      } else if (dt == "F32") {
        float v;
        std::memcpy(&v, p, 4);
        t.data[i] = v;
      } else if (dt == "I64") {
        int64_t v;
        std::memcpy(&v, p, 8);
        t.data[i] = static_cast<double>(v);
      } else if (dt == "I32") {
        int32_t v;
        std::memcpy(&v, p, 4);
        t.data[i] = v;
      } else {
        const uint16_t h = static_cast<uint16_t>(p[0] | (p[1] << 8));
        if (dt == "F16") {
          t.data[i] = half_to_double(h);
        } else {
          const uint32_t u = static_cast<uint32_t>(h) << 16;
          float v;
          std::memcpy(&v, &u, 4);
          t.data[i] = v;
        }
      }
    }
    out.emplace(name, std::move(t));
  }
  return out;
}

// ---- comparison ---------------------------------------------------------------------

Deviation compare_tensors(const std::vector<float>& ours, const std::vector<double>& ref) {
  if (ours.size() != ref.size())
    throw std::runtime_error("compare_tensors: " + std::to_string(ours.size()) + " vs " +
                             std::to_string(ref.size()) + " elements");
  Deviation d;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double diff = std::abs(static_cast<double>(ours[i]) - ref[i]);
    if (!(diff <= d.max_abs)) {  // also catches NaN in ours
      d.max_abs = std::isnan(diff) ? INFINITY : diff;
      d.worst = static_cast<int64_t>(i);
    }
    d.ref_max = std::max(d.ref_max, std::abs(ref[i]));
  }
  d.rel = d.ref_max > 0 ? d.max_abs / d.ref_max : d.max_abs;
  return d;
}

void write_batch_json(const fs::path& path, const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets,
                      int64_t B, int64_t T) {
  auto rows = [&](const std::vector<int32_t>& v) {
    nlohmann::json j = nlohmann::json::array();
    for (int64_t b = 0; b < B; ++b) j.push_back(std::vector<int32_t>(v.begin() + b * T, v.begin() + (b + 1) * T));
    return j;
  };
  nlohmann::json j;
  j["tokens"] = rows(tokens);
  if (!targets.empty()) j["targets"] = rows(targets);
  std::ofstream(path) << j.dump() << "\n";
}

}  // namespace lmtune::test_util
