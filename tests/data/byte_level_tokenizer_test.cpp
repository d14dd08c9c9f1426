// Byte-level BPE (trainer/data/byte_level_bpe.h) on the real Llama 3 and Qwen3 tokenizers,
// against @huggingface/tokenizers (an independent JavaScript implementation, run under node
// by tests/reference/hf_tokenizers_encode.mjs): identical ids for every document of a
// >= 200 KB corpus mixing prose, code, long numbers, whitespace runs, CJK, emoji, accented
// and decomposed text and special-token strings, with special tokens parsed and literal;
// decode(encode(x)) == x. JavaScript strings cannot hold invalid UTF-8, so invalid bytes are
// checked against HF's documented byte-level behaviour instead: every byte is one character of
// the 256-character alphabet, so the tokens spell exactly the input's bytes, and the text
// around an invalid byte encodes as it would on its own.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/test_models.h"
#include "trainer/core/error.h"
#include "trainer/data/byte_level_bpe.h"
#include "trainer/data/tokenizer.h"
#include "trainer/data/unicode_text.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The real tokenizer `name`, loaded once per process; nullptr when not fetched.
const Tokenizer* real(const std::string& name) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(name);
  if (it != cache.end()) return it->second.get();
  const fs::path dir = testing::real_tokenizer_dir(name);
  auto& slot = cache[name];
  if (!dir.empty()) slot = std::make_unique<Tokenizer>(Tokenizer::from_model_dir(dir));
  return slot.get();
}

#define REQUIRE_REAL(tok, name)                                                                \
  const Tokenizer* tok = real(name);                                                           \
  if (tok == nullptr) GTEST_SKIP() << "models/tokenizers not fetched (scripts/fetch_tokenizers.sh)"

// ---- the corpus ----

