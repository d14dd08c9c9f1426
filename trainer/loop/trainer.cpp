#include "trainer/loop/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kernels/ops.h"
#include "trainer/core/strings.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/checkpoint.h"
#include "trainer/io/run_dir.h"
#include "trainer/loop/config_checks.h"
#include "trainer/loop/data_report.h"
#include "trainer/loop/inference.h"
#include "trainer/loop/resume_check.h"
#include "trainer/loop/stop_signal.h"
#include "trainer/optim/optimizer.h"

namespace lmtune {

namespace fs = std::filesystem;

namespace {

uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t z = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull) * 0xbf58476d1ce4e5b9ull ^ c;
  z = (z ^ (z >> 31)) * 0x94d049bb133111ebull;
  return z ^ (z >> 29);
}

ModelOptions model_options(const TrainConfig& c) {
  ModelOptions o;
  o.role = c.method.type == MethodType::full ? ParamRole::trainable : ParamRole::frozen;
  o.weight_dtype = c.model.dtype;
  o.seed = c.train.seed;
  if (c.method.type == MethodType::lora) {
    const LoraSection& l = c.method.lora;
    LoraOptions lo;
    lo.rank = l.rank;
    lo.alpha = l.alpha;
    lo.dropout = l.dropout;
    lo.rslora = l.rslora ? RsLora::yes : RsLora::no;
    lo.targets.clear();
    for (LoraTarget t : l.target_modules) lo.targets.emplace_back(to_string(t));
    o.lora = lo;
  }
  return o;
}

DataOptions data_options(const TrainConfig& c) {
  const DataSection& d = c.data;
  DataOptions o;
  o.format = d.format;
  o.train_files = d.train_files;
  o.validation_files = d.validation_files;
  if (d.validation_files.empty() && d.validation_split.kind == ValidationSplitKind::fraction)
    o.validation_fraction = d.validation_split.fraction;
  if (d.validation_files.empty() && d.validation_split.kind == ValidationSplitKind::every_nth)
    o.validation_every_nth = d.validation_split.every_nth;
  o.seq_len = d.seq_len;
  o.packing = d.packing ? Packing::on : Packing::off;
  o.add_bos = d.add_bos ? AddBos::yes : AddBos::no;
  o.add_eos = d.add_eos ? AddEos::yes : AddEos::no;
  o.prompt_template = d.prompt_template;
  o.chat_template = std::string(to_string(d.chat_template));
  o.content_specials = d.parse_special_tokens ? SpecialTokens::parse : SpecialTokens::literal;
  o.shuffle = d.shuffle ? Shuffle::on : Shuffle::off;
  o.seed = d.seed;
  return o;
}

ScheduleKind schedule_kind(LrSchedule s) {
  switch (s) {
    case LrSchedule::cosine: return ScheduleKind::cosine;
    case LrSchedule::linear: return ScheduleKind::linear;
    case LrSchedule::constant: return ScheduleKind::constant;
  }
  return ScheduleKind::constant;
}

std::string format_duration(double s) {
  char buf[32];
  const int t = static_cast<int>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", t / 3600, t / 60 % 60);
  else std::snprintf(buf, sizeof buf, "%dm%02ds", t / 60, t % 60);
  return buf;
}

// Keeps the metrics lines of steps <= `step` (resuming after a crash drops later ones).
void truncate_metrics(const fs::path& file, int64_t step) {
  if (!fs::exists(file)) return;
  std::ifstream in(file);
  std::string line, kept;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("step", int64_t{0}) <= step) kept += line + "\n";
  }
  write_file_atomic(file, kept);
}

class MetricsLog {
 public:
  explicit MetricsLog(const fs::path& file) : out_(file, std::ios::app) {
    LMTUNE_CHECK(out_.good(), "cannot write '", file.string(), "'");
  }
  void write(const nlohmann::json& j) {
    out_ << j.dump() << "\n";
    out_.flush();
  }

