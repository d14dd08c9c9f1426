// `lmtune train` and `lmtune export` as a user runs them (the binary, as a subprocess): they
// never delete or replace what the user owns, one run at a time holds a run directory, a
// signal stops a run with a checkpoint it resumes from exactly, and a failed or killed run
// leaves nothing in the way of the next one. Each test names the finding of issue 6 it
// covers; each failed on the code before the fix.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/test_models.h"
#include "trainer/io/gguf.h"
#include "trainer/io/safetensors.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;
using testing::run_command;
using testing::run_lmtune;
const auto losses = testing::logged_losses;

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

void write_text(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Exit 1 with one line "lmtune: error: ..." holding every part.
void expect_error(const testing::RunResult& r, const std::vector<std::string>& parts) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err.rfind("lmtune: error: ", 0), 0u) << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "expected one line: " << r.err;
  for (const auto& p : parts) EXPECT_NE(r.err.find(p), std::string::npos) << "'" << p << "' not in: " << r.err;
}

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

std::string tensor_bytes(const fs::path& file) {
  const SafeTensorsReader r = SafeTensorsReader::open(file);
  std::string all;
  for (const auto& name : r.names()) {
    const SafeTensorInfo& t = r.get(name);
    all += name;
    all.append(static_cast<const char*>(t.data), t.nbytes);
  }
  return all;
}

