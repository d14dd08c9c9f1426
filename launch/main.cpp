// `lmtune`: one binary, one verb per job. Library code throws lmtune::Error; this file is
// the only place that catches it and turns it into a message and an exit code
// (0 ok, 1 error, 2 usage error, 128 + N when `train` stopped on signal N after saving).
#include <sys/resource.h>

#include <cerrno>
#include <climits>
#include <cstdlib>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <iostream>
#include <sstream>

#include "kernels/ops.h"
#include "launch/args.h"
#include "launch/launcher.h"
#include "launch/slurm.h"
#include "parallel/rank_model.h"
#include "parallel/fake_communicator.h"
#include "parallel/groups.h"
#include "parallel/mpi_communicator.h"
#include "parallel/run_context.h"
#include "trainer/core/error.h"
#include "trainer/core/strings.h"
#include "trainer/data/tokenizer.h"
#include "trainer/io/file_util.h"
#include "trainer/io/llama2c.h"
#include "trainer/loop/export.h"
#include "trainer/loop/inference.h"
#include "trainer/loop/stop_signal.h"
#include "trainer/loop/train_config.h"
#include "trainer/loop/trainer.h"
#include "trainer/model/llama.h"

namespace lmtune::cli {
namespace {

namespace fs = std::filesystem;

// Where a command's output goes: the real run prints, the meta run (the prediction) is silent.
enum class Output { print, silent };

const std::vector<OptionSpec> kCommon = {
    {"threads", true, "CPU threads for the kernels (default: all cores)"},
    {"memory-report", false, "at exit, print peak memory per category, measured and as a meta-device run predicted"},
    {"help", false, "show this help"},
};

std::vector<OptionSpec> with_common(std::vector<OptionSpec> spec) {
  spec.insert(spec.end(), kCommon.begin(), kCommon.end());
  return spec;
}


fs::path model_dir_arg(const std::string& s) {
  const fs::path dir(s);
  LMTUNE_CHECK(fs::is_directory(dir), "model directory '", s, "' does not exist");
  return dir;
}

// ---- generate --------------------------------------------------------------------------
const std::vector<OptionSpec> kGenerateOptions = with_common({
    {"prompt", true, "text to continue (required)"},
    {"max-new-tokens", true, "tokens to generate (default 64)"},
    {"temperature", true, "sampling temperature; 0 is greedy (default 1.0)"},
    {"top-p", true, "nucleus sampling threshold in (0, 1] (default 1.0)"},
    {"seed", true, "sampling seed (default 0)"},
});

void run_generate(const Args& args, Allocator& alloc, Output out) {
  args.expect_positional({"MODEL_DIR"});
  const fs::path dir = model_dir_arg(args.positional()[0]);
  const auto prompt = args.get("prompt");
  LMTUNE_CHECK(prompt.has_value(), "'lmtune generate' needs --prompt TEXT");
  SamplingOptions opts;
  opts.max_new_tokens = args.get_int("max-new-tokens", 64);
  opts.temperature = static_cast<float>(args.get_double("temperature", 1.0));
  opts.top_p = static_cast<float>(args.get_double("top-p", 1.0));
  opts.seed = static_cast<uint64_t>(args.get_int("seed", 0));
  const Tokenizer tok = Tokenizer::from_model_dir(dir);
  auto model = LlamaModel::load(dir, alloc);
  const std::vector<int32_t> ids = tok.encode(*prompt, AddBos::yes);
  LMTUNE_CHECK(!ids.empty(), "'lmtune generate': the prompt is empty and the tokenizer has no BOS token to start from");
  if (out == Output::print) {
    std::cout << *prompt << std::flush;
  }
  int32_t prev = ids.back();
  generate(*model, ids, opts, [&](int32_t id) {
    if (out == Output::print) std::cout << tok.decode_token(prev, id) << std::flush;
    prev = id;
  });
  if (out == Output::print) std::cout << "\n";
}

// ---- perplexity ------------------------------------------------------------------------
const std::vector<OptionSpec> kPerplexityOptions = with_common({
    {"text-file", true, "the text to score (required)"},
    {"seq-len", true, "window length in tokens (default: the model's max_position_embeddings)"},
});

void run_perplexity(const Args& args, Allocator& alloc, Output out) {
  args.expect_positional({"MODEL_DIR"});
  const fs::path dir = model_dir_arg(args.positional()[0]);
  const auto file = args.get("text-file");
  LMTUNE_CHECK(file.has_value(), "'lmtune perplexity' needs --text-file FILE");
  const std::string text = read_file_to_string(*file, "text file");
  const Tokenizer tok = Tokenizer::from_model_dir(dir);
  auto model = LlamaModel::load(dir, alloc);
  const int64_t seq_len = args.get_int("seq-len", model->config().max_position_embeddings);
  const PerplexityResult r = perplexity(*model, tok.encode(text, AddBos::yes), seq_len);
  if (out == Output::print) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "nll=%.6f ppl=%.4f tokens=%lld", r.nll, r.ppl, static_cast<long long>(r.tokens));
    std::cout << buf << "\n";
  }
}