 private:
  std::ofstream out_;
};

struct EvalResult {
  double loss = 0;
  int64_t tokens = 0;
};

EvalResult evaluate(LlamaModel& model, const PackedDataset& val, int64_t micro_batch, int64_t max_batches) {
  EvalResult r;
  if (val.num_rows() == 0) return r;
  Allocator& alloc = model.allocator();
  const int64_t T = val.seq_len();
  double sum = 0;
  for (int64_t b = 0, row = 0; b < max_batches && row < val.num_rows(); ++b) {
    const int64_t B = std::min(micro_batch, val.num_rows() - row);
    std::vector<int32_t> tok, tgt;
    for (int64_t i = 0; i < B; ++i, ++row) {
      const auto in = val.inputs(row), out = val.targets(row);
      tok.insert(tok.end(), in.begin(), in.end());
      tgt.insert(tgt.end(), out.begin(), out.end());
    }
    const LossResult l = model.forward_loss(make_token_tensor(alloc, tok, B, T), make_token_tensor(alloc, tgt, B, T));
    sum += l.sum;
    r.tokens += l.count;
  }
  r.loss = r.tokens ? sum / static_cast<double>(r.tokens) : 0.0;
  return r;
}

std::string sample_text(LlamaModel& model, const Tokenizer& tok, const TrainConfig& c) {
  const std::vector<int32_t> prompt = tok.encode(c.train.sample_prompt, AddBos::yes);
  SamplingOptions s;
  s.temperature = 0.0f;
  s.max_new_tokens = std::min<int64_t>(c.train.sample_tokens,
                                       model.config().max_position_embeddings - static_cast<int64_t>(prompt.size()));
  if (s.max_new_tokens <= 0 || prompt.empty()) return c.train.sample_prompt;  // empty: no BOS (Qwen), no text
  const std::vector<int32_t> ids = generate(model, prompt, s, nullptr);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), ids.begin(), ids.end());
  return tok.decode(all);
}

// One optimizer step over `micro` (gradient accumulation): returns the mean loss over the
// step's targets; the gradient norm before clipping goes to *grad_norm_out. A non-finite
// loss returns before the update.
double run_step(LlamaModel& model, AdamW& adam, const std::vector<ParamRef>& trainable,
                const std::vector<Batch>& micro, const TrainConfig& c, int64_t step, double lr, double* grad_norm_out) {
  Allocator& alloc = model.allocator();
  model.zero_grads();
  int64_t n_targets = 0;
  for (const Batch& b : micro) n_targets += b.num_targets;
  LMTUNE_ASSERT(n_targets > 0, "a step without training targets");
  double loss_sum = 0;
  alloc.set_phase("train step");
  for (size_t i = 0; i < micro.size(); ++i) {
    const Batch& b = micro[i];
    const MicroBatchContext ctx{mix_seed(c.train.seed, static_cast<uint64_t>(step), i), 0};
    loss_sum += model
                    .forward_backward(make_token_tensor(alloc, b.tokens, b.B, b.T),
                                      make_token_tensor(alloc, b.targets, b.B, b.T),
                                      static_cast<float>(1.0 / static_cast<double>(n_targets)), ctx)
                    .sum;
  }
  const double loss = loss_sum / static_cast<double>(n_targets);
  if (!alloc.device().is_meta() && !std::isfinite(loss)) return loss;
  alloc.set_phase("optimizer step");
  *grad_norm_out = clip_grad_norm(trainable, c.train.max_grad_norm);
  adam.step(lr);
  alloc.set_phase("");
  return loss;
}

AdamWOptions adam_options(const TrainConfig& c) {
  return {c.train.adam_beta1, c.train.adam_beta2, c.train.adam_eps, c.train.weight_decay};
}

}  // namespace

