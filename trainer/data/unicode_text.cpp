// Unicode text helpers — design note.
//
// UTF-8. Validity is RFC 3629's: no overlong forms, no surrogates, nothing above U+10FFFF. A
// byte that does not start a valid sequence is "a character of its own" everywhere in lmtune's
// tokenizers, so every byte string is encodable and decodes back to itself.
//
// Normalisation (HF's NFC/NFD/NFKC/NFKD normalizers) is ICU's Normalizer2 on UTF-8. HF only
// ever normalises valid text; here each maximal valid run is normalised on its own and invalid
// bytes stay where they are, so for valid input the result is exactly ICU's (and HF's).
//
// Pre-tokenizer regexes. HF tokenizers compile `Split` patterns with Oniguruma; lmtune uses
// PCRE2 (JIT), whose syntax agrees for everything these patterns use (`(?i:...)`, `\p{L}`,
// `\p{N}`, `{1,3}`, character classes, negative look-ahead). Where the two differ in meaning
// the pattern is rewritten: Oniguruma's `\s` is Unicode White_Space (U+0009-000D, 0020, 0085,
// 00A0, 1680, 2000-200A, 2028, 2029, 202F, 205F, 3000) while PCRE2's also takes U+180E, so
// `\s` / `\S` become that explicit class and its complement. PCRE2_MATCH_INVALID_UTF lets the
// matcher run over invalid UTF-8 without checking it first: invalid bytes never match, so they
// end up in the gaps between matches, which HF's "Isolated" behaviour makes pieces too.
// Matching is linear in practice for the patterns in use (Llama 3, Qwen2/3, GPT-2), and a
// PCRE2 match limit turns a pathological pattern into an error rather than a hang.
#include "trainer/data/unicode_text.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>

#include "trainer/core/error.h"

namespace lmtune {

size_t utf8_char_len(std::string_view s, size_t i) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) return 1;
  const size_t left = s.size() - i;
  auto cont = [&](size_t k, uint8_t lo = 0x80, uint8_t hi = 0xBF) {
    if (k >= left) return false;
    const auto b = static_cast<uint8_t>(s[i + k]);
    return b >= lo && b <= hi;
  };
  if (b0 >= 0xC2 && b0 <= 0xDF) return cont(1) ? 2 : 1;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    const uint8_t lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
    return cont(1, lo, hi) && cont(2) ? 3 : 1;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    const uint8_t lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
    return cont(1, lo, hi) && cont(2) && cont(3) ? 4 : 1;
  }
  return 1;
}

namespace {

bool is_invalid_at(std::string_view s, size_t i, size_t len) { return len == 1 && static_cast<uint8_t>(s[i]) >= 0x80; }

// Calls run(begin, end, valid) for the maximal valid and invalid stretches of s, in order.
template <typename F>
void for_each_run(std::string_view s, F&& run) {
  size_t i = 0;
  while (i < s.size()) {
    const size_t begin = i;
    size_t len = utf8_char_len(s, i);
    const bool valid = !is_invalid_at(s, i, len);
    while (i < s.size()) {
      len = utf8_char_len(s, i);
      if (is_invalid_at(s, i, len) == valid) break;
      i += len;
    }
    run(begin, i, valid);
  }
}

const icu::Normalizer2& normalizer(UnicodeForm form) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case UnicodeForm::nfc: n = icu::Normalizer2::getNFCInstance(status); break;
    case UnicodeForm::nfd: n = icu::Normalizer2::getNFDInstance(status); break;
    case UnicodeForm::nfkc: n = icu::Normalizer2::getNFKCInstance(status); break;
    case UnicodeForm::nfkd: n = icu::Normalizer2::getNFKDInstance(status); break;
  }
  LMTUNE_ASSERT(U_SUCCESS(status) && n != nullptr, "ICU normaliser unavailable: ", u_errorName(status));
  return *n;
}

}  // namespace

char32_t utf8_decode(std::string_view s, size_t i, size_t len) {
  const auto b = [&](size_t k) { return static_cast<char32_t>(static_cast<uint8_t>(s[i + k])); };
  switch (len) {
    case 1: return b(0) < 0x80 ? b(0) : 0xFFFD;
    case 2: return (b(0) & 0x1F) << 6 | (b(1) & 0x3F);
    case 3: return (b(0) & 0x0F) << 12 | (b(1) & 0x3F) << 6 | (b(2) & 0x3F);
    case 4: return (b(0) & 0x07) << 18 | (b(1) & 0x3F) << 12 | (b(2) & 0x3F) << 6 | (b(3) & 0x3F);
  }
  return 0xFFFD;
}

size_t utf8_prev_start(std::string_view s, size_t i) {
  for (size_t back = 2; back <= 4 && back <= i; ++back)
    if (utf8_char_len(s, i - back) == back) return i - back;
  return i - 1;
}

bool is_unicode_white_space(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE); }

bool is_unicode_alphanumeric(char32_t c) {
  const auto u = static_cast<UChar32>(c);
  if (u_hasBinaryProperty(u, UCHAR_ALPHABETIC)) return true;
  const int8_t t = u_charType(u);
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t len = utf8_char_len(s, i);
    if (is_invalid_at(s, i, len)) return false;
    i += len;
  }
  return true;
}

