#include "trainer/loop/train_setup.h"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <thread>

#include "trainer/io/safetensors.h"
#include "trainer/loop/run_phases.h"
#include "trainer/loop/step_engine.h"

namespace lmtune {

namespace fs = std::filesystem;

ModelOptions model_options(const TrainConfig& c) {
  ModelOptions o;
  o.role = c.method.type == MethodType::full ? ParamRole::trainable : ParamRole::frozen;
  o.weight_dtype = c.model.dtype;
  o.seed = c.train.seed;
  if (c.method.type == MethodType::qlora) o.base_quant = BaseQuant::nf4;
  o.qat = c.method.qat.scheme;
  o.recompute = c.parallel.recompute;
  if (uses_lora(c.method.type)) {
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

ModelSource::ModelSource(const TrainConfig& c) : opts_(model_options(c)) {
  LMTUNE_CHECK(fs::is_directory(c.model.path), "model directory '", c.model.path.string(), "' does not exist");
  cfg_ = load_llama_config(c.model.path / "config.json");
  base_ = std::make_unique<SafeTensorsReader>(SafeTensorsReader::open(c.model.path));
  if (uses_lora(c.method.type) && c.method.lora.init_from) {
    adapter_file_ = *c.method.lora.init_from;
    adapters_ = std::make_unique<SafeTensorsReader>(SafeTensorsReader::open(adapter_file_));
  }
}

ModelSource::~ModelSource() = default;

void ModelSource::check(const LlamaModel& model) const {
  if (!adapters_) return;
  int64_t adapters = 0;
  for (const UnitLayout& u : model.layout().units)
    for (const ParamRow& r : u.rows)
      if (is_adapter_name(r.name)) {
        adapters_->get("base_model.model." + r.name);  // the error names the file and the tensor
        ++adapters;
      }
  LMTUNE_CHECK(adapters > 0, "'", adapter_file_.string(), "': the model has no LoRA adapters to load into");
}

void ModelSource::finish(const LlamaModel& model) const {
  model.check_unused_weights(*base_, used_);
}

void ModelSource::fill(LlamaModel& model, int unit) const {
  for (std::string& name : model.load_unit_weights(*base_, unit)) used_.insert(std::move(name));
  model.init_adapters(unit);
  if (!adapters_) return;
  const UnitLayout& layout = model.layout().units[unit];
  for (size_t i = 0; i < layout.rows.size(); ++i) {
    if (!is_adapter_name(layout.rows[i].name)) continue;
    Tensor dst = model.unit_params(unit)[i];
    adapters_->load_into("base_model.model." + layout.rows[i].name, dst);
  }
}

std::unique_ptr<LlamaModel> build_dense_model(const ModelSource& source, Allocator& alloc) {
  auto model = std::make_unique<LlamaModel>(source.model_config(), alloc, source.options());
  source.check(*model);
  for (int u = 0; u < model->layout().num_units(); ++u) source.fill(*model, u);
  source.finish(*model);
  return model;
}

RankModel build_local_model(const TrainConfig& c, const ModelSource& source, Allocator& alloc) {
  LMTUNE_CHECK(c.parallel.zero == 0 && c.parallel.offload == Offload::none,
               "parallel.zero and parallel.offload need the parallel strategies of `lmtune train` (this process "
               "runs without them)");
  RankModel r;
  r.model = build_dense_model(source, alloc);
  r.state = std::make_unique<LocalState>(*r.model, grad_bucket_bytes(c));
  return r;
}

std::unique_ptr<LlamaModel> build_model(const TrainConfig& c, Allocator& alloc) {
  return build_dense_model(ModelSource(c), alloc);
}

int effective_threads(const TrainConfig& c, const RunContext& run) {
  if (c.train.threads > 0) return static_cast<int>(c.train.threads);
  if (const char* omp = std::getenv("OMP_NUM_THREADS")) {  // what launch, srun scripts or the user chose
    char* end = nullptr;
    const long n = std::strtol(omp, &end, 10);
    if (end != omp && *end == '\0' && n >= 1 && n <= 4096) return static_cast<int>(n);
  }
  return std::max(1, usable_cores() / std::max(1, run.local_world));
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

RankMemoryPrediction predict_rank_memory(const TrainConfig& c, const RankGroups& meta, const RankModelFactory& build,
                                         const RankRunShape& run) {
  auto alloc = Allocator::create(Device::meta()), host = Allocator::create(Device::meta());
  const ModelSource source(c);
  Communicator& meta_dp = *meta.dp;
  RankModel rm = build ? build(c, source, *alloc, *host, meta) : build_local_model(c, source, *alloc);
  LlamaModel& model = *rm.model;
  TrainingState& state = *rm.state;
  AdamW adam(state.owned(), optimizer_allocator(c, *alloc, *host), adam_options(c));
  StepEngine engine(model, adam, meta_dp, state, {c.train.seed, c.train.max_grad_norm});
  const int64_t B = c.train.micro_batch_size, T = c.data.seq_len;
  std::vector<Batch> micro(static_cast<size_t>(c.train.grad_accum_steps));
  for (Batch& b : micro) {
    b.tokens.assign(static_cast<size_t>(B * T), 0);
    b.targets.assign(static_cast<size_t>(B * T), 0);
    b.B = B;
    b.T = T;
    b.num_targets = B * T;
  }
  const bool samples = !run.sample_prompt.empty() && (run.writer || state.forward_needs_every_rank());
  // The run's steps and evaluations, in its order. A repeat that leaves the pools as they
  // were (same fingerprints, same peaks) would repeat forever: skip ahead over such repeats
  // of a step, and of a whole stretch between two evaluations.
  struct Moment {
    uint64_t device = 0, host = 0;
    int64_t allocated_peak = 0, reserved_peak = 0, host_allocated_peak = 0, host_reserved_peak = 0;
    bool operator==(const Moment&) const = default;
  };
  auto now = [&] {
    const MemoryStats d = alloc->stats(), h = host->stats();
    return Moment{alloc->state_fingerprint(), host->state_fingerprint(), d.allocated.peak, d.reserved.peak,
                  h.allocated.peak,           h.reserved.peak};
  };
  const int64_t total = run.total_steps;
  Moment after_last_step, after_last_eval;  // valid when have_*
  bool have_step = false, have_eval = false;
  int64_t done = run.first_step;
  while (done < total) {
    engine.step(micro, done, c.train.lr);
    ++done;
    if (!evaluates_after(c, done, total)) {
      const Moment m = now();
      if (have_step && after_last_step == m) {  // every step until the next evaluation is this one again
        int64_t next_eval = total;
        if (c.train.eval_every > 0) next_eval = std::min(total, (done / c.train.eval_every + 1) * c.train.eval_every);
        done = next_eval - 1;
      }
      after_last_step = m;
      have_step = true;
      continue;
    }
    if (run.validation)
      evaluate(model, *run.validation, B, c.train.eval_batches, meta_dp, &state,
               state.forward_needs_every_rank() ? Lockstep::yes : Lockstep::no);
    if (samples) sample_ids(model, run.sample_prompt, c, &state);
    have_step = false;
    const Moment m = now();
    if (have_eval && after_last_eval == m && c.train.eval_every > 0) {
      // every stretch of eval_every steps up to the last one before `total` is this one again
      const int64_t last_regular = (total - 1) / c.train.eval_every * c.train.eval_every;
      done = std::max(done, last_regular);
    }
    after_last_eval = m;
    have_eval = true;
  }
  return {alloc->stats(), host->stats()};
}

RankMemoryPrediction predict_rank_memory(const TrainConfig& c, const RankRunShape& run) {
  const SingleProcess single;
  return predict_rank_memory(c, single.env().meta_groups, single.env().build, run);
}

Allocator& optimizer_allocator(const TrainConfig& c, Allocator& device, Allocator& host) {
  return c.parallel.offload == Offload::none ? device : host;
}

}  // namespace lmtune