std::string moby_dick_chapters(int count) {
  std::string out;
  const fs::path dir = fs::path(LMTUNE_MODELS_DIR) / "moby-dick" / "train";
  for (int i = 1; i <= count; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "%03d.txt", i);
    std::ifstream f(dir / name, std::ios::binary);
    out.append(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  return out;
}

// Valid UTF-8 documents, deterministic: each a random mix of fragments of the kinds below.
std::vector<std::string> make_corpus(size_t min_bytes) {
  const std::vector<std::string> prose = {
      "Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my purse, ",
      "It's a truth universally acknowledged; isn't it? I'M sure THEY'LL say we'd've known. ",
      "The quick brown fox jumps over the lazy dog... \"Quoted,\" she said, (parenthetically) [bracketed] {braced}. ",
      "Don't, won't, can't, shan't — y'all 'quoted' ‘curly’ “double” «guillemets» ",
  };
  const std::vector<std::string> code = {
      "int main(int argc, char** argv) {\n  for (int i = 0; i < argc; ++i) std::printf(\"%s\\n\", argv[i]);\n"
      "  return 0;\n}\n",
      "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n",
      "{\"key\": [1, 2.5e-3, null, true], \"nested\": {\"x\": \"y\"}}\n",
      "\tif (x != y && z >= 0x1F) { ptr->field[idx] += 1; } // comment\r\n",
      "SELECT id, name FROM users WHERE age > 30 ORDER BY name DESC;\n",
      "$ ls -la /usr/local/bin | grep -E '^-rwx' > out.txt 2>&1\n",
  };
  const std::vector<std::string> cjk = {
      "我们今天去公园散步，天气非常好。", "東京は日本の首都です。ひらがなとカタカナ。", "한국어 문장을 테스트합니다. 안녕하세요!",
      "中文标点：“引号”、（括号）《书名号》……", "漢字かな交じり文を書く。",
  };
  const std::vector<std::string> emoji = {
      "🙂", "🎉🎉", "👨‍👩‍👧‍👦", "🇯🇵🇫🇷", "👍🏽", "1️⃣", "❤️", "🦙🐢", "☃", "✓✗",
  };
  const std::vector<std::string> accented = {
      "café naïve über façade São Paulo Ångström Øresund ł ž",
      "cafe\xCC\x81 nai\xCC\x88ve u\xCC\x88" "ber",                          // decomposed (NFD) forms
      "\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB",                                 // Hangul jamo: NFC composes them
      "\xE2\x84\xAB \xE2\x84\xA6 \xEF\xAC\x81",                               // Å (U+212B) Ω (U+2126) ﬁ
      "Tiếng Việt có dấu: Nguyễn, người, được, ở đâu?",
      "Ελληνικά, русский язык, עברית, العربية, हिन्दी, ภาษาไทย",
  };
  const std::vector<std::string> specials = {
      "<|eot_id|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>user<|end_header_id|>",
      "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<|eot_id", "<|im_start|",
      "<<|eot_id|>|>", "x<|im_end|>y", " <|eot_id|> ", "<|reserved_special_token_5|>", "<tool_call>",
  };
  const std::vector<std::string> spaces = {" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t  \n",
                                           "\xC2\xA0", "\xE3\x80\x80", "\xE2\x80\xA8", "\v", "\f", "        "};
  std::mt19937 rng(12345);
  auto pick = [&](const std::vector<std::string>& v) -> const std::string& { return v[rng() % v.size()]; };
  auto digits = [&](int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s.push_back(static_cast<char>('0' + rng() % 10));
    return s;
  };
  std::vector<std::string> docs;
  size_t total = 0;
  auto add = [&](std::string d) {
    total += d.size();
    docs.push_back(std::move(d));
  };
  // A few whole chapters of prose first (where fetched), then the mixes.
  const std::string moby = moby_dick_chapters(6);
  for (size_t at = 0; at + 1 < moby.size();) {
    size_t end = std::min(moby.size(), at + 12000);
    while (end < moby.size() && (static_cast<uint8_t>(moby[end]) & 0xC0) == 0x80) ++end;  // a character boundary
    add(moby.substr(at, end - at));
    at = end;
  }
  add("");
  add(" ");
  add("\n");
  while (total < min_bytes) {
    std::string d;
    const int parts = 4 + static_cast<int>(rng() % 24);
    for (int k = 0; k < parts; ++k) {
      switch (rng() % 11) {
        case 0: d += pick(prose); break;
        case 1: d += pick(code); break;
        case 2: d += digits(1 + static_cast<int>(rng() % 40)); break;
        case 3: d += digits(3) + "," + digits(3) + "." + digits(2) + " " + digits(1) + "e-" + digits(2); break;
        case 4: d += pick(cjk); break;
        case 5: d += pick(emoji); break;
        case 6: d += pick(accented); break;
        case 7: d += pick(specials); break;
        case 8: {
          const int n = 1 + static_cast<int>(rng() % 4);
          for (int r = 0; r < n; ++r) d += pick(spaces);
          break;
        }
        case 9: {  // long words: the heap BPE path (> 48 bytes) and long runs
          const int n = 20 + static_cast<int>(rng() % 300);
          const std::string unit = rng() % 2 ? "ab" : rng() % 2 ? "語" : "Z";
          for (int r = 0; r < n; ++r) d += unit;
          break;
        }
        default: d += "pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism"; break;
      }
      d += pick(spaces).size() < 3 && rng() % 3 == 0 ? pick(spaces) : std::string(rng() % 2 ? " " : "");
    }
    add(std::move(d));
  }
  return docs;
}

struct JsResult {
  std::vector<std::vector<int32_t>> parse, literal;  // ids, special tokens parsed / literal
  std::vector<std::string> nfc;                      // each document in NFC
};

// Every document encoded by @huggingface/tokenizers.
JsResult js_encode(const std::string& name, const std::vector<std::string>& docs) {
  const fs::path dir = testing::temp_dir("lmtune-bl");
  {
    std::ofstream f(dir / "corpus.json", std::ios::binary);
    f << json(docs).dump();
  }
  const std::string cmd = "node " + (fs::path(LMTUNE_SOURCE_DIR) / "tests/reference/hf_tokenizers_encode.mjs").string() +
                          " " + testing::hf_tokenizers_js_dir().string() + " " +
                          testing::real_tokenizer_dir(name).string() + " " + (dir / "corpus.json").string() + " " +
                          (dir / "out.json").string();
  const auto r = testing::run_command(cmd);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::ifstream f(dir / "out.json");
  const json j = json::parse(f);
  return {j["parse"].get<std::vector<std::vector<int32_t>>>(), j["literal"].get<std::vector<std::vector<int32_t>>>(),
          j["nfc"].get<std::vector<std::string>>()};
}

// Parity on the corpus, special tokens parsed and literal. `normalizes`: the tokenizer has an
// NFC normalizer, so decode(encode(x)) is x in NFC (as in HF), else x itself.
void expect_parity_with_js(const std::string& name, bool normalizes) {
  REQUIRE_REAL(tok, name);
  if (testing::hf_tokenizers_js_dir().empty()) GTEST_SKIP() << "node or @huggingface/tokenizers missing";
  const std::vector<std::string> docs = make_corpus(200 * 1024);
  size_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();
  ASSERT_GE(bytes, 200u * 1024);
  const JsResult ref = js_encode(name, docs);
  ASSERT_EQ(ref.parse.size(), docs.size());
  ASSERT_EQ(ref.literal.size(), docs.size());
  ASSERT_EQ(ref.nfc.size(), docs.size());
  for (SpecialTokens mode : {SpecialTokens::parse, SpecialTokens::literal}) {
    const auto& want = mode == SpecialTokens::parse ? ref.parse : ref.literal;
    const char* mode_name = mode == SpecialTokens::parse ? "parsed" : "literal";
    size_t mismatches = 0, tokens = 0, special_tokens = 0, changed_by_nfc = 0;
    for (size_t i = 0; i < docs.size(); ++i) {
      const std::vector<int32_t> ids = tok->encode(docs[i], mode, AddBos::no);
      tokens += ids.size();
      for (int32_t id : ids) special_tokens += tok->kind(id) == Tokenizer::PieceKind::control;
      if (ids != want[i] && ++mismatches <= 3) {
        ADD_FAILURE() << name << " (special tokens " << mode_name << ") document " << i
                      << " differs from @huggingface/tokenizers: " << json(docs[i]).dump()
                      << "\n ours: " << json(ids).dump() << "\n  ref: " << json(want[i]).dump();
      }
      const std::string& expect_text = normalizes ? ref.nfc[i] : docs[i];
      changed_by_nfc += ref.nfc[i] != docs[i];
      ASSERT_EQ(tok->decode(ids), expect_text) << "decode(encode(x)) for document " << i;
    }
    EXPECT_EQ(mismatches, 0u) << "of " << docs.size() << " documents, special tokens " << mode_name;
    // The corpus did exercise what it is meant to.
    if (mode == SpecialTokens::parse) EXPECT_GT(special_tokens, 30u);
    else EXPECT_EQ(special_tokens, 0u);
    EXPECT_GT(changed_by_nfc, 10u);
    std::printf("%s, special tokens %s: %zu documents, %zu bytes, %zu tokens (%zu special) identical to "
                "@huggingface/tokenizers\n",
                name.c_str(), mode_name, docs.size(), bytes, tokens, special_tokens);
  }
}

TEST(ByteLevelParity, Llama3MatchesHfTokenizersJs) { expect_parity_with_js("llama3", false); }
TEST(ByteLevelParity, Qwen3MatchesHfTokenizersJs) { expect_parity_with_js("qwen3", true); }

// ---- fixed expectations ----

TEST(ByteLevel, Llama3KnownIdsAndTokenKinds) {
  REQUIRE_REAL(tok, "llama3");
  EXPECT_EQ(tok->family(), Tokenizer::Family::byte_level);
  EXPECT_EQ(tok->vocab_size(), 128256);
  EXPECT_EQ(tok->bos_id(), 128000);  // tokenizer_config.json: <|begin_of_text|>
  EXPECT_EQ(tok->eos_id(), 128001);  // <|end_of_text|>
  EXPECT_EQ(tok->eot_id(), 128009);  // <|eot_id|>
  // "Hello world<|eot_id|>": as @huggingface/tokenizers gives them (checked by hand with the
  // reference script).
  EXPECT_EQ(tok->encode("Hello world<|eot_id|>", AddBos::yes), (std::vector<int32_t>{128000, 9906, 1917, 128009}));
  EXPECT_EQ(tok->piece(1917), "\xC4\xA0world");  // "Ġworld"
  EXPECT_EQ(tok->kind(128009), Tokenizer::PieceKind::control);
  EXPECT_EQ(tok->kind(1917), Tokenizer::PieceKind::normal);
  EXPECT_EQ(tok->decode(std::vector<int32_t>{128000, 9906, 1917, 128009}), "<|begin_of_text|>Hello world<|eot_id|>");
  // Literal: the special token's spelling is text.
  const auto lit = tok->encode("<|eot_id|>", SpecialTokens::literal, AddBos::no);
  EXPECT_GT(lit.size(), 1u);
  for (int32_t id : lit) EXPECT_LT(id, 128000);
  EXPECT_EQ(tok->decode(lit), "<|eot_id|>");
}

TEST(ByteLevel, Qwen3HasNoBosAndNormalisesToNfc) {
  REQUIRE_REAL(tok, "qwen3");
  EXPECT_EQ(tok->bos_id(), -1);      // bos_token: null
  EXPECT_EQ(tok->eos_id(), 151645);  // <|im_end|>
  EXPECT_EQ(tok->eot_id(), 151645);
  EXPECT_EQ(tok->encode("hi", AddBos::yes), tok->encode("hi", AddBos::no));  // nothing to add
  EXPECT_EQ(tok->kind(151667), Tokenizer::PieceKind::user_defined);          // <think>: added, not special
  // "é" decomposed and precomposed encode the same (NFC first); "ﬁ" is left alone (NFKC would not).
  EXPECT_EQ(tok->encode("caf\x65\xCC\x81", AddBos::no), tok->encode("caf\xC3\xA9", AddBos::no));
  EXPECT_EQ(tok->decode(tok->encode("caf\x65\xCC\x81", AddBos::no)), "caf\xC3\xA9");  // NFC is not undone
  // <think> is matched even with literal specials (it is not a control token).
  EXPECT_EQ(tok->encode("<think>", SpecialTokens::literal, AddBos::no), (std::vector<int32_t>{151667}));
}

// ---- invalid UTF-8 and long words ----

TEST(ByteLevel, InvalidUtf8IsEncodedByteExactly) {
  for (const char* name : {"llama3", "qwen3"}) {
    REQUIRE_REAL(tok, name);
    const std::vector<std::string> bad = {
        "\xFF", "\x80\x80", "abc\xC3", "\xC3(", "\xE2\x82", "ok \xF0\x9F\x98 emoji cut", "\xED\xA0\x80 surrogate",
        "\xC0\xAF overlong", "\xF5\x80\x80\x80 beyond", "mixed \xFF\xFE text\x80\n\n\xC2",
    };
    for (const std::string& x : bad) {
      const auto ids = tok->encode(x, AddBos::no);
      EXPECT_EQ(tok->decode(ids), x) << name;
      // HF's byte-level alphabet: the tokens' spellings, joined, are the input's bytes spelled
      // one character per byte.
      std::string spelled;
      for (int32_t id : ids) spelled += tok->piece(id);
      EXPECT_EQ(spelled, byte_level_spelling(x)) << name;
    }
    // Text around an invalid byte encodes as each side does alone: the byte is a piece of its own.
    const std::string a = "Hello there, ", b = "world 123";
    std::vector<int32_t> expect = tok->encode(a, AddBos::no);
    tok->byte_level()->encode_word("\xFF\xFE", expect);
    const auto bb = tok->encode(b, AddBos::no);
    expect.insert(expect.end(), bb.begin(), bb.end());
    EXPECT_EQ(tok->encode(a + "\xFF\xFE" + b, AddBos::no), expect) << name;
    // A lone invalid byte is its byte token: 0xFF is "ÿ" in the alphabet.
    EXPECT_EQ(tok->encode("\xFF", AddBos::no), (std::vector<int32_t>{tok->piece_id("\xC3\xBF")})) << name;
  }
}

TEST(ByteLevel, OverlongWordsAreEncodedInBoundedWindows) {
  REQUIRE_REAL(tok, "llama3");
  // One \p{L}+ piece of 2.5 windows: encoded window by window (bounded work), exactly as the
  // windows would be on their own, and still decoded back exactly.
  std::string word;
  while (word.size() < 2 * kMaxWordBytes + kMaxWordBytes / 2) word += "abcdefghij";
  const auto ids = tok->encode(word, AddBos::no);
  std::vector<int32_t> expect;
  for (size_t at = 0; at < word.size(); at += kMaxWordBytes) tok->byte_level()->encode_word(word.substr(at, kMaxWordBytes), expect);
  EXPECT_EQ(ids, expect);
  EXPECT_EQ(tok->decode(ids), word);
  // Multi-byte characters are never cut: windows end on a character boundary.
  std::string cjk;
  while (cjk.size() < kMaxWordBytes + 100) cjk += "語";  // 3 bytes; kMaxWordBytes is not a multiple of 3
  const size_t window = kMaxWordBytes / 3 * 3;
  std::vector<int32_t> expect_cjk;
  tok->byte_level()->encode_word(cjk.substr(0, window), expect_cjk);
  tok->byte_level()->encode_word(cjk.substr(window), expect_cjk);
  EXPECT_EQ(tok->encode(cjk, AddBos::no), expect_cjk);
  EXPECT_EQ(tok->decode(expect_cjk), cjk);
}

TEST(ByteLevel, EncodePartsIsOneTextWithPerPartSpecials) {
  REQUIRE_REAL(tok, "llama3");
  // Markup parses specials, content does not; the parts are one text for the pre-tokenizer.
  const std::vector<TextPart> parts = {{"<|start_header_id|>user<|end_header_id|>\n\n", SpecialTokens::parse},
                                       {"Say <|eot_id|> 12", SpecialTokens::literal},
                                       {"345<|eot_id|>", SpecialTokens::parse}};
  std::vector<int32_t> ids;
  std::vector<uint32_t> part_of;
  tok->encode_parts(parts, ids, &part_of);
  ASSERT_EQ(ids.size(), part_of.size());
  // Same ids as one text in which only the content's special spelling is literal: the digits
  // "12345" straddle the parts and are split 3+2 as one number.
  std::vector<int32_t> expect = tok->encode("<|start_header_id|>user<|end_header_id|>\n\n", AddBos::no);
  const auto mid = tok->encode("Say <|eot_id|> 12345", SpecialTokens::literal, AddBos::no);
  expect.insert(expect.end(), mid.begin(), mid.end());
  expect.push_back(tok->eot_id());
  EXPECT_EQ(ids, expect);
  EXPECT_EQ(tok->decode(ids), "<|start_header_id|>user<|end_header_id|>\n\nSay <|eot_id|> 12345<|eot_id|>");
  // Each id belongs to the part its first byte is in: "123" starts in part 1, "45" in part 2.
  EXPECT_EQ(part_of.front(), 0u);
  EXPECT_EQ(part_of.back(), 2u);
  EXPECT_EQ(tok->piece(ids[ids.size() - 2]), "45");
  EXPECT_EQ(part_of[ids.size() - 2], 2u);
  EXPECT_EQ(tok->piece(ids[ids.size() - 3]), "123");
  EXPECT_EQ(part_of[ids.size() - 3], 1u);
}

// ---- a synthetic tokenizer.json: added-token options and what is refused ----

// The 256 bytes (ids 0-255, spelled in the byte-level alphabet), "hi" (256) and three added
// tokens: <L> (special, lstrip), <R> (special, rstrip), <W> (plain, single_word); GPT-2's
// pre-tokenizer (ByteLevel with use_regex).
json synthetic_tokenizer() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_spelling(std::string(1, static_cast<char>(b)))] = b;
  vocab["hi"] = 256;
  json j;
  j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"h i"})}};
  j["added_tokens"] = {{{"id", 257}, {"content", "<L>"}, {"special", true}, {"lstrip", true}},
                       {{"id", 258}, {"content", "<R>"}, {"special", true}, {"rstrip", true}},
                       {{"id", 259}, {"content", "<W>"}, {"special", false}, {"single_word", true}}};
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"}};
  return j;
}

