#include "trainer/data/tokenizer.h"

#include "trainer/data/byte_level_bpe.h"  // kMaxWordBytes

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "io/io_test_util.h"

namespace lmtune {
namespace {

using test::expect_error;
using test::TempDir;

// ---- an independent brute-force reference: reads tokenizer.bin itself, works on
// std::string pieces in llama2.c's spelling (' ' for the space symbol), and merges with a
// naive O(n^2) loop: the adjacent pair whose concatenation has the highest score, leftmost
// on ties. ----
struct RefVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::unordered_map<std::string, int> ids;  // normal pieces (id >= 259) only
};

RefVocab load_ref_vocab(const std::string& bytes) {
  RefVocab v;
  size_t off = 4;
  while (off < bytes.size()) {
    float score;
    int32_t len;
    std::memcpy(&score, bytes.data() + off, 4);
    std::memcpy(&len, bytes.data() + off + 4, 4);
    off += 8;
    v.pieces.push_back(bytes.substr(off, static_cast<size_t>(len)));
    v.scores.push_back(score);
    off += static_cast<size_t>(len);
  }
  for (size_t i = 259; i < v.pieces.size(); ++i) v.ids.emplace(v.pieces[i], static_cast<int>(i));
  return v;
}

std::vector<int32_t> ref_encode(const RefVocab& v, const std::string& text) {
  std::vector<int32_t> out{1};
  if (text.empty()) return out;
  const std::string s = " " + text;
  std::vector<std::string> sym;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<uint8_t>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
    sym.push_back(s.substr(i, n));
    i += n;
  }
  while (true) {
    float best = -std::numeric_limits<float>::infinity();
    int at = -1;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = v.ids.find(sym[i] + sym[i + 1]);
      if (it != v.ids.end() && v.scores[it->second] > best) {
        best = v.scores[it->second];
        at = static_cast<int>(i);
      }
    }
    if (at < 0) break;
    sym[at] += sym[at + 1];
    sym.erase(sym.begin() + at + 1);
  }
  for (const auto& p : sym) {
    auto it = v.ids.find(p);
    if (it != v.ids.end()) {
      out.push_back(it->second);
    } else {
      for (char ch : p) out.push_back(3 + static_cast<uint8_t>(ch));
    }
  }
  return out;
}

const std::vector<std::string>& paragraphs() {
  static const std::vector<std::string> p = {
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine. "
      "One day, she saw a big, red ball in the park. \"Can I play with it?\" she asked her mom.",
      "Tom and Sue were best friends. They liked to build castles with blocks... But one day, Tom's castle fell "
      "down! He was very sad and cried: \"Why?\" Sue hugged him and said, \"We can build it again, together.\"",
      "Numbers 12345 and 3.14159, symbols #@$%^&*()_+-=[]{}|;:'<>,.?/~` and  double  spaces,\ttabs\tand\n"
      "new lines\n\nwith trailing space ",
      "Unicode: caf\xC3\xA9, na\xC3\xAFve, \xC3\xBC" "ber, \xE4\xB8\xAD\xE6\x96\x87 \xE6\x97\xA5\xE6\x9C\xAC"
      "\xE8\xAA\x9E, emoji \xF0\x9F\x99\x82\xF0\x9F\x8E\x89, \xCE\xB1\xCE\xB2\xCE\xB3 and \xD0\xBF\xD1\x80"
      "\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82.",
      "   leading spaces and the word antidisestablishmentarianism, supercalifragilisticexpialidocious!!!",
  };
  return p;
}

std::string stories_tokenizer_bin() { return (test::stories_dir() / "tokenizer.bin").string(); }

#define REQUIRE_STORIES()                                                         \
  if (!test::have_stories()) GTEST_SKIP() << "models/stories15M is missing (run scripts/fetch_model.sh)"

