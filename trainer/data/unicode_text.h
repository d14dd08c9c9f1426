// Unicode pieces the tokenizers share: UTF-8 scanning that tolerates invalid bytes, Unicode
// normalisation (ICU) that leaves invalid bytes as they are, and the pre-tokenizer regex of HF
// tokenizers run on PCRE2. See the design note in unicode_text.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace lmtune {

// Length of the UTF-8 character starting at s[i]; a malformed or truncated sequence (an
// overlong form, a surrogate, a stray continuation byte, a code point above U+10FFFF) counts
// as one byte.
size_t utf8_char_len(std::string_view s, size_t i);
bool is_valid_utf8(std::string_view s);
// The code point of the valid character s[i, i + len) (len from utf8_char_len); an invalid
// byte gives U+FFFD.
char32_t utf8_decode(std::string_view s, size_t i, size_t len);
// Where the character that ends just before s[i] starts (i > 0): i - 1 for an invalid byte.
size_t utf8_prev_start(std::string_view s, size_t i);
// Unicode White_Space (Rust's char::is_whitespace) and Alphabetic-or-Numeric (Rust's
// char::is_alphanumeric), which HF tokenizers use around added tokens.
bool is_unicode_white_space(char32_t c);
bool is_unicode_alphanumeric(char32_t c);

// The Unicode normalisation forms HF tokenizers' normalizers name.
enum class UnicodeForm { nfc, nfd, nfkc, nfkd };

// Appends the normalisation of s to out. Each maximal run of valid UTF-8 is normalised on its
// own; invalid bytes are copied unchanged (HF tokenizers only ever see valid text, so this is
// the one extension that keeps every byte string encodable).
void unicode_normalize(UnicodeForm form, std::string_view s, std::string& out);
// True when unicode_normalize would return s unchanged (a fast check; the common case).
bool is_unicode_normalized(UnicodeForm form, std::string_view s);

// One `Split` pre-tokenizer pattern of an HF tokenizer.json ({"Regex": ...}), compiled with
// PCRE2 (UTF, Unicode properties, JIT) so that it means what it means to HF's Oniguruma: `\s`
// and `\S` are rewritten to the Unicode White_Space set. Matching tolerates invalid UTF-8: an
// invalid byte is never part of a match. Thread-safe (const; per-call match data).
class SplitRegex {
 public:
  // `source` names the file and key in errors (a pattern PCRE2 rejects, an unsupported escape).
  SplitRegex(std::string_view pattern, const std::string& source);
  ~SplitRegex();
  SplitRegex(SplitRegex&&) noexcept;
  SplitRegex& operator=(SplitRegex&&) noexcept;

  // HF's Split with behavior "Isolated": every match is a piece, and so is every stretch of
  // text between two matches. Calls piece(begin, end) in order; the pieces tile the text.
  void split(std::string_view text, const std::function<void(size_t, size_t)>& piece) const;
  const std::string& pattern() const { return pattern_; }

 private:
  struct Compiled;
  std::string pattern_;
  std::string source_;
  std::unique_ptr<Compiled> compiled_;
};

// The pattern rewritten for PCRE2 (exposed for tests): `\s` -> the White_Space class, `\S` ->
// its complement, inside and outside bracket expressions.
std::string rewrite_hf_regex_for_pcre2(std::string_view pattern, const std::string& source);

}  // namespace lmtune