class RunSafety : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
    root_ = testing::temp_dir("lmtune-safety");
    model_ = testing::write_tiny_train_model(root_ / "model");
    testing::write_fox_and_bear_texts(root_ / "data");
  }

  // A LoRA config writing to `out`; constant lr, so the schedule does not depend on max_steps.
  fs::path config(const fs::path& out, int64_t max_steps = 4) {
    const fs::path file = root_ / ("cfg-" + std::to_string(n_configs_++) + ".yaml");
    std::ofstream(file) << "model: {path: " << model_.string() << "}\n"
                        << "method: {type: lora, lora: {rank: 4, alpha: 8, target_modules: all-linear}}\n"
                        << "data: {format: text, train_files: [" << (root_ / "data" / "*.txt").string()
                        << "], seq_len: 16}\n"
                        << "train: {max_steps: " << max_steps << ", micro_batch_size: 2, lr: 0.003, "
                        << "schedule: constant, warmup_steps: 0, eval_every: 0, sample_tokens: 0, threads: 1, "
                        << "log_every: 1}\n"
                        << "output: {dir: " << out.string() << "}\n";
    return file;
  }

  testing::RunResult train(const fs::path& out, const std::string& overrides = "", int64_t max_steps = 4) {
    return run_lmtune("train " + q(config(out, max_steps)) + " " + overrides + " --quiet");
  }

  // A finished run with checkpoint-4.
  fs::path trained_run() {
    const fs::path run = root_ / "run";
    if (!fs::exists(run / "checkpoint-4")) {
      const auto r = train(run);
      EXPECT_EQ(r.exit_code, 0) << r.err;
    }
    return run;
  }

  // Waits (up to a minute) until the run has logged a step.
  static bool wait_for_a_step(const fs::path& run) {
    for (int i = 0; i < 600; ++i) {
      if (!losses(run).empty()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  fs::path root_, model_;
  int n_configs_ = 0;
};

// ---- finding 1: export never removes what it did not write --------------------------------

TEST_F(RunSafety, ExportNeverRemovesAProjectFolder) {
  const fs::path run = trained_run();
  const fs::path project = root_ / "project";
  fs::create_directories(project / "src");
  write_text(project / "src" / "main.cpp", "int main() {}\n");
  write_text(project / "README.md", "mine\n");
  for (const char* format : {"hf", "peft"}) {
    for (const char* flag : {"", " --overwrite"}) {
      SCOPED_TRACE(std::string(format) + flag);
      expect_error(run_lmtune("export " + q(run) + " --format " + format + " --out " + q(project) + flag),
                   {"--out '" + project.string() + "'", "is not empty", "README.md"});
      EXPECT_EQ(read_text(project / "src" / "main.cpp"), "int main() {}\n");
      EXPECT_EQ(read_text(project / "README.md"), "mine\n");
    }
  }
  EXPECT_EQ(entries(project), (std::vector<std::string>{"README.md", "src"}));
  EXPECT_EQ(entries(root_).size(), entries(root_).size());
  for (const auto& e : entries(root_)) EXPECT_EQ(e.find(".tmp."), std::string::npos) << e << " left behind";
}

TEST_F(RunSafety, ExportRefusesTheRunTheModelAndTheCurrentDirectory) {
  const fs::path run = trained_run();
  const std::vector<std::string> run_before = entries(run), model_before = entries(model_);
  expect_error(run_lmtune("export " + q(run) + " --format hf --out " + q(run) + " --overwrite"),
               {"--out '" + run.string() + "'", "checkpoint-4"});
  expect_error(run_lmtune("export " + q(run) + " --format hf --out " + q(model_) + " --overwrite"),
               {"--out '" + model_.string() + "'", "config.json"});
  expect_error(run_command("cd " + q(run) + " && " + LMTUNE_BINARY + " export . --format peft --out . --overwrite"),
               {"--out '" + run.string() + "'"});
  EXPECT_EQ(entries(run), run_before);
  EXPECT_EQ(entries(model_), model_before);
  EXPECT_TRUE(fs::exists(run / "checkpoint-4" / "index.json"));
}

TEST_F(RunSafety, ExportReplacesOnlyAnEarlierExportOfTheSameFormat) {
  const fs::path run = trained_run();
  const fs::path hf = root_ / "hf", empty = root_ / "empty";
  fs::create_directories(empty);
  for (const fs::path& out : {hf, empty}) {
    const auto r = run_lmtune("export " + q(run) + " --format hf --out " + q(out));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(entries(out), (std::vector<std::string>{"config.json", "lmtune_export.json", "model.safetensors",
                                                      "tokenizer.json"}));
  }
  const auto marker = nlohmann::json::parse(read_text(hf / "lmtune_export.json"));
  EXPECT_EQ(marker["format"], "hf");
  const std::string weights = tensor_bytes(hf / "model.safetensors");
  // again: refused without --overwrite, replaced with it (to bf16 this time)
  expect_error(run_lmtune("export " + q(run) + " --format hf --out " + q(hf)), {"earlier hf export", "--overwrite"});
  EXPECT_EQ(tensor_bytes(hf / "model.safetensors"), weights);
  const auto r = run_lmtune("export " + q(run) + " --format hf --dtype bf16 --out " + q(hf) + " --overwrite");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(SafeTensorsReader::open(hf).get("model.layers.0.mlp.up_proj.weight").dtype, DType::bf16);
  EXPECT_EQ(nlohmann::json::parse(read_text(hf / "lmtune_export.json"))["dtype"], "bf16");
  // another format, or a file the user added, makes it something else
  expect_error(run_lmtune("export " + q(run) + " --format peft --out " + q(hf) + " --overwrite"),
               {"not an earlier peft export", "holds a hf export"});
  write_text(hf / "NOTES.md", "mine\n");
  expect_error(run_lmtune("export " + q(run) + " --format hf --out " + q(hf) + " --overwrite"), {"NOTES.md"});
  EXPECT_EQ(read_text(hf / "NOTES.md"), "mine\n");
  EXPECT_TRUE(fs::exists(hf / "model.safetensors"));
  for (const auto& e : entries(root_)) EXPECT_EQ(e.find(".tmp."), std::string::npos) << e << " left behind";
}

TEST_F(RunSafety, GgufOntoAnExistingFileNeedsOverwriteAndMustBeGguf) {
  const fs::path run = trained_run();
  const fs::path dir = root_ / "out";
  fs::create_directories(dir);
  write_text(dir / "notes.gguf", "my notes\n");
  expect_error(run_lmtune("export " + q(run) + " --format gguf --out " + q(dir / "notes.gguf")), {"exists", "--overwrite"});
  expect_error(run_lmtune("export " + q(run) + " --format gguf --out " + q(dir / "notes.gguf") + " --overwrite"),
               {"is not a GGUF file"});
  EXPECT_EQ(read_text(dir / "notes.gguf"), "my notes\n");
  const auto r = run_lmtune("export " + q(run) + " --format gguf --out " + q(dir / "model.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_gguf(dir / "model.gguf").at("general.name").as_string(), "model");
  expect_error(run_lmtune("export " + q(run) + " --format gguf --out " + q(dir / "model.gguf")), {"--overwrite"});
  const auto again = run_lmtune("export " + q(run) + " --format gguf --dtype f16 --out " + q(dir / "model.gguf") +
                                " --overwrite");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  // the merged HF directory it goes through is gone, and nothing else was touched
  EXPECT_EQ(entries(dir), (std::vector<std::string>{"model.gguf", "notes.gguf"}));
}

// ---- finding 2: a non-empty folder that holds no run ----------------------------------------

TEST_F(RunSafety, TrainNeverReplacesTheFilesOfAFolderThatHoldsNoRun) {
  const fs::path out = root_ / "mine";
  fs::create_directories(out);
  write_text(out / "metrics.jsonl", "{\"my\": \"numbers\"}\n");
  write_text(out / "notes.txt", "mine\n");
  expect_error(train(out), {"output.dir '" + out.string() + "'", "is not empty and holds no lmtune run",
                            "metrics.jsonl", "output.overwrite=true"});
  expect_error(train(out, "output.overwrite=true"), {"'metrics.jsonl', which no lmtune run wrote"});
  EXPECT_EQ(read_text(out / "metrics.jsonl"), "{\"my\": \"numbers\"}\n");
  EXPECT_EQ(entries(out), (std::vector<std::string>{"metrics.jsonl", "notes.txt"}));
  // without the colliding name, overwrite=true writes the run next to the user's files
  fs::rename(out / "metrics.jsonl", root_ / "moved.jsonl");
  const auto r = train(out, "output.overwrite=true");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_text(out / "notes.txt"), "mine\n");
  EXPECT_TRUE(fs::exists(out / "checkpoint-4"));
  // the run's own files are the run's: a later overwrite replaces them, and keeps notes.txt
  const auto r2 = train(out, "output.overwrite=true train.max_steps=2");
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_FALSE(fs::exists(out / "checkpoint-4"));
  EXPECT_TRUE(fs::exists(out / "checkpoint-2"));
  EXPECT_EQ(read_text(out / "notes.txt"), "mine\n");
}

// ---- finding 3: one run per directory -------------------------------------------------------

TEST_F(RunSafety, ASecondRunOnTheSameDirectoryFailsAtOnceNamingTheFirst) {
  const fs::path out = root_ / "shared";
  const testing::Background first = testing::start_lmtune("train " + q(config(out, 1000000)) + " --quiet");
  ASSERT_TRUE(wait_for_a_step(out)) << "the first run never logged a step";
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const auto second = train(out, "output.overwrite=true");  // before the lock, this replaced the live run's files
  expect_error(second, {"output.dir '" + out.string() + "' is in use by another lmtune run",
                        "host " + std::string(host), "pid " + std::to_string(first.pid)});
  kill(first.pid, SIGTERM);
  const auto r = testing::wait_lmtune(first);
  EXPECT_EQ(r.exit_code, 128 + SIGTERM) << r.err;
  // the lock went with the process: the directory is free again
  const auto third = train(out, "train.resume_from=auto train.max_steps=" +
                                    std::to_string(std::stoll(losses(out).back()) + 1));
  EXPECT_EQ(third.exit_code, 0) << third.err;
}

// ---- finding 5: SIGTERM saves, says so, exits 128 + 15, and resumes exactly -------------------

TEST_F(RunSafety, SigtermSavesTheStepAndTheRunResumesBitIdentically) {
  const fs::path out = root_ / "stopped";
  const testing::Background b = testing::start_lmtune("train " + q(config(out, 1000000)) + " --quiet");
  ASSERT_TRUE(wait_for_a_step(out));
  kill(b.pid, SIGTERM);
  const auto r = testing::wait_lmtune(b);
  ASSERT_EQ(r.exit_code, 128 + SIGTERM) << r.err;
  const std::vector<std::string> logged = losses(out);
  ASSERT_FALSE(logged.empty());
  const int64_t k = std::stoll(logged.back());  // the last step logged is the step saved
  EXPECT_EQ(r.err, "lmtune: stopped by SIGTERM after step " + std::to_string(k) + "; saved " +
                       (out / ("checkpoint-" + std::to_string(k))).string() +
                       ". Continue with train.resume_from=auto\n");
  ASSERT_TRUE(fs::exists(out / ("checkpoint-" + std::to_string(k)) / "trainer_state.json"));

  // continue to k + 3, and compare with a run that never stopped
  const std::string end = "train.max_steps=" + std::to_string(k + 3);
  const auto resumed = train(out, "train.resume_from=auto " + end);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  const fs::path ref = root_ / "uninterrupted";
  const auto straight = train(ref, end);
  ASSERT_EQ(straight.exit_code, 0) << straight.err;
  EXPECT_EQ(losses(out), losses(ref));
  ASSERT_EQ(losses(ref).size(), static_cast<size_t>(k + 3));
  const std::string last = "checkpoint-" + std::to_string(k + 3);
  EXPECT_EQ(testing::read_checkpoint_tensors(out / last), testing::read_checkpoint_tensors(ref / last));
}

// ---- finding 10: a run that failed leaves nothing in the way ---------------------------------

TEST_F(RunSafety, ARetryAfterAFailedRunIsNotBlocked) {
  // fails before it takes the directory: leaves nothing at all
  const fs::path out = root_ / "retry";
  expect_error(train(out, "train.micro_batch_size=1000"), {"fewer than one micro-batch"});
  EXPECT_FALSE(fs::exists(out));
  // fails after it took it (the loss diverges): config.yaml and metrics stay, and neither a
  // fresh start nor resume_from=auto is refused
  expect_error(train(out, "train.lr=1e30"), {"the loss became"});
  EXPECT_TRUE(fs::exists(out / "config.yaml"));
  const auto fresh = train(out, "train.max_steps=2");
  EXPECT_EQ(fresh.exit_code, 0) << fresh.err;
  const fs::path out2 = root_ / "retry-auto";
  expect_error(train(out2, "train.lr=1e30"), {"the loss became"});
  const auto with_auto = train(out2, "train.resume_from=auto train.max_steps=2");
  EXPECT_EQ(with_auto.exit_code, 0) << with_auto.err;
  EXPECT_EQ(losses(out2).size(), 2u);
}

// ---- finding 11: a killed run's temporaries ----------------------------------------------------

TEST_F(RunSafety, AKilledRunsTemporariesAreRemovedAtTheNextStart) {
  const fs::path run = trained_run();
  // what a run killed while writing checkpoint-6 leaves (today's and earlier names)
  for (const char* d : {".checkpoint-6.tmp.12345", ".checkpoint-6.tmp.otherhost.999.0"}) {
    fs::create_directories(run / d);
    write_text(run / d / "trainable.safetensors", std::string(1000, 'x'));
  }
  write_text(run / "metrics.jsonl.tmp.otherhost.999.1", "{}\n");
  // the user's, which look alike but are not lmtune's temporaries
  write_text(run / ".checkpoint-notes", "mine\n");
  fs::create_directories(run / ".checkpoint-6.backup");
  const auto r = train(run, "train.resume_from=auto", 5);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(run / ".checkpoint-6.tmp.12345"));
  EXPECT_FALSE(fs::exists(run / ".checkpoint-6.tmp.otherhost.999.0"));
  EXPECT_FALSE(fs::exists(run / "metrics.jsonl.tmp.otherhost.999.1"));
  EXPECT_EQ(read_text(run / ".checkpoint-notes"), "mine\n");
  EXPECT_TRUE(fs::is_directory(run / ".checkpoint-6.backup"));
  EXPECT_TRUE(fs::exists(run / "checkpoint-5"));
}

// ---- finding 12: what a failure says ------------------------------------------------------------

TEST_F(RunSafety, AnUnwritablePathNamesTheKeyThePathAndTheReason) {
  write_text(root_ / "a-file", "x\n");
  const fs::path bad = root_ / "a-file" / "run";
  expect_error(train(bad), {"cannot create output.dir '" + bad.string() + "'", "Not a directory"});
  const fs::path run = trained_run();
  expect_error(run_lmtune("export " + q(run) + " --format hf --out " + q(bad)),
               {"--out '" + bad.string() + "'", "Not a directory"});
  expect_error(run_lmtune("export " + q(run) + " --format gguf --out " + q(bad / "m.gguf")),
               {"--out '" + (bad / "m.gguf").string() + "'", "Not a directory"});
}

TEST_F(RunSafety, ASeqLenBeyondTheModelsContextBlamesTheModel) {
  expect_error(train(root_ / "long", "data.seq_len=100000"),
               {"data.seq_len = 100000", "max_position_embeddings is 64", (model_ / "config.json").string()});
  EXPECT_FALSE(fs::exists(root_ / "long"));
}

}  // namespace
}  // namespace lmtune