TEST(Tokenizer, StoriesAcceptance) {
  REQUIRE_STORIES();
  const Tokenizer t = Tokenizer::from_llama2c(stories_tokenizer_bin(), 32000);
  EXPECT_EQ(t.vocab_size(), 32000);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_EQ(t.encode("Once upon a time", AddBos::yes), (std::vector<int32_t>{1, 9038, 2501, 263, 931}));
  EXPECT_EQ(t.encode("Once upon a time", AddBos::no, AddEos::yes), (std::vector<int32_t>{9038, 2501, 263, 931, 2}));
  EXPECT_EQ(t.encode("", AddBos::yes), (std::vector<int32_t>{1}));
  EXPECT_EQ(t.piece(9038), "\xE2\x96\x81Once");
  EXPECT_EQ(t.piece(13), "<0x0A>");
  EXPECT_EQ(t.piece(1), "<s>");
  EXPECT_EQ(t.kind(13), Tokenizer::PieceKind::byte);
  EXPECT_FLOAT_EQ(t.score(9038), -8779.0f);
  EXPECT_EQ(t.encode("\n", AddBos::no), (std::vector<int32_t>{29871, 13}));
  EXPECT_EQ(t.decode(std::vector<int32_t>{1, 9038, 2501, 263, 931, 2}), "Once upon a time");
}

TEST(Tokenizer, StoriesMatchesBruteForceReference) {
  REQUIRE_STORIES();
  const Tokenizer t = Tokenizer::from_llama2c(stories_tokenizer_bin(), 32000);
  const RefVocab ref = load_ref_vocab(test::read_bytes(stories_tokenizer_bin()));
  ASSERT_EQ(ref.pieces.size(), 32000u);
  for (const auto& p : paragraphs()) EXPECT_EQ(t.encode(p, AddBos::yes), ref_encode(ref, p)) << p;
  std::string all;
  for (const auto& p : paragraphs()) all += p + "\n";
  EXPECT_EQ(t.encode(all, AddBos::yes), ref_encode(ref, all));
}