// ---- import ----------------------------------------------------------------------------
const std::vector<OptionSpec> kImportOptions = with_common({});

void run_import(const Args& args, Allocator&, Output out) {
  const auto& pos = args.positional();
  LMTUNE_CHECK(!pos.empty(), "'lmtune import' needs a format: lmtune import llama2c MODEL.bin TOKENIZER.bin OUT_DIR");
  LMTUNE_CHECK(pos[0] == "llama2c", "unknown import format '", pos[0], "' (supported: llama2c)");
  LMTUNE_CHECK(pos.size() == 4, "usage: lmtune import llama2c MODEL.bin TOKENIZER.bin OUT_DIR (got ", pos.size() - 1,
               " arguments after the format)");
  if (out == Output::silent) return;  // import streams files; it holds no tracked memory
  import_llama2c(pos[1], pos[2], pos[3]);
  std::cout << "wrote HF model directory " << pos[3] << "\n";
}

// ---- tokenize --------------------------------------------------------------------------
const std::vector<OptionSpec> kTokenizeOptions = with_common({
    {"text-file", true, "encode this file's bytes exactly as they are"},
    {"text", true, "encode this text"},
    {"json", false, "print the ids as a JSON array (default: one line, space-separated)"},
    {"literal-specials", false, "encode text that spells a special token (<|eot_id|>) as plain text"},
    {"bos", false, "put the tokenizer's BOS first (when it has one)"},
    {"decode", true, "decode these ids (space- or comma-separated, or a JSON array) and print the text"},
    {"ids-file", true, "decode the ids in this file"},
});

// "1 2 3", "1,2,3" or "[1, 2, 3]" -> ids; anything else names the offending word.
std::vector<int32_t> parse_ids(const std::string& s, const std::string& what) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (c == ' ' || c == ',' || c == '\n' || c == '\t' || c == '\r' || c == '[' || c == ']') {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && std::string_view(" ,\n\t\r[]").find(s[j]) == std::string_view::npos) ++j;
    const std::string word = s.substr(i, j - i);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(word.c_str(), &end, 10);
    LMTUNE_CHECK(*end == '\0' && errno == 0 && v >= 0 && v <= INT32_MAX, what, ": '", word,
                 "' is not a token id (expected non-negative integers separated by spaces or commas)");
    ids.push_back(static_cast<int32_t>(v));
    i = j;
  }
  return ids;
}

void run_tokenize(const Args& args, Allocator&, Output out) {
  args.expect_positional({"MODEL_DIR"});
  const fs::path dir = model_dir_arg(args.positional()[0]);
  const bool decoding = args.get("decode").has_value() || args.get("ids-file").has_value();
  const int inputs = int{args.get("text-file").has_value()} + int{args.get("text").has_value()} +
                     int{args.get("decode").has_value()} + int{args.get("ids-file").has_value()};
  LMTUNE_CHECK(inputs == 1, "'lmtune tokenize' needs exactly one of --text-file FILE, --text TEXT, --decode IDS, ",
               "--ids-file FILE");
  if (out == Output::silent) return;  // the tokenizer holds no tracked memory
  if (decoding) {
    const std::vector<int32_t> ids =
        args.get("decode") ? parse_ids(*args.get("decode"), "--decode")
                           : parse_ids(read_file_to_string(*args.get("ids-file"), "ids file"), *args.get("ids-file"));
    const Tokenizer tok = Tokenizer::from_model_dir(dir);
    const std::string text = tok.decode(ids);
    std::cout.write(text.data(), static_cast<std::streamsize>(text.size()));
    std::cout.flush();
    return;
  }
  const std::string text =
      args.get("text") ? *args.get("text") : read_file_to_string(*args.get("text-file"), "text file");
  const Tokenizer tok = Tokenizer::from_model_dir(dir);
  const std::vector<int32_t> ids =
      tok.encode(text, args.flag("literal-specials") ? SpecialTokens::literal : SpecialTokens::parse,
                 args.flag("bos") ? AddBos::yes : AddBos::no);
  std::string line = args.flag("json") ? "[" : "";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) line += args.flag("json") ? ", " : " ";
    line += std::to_string(ids[i]);
  }
  if (args.flag("json")) line += "]";
  std::cout << line << "\n";
}

