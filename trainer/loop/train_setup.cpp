#include "trainer/loop/train_setup.h"

#include <algorithm>
#include <optional>
#include <thread>

#include "trainer/io/safetensors.h"
#include "trainer/loop/run_phases.h"

namespace lmtune {

namespace fs = std::filesystem;

ModelOptions model_options(const TrainConfig& c) {
  ModelOptions o;
  o.role = c.method.type == MethodType::full ? ParamRole::trainable : ParamRole::frozen;
  o.weight_dtype = c.model.dtype;
  o.seed = c.train.seed;
  o.recompute = c.parallel.recompute;
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

AdamWOptions adam_options(const TrainConfig& c) {
  return {c.train.adam_beta1, c.train.adam_beta2, c.train.adam_eps, c.train.weight_decay};
}

int64_t grad_bucket_bytes(const TrainConfig& c) {
  return std::max<int64_t>(1, static_cast<int64_t>(c.parallel.bucket_mb * 1024.0 * 1024.0));
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

int effective_threads(const TrainConfig& c, const RunContext& run) {
  if (c.train.threads > 0) return static_cast<int>(c.train.threads);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / std::max(1, run.local_world));
}

TrainConfig resolve_layout(const TrainConfig& config, int world) {
  TrainConfig c = config;
  const ParallelSection& p = c.parallel;
  const int64_t model_ranks = p.tp * p.pp;
  if (p.dp == ParallelSection::kAuto) {
    LMTUNE_CHECK(world % model_ranks == 0, "parallel.dp: auto needs the number of ranks (", world,
                 ") to be a multiple of parallel.tp x parallel.pp (", p.tp, " x ", p.pp, ")");
    c.parallel.dp = world / model_ranks;
  }
  const int64_t product = c.parallel.dp * model_ranks;
  LMTUNE_CHECK(product == world, "parallel.dp x tp x pp = ", c.parallel.dp, " x ", p.tp, " x ", p.pp, " = ", product,
               " ranks, but ", world, world == 1 ? " rank was" : " ranks were", " started",
               world == 1 ? "; start them with `lmtune launch --nproc-per-node " + std::to_string(product) +
                                " -- train ...`, mpirun or srun, or set parallel.dp=auto"
                          : "; set parallel.dp to " + std::to_string(world / model_ranks) + " or to auto");
  return c;
}

MemoryStats predict_rank_memory(const TrainConfig& c, Communicator& meta_dp, const GradSyncFactory& grad_sync,
                                const RankRunShape& run) {
  auto alloc = Allocator::create(Device::meta());
  auto model = build_model(c, *alloc);
  model->allocate_grads(grad_bucket_bytes(c));
  AdamW adam(model->trainable_parameters(), *alloc, adam_options(c));
  std::unique_ptr<GradientSync> sync;
  if (meta_dp.size() > 1) sync = grad_sync(*model, meta_dp, c);
  StepEngine engine(*model, adam, meta_dp, sync.get(), {c.train.seed, c.train.max_grad_norm});
  const int64_t B = c.train.micro_batch_size, T = c.data.seq_len;
  std::vector<Batch> micro(static_cast<size_t>(c.train.grad_accum_steps));
  for (Batch& b : micro) {
    b.tokens.assign(static_cast<size_t>(B * T), 0);
    b.targets.assign(static_cast<size_t>(B * T), 0);
    b.B = B;
    b.T = T;
    b.num_targets = B * T;
  }
  // The run's steps and evaluations, in its order. A repeat that leaves the pool as it was
  // (same fingerprint, same peaks) would repeat forever: skip ahead over such repeats of a
  // step, and of a whole stretch between two evaluations.
  struct Moment {
    uint64_t fingerprint;
    int64_t allocated_peak, reserved_peak;
    bool operator==(const Moment&) const = default;
  };
  auto now = [&] {
    const MemoryStats st = alloc->stats();
    return Moment{alloc->state_fingerprint(), st.allocated.peak, st.reserved.peak};
  };
  const int64_t total = run.total_steps;
  std::optional<Moment> after_last_step, after_last_eval;
  int64_t done = run.first_step;
  while (done < total) {
    engine.step(micro, done, c.train.lr);
    ++done;
    if (!evaluates_after(c, done, total)) {
      const Moment m = now();
      if (after_last_step == m) {  // every step until the next evaluation is this one again
        int64_t next_eval = total;
        if (c.train.eval_every > 0) next_eval = std::min(total, (done / c.train.eval_every + 1) * c.train.eval_every);
        done = next_eval - 1;
      }
      after_last_step = m;
      continue;
    }
    if (run.validation) evaluate(*model, *run.validation, B, c.train.eval_batches, meta_dp);
    if (!run.sample_prompt.empty()) sample_ids(*model, run.sample_prompt, c);
    after_last_step.reset();
    const Moment m = now();
    if (after_last_eval == m && c.train.eval_every > 0) {
      // every stretch of eval_every steps up to the last one before `total` is this one again
      const int64_t last_regular = (total - 1) / c.train.eval_every * c.train.eval_every;
      done = std::max(done, last_regular);
    }
    after_last_eval = m;
  }
  return alloc->stats();
}

MemoryStats predict_rank_memory(const TrainConfig& c, const RankRunShape& run) {
  const SingleProcess single;
  return predict_rank_memory(c, *single.env().meta_dp, single.env().grad_sync, run);
}

}  // namespace lmtune