bool is_unicode_normalized(UnicodeForm form, std::string_view s) {
  const icu::Normalizer2& n = normalizer(form);
  bool normalized = true;
  for_each_run(s, [&](size_t b, size_t e, bool valid) {
    if (!valid || !normalized) return;
    UErrorCode status = U_ZERO_ERROR;
    normalized = n.isNormalizedUTF8(icu::StringPiece(s.data() + b, static_cast<int32_t>(e - b)), status);
    LMTUNE_ASSERT(U_SUCCESS(status), "ICU isNormalizedUTF8: ", u_errorName(status));
  });
  return normalized;
}

void unicode_normalize(UnicodeForm form, std::string_view s, std::string& out) {
  const icu::Normalizer2& n = normalizer(form);
  LMTUNE_CHECK(s.size() < static_cast<size_t>(INT32_MAX), "text of ", s.size(),
               " bytes is too long to normalise (limit 2 GiB)");
  icu::StringByteSink<std::string> sink(&out);
  for_each_run(s, [&](size_t b, size_t e, bool valid) {
    if (!valid) {
      out.append(s.substr(b, e - b));
      return;
    }
    UErrorCode status = U_ZERO_ERROR;
    n.normalizeUTF8(0, icu::StringPiece(s.data() + b, static_cast<int32_t>(e - b)), sink, nullptr, status);
    LMTUNE_ASSERT(U_SUCCESS(status), "ICU normalizeUTF8: ", u_errorName(status));
  });
}

// ---- the regex ----

namespace {

// Unicode White_Space, as PCRE2 class items.
constexpr std::string_view kWhiteSpaceItems =
    "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

}  // namespace

std::string rewrite_hf_regex_for_pcre2(std::string_view p, const std::string& source) {
  std::string out;
  out.reserve(p.size() + 256);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      LMTUNE_CHECK(i + 1 < p.size(), source, ": the pattern ends with a lone backslash");
      const char e = p[i + 1];
      if (e == 's') {
        if (in_class) out.append(kWhiteSpaceItems);
        else out.append("[").append(kWhiteSpaceItems).append("]");
      } else if (e == 'S') {
        LMTUNE_CHECK(!in_class, source, ": \\S inside a bracket expression is not supported in pattern '", p, "'");
        out.append("[^").append(kWhiteSpaceItems).append("]");
      } else if (e == 'h' || e == 'H') {
        LMTUNE_THROW(source, ": \\", e, " means a hex digit to Oniguruma but horizontal space to PCRE2; pattern '", p,
                     "' is not supported");
      } else {
        out.push_back(c);
        out.push_back(e);
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      if (i + 1 < p.size() && p[i + 1] == ']') out.push_back(p[++i]);
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
      const size_t end = p.find(":]", i + 2);
      LMTUNE_CHECK(end != std::string_view::npos, source, ": unterminated [: in pattern '", p, "'");
      out.append(p.substr(i, end + 2 - i));
      i = end + 1;
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
  }
  return out;
}

struct SplitRegex::Compiled {
  pcre2_code* code = nullptr;
  ~Compiled() {
    if (code != nullptr) pcre2_code_free(code);
  }
};

SplitRegex::SplitRegex(std::string_view pattern, const std::string& source)
    : pattern_(pattern), source_(source), compiled_(std::make_unique<Compiled>()) {
  const std::string rewritten = rewrite_hf_regex_for_pcre2(pattern, source);
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  compiled_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                                  PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_offset, nullptr);
  if (compiled_->code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    LMTUNE_THROW(source, ": cannot compile the pre-tokenizer regex '", pattern, "': ", reinterpret_cast<char*>(msg),
                 " (at offset ", err_offset, " of the PCRE2 form)");
  }
  // JIT where the platform has it; the interpreter otherwise (same results).
  pcre2_jit_compile(compiled_->code, PCRE2_JIT_COMPLETE);
}

SplitRegex::~SplitRegex() = default;
SplitRegex::SplitRegex(SplitRegex&&) noexcept = default;
SplitRegex& SplitRegex::operator=(SplitRegex&&) noexcept = default;

namespace {

// Per-thread match state: the JIT stack grows on demand up to 64 MiB (a long whitespace run
// under a look-ahead needs more than the 32 KiB default).
struct MatchState {
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchState() {
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, nullptr);
    LMTUNE_ASSERT(context != nullptr && stack != nullptr, "PCRE2: out of memory");
    pcre2_jit_stack_assign(context, nullptr, stack);
    pcre2_set_match_limit(context, 100'000'000);
  }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
  }
};

}  // namespace

void SplitRegex::split(std::string_view text, const std::function<void(size_t, size_t)>& piece) const {
  thread_local MatchState state;
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(compiled_->code, nullptr);
  LMTUNE_ASSERT(md != nullptr, "PCRE2: out of memory");
  struct Free {
    pcre2_match_data* md;
    ~Free() { pcre2_match_data_free(md); }
  } free_md{md};
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t offset = 0, emitted = 0;
  while (offset < n) {
    const int rc = pcre2_match(compiled_->code, subject, n, offset, 0, md, state.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      LMTUNE_THROW(source_, ": the pre-tokenizer regex failed at byte ", offset, " of a ", n,
                   "-byte text: ", reinterpret_cast<char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t b = ov[0], e = ov[1];
    if (e == b) {  // an empty match: no piece; move on by one character
      if (b >= n) break;
      offset = b + utf8_char_len(text, b);
      continue;
    }
    if (b > emitted) piece(emitted, b);
    piece(b, e);
    emitted = offset = e;
  }
  if (emitted < n) piece(emitted, n);
}

}  // namespace lmtune