// ---- train -----------------------------------------------------------------------------
const std::vector<OptionSpec> kTrainOptions = with_common({
    {"quiet", false, "print nothing but errors"},
    {"plan", true, "a config overlay (plan.yaml, as `lmtune plan` writes it): its keys override the file's, "
                   "key=value overrides override both"},
});

// The config file and its overrides: the first positional is the file, the rest key=value.
TrainConfig train_config_from(const Args& args) {
  const auto& pos = args.positional();
  LMTUNE_CHECK(!pos.empty(), "usage: lmtune train CONFIG.yaml [--plan PLAN.yaml] [key.sub=value ...]");
  for (size_t i = 1; i < pos.size(); ++i)
    LMTUNE_CHECK(pos[i].find('=') != std::string::npos, "'", pos[i],
                 "' is not an override; overrides look like train.lr=1e-4 (the dotted key of the config, '=', a value)");
  std::vector<fs::path> overlays;
  if (const auto plan = args.get("plan")) overlays.emplace_back(*plan);
  return load_train_config(pos[0], std::vector<std::string>(pos.begin() + 1, pos.end()), overlays);
}

void print_memory_report(const MemoryStats& m, const MemoryStats& p, Device device, const char* what);

// One row per rank: measured and predicted peaks (the per-category detail of rank 0 is
// printed above it).
void print_rank_table(const std::vector<RankMemory>& rows) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "  %-5s %14s %14s %14s %14s %14s  %s\n", "rank", "allocated", "predicted",
                "reserved", "predicted", "peak RSS", "prediction");
  std::cerr << "per rank (bytes; peaks):\n" << buf;
  for (const RankMemory& r : rows) {
    const bool exact = r.measured.allocated.peak == r.predicted.allocated.peak &&
                       r.measured.reserved.peak == r.predicted.reserved.peak;
    std::snprintf(buf, sizeof buf, "  %-5d %14lld %14lld %14lld %14lld %14lld  %s\n", r.rank,
                  static_cast<long long>(r.measured.allocated.peak), static_cast<long long>(r.predicted.allocated.peak),
                  static_cast<long long>(r.measured.reserved.peak), static_cast<long long>(r.predicted.reserved.peak),
                  static_cast<long long>(r.peak_rss), exact ? "exact" : "DIFFERS");
    std::cerr << buf;
  }
}

// The communicators of a run, their meta counterparts, and the parallel strategies.
struct RankComms {
  std::unique_ptr<Communicator> world;
  GroupComms groups, fake;
  std::optional<SingleProcess> single;
  ParallelEnv env;
};

void make_rank_comms(RankComms& rc, const TrainConfig& config, const RunContext& ctx) {
  if (ctx.world == 1) {
    rc.single.emplace();
    rc.env = rc.single->env();
  } else {
    const TrainConfig c = resolve_layout(config, ctx.world);
    const ParallelLayout layout{static_cast<int>(c.parallel.dp), static_cast<int>(c.parallel.tp),
                                static_cast<int>(c.parallel.pp)};
    rc.world = make_mpi_world_communicator(ctx);
    rc.groups = split_groups(*rc.world, layout);
    rc.fake = make_fake_groups(ctx.rank, layout);
    rc.env.run = ctx;
    rc.env.world = rc.world.get();
    rc.env.groups = {rc.groups.dp.get(), rc.groups.tp.get(), rc.groups.pp.get()};
    rc.env.meta_groups = {rc.fake.dp.get(), rc.fake.tp.get(), rc.fake.pp.get()};
  }
  rc.env.build = build_rank_model;
}

