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
#include "trainer/io/checkpoint.h"
#include "trainer/io/file_util.h"
#include "trainer/io/run_dir.h"
#include "trainer/loop/config_checks.h"
#include "trainer/loop/data_report.h"
#include "trainer/loop/inference.h"
#include "trainer/loop/resume_check.h"
#include "trainer/loop/run_phases.h"
#include "trainer/loop/step_engine.h"
#include "trainer/loop/stop_signal.h"
#include "trainer/optim/optimizer.h"

namespace lmtune {

namespace fs = std::filesystem;

namespace {

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

// metrics.jsonl, appended by the writer rank; the other ranks hold a closed one.
class MetricsLog {
 public:
  MetricsLog() = default;
  explicit MetricsLog(const fs::path& file) : out_(file, std::ios::app) {
    LMTUNE_CHECK(out_.good(), "cannot write '", file.string(), "'");
  }
  void write(const nlohmann::json& j) {
    if (!out_.is_open()) return;
    out_ << j.dump() << "\n";
    out_.flush();
  }

 private:
  std::ofstream out_;
};

// Every rank must run the same config: a different override on one rank would otherwise
// show up as a hang or as silently different work. One gather, before anything else.
void check_same_config(Communicator& world, const std::string& yaml) {
  const std::vector<std::string> all = world.all_gather_bytes(yaml);
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) continue;
    std::istringstream a(all[0]), b(all[r]);
    std::string la, lb;
    int line = 0;
    while (true) {
      const bool ga = static_cast<bool>(std::getline(a, la)), gb = static_cast<bool>(std::getline(b, lb));
      ++line;
      if (!ga && !gb) break;
      if (!ga || !gb || la != lb) break;
    }
    LMTUNE_THROW("rank ", r, " runs another config than rank 0 (every rank must be given the same config file and "
                 "overrides); the resolved configs first differ at line ", line, ": rank 0 has '", la, "', rank ", r,
                 " has '", lb, "'");
  }
}

// Agreement on a stop request: the first signal any rank received (0: none).
int agreed_stop(Communicator& world) {
  int64_t sig[1] = {stop_requested()};
  if (world.size() > 1) world.all_reduce(std::span<int64_t>(sig), ReduceOp::max);
  return static_cast<int>(sig[0]);
}

}  // namespace

TrainSummary train(const TrainConfig& config, Allocator& alloc, Progress progress, std::ostream& log) {
  const SingleProcess single;
  return train(config, alloc, progress, log, single.env());
}