TEST(Tokenizer, HfJsonRoundTripEncodesTheSame) {
  REQUIRE_STORIES();
  TempDir dir;
  const Tokenizer t = Tokenizer::from_llama2c(stories_tokenizer_bin(), 32000);
  t.save_hf_json(dir / "tokenizer.json");
  const Tokenizer h = Tokenizer::from_model_dir(dir.path());
  EXPECT_EQ(h.merge_mode(), Tokenizer::MergeMode::rank);
  EXPECT_EQ(h.vocab_size(), 32000);
  EXPECT_EQ(h.bos_id(), 1);
  EXPECT_EQ(h.eos_id(), 2);
  EXPECT_EQ(h.encode("Once upon a time", AddBos::yes), (std::vector<int32_t>{1, 9038, 2501, 263, 931}));
  for (int32_t i = 0; i < 32000; ++i) ASSERT_EQ(h.piece(i), t.piece(i)) << i;
  for (const auto& p : paragraphs()) {
    EXPECT_EQ(h.encode(p, AddBos::yes), t.encode(p, AddBos::yes)) << p;
    EXPECT_EQ(h.decode(h.encode(p, AddBos::yes)), p);
  }

  // The file's shape, as LlamaTokenizerFast expects it.
  const auto j = nlohmann::json::parse(test::read_bytes(dir / "tokenizer.json"));
  const auto& m = j["model"];
  EXPECT_EQ(m["type"], "BPE");
  EXPECT_EQ(m["byte_fallback"], true);
  EXPECT_EQ(m["fuse_unk"], true);
  EXPECT_EQ(m["unk_token"], "<unk>");
  EXPECT_EQ(m["vocab"].size(), 32000u);
  EXPECT_EQ(m["vocab"]["<unk>"], 0);
  EXPECT_EQ(m["vocab"]["<s>"], 1);
  EXPECT_EQ(m["vocab"]["</s>"], 2);
  EXPECT_EQ(m["vocab"]["<0x00>"], 3);
  EXPECT_EQ(m["vocab"]["<0x0A>"], 13);
  EXPECT_EQ(m["vocab"]["<0xFF>"], 258);
  EXPECT_EQ(m["vocab"]["\xE2\x96\x81Once"], 9038);
  ASSERT_TRUE(m["merges"].is_array());
  ASSERT_GT(m["merges"].size(), 30000u);
  EXPECT_EQ(m["merges"][0], "\xE2\x96\x81 t");  // '▁t' has the best score of all normal pieces (-1)
  ASSERT_EQ(j["added_tokens"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(j["added_tokens"][i]["id"], i);
    EXPECT_EQ(j["added_tokens"][i]["special"], true);
  }
  EXPECT_EQ(j["normalizer"]["type"], "Sequence");
  EXPECT_EQ(j["normalizer"]["normalizers"][0]["type"], "Prepend");
  EXPECT_EQ(j["normalizer"]["normalizers"][1]["type"], "Replace");
  EXPECT_TRUE(j["pre_tokenizer"].is_null());
  std::vector<std::string> dec;
  for (const auto& d : j["decoder"]["decoders"]) dec.push_back(d["type"]);
  EXPECT_EQ(dec, (std::vector<std::string>{"Replace", "ByteFallback", "Fuse", "Strip"}));
  EXPECT_EQ(j["post_processor"]["type"], "TemplateProcessing");
  EXPECT_EQ(j["post_processor"]["special_tokens"]["<s>"]["ids"][0], 1);

  // The newer merges format, ["a", "b"] pairs, reads the same.
  auto j2 = j;
  for (auto& mg : j2["model"]["merges"]) {
    const std::string s = mg.get<std::string>();
    const size_t sp = s.find(' ');
    mg = nlohmann::json::array({s.substr(0, sp), s.substr(sp + 1)});
  }
  test::write_bytes(dir / "pairs.json", j2.dump());
  const Tokenizer h2 = Tokenizer::from_hf_json(dir / "pairs.json");
  for (const auto& p : paragraphs()) EXPECT_EQ(h2.encode(p, AddBos::yes), t.encode(p, AddBos::yes)) << p;
}

TEST(Tokenizer, DecodeRoundTripsUtf8) {
  REQUIRE_STORIES();
  const Tokenizer t = Tokenizer::from_llama2c(stories_tokenizer_bin(), 32000);
  std::vector<std::string> texts = paragraphs();
  texts.push_back("");
  texts.push_back(" ");
  texts.push_back("\n\nstarts with newlines\tand\ttabs\r\n");
  texts.push_back("\xF0\x9F\xA6\x99\xF0\x9F\x90\xA2 emoji only \xF0\x9F\x98\x80");
  texts.push_back("x  y   z    w");
  for (const auto& s : texts) {
    const auto ids = t.encode(s, AddBos::yes);
    EXPECT_EQ(t.decode(ids), s);
    // Streaming decode gives the same text.
    std::string streamed;
    int32_t prev = -1;
    for (int32_t id : ids) {
      streamed += t.decode_token(prev, id);
      prev = id;
    }
    EXPECT_EQ(streamed, s);
  }
  // An emoji outside the vocabulary goes through byte fallback: <0xF0> = 3 + 0xF0.
  const auto ids = t.encode("\xF0\x9F\xA6\x99", AddBos::no);
  ASSERT_EQ(ids.size(), 5u);  // "▁" + 4 bytes
  EXPECT_EQ(ids[1], 3 + 0xF0);
  EXPECT_EQ(ids[4], 3 + 0x99);
  // A lone invalid byte decodes to U+FFFD.
  EXPECT_EQ(t.decode(std::vector<int32_t>{3 + 0xF0}), "\xEF\xBF\xBD");
}

TEST(Tokenizer, EncodeOneMegabyteIsFast) {
  REQUIRE_STORIES();
  const Tokenizer t = Tokenizer::from_llama2c(stories_tokenizer_bin(), 32000);
  std::string text;
  while (text.size() < (1u << 20))
    for (const auto& p : paragraphs()) text += p + "\n";
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = t.encode(text, AddBos::yes);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("encode of %zu bytes: %zu tokens in %.3f s\n", text.size(), ids.size(), s);
  EXPECT_LT(s, 1.0);
  EXPECT_EQ(t.decode(ids), text);
}

// Without the model: a small synthetic tokenizer.bin checked against the reference.
TEST(Tokenizer, SyntheticVocabMatchesReference) {
  TempDir dir;
  const std::vector<std::pair<std::string, float>> extra = {
      {" t", -1}, {"he", -2}, {" the", -3}, {"in", -4}, {" a", -5}, {"an", -6}, {"nd", -7}, {" and", -8},
      {"ing", -9}, {" th", -10}, {"er", -11}, {" ", -100}, {"t", -200}, {"h", -201}, {"e", -202}, {"a", -203},
      {"n", -204}, {"d", -205}, {"i", -206}, {"g", -207}, {"r", -208}, {"  ", -1e9f}};
  const auto p = dir / "tokenizer.bin";
  const std::string bin = test::make_tokenizer_bin(extra);
  test::write_bytes(p, bin);
  const Tokenizer t = Tokenizer::from_llama2c(p);
  EXPECT_EQ(t.vocab_size(), 259 + static_cast<int32_t>(extra.size()));
  const RefVocab ref = load_ref_vocab(bin);
  for (const std::string s : {"the end and the ring", "then  there in a hand", "xyz \xC3\xA9t\xC3\xA9", "and"}) {
    EXPECT_EQ(t.encode(s, AddBos::yes), ref_encode(ref, s)) << s;
    EXPECT_EQ(t.decode(t.encode(s, AddBos::yes)), s);
  }
  EXPECT_EQ(t.encode("the", AddBos::no), (std::vector<int32_t>{t.piece_id("\xE2\x96\x81the")}));
}

// A segment longer than kMaxWordBytes (text in which every adjacent pair occurs in some piece,
// so nothing cuts it) is encoded in windows of kMaxWordBytes: bounded memory and time per
// word. With "aa" the best merge, "▁" + 40960 a's would be "▁" and 20480 "aa" unwindowed;
// in windows of 16384 bytes the first (3 bytes of "▁", 16381 a's) and the last keep one "a".
TEST(Tokenizer, LongSegmentIsEncodedInBoundedWindows) {
  TempDir dir;
  const auto p = dir / "tokenizer.bin";
  test::write_bytes(p, test::make_tokenizer_bin({{"aa", -1}, {" a", -5}, {"a", -10}, {" ", -20}}));
  const Tokenizer t = Tokenizer::from_llama2c(p);
  const int32_t aa = t.piece_id("aa"), a1 = t.piece_id("a"), sp = t.piece_id("\xE2\x96\x81");
  ASSERT_GE(aa, 0);
  ASSERT_GE(sp, 0);
  ASSERT_EQ(kMaxWordBytes, 16384u);
  const std::string text(2 * kMaxWordBytes + kMaxWordBytes / 2, 'a');
  const auto ids = t.encode(text, AddBos::no);
  std::vector<int32_t> expect = {sp};
  expect.insert(expect.end(), 8190, aa);  // window 1: "▁" + 16381 a's
  expect.push_back(a1);
  expect.insert(expect.end(), 8192, aa);  // window 2: 16384 a's
  expect.insert(expect.end(), 4097, aa);  // window 3: the last 8195
  expect.push_back(a1);
  EXPECT_EQ(ids, expect);
  EXPECT_EQ(t.decode(ids), text);
}

// tokenizer.json path with a merge over byte-fallback tokens (as HF allows): unknown
// characters become <0xNN> before merging, and such merges apply.
TEST(Tokenizer, HfJsonMergesOverByteTokens) {
  TempDir dir;
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    vocab[buf] = 3 + b;
  }
  const std::string sp = "\xE2\x96\x81";
  vocab[sp] = 259;
  vocab["a"] = 260;
  vocab["b"] = 261;
  vocab["ab"] = 262;
  vocab[sp + "ab"] = 263;
  vocab["<0x41><0x42>"] = 264;
  nlohmann::ordered_json j;
  j["added_tokens"] = {{{"id", 0}, {"content", "<unk>"}, {"special", true}},
                       {{"id", 1}, {"content", "<s>"}, {"special", true}},
                       {{"id", 2}, {"content", "</s>"}, {"special", true}}};
  nlohmann::ordered_json prepend = {{"type", "Prepend"}, {"prepend", sp}};
  nlohmann::ordered_json replace = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", sp}};
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", nlohmann::ordered_json::array({prepend, replace})}};
  j["model"] = {{"type", "BPE"}, {"byte_fallback", true}, {"fuse_unk", true}, {"unk_token", "<unk>"},
                {"vocab", vocab}, {"merges", nlohmann::ordered_json::array({"a b", sp + " ab", "<0x41> <0x42>"})}};
  test::write_bytes(dir / "tokenizer.json", j.dump());
  const Tokenizer t = Tokenizer::from_hf_json(dir / "tokenizer.json");
  EXPECT_EQ(t.encode("ab AB", AddBos::yes), (std::vector<int32_t>{1, 263, 259, 264}));
  EXPECT_EQ(t.encode("abC", AddBos::no), (std::vector<int32_t>{263, 3 + 'C'}));
  EXPECT_EQ(t.decode(std::vector<int32_t>{1, 263, 259, 3 + 'A', 3 + 'B'}), "ab AB");
  EXPECT_FLOAT_EQ(t.score(262), -1.0f);  // first merge producing it
}

