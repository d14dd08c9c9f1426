#include "trainer/io/checkpoint.h"

#include <nlohmann/json.hpp>

#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"

namespace lmtune {

namespace fs = std::filesystem;

namespace {
constexpr int kFormatVersion = 1;

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
  AtomicDirectory dir(final_dir);
  const fs::path& tmp = dir.staging();
  write_safetensors(tmp / "trainable.safetensors", c.trainable);
  write_safetensors(tmp / "optimizer.safetensors", c.optimizer);
  nlohmann::json st = {{"format_version", kFormatVersion},
                       {"step", c.state.step},
                       {"adam_steps", c.state.adam_steps},
                       {"loader", {{"epoch", c.state.loader.epoch}, {"position", c.state.loader.position}}}};
  write_file_atomic(tmp / "trainer_state.json", st.dump(2) + "\n");
  write_file_atomic(tmp / "config.yaml", c.config_yaml);
  dir.commit();
  return final_dir;
}

TrainerState load_checkpoint(const fs::path& dir, std::vector<std::pair<std::string, Tensor>>& trainable,
                             std::vector<std::pair<std::string, Tensor>>& optimizer) {
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
    read_tensors(dir / "trainable.safetensors", trainable);
    read_tensors(dir / "optimizer.safetensors", optimizer);
    return s;
  } catch (const nlohmann::json::exception& e) {
    LMTUNE_THROW("'", state_file.string(), "' is not a valid trainer state: ", e.what());
  }
}

std::optional<fs::path> latest_checkpoint(const fs::path& run_dir) {
  std::optional<fs::path> best;
  int64_t best_step = -1;
  if (!fs::is_directory(run_dir)) return best;
  for (const auto& e : fs::directory_iterator(run_dir)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind("checkpoint-", 0) != 0) continue;
    const std::string num = name.substr(11);
    if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos) continue;
    const int64_t step = std::stoll(num);
    if (step > best_step && fs::exists(e.path() / "trainer_state.json")) {
      best_step = step;
      best = e.path();
    }
  }
  return best;
}

}  // namespace lmtune