MemoryStats predict_train_step_memory(const TrainConfig& c) {
  auto alloc = Allocator::create(Device::meta());
  auto model = build_model(c, *alloc);
  model->allocate_grads();
  const std::vector<ParamRef> trainable = model->trainable_parameters();
  AdamW adam(trainable, *alloc, adam_options(c));
  const int64_t B = c.train.micro_batch_size, T = c.data.seq_len;
  std::vector<Batch> micro(static_cast<size_t>(c.train.grad_accum_steps));
  for (Batch& b : micro) {
    b.tokens.assign(static_cast<size_t>(B * T), 0);
    b.targets.assign(static_cast<size_t>(B * T), 0);
    b.B = B;
    b.T = T;
    b.num_targets = B * T;
  }
  double gnorm = 0;
  run_step(*model, adam, trainable, micro, c, 0, c.train.lr, &gnorm);
  return alloc->stats();
}

void load_adapter_file(LlamaModel& model, const fs::path& file) {
  const SafeTensorsReader r = SafeTensorsReader::open(file);
  int64_t loaded = 0;
  for (ParamRef& p : model.parameters()) {
    if (!is_adapter_name(p.name)) continue;
    r.load_into("base_model.model." + p.name, p.value);
    ++loaded;
  }
  LMTUNE_CHECK(loaded > 0, "'", file.string(), "': the model has no LoRA adapters to load into");
}

std::unique_ptr<LlamaModel> build_model(const TrainConfig& c, Allocator& alloc) {
  auto model = LlamaModel::load(c.model.path, alloc, model_options(c));
  if (c.method.type == MethodType::lora && c.method.lora.init_from) load_adapter_file(*model, *c.method.lora.init_from);
  return model;
}