// Returns the exit code: 0, or 128 + N when signal N stopped the run (after a checkpoint).
// With --memory-report the writer rank prints every rank's memory at the end.
int run_train(const Args& args, Allocator& alloc, Output out, const RunContext& ctx) {
  TrainConfig cfg = train_config_from(args);
  if (args.get("threads")) cfg.train.threads = args.get_int("threads", 0);
  if (out == Output::silent) return 0;  // train() predicts its own memory on the meta device
  const Progress progress = args.flag("quiet") ? Progress::quiet : Progress::auto_detect;
  const StopSignalScope stop_signals;  // SIGINT, SIGTERM, SIGUSR1: finish the step, save, stop
  RankComms comms;
  make_rank_comms(comms, cfg, ctx);
  const TrainSummary s = train(cfg, alloc, progress, std::cerr, comms.env);
  const bool writer = ctx.writer();
  if (writer && args.flag("memory-report")) {
    print_memory_report(s.memory.at(0).measured, s.memory.at(0).predicted, alloc.device(),
                        "the run of rank 0, replayed");
    if (s.memory.size() > 1) print_rank_table(s.memory);
  }
  if (s.stop_signal != 0) {  // said even under --quiet: the run did not finish
    if (writer) {
      std::cerr << "lmtune: stopped by " << signal_name(s.stop_signal);
      if (s.last_checkpoint.empty()) std::cerr << " before this run's first step (at step " << s.steps << "); nothing new to save";
      else std::cerr << " after step " << s.steps << "; saved " << s.last_checkpoint.string();
      std::cerr << ". Continue with train.resume_from=auto\n";
    }
    return 128 + s.stop_signal;
  }
  if (writer && progress != Progress::quiet) {
    std::cerr << "done: " << s.steps << " steps, last loss " << s.last_loss;
    if (s.validation_loss) std::cerr << ", validation loss " << *s.validation_loss;
    std::cerr << "\nrun directory: " << s.run_dir.string() << "\nlast checkpoint: " << s.last_checkpoint.string()
              << "\n";
  }
  return 0;
}

// ---- export ----------------------------------------------------------------------------
const std::vector<OptionSpec> kExportOptions = with_common({
    {"format", true, "hf (merged weights), peft (adapter) or gguf (required)"},
    {"out", true, "output directory (hf, peft) or file (gguf) (required)"},
    {"dtype", true, "f32 | f16 | bf16 for hf and peft, nf4 for hf (bitsandbytes 4-bit); f32 | f16 | bf16 | q8_0 | q4_0 "
                    "for gguf (default f32)"},
    {"overwrite", false, "replace an earlier export of the same format at --out (nothing else is ever replaced)"},
});

void run_export(const Args& args, Allocator& alloc, Output out) {
  args.expect_positional({"RUN_DIR"});
  const auto format = args.get("format");
  const auto dest = args.get("out");
  LMTUNE_CHECK(format.has_value(), "'lmtune export' needs --format hf|peft|gguf");
  LMTUNE_CHECK(dest.has_value(), "'lmtune export' needs --out PATH");
  const ExportFormat f = parse_export_format(*format);
  if (out == Output::silent) return;
  export_run(args.positional()[0], f, *dest, args.get_string("dtype", "f32"), alloc,
             args.flag("overwrite") ? Overwrite::yes : Overwrite::no);
  std::cout << "exported " << *format << " to " << *dest << "\n";
}

// ---- the memory report -----------------------------------------------------------------

void print_memory_report(const MemoryStats& m, const MemoryStats& p, Device device, const char* what) {
  auto row = [](const std::string& name, int64_t a, int64_t b) {
    char buf[200];
    std::snprintf(buf, sizeof buf, "  %-12s %14lld %14lld   %10s %s\n", name.c_str(), static_cast<long long>(a),
                  static_cast<long long>(b), format_bytes(a).c_str(), a == b ? "exact" : "DIFFERS");
    std::cerr << buf;
  };
  std::cerr << "memory report (" << device.str() << "; bytes; 'predicted' is a meta-device run of " << what << ")\n";
  char head[200];
  std::snprintf(head, sizeof head, "  %-12s %14s %14s\n", "peak", "measured", "predicted");
  std::cerr << head;
  bool exact = true;
  for (int c = 0; c < kNumMemCategories; ++c) {
    row(mem_category_name(static_cast<MemCategory>(c)), m.category[c].peak, p.category[c].peak);
    exact = exact && m.category[c].peak == p.category[c].peak;
  }
  row("allocated", m.allocated.peak, p.allocated.peak);
  row("reserved", m.reserved.peak, p.reserved.peak);
  exact = exact && m.allocated.peak == p.allocated.peak && m.reserved.peak == p.reserved.peak;
  std::cerr << "  peak happened at: '" << m.peak_phase << "' (predicted: '" << p.peak_phase << "')\n";
  std::cerr << "  process peak RSS: " << process_peak_rss() << " (" << format_bytes(process_peak_rss()) << ")\n";
  std::cerr << "  prediction: " << (exact ? "exact" : "differs") << "\n";
}

// ---- dispatch --------------------------------------------------------------------------
struct Verb {
  std::string name;
  std::string usage;
  const std::vector<OptionSpec>* options;
  std::function<int(const Args&, Allocator&, Output, const RunContext&)> run;  // returns the exit code
};

// A verb that exits 0 whenever it returns.
template <void (*F)(const Args&, Allocator&, Output)>
int exits_0(const Args& a, Allocator& alloc, Output out, const RunContext&) {
  F(a, alloc, out);
  return 0;
}