// ---- bad inputs ----

TEST(TokenizerErrors, WordPieceJson) {
  TempDir dir;
  const auto p = dir / "tokenizer.json";
  test::write_bytes(p, R"({"version": "1.0", "model": {"type": "WordPiece", "unk_token": "[UNK]",
                          "vocab": {"[UNK]": 0, "hello": 1}}})");
  expect_error([&] { Tokenizer::from_hf_json(p); }, {p.string(), "model type 'WordPiece'", "not supported"});
  test::write_bytes(p, R"({"model": {"type": "Unigram", "vocab": [["<unk>", 0.0]]}})");
  expect_error([&] { Tokenizer::from_model_dir(dir.path()); }, {p.string(), "'Unigram'"});
}

TEST(TokenizerErrors, ByteLevelBpeJson) {
  TempDir dir;
  const auto p = dir / "tokenizer.json";
  test::write_bytes(p, R"({"model": {"type": "BPE", "byte_fallback": false, "vocab": {"a": 0}, "merges": []}})");
  expect_error([&] { Tokenizer::from_hf_json(p); }, {p.string(), "without byte_fallback"});
}

TEST(TokenizerErrors, TruncatedTokenizerBin) {
  TempDir dir;
  const auto p = dir / "tokenizer.bin";
  const std::string bin = test::make_tokenizer_bin({{" hello", -1}, {" world", -2}});
  test::write_bytes(p, bin.substr(0, bin.size() - 3));
  expect_error([&] { Tokenizer::from_llama2c(p, 261); }, {p.string(), "truncated at token 260 of 261"});
  test::write_bytes(p, bin.substr(0, 2));
  expect_error([&] { Tokenizer::from_llama2c(p, 261); }, {p.string(), "truncated"});
  test::write_bytes(p, bin);
  expect_error([&] { Tokenizer::from_llama2c(p, 262); }, {p.string(), "truncated at token 261 of 262"});
  expect_error([&] { Tokenizer::from_llama2c(p, 260); }, {p.string(), "bytes left after the 260 tokens"});
  EXPECT_EQ(Tokenizer::from_llama2c(p, 261).vocab_size(), 261);
}

TEST(TokenizerErrors, MergeOutsideVocab) {
  TempDir dir;
  const auto p = dir / "tokenizer.json";
  test::write_bytes(p, R"({"model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
                          "vocab": {"<unk>": 0, "a": 1, "b": 2}, "merges": ["a b"]}})");
  expect_error([&] { Tokenizer::from_hf_json(p); }, {p.string(), "merge 0", "'ab'", "not in the vocabulary"});
}

}  // namespace
}  // namespace lmtune