Tokenizer load_json(const json& j) {
  const fs::path p = testing::temp_dir("lmtune-bl-json") / "tokenizer.json";
  std::ofstream(p) << j.dump();
  return Tokenizer::from_hf_json(p);
}

// Expected ids derived by hand from HF's rules (AddedVocabulary: lstrip/rstrip take the
// adjacent whitespace, single_word needs no alphanumeric neighbour).
TEST(ByteLevel, AddedTokenOptionsAsHfDefinesThem) {
  const Tokenizer t = load_json(synthetic_tokenizer());
  EXPECT_EQ(t.family(), Tokenizer::Family::byte_level);
  EXPECT_EQ(t.encode("hi", AddBos::no), (std::vector<int32_t>{256}));
  EXPECT_EQ(t.encode("a <L>b", AddBos::no), (std::vector<int32_t>{'a', 257, 'b'}));       // the space goes
  EXPECT_EQ(t.encode("x<R>  y", AddBos::no), (std::vector<int32_t>{'x', 258, 'y'}));      // both spaces go
  EXPECT_EQ(t.encode(" <W> ", AddBos::no), (std::vector<int32_t>{' ', 259, ' '}));        // a word of its own
  EXPECT_EQ(t.encode("a<W>", AddBos::no), (std::vector<int32_t>{'a', '<', 'W', '>'}));    // inside a word: text
  EXPECT_EQ(t.encode("<L>", SpecialTokens::literal, AddBos::no), (std::vector<int32_t>{'<', 'L', '>'}));
  EXPECT_EQ(t.encode("<W>", SpecialTokens::literal, AddBos::no), (std::vector<int32_t>{259}));  // not special
  EXPECT_EQ(t.kind(257), Tokenizer::PieceKind::control);
  EXPECT_EQ(t.kind(259), Tokenizer::PieceKind::user_defined);
  EXPECT_EQ(t.bos_id(), -1);  // no post-processor, no tokenizer_config.json
}

