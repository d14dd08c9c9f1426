// Helpers for the io tests: a scratch directory, raw file writing, error-message checks.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>

#include "trainer/core/error.h"

namespace lmtune::test {

// A fresh directory under the system temp dir, removed with everything in it at the end.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = "lmtune_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
    if (info != nullptr) name += std::string("_") + info->name();
    path_ = std::filesystem::temp_directory_path() / name;
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::filesystem::path& p, std::string_view bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << p;
}

inline std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs fn; expects an lmtune::Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected lmtune::Error, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected an lmtune::Error containing '" << *parts.begin() << "', nothing was thrown";
}

inline std::filesystem::path stories_dir() { return std::filesystem::path(LMTUNE_MODELS_DIR) / "stories15M"; }
inline bool have_stories() {
  return std::filesystem::exists(stories_dir() / "model.bin") && std::filesystem::exists(stories_dir() / "tokenizer.bin");
}

}  // namespace lmtune::test

namespace lmtune::test {

// A llama2.c tokenizer.bin: <unk>, "\n<s>\n", "\n</s>\n", the 256 byte tokens (stored as
// stories15M's file stores them: raw bytes below 0x80, the UTF-8 of code point b above), then
// `extra` (piece with spaces as ' ', score).
inline std::string make_tokenizer_bin(const std::vector<std::pair<std::string, float>>& extra) {
  std::string out;
  auto put_i32 = [&](int32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  auto put_tok = [&](const std::string& s, float score) {
    out.append(reinterpret_cast<const char*>(&score), 4);
    put_i32(static_cast<int32_t>(s.size()));
    out += s;
  };
  put_i32(16);
  put_tok("<unk>", 0);
  put_tok("\n<s>\n", 0);
  put_tok("\n</s>\n", 0);
  for (int b = 0; b < 256; ++b) {
    std::string s;
    if (b < 0x80) {
      s.push_back(static_cast<char>(b));
    } else {
      s.push_back(static_cast<char>(0xC0 | (b >> 6)));
      s.push_back(static_cast<char>(0x80 | (b & 0x3F)));
    }
    put_tok(s, 0);
  }
  for (const auto& [p, s] : extra) put_tok(p, s);
  return out;
}

}  // namespace lmtune::test
