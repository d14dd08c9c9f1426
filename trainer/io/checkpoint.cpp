#include "trainer/io/checkpoint.h"

#include <cstdio>

#include <nlohmann/json.hpp>

#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"

namespace lmtune {

namespace fs = std::filesystem;

namespace {
constexpr int kFormatVersion = 1;

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

void read_tensors(const fs::path& file, std::vector<std::pair<std::string, Tensor>>& tensors) {
  LMTUNE_CHECK(fs::is_regular_file(file), "checkpoint file '", file.string(), "' is missing");
  const SafeTensorsReader r = SafeTensorsReader::open(file);
  for (auto& [name, t] : tensors) r.load_into(name, t);
  LMTUNE_CHECK(r.size() == tensors.size(), "'", file.string(), "' holds ", r.size(), " tensors, expected ",
               tensors.size(), " (was it written by a run with another method or model?)");
}
}  // namespace

fs::path save_checkpoint(const fs::path& run_dir, const CheckpointContents& c) {
  const fs::path final_dir = run_dir / ("checkpoint-" + std::to_string(c.state.step));
  AtomicDirectory dir(final_dir, checkpoint_file_names());
  const fs::path& tmp = dir.staging();
  write_safetensors(tmp / "trainable.safetensors", c.trainable);
  write_safetensors(tmp / "optimizer.safetensors", c.optimizer);
  nlohmann::json st = {{"format_version", kFormatVersion},
                       {"step", c.state.step},
                       {"adam_steps", c.state.adam_steps},
                       {"loader", {{"epoch", c.state.loader.epoch}, {"position", c.state.loader.position}}}};
  if (c.state.train_data)
    st["train_data"] = {{"rows", c.state.train_data->rows}, {"hash", hex64(c.state.train_data->hash)}};
  write_file_atomic(tmp / "trainer_state.json", st.dump(2) + "\n");
  write_file_atomic(tmp / "config.yaml", c.config_yaml);
  dir.commit();
  return final_dir;
}

TrainerState read_trainer_state(const fs::path& dir) {
  LMTUNE_CHECK(fs::is_directory(dir), "checkpoint directory '", dir.string(), "' does not exist");
  const fs::path state_file = dir / "trainer_state.json";
  const std::string text = read_file_to_string(state_file, "trainer_state.json");
  nlohmann::json st;
  try {
    st = nlohmann::json::parse(text);
    LMTUNE_CHECK(st.value("format_version", 0) == kFormatVersion, "'", state_file.string(),
                 "' has format_version ", st.value("format_version", 0), ", expected ", kFormatVersion);
    TrainerState s;
    s.step = st.at("step").get<int64_t>();
    s.adam_steps = st.at("adam_steps").get<int64_t>();
    s.loader.epoch = st.at("loader").at("epoch").get<int64_t>();
    s.loader.position = st.at("loader").at("position").get<int64_t>();
    if (st.contains("train_data")) {
      const std::string h = st.at("train_data").at("hash").get<std::string>();
      LMTUNE_CHECK(h.size() == 16 && h.find_first_not_of("0123456789abcdef") == std::string::npos, "'",
                   state_file.string(), "': train_data.hash '", h, "' is not 16 hex digits");
      s.train_data = DataFingerprint{st.at("train_data").at("rows").get<int64_t>(), std::stoull(h, nullptr, 16)};
    }
    return s;
  } catch (const nlohmann::json::exception& e) {
    LMTUNE_THROW("'", state_file.string(), "' is not a valid trainer state: ", e.what());
  }
}

TrainerState load_checkpoint(const fs::path& dir, std::vector<std::pair<std::string, Tensor>>& trainable,
                             std::vector<std::pair<std::string, Tensor>>& optimizer) {
  const TrainerState s = read_trainer_state(dir);
  read_tensors(dir / "trainable.safetensors", trainable);
  read_tensors(dir / "optimizer.safetensors", optimizer);
  return s;
}

const std::vector<std::string>& checkpoint_file_names() {
  static const std::vector<std::string> names = {"trainable.safetensors", "optimizer.safetensors",
                                                 "trainer_state.json", "config.yaml"};
  return names;
}

bool is_checkpoint_dir(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.rfind("checkpoint-", 0) != 0) return false;
  const std::string num = name.substr(11);
  if (num.empty() || num.size() > 18 || num.find_first_not_of("0123456789") != std::string::npos) return false;
  std::error_code ec;
  for (const char* f : {"trainer_state.json", "trainable.safetensors", "optimizer.safetensors"})
    if (!fs::is_regular_file(dir / f, ec)) return false;
  return true;
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