TEST(ByteLevel, RefusesWhatItWouldNotReproduce) {
  auto expect_refused = [](const json& j, std::initializer_list<std::string> parts) {
    try {
      load_json(j);
      ADD_FAILURE() << "no error for " << j.dump().substr(0, 200);
    } catch (const Error& e) {
      for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  json j = synthetic_tokenizer();
  j["normalizer"] = {{"type", "Lowercase"}};
  expect_refused(j, {"tokenizer.json", "normalizer 'Lowercase' is not supported"});
  j = synthetic_tokenizer();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", json::array({{{"type", "Digits"}}, {{"type", "ByteLevel"}}})}};
  expect_refused(j, {"'Digits' is not supported"});
  j = synthetic_tokenizer();
  j["decoder"] = {{"type", "Replace"}};
  expect_refused(j, {"decoder 'Replace' is not supported"});
  j = synthetic_tokenizer();
  j["model"]["vocab"].erase(byte_level_spelling("\n"));
  j["model"]["vocab"]["hh"] = 10;  // keep the ids dense
  expect_refused(j, {"no token for byte 0xa"});
  j = synthetic_tokenizer();
  j["model"]["vocab"]["\xE2\x82\xAC"] = 260;  // "€": not a character of the byte-level alphabet
  expect_refused(j, {"'\xE2\x82\xAC' (id 260) is not spelled in the byte-level alphabet"});
  j = synthetic_tokenizer();
  j["model"]["merges"] = json::array({"h x"});
  expect_refused(j, {"merge 0", "'hx' which is not in the vocabulary"});
  j = synthetic_tokenizer();
  j["model"]["dropout"] = 0.1;
  expect_refused(j, {"model.dropout 0.1"});
}

// ---- the pre-tokenizer regex on its own ----

TEST(SplitRegex, WhitespaceMeansUnicodeWhiteSpace) {
  // \s is rewritten to the White_Space set inside and outside brackets; \S to its complement.
  const std::string p = rewrite_hf_regex_for_pcre2("[^\\s\\p{L}]+|\\s+(?!\\S)", "test");
  EXPECT_EQ(p.find("\\s"), std::string::npos);
  EXPECT_EQ(p.find("\\S"), std::string::npos);
  const SplitRegex re("\\s+|\\S+", "test");
  std::vector<std::string> pieces;
  const std::string text = "a\xE1\xA0\x8E" "b\xC2\x85" "c";  // U+180E is not White_Space; U+0085 is
  re.split(text, [&](size_t b, size_t e) { pieces.push_back(text.substr(b, e - b)); });
  EXPECT_EQ(pieces, (std::vector<std::string>{"a\xE1\xA0\x8E" "b", "\xC2\x85", "c"}));
  // Invalid bytes never match: they become pieces between matches.
  const SplitRegex letters("\\p{L}+", "test");
  pieces.clear();
  const std::string bad = "ab\xFF\xFE" "cd";
  letters.split(bad, [&](size_t b, size_t e) { pieces.push_back(bad.substr(b, e - b)); });
  EXPECT_EQ(pieces, (std::vector<std::string>{"ab", "\xFF\xFE", "cd"}));
  try {
    SplitRegex("(unclosed", "tokenizer.json x: pre_tokenizer pattern");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json x"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lmtune