TrainSummary train(const TrainConfig& config, Allocator& alloc, Progress progress, std::ostream& log,
                   const ParallelEnv& env) {
  using Clock = std::chrono::steady_clock;
  const RunContext& run = env.run;
  Communicator& world = *env.world;
  Communicator& dp = *env.groups.dp;
  const bool writer = run.writer();
  if (!writer) progress = Progress::quiet;
  if (progress == Progress::auto_detect) progress = isatty(STDERR_FILENO) ? Progress::bar : Progress::lines;
  const bool talk = progress != Progress::quiet;

  const TrainConfig c = resolve_layout(config, run.world);
  check_same_config(world, to_yaml(c));
  LMTUNE_CHECK(dp.size() == c.parallel.dp, "internal: a data-parallel group of ", dp.size(), " ranks for dp ",
               c.parallel.dp);
  const int threads = effective_threads(c, run);
  ops::set_num_threads(threads);

  // The run directory: the writer locks it. Where to start is decided under the lock (and
  // told to the other ranks), and everything that can be checked is checked before
  // anything in the directory changes.
  std::optional<RunDirLock> run_dir;
  if (writer) run_dir.emplace(RunDirLock::acquire(c.output.dir, "output.dir"));
  std::optional<fs::path> resume_dir;
  if (c.train.resume_from.mode == ResumeMode::checkpoint) resume_dir = c.train.resume_from.dir;
  if (c.train.resume_from.mode == ResumeMode::latest) {
    const std::string latest =
        world.broadcast_bytes(writer ? latest_checkpoint(c.output.dir).value_or(fs::path()).string() : "", 0);
    if (!latest.empty()) resume_dir = latest;
  }
  if (resume_dir) check_resume_config(c, *resume_dir);
  const fs::path model_config = c.model.path / "config.json";
  check_config_against_model(c, load_llama_config(model_config), model_config);
  alloc.set_oom_advice(train_oom_advice(c));

  // Data: every rank reads it all and takes its shard of each global micro-batch.
  const Tokenizer tok = Tokenizer::from_model_dir(c.model.path);
  const DataSplit data = load_data(data_options(c), tok);
  if (data.chat_format && talk) {
    log << "chat template: " << data.chat_format->renderer
        << (c.data.chat_template == ChatTemplate::auto_detect
                ? (tok.chat_template().empty() ? " (auto: the model declares none)" : " (auto: declared by the model)")
                : "")
        << "\n";
  }
  const int64_t global_micro = c.train.micro_batch_size * dp.size();
  LMTUNE_CHECK(data.train.num_rows() >= global_micro, "the training data gives ", data.train.num_rows(), " rows of ",
               c.data.seq_len, " tokens, fewer than one micro-batch (train.micro_batch_size ",
               c.train.micro_batch_size, dp.size() > 1 ? " x parallel.dp " + std::to_string(dp.size()) : std::string(),
               ")");
  const DataFingerprint fingerprint{data.train.num_rows(), data.train.content_hash()};
  int64_t start = 0;  // steps already done
  if (resume_dir) {
    const TrainerState saved = read_trainer_state(*resume_dir);
    check_resume_data(*resume_dir, saved, fingerprint, c);
    start = saved.step;
  }
  DataLoader loader(data.train, c.train.micro_batch_size, c.data.seed, DataShard{dp.rank(), dp.size()});
  const int64_t accum = c.train.grad_accum_steps;
  const int64_t steps_per_epoch = std::max<int64_t>(1, loader.steps_per_epoch() / accum);
  const int64_t total_steps =
      c.train.max_steps ? *c.train.max_steps
                        : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(*c.train.epochs * steps_per_epoch)));
  const std::vector<int32_t> sample_prompt =
      c.train.sample_tokens > 0 ? tok.encode(c.train.sample_prompt, AddBos::yes) : std::vector<int32_t>{};

  // This rank's run, replayed on the meta device (milliseconds; reported at the end).
  const RankMemoryPrediction predicted = predict_rank_memory(
      c, env.meta_groups, env.build, {start, total_steps, &data.validation, sample_prompt, writer});

  // Model, training state, optimizer, step. What parallel.offload moves off the device
  // lives in `host` (on this CPU-only release, another allocator over the same memory).
  LMTUNE_CHECK(alloc.device().is_cpu(), "training runs on the CPU in this release, not on ", alloc.device().str());
  auto host = Allocator::create(Device::cpu());
  const ModelSource source(c);
  RankModel rm = env.build ? env.build(c, source, alloc, *host, env.groups) : build_local_model(c, source, alloc);
  LlamaModel& model = *rm.model;
  TrainingState& state = *rm.state;
  AdamW adam(state.owned(), optimizer_allocator(c, alloc, *host), adam_options(c));
  StepEngine engine(model, adam, dp, state, {c.train.seed, c.train.max_grad_norm});
  ScheduleOptions sched{schedule_kind(c.train.schedule), c.train.lr, c.train.min_lr_ratio, c.train.warmup_steps,
                        total_steps};
  const bool samples = !sample_prompt.empty() && (writer || state.forward_needs_every_rank());

  if (resume_dir) {
    std::vector<ParamRef> into = state.held_params();
    for (const ParamRef& m : adam.state()) into.push_back(m);
    const TrainerState st = load_checkpoint(*resume_dir, into, checkpoint_tensor_names(model.layout()));
    LMTUNE_ASSERT(st.step == start, "the checkpoint's step changed while loading");
    state.after_load();
    adam.set_steps_taken(st.adam_steps);
    loader.restore(st.loader);
  }

  // Everything is in place: the run takes the directory.
  const std::string config_yaml = to_yaml(c);
  MetricsLog metrics;
  if (writer) {
    prepare_run_dir(*run_dir, resume_dir ? RunStart::resume : RunStart::fresh,
                    c.output.overwrite ? Overwrite::yes : Overwrite::no);
    run_dir->keep();
    write_file_atomic(c.output.dir / "config.yaml", config_yaml);
    if (resume_dir) truncate_metrics(c.output.dir / "metrics.jsonl", start);
    metrics = MetricsLog(c.output.dir / "metrics.jsonl");
    if (!resume_dir) metrics.write({{"step", 0}, {"data", data_stats_json(data)}});
  }
  world.barrier();  // the other ranks write into the run directory only once it is prepared
  if (talk) {
    log << "resolved config:\n" << config_yaml;
    if (resume_dir) log << "resumed from " << resume_dir->string() << " at step " << start << "\n";
    log << data_loss_report(data, c.data.seq_len, data_options(c).packing);
    int64_t trainable_count = 0;
    for (const UnitLayout& u : model.layout().units) trainable_count += u.trainable_numel();
    log << "ranks: " << run.world << " (dp " << dp.size() << "), " << threads << " thread" << (threads == 1 ? "" : "s")
        << " per rank; global batch " << dp.size() << " x " << c.train.micro_batch_size << " x " << accum << " = "
        << global_micro * accum << " rows of " << c.data.seq_len << " tokens\n";
    log << "training " << trainable_count << " parameters for " << total_steps << " steps ("
        << data.train.num_rows() << " rows, " << steps_per_epoch << " steps per epoch); validation: "
        << data.validation.num_rows() << " rows\n";
    if (c.train.warmup_steps > total_steps)
      log << "note: train.warmup_steps (" << c.train.warmup_steps << ") is longer than the run (" << total_steps
          << " steps): the learning rate rises for the whole run and never reaches train.lr\n";
    log << std::flush;
  }

  TrainSummary summary;
  summary.run_dir = c.output.dir;
  auto save = [&](int64_t step) {
    // What every rank of the group holds alike, each rank writes an even share of; what is
    // split over the ranks (ZeRO), each writes its own pieces.
    std::vector<ParamRef> mine =
        state.params_partitioned() ? state.held_params() : even_share(state.held_params(), dp.rank(), dp.size());
    const std::vector<ParamRef> moments =
        state.owned_partitioned() ? adam.state() : even_share(adam.state(), dp.rank(), dp.size());
    mine.insert(mine.end(), moments.begin(), moments.end());
    summary.last_checkpoint = save_checkpoint(c.output.dir, mine, {step, adam.steps_taken(), loader.state(), fingerprint},
                                              config_yaml, run, world);
  };
  auto run_eval = [&](int64_t step) {
    const EvalResult e =
        evaluate(model, data.validation, c.train.micro_batch_size, c.train.eval_batches, dp, &state,
                 state.forward_needs_every_rank() ? Lockstep::yes : Lockstep::no);
    nlohmann::json j = {{"step", step}};
    if (e.tokens > 0) {
      j["val_loss"] = e.loss;
      j["val_ppl"] = std::exp(e.loss);
      summary.validation_loss = e.loss;
    }
    std::string sample;
    if (samples) sample = tok.decode(sample_ids(model, sample_prompt, c, &state));
    if (!sample.empty()) j["sample"] = sample;
    metrics.write(j);
    if (!talk) return;
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
  auto finish = [&]() -> TrainSummary& {
    const RankMemory mine{run.rank, alloc.stats(), predicted.device, process_peak_rss(), host->stats(), predicted.host};
    summary.memory = gather_rank_memory(world, mine);
    if (writer) write_memory_json(c.output.dir / "memory.json", summary.memory);
    return summary;
  };

  const auto t0 = Clock::now();
  double tokens_done = 0;
  summary.steps = start;
  if ((summary.stop_signal = agreed_stop(world)) != 0) return finish();  // asked to stop while loading
  for (int64_t step = start; step < total_steps; ++step) {
    const auto ts = Clock::now();
    std::vector<Batch> micro;
    for (int64_t i = 0; i < accum; ++i) micro.push_back(loader.next());
    tokens_done += static_cast<double>(global_micro * accum * c.data.seq_len);
    const double lr = learning_rate(sched, step);
    const StepResult r = engine.step(micro, step, lr);
    if (!r.finite()) {
      const auto last = latest_checkpoint(c.output.dir);
      LMTUNE_THROW("the loss became ", r.loss, " at step ", step + 1,
                   "; training stopped without saving this step. Try a lower train.lr (now ", c.train.lr,
                   "), more train.warmup_steps, or train.max_grad_norm > 0",
                   last ? "; the last good checkpoint is " + last->string() : std::string("; no checkpoint was saved"));
    }
    summary.last_loss = r.loss;
    const int64_t done = step + 1;

    const double step_s = std::chrono::duration<double>(Clock::now() - ts).count();
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    const double tok_s = tokens_done / std::max(elapsed, 1e-9);
    const double eta = elapsed / static_cast<double>(done - start) * static_cast<double>(total_steps - done);
    const int64_t peak = alloc.stats().allocated.peak;
    nlohmann::json m = {{"step", done},       {"loss", r.loss},         {"lr", lr},
                        {"grad_norm", r.grad_norm}, {"tokens_per_s", tok_s}, {"step_seconds", step_s},
                        {"peak_allocated_bytes", peak}};
    if (dp.size() > 1) {
      m["reduced_bytes"] = state.bytes_reduced();
      m["gathered_bytes"] = state.bytes_gathered();
    }
    metrics.write(m);
    char line[256];
    if (progress == Progress::bar) {
      const int width = 24, filled = static_cast<int>(width * done / total_steps);
      std::snprintf(line, sizeof line, "\r[%s%s] %lld/%lld loss %.4f lr %.2e %.0f tok/s ETA %s peak %s   ",
                    std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                    static_cast<long long>(done), static_cast<long long>(total_steps), r.loss, lr, tok_s,
                    format_duration(eta).c_str(), format_bytes(peak).c_str());
      log << line << std::flush;
    } else if (progress == Progress::lines && (done % c.train.log_every == 0 || done == total_steps)) {
      std::snprintf(line, sizeof line, "step %lld/%lld loss %.4f lr %.3e grad_norm %.3f %.0f tok/s ETA %s peak %s\n",
                    static_cast<long long>(done), static_cast<long long>(total_steps), r.loss, lr, r.grad_norm, tok_s,
                    format_duration(eta).c_str(), format_bytes(peak).c_str());
      log << line << std::flush;
    }
    const bool last_step = done == total_steps;
    // A stop request (a signal, on any rank) is served here, at the step boundary, by
    // every rank alike: this step is saved.
    if (const int sig = agreed_stop(world); sig != 0 && !last_step) {
      if (progress == Progress::bar) log << "\n";
      save(done);
      summary.steps = done;
      summary.stop_signal = sig;
      return finish();
    }
    if (evaluates_after(c, done, total_steps)) run_eval(done);
    if ((c.train.save_every > 0 && done % c.train.save_every == 0) || last_step) save(done);
  }
  if (progress == Progress::bar) log << "\n";
  if (start >= total_steps && talk) log << "nothing to do: the run is already at step " << start << "\n";
  summary.steps = total_steps;
  return finish();
}

}  // namespace lmtune