TrainSummary train(const TrainConfig& c, Allocator& alloc, Progress progress, std::ostream& log) {
  using Clock = std::chrono::steady_clock;
  if (progress == Progress::auto_detect) progress = isatty(STDERR_FILENO) ? Progress::bar : Progress::lines;
  ops::set_num_threads(static_cast<int>(c.train.threads));
  LMTUNE_CHECK(c.parallel.dp == 1 || c.parallel.dp == ParallelSection::kAuto, "parallel.dp is ", c.parallel.dp,
               " but this is a single process; start ", c.parallel.dp, " ranks with `lmtune launch --nproc-per-node ",
               c.parallel.dp, " -- train ...` or mpirun");

  // The run directory: this process writes it (under multi-process training, rank 0 alone
  // takes the lock). Where to start is decided under the lock, and everything that can be
  // checked is checked before anything in the directory changes.
  RunDirLock run_dir = RunDirLock::acquire(c.output.dir, "output.dir");
  std::optional<fs::path> resume_dir;
  if (c.train.resume_from.mode == ResumeMode::checkpoint) resume_dir = c.train.resume_from.dir;
  if (c.train.resume_from.mode == ResumeMode::latest) resume_dir = latest_checkpoint(c.output.dir);
  if (resume_dir) check_resume_config(c, *resume_dir);
  const fs::path model_config = c.model.path / "config.json";
  check_config_against_model(c, load_llama_config(model_config), model_config);
  alloc.set_oom_advice(train_oom_advice(c));

  // Data.
  const Tokenizer tok = Tokenizer::from_model_dir(c.model.path);
  const DataSplit data = load_data(data_options(c), tok);
  if (data.chat_format && progress != Progress::quiet) {
    log << "chat template: " << data.chat_format->renderer
        << (c.data.chat_template == ChatTemplate::auto_detect
                ? (tok.chat_template().empty() ? " (auto: the model declares none)" : " (auto: declared by the model)")
                : "")
        << "\n";
  }
  LMTUNE_CHECK(data.train.num_rows() >= c.train.micro_batch_size, "the training data gives ", data.train.num_rows(),
               " rows of ", c.data.seq_len, " tokens, fewer than one micro-batch (train.micro_batch_size = ",
               c.train.micro_batch_size, ")");
  const DataFingerprint fingerprint{data.train.num_rows(), data.train.content_hash()};
  if (resume_dir) check_resume_data(*resume_dir, read_trainer_state(*resume_dir), fingerprint, c);
  DataLoader loader(data.train, c.train.micro_batch_size, c.data.seed);
  const int64_t accum = c.train.grad_accum_steps;
  const int64_t steps_per_epoch = std::max<int64_t>(1, loader.steps_per_epoch() / accum);
  const int64_t total_steps =
      c.train.max_steps ? *c.train.max_steps
                        : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(*c.train.epochs * steps_per_epoch)));

  // Model and optimizer.
  LMTUNE_CHECK(alloc.device().is_cpu(), "training runs on the CPU in this release, not on ", alloc.device().str());
  auto model = build_model(c, alloc);
  model->allocate_grads();
  std::vector<ParamRef> trainable = model->trainable_parameters();
  AdamW adam(trainable, alloc, adam_options(c));
  ScheduleOptions sched{schedule_kind(c.train.schedule), c.train.lr, c.train.min_lr_ratio, c.train.warmup_steps,
                        total_steps};
  auto named_trainable = [&] {
    std::vector<std::pair<std::string, Tensor>> v;
    for (const ParamRef& p : trainable) v.emplace_back(p.name, p.value);
    return v;
  };

  int64_t start = 0;
  if (resume_dir) {
    auto t = named_trainable();
    auto o = adam.state();
    const TrainerState st = load_checkpoint(*resume_dir, t, o);
    start = st.step;
    adam.set_steps_taken(st.adam_steps);
    loader.restore(st.loader);
  }

  // Everything is in place: the run takes the directory.
  prepare_run_dir(run_dir, resume_dir ? RunStart::resume : RunStart::fresh,
                  c.output.overwrite ? Overwrite::yes : Overwrite::no);
  run_dir.keep();
  const std::string config_yaml = to_yaml(c);
  write_file_atomic(c.output.dir / "config.yaml", config_yaml);
  if (progress != Progress::quiet) log << "resolved config:\n" << config_yaml << std::flush;
  if (resume_dir) {
    truncate_metrics(c.output.dir / "metrics.jsonl", start);
    if (progress != Progress::quiet) log << "resumed from " << resume_dir->string() << " at step " << start << "\n";
  }
  MetricsLog metrics(c.output.dir / "metrics.jsonl");
  if (!resume_dir) metrics.write({{"step", 0}, {"data", data_stats_json(data)}});
  if (progress != Progress::quiet) log << data_loss_report(data, c.data.seq_len, data_options(c).packing);
  int64_t trainable_count = 0;
  for (const ParamRef& p : trainable) trainable_count += p.value.numel();
  if (progress != Progress::quiet) {
    log << "training " << trainable_count << " parameters for " << total_steps << " steps ("
        << data.train.num_rows() << " rows of " << c.data.seq_len << " tokens, " << steps_per_epoch
        << " steps per epoch); validation: " << data.validation.num_rows() << " rows\n";
  }

  TrainSummary summary;
  summary.run_dir = c.output.dir;
  auto save = [&](int64_t step) {
    CheckpointContents cc{named_trainable(), adam.state(), {step, adam.steps_taken(), loader.state(), fingerprint},
                          config_yaml};
    summary.last_checkpoint = save_checkpoint(c.output.dir, cc);
  };
  auto run_eval = [&](int64_t step) {
    const EvalResult e = evaluate(*model, data.validation, c.train.micro_batch_size, c.train.eval_batches);
    nlohmann::json j = {{"step", step}};
    if (e.tokens > 0) {
      j["val_loss"] = e.loss;
      j["val_ppl"] = std::exp(e.loss);
      summary.validation_loss = e.loss;
    }
    std::string sample;
    if (c.train.sample_tokens > 0) j["sample"] = sample = sample_text(*model, tok, c);
    metrics.write(j);
    if (progress == Progress::quiet) return;
    if (progress == Progress::bar) log << "\n";
    if (e.tokens > 0) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "eval step %lld: val_loss %.4f val_ppl %.3f (%lld tokens)\n",
                    static_cast<long long>(step), e.loss, std::exp(e.loss), static_cast<long long>(e.tokens));
      log << buf;
    }
    if (!sample.empty()) log << "sample: " << sample << "\n";
    log << std::flush;
  };

  const auto t0 = Clock::now();
  double tokens_done = 0;
  summary.steps = start;
  if ((summary.stop_signal = stop_requested()) != 0) return summary;  // asked to stop while loading
  for (int64_t step = start; step < total_steps; ++step) {
    const auto ts = Clock::now();
    std::vector<Batch> micro;
    for (int64_t i = 0; i < accum; ++i) {
      micro.push_back(loader.next());
      tokens_done += static_cast<double>(micro.back().B * micro.back().T);
    }
    const double lr = learning_rate(sched, step);
    double gnorm = 0;
    const double loss = run_step(*model, adam, trainable, micro, c, step, lr, &gnorm);
    if (!std::isfinite(loss)) {
      const auto last = latest_checkpoint(c.output.dir);
      LMTUNE_THROW("the loss became ", loss, " at step ", step + 1,
                   "; training stopped without saving this step. Try a lower train.lr (now ", c.train.lr,
                   "), more train.warmup_steps, or train.max_grad_norm > 0",
                   last ? "; the last good checkpoint is " + last->string() : std::string("; no checkpoint was saved"));
    }
    summary.last_loss = loss;
    const int64_t done = step + 1;

    const double step_s = std::chrono::duration<double>(Clock::now() - ts).count();
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    const double tok_s = tokens_done / std::max(elapsed, 1e-9);
    const double eta = elapsed / static_cast<double>(done - start) * static_cast<double>(total_steps - done);
    const int64_t peak = alloc.stats().allocated.peak;
    metrics.write({{"step", done}, {"loss", loss}, {"lr", lr}, {"grad_norm", gnorm}, {"tokens_per_s", tok_s},
                   {"step_seconds", step_s}, {"peak_allocated_bytes", peak}});
    char line[256];
    if (progress == Progress::bar) {
      const int width = 24, filled = static_cast<int>(width * done / total_steps);
      std::snprintf(line, sizeof line, "\r[%s%s] %lld/%lld loss %.4f lr %.2e %.0f tok/s ETA %s peak %s   ",
                    std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                    static_cast<long long>(done), static_cast<long long>(total_steps), loss, lr, tok_s,
                    format_duration(eta).c_str(), format_bytes(peak).c_str());
      log << line << std::flush;
    } else if (progress == Progress::lines && (done % c.train.log_every == 0 || done == total_steps)) {
      std::snprintf(line, sizeof line, "step %lld/%lld loss %.4f lr %.3e grad_norm %.3f %.0f tok/s ETA %s peak %s\n",
                    static_cast<long long>(done), static_cast<long long>(total_steps), loss, lr, gnorm, tok_s,
                    format_duration(eta).c_str(), format_bytes(peak).c_str());
      log << line << std::flush;
    }
    const bool last_step = done == total_steps;
    // A stop request (a signal) is served here, at the step boundary: this step is saved.
    // Under multi-process training the ranks agree on it first (one all-reduce).
    if (const int sig = stop_requested(); sig != 0 && !last_step) {
      if (progress == Progress::bar) log << "\n";
      save(done);
      summary.steps = done;
      summary.stop_signal = sig;
      return summary;
    }
    if ((c.train.eval_every > 0 && done % c.train.eval_every == 0) || last_step) run_eval(done);
    if ((c.train.save_every > 0 && done % c.train.save_every == 0) || last_step) save(done);
  }
  if (progress == Progress::bar) log << "\n";
  if (start >= total_steps && progress != Progress::quiet) log << "nothing to do: the run is already at step " << start << "\n";
  summary.steps = total_steps;
  return summary;
}

}  // namespace lmtune
