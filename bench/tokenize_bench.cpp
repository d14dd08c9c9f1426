// Tokenizer throughput and memory (bench/tokenize.sh runs it next to @huggingface/tokenizers).
//
//   tokenize_bench encode TOKENIZER TEXT_FILE [REPEATS=3]
//       Encodes the file REPEATS times (one thread; special tokens parsed, no BOS) and prints
//       one JSON line: load seconds, bytes, tokens, seconds per run, MB/s of the best run.
//   tokenize_bench nospace TOKENIZER MEGABYTES
//       Encodes MEGABYTES MB of lowercase letters with no space or punctuation (one "word")
//       once and prints seconds, MB/s and the peak resident memory the encode added, per
//       input byte (the bound the tokenizer keeps on one word's cost).
// TOKENIZER is a model directory (tokenizer.json) or a llama2.c tokenizer.bin.
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "trainer/data/tokenizer.h"
#include "trainer/io/file_util.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

long peak_rss_kb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

// Current resident set (KiB), from /proc/self/statm.
long current_rss_kb() {
  std::ifstream f("/proc/self/statm");
  long size = 0, resident = 0;
  f >> size >> resident;
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

lmtune::Tokenizer load(const std::string& what) {
  if (std::filesystem::is_directory(what)) return lmtune::Tokenizer::from_model_dir(what);
  return lmtune::Tokenizer::from_llama2c(what);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: tokenize_bench encode TOKENIZER TEXT_FILE [REPEATS] | nospace TOKENIZER MEGABYTES\n");
    return 2;
  }
  const std::string mode = argv[1];
  try {
    const auto t0 = Clock::now();
    const lmtune::Tokenizer tok = load(argv[2]);
    const double load_s = seconds_since(t0);
    if (mode == "encode") {
      const std::string text = lmtune::read_file_to_string(argv[3], "text file");
      const int repeats = argc > 4 ? std::atoi(argv[4]) : 3;
      std::vector<double> secs;
      size_t tokens = 0;
      for (int r = 0; r < repeats; ++r) {
        const auto t1 = Clock::now();
        tokens = tok.encode(text, lmtune::AddBos::no).size();
        secs.push_back(seconds_since(t1));
      }
      double best = secs[0];
      std::string list;
      for (double s : secs) {
        best = std::min(best, s);
        list += (list.empty() ? "" : ", ") + std::to_string(s);
      }
      std::printf("{\"load_s\": %.3f, \"bytes\": %zu, \"tokens\": %zu, \"seconds\": [%s], \"mb_per_s\": %.3f}\n", load_s,
                  text.size(), tokens, list.c_str(), static_cast<double>(text.size()) / 1e6 / best);
    } else if (mode == "nospace") {
      const size_t n = static_cast<size_t>(std::atof(argv[3]) * 1e6);
      std::string text(n, 'a');
      uint64_t x = 88172645463325252ull;
      for (size_t i = 0; i < n; ++i) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        text[i] = static_cast<char>('a' + x % 26);
      }
      const long before = current_rss_kb();
      const long peak_before = peak_rss_kb();
      const auto t1 = Clock::now();
      const size_t tokens = tok.encode(text, lmtune::AddBos::no).size();
      const double s = seconds_since(t1);
      const long peak = peak_rss_kb();
      const double extra = static_cast<double>(std::max(peak, peak_before) - before) * 1024.0;
      std::printf("{\"load_s\": %.3f, \"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.3f, \"mb_per_s\": %.3f, "
                  "\"encode_peak_rss_added_mb\": %.1f, \"bytes_per_input_byte\": %.2f}\n",
                  load_s, n, tokens, s, static_cast<double>(n) / 1e6 / s, extra / 1e6, extra / static_cast<double>(n));
    } else {
      std::fprintf(stderr, "unknown mode '%s'\n", mode.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenize_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