const std::vector<Verb>& verbs() {
  static const std::vector<Verb> v = {
      {"import", "lmtune import llama2c MODEL.bin TOKENIZER.bin OUT_DIR", &kImportOptions, exits_0<run_import>},
      {"generate", "lmtune generate MODEL_DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]",
       &kGenerateOptions, exits_0<run_generate>},
      {"perplexity", "lmtune perplexity MODEL_DIR --text-file FILE [--seq-len T]", &kPerplexityOptions,
       exits_0<run_perplexity>},
      {"tokenize",
       "lmtune tokenize MODEL_DIR (--text-file FILE | --text TEXT) [--json] [--literal-specials] [--bos] | "
       "(--decode IDS | --ids-file FILE)",
       &kTokenizeOptions, exits_0<run_tokenize>},
      {"train", "lmtune train CONFIG.yaml [--plan PLAN.yaml] [key.sub=value ...]", &kTrainOptions, run_train},
      {"export", "lmtune export RUN_DIR --format hf|peft|gguf --out OUT [--dtype f32|f16|bf16|nf4|q8_0|q4_0] [--overwrite]",
       &kExportOptions, exits_0<run_export>},
      {"launch", kLaunchUsage, &launch_options(), [](const Args& a, Allocator&, Output, const RunContext&) { return run_launch(a); }},
      {"slurm", kSlurmUsage, &slurm_options(), [](const Args& a, Allocator&, Output, const RunContext&) { return run_slurm(a); }},
  };
  return v;
}

void print_help(std::ostream& os) {
  os << "lmtune — fine-tune LLaMA-family models\n\nusage:\n";
  for (const auto& v : verbs()) os << "  " << v.usage << "\n";
  os << "\ncommon options: --threads N, --memory-report, --help\n";
}

void print_verb_help(const Verb& v) {
  std::cout << "usage: " << v.usage << "\n\noptions:\n";
  for (const auto& o : *v.options) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "  --%-16s %s\n", (o.name + (o.takes_value ? " X" : "")).c_str(), o.help.c_str());
    std::cout << buf;
  }
}

int run(int argc, char** argv, const RunContext& ctx) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "help") {
    print_help(argc < 2 ? std::cerr : std::cout);
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  const Verb* verb = nullptr;
  std::vector<std::string> names;
  for (const auto& v : verbs()) {
    names.push_back(v.name);
    if (v.name == name) verb = &v;
  }
  if (verb == nullptr) {
    const std::string near = closest_match(name, names);
    std::cerr << "lmtune: error: unknown command '" << name << "'"
              << (near.empty() ? std::string() : " (did you mean '" + near + "'?)") << "; see 'lmtune --help'\n";
    return 2;
  }
  const Args args(name, std::vector<std::string>(argv + 2, argv + argc), *verb->options);
  if (args.flag("help")) {
    print_verb_help(*verb);
    return 0;
  }
  ops::set_num_threads(static_cast<int>(args.get_int("threads", default_threads_per_rank(ctx))));
  const bool training = verb->name == "train";  // train() reports its own memory, rank by rank
  const bool report = args.flag("memory-report") && !training;
  MemoryStats predicted;
  if (report) {
    if (verb->name == "export") {
      args.expect_positional({"RUN_DIR"});
      predicted = predict_export_memory(args.positional()[0], parse_export_format(args.get_string("format", "hf")),
                                        args.get_string("dtype", "f32"));
    } else {
      auto meta = Allocator::create(Device::meta());
      verb->run(args, *meta, Output::silent, ctx);
      predicted = meta->stats();
    }
  }
  auto alloc = Allocator::create(Device::cpu());
  const int code = verb->run(args, *alloc, Output::print, ctx);
  if (report) print_memory_report(alloc->stats(), predicted, alloc->device(), "the same command");
  return code;
}

}  // namespace
}  // namespace lmtune::cli

// In a run of several ranks, a failing rank ends the whole job (abort_run), so that its
// peers do not wait for it forever.
int main(int argc, char** argv) {
  lmtune::RunContext ctx;
  auto fail = [&](const std::string& message) {
    std::cout.flush();
    if (ctx.world > 1) lmtune::abort_run(message, 1);
    std::cerr << "lmtune: " << message << "\n";
    return 1;
  };
  try {
    lmtune::install_launch_signal_relay();
    ctx = lmtune::detect_run_context();
    return lmtune::cli::run(argc, argv, ctx);
  } catch (const lmtune::Error& e) {
    return fail(e.kind() == lmtune::ErrorKind::internal ? e.describe() : std::string("error: ") + e.what());
  } catch (const std::exception& e) {
    return fail(std::string("internal error: ") + e.what());
  }
}
