// The data pipeline: documents, masks, packing, shuffling, the resumable loader, splits and
// the errors a malformed dataset must give (file and line named).
#include "trainer/data/dataset.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/test_models.h"
#include "trainer/core/error.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

// The real stories15M tokenizer, loaded once; nullptr when models/ was not fetched.
const Tokenizer* real_tokenizer() {
  static const Tokenizer* tok = []() -> const Tokenizer* {
    const fs::path dir = testing::stories15m_llama2c_dir();
    if (dir.empty()) return nullptr;
    return new Tokenizer(Tokenizer::from_llama2c(dir / "tokenizer.bin"));
  }();
  return tok;
}

#define REQUIRE_TOKENIZER(tok)                                                            \
  const Tokenizer* tok = real_tokenizer();                                                \
  if (tok == nullptr) GTEST_SKIP() << "models/stories15M not fetched (scripts/fetch_model.sh)"

std::string write_file(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  std::ofstream f(path, std::ios::binary);
  f << content;
  return path.string();
}

std::vector<int32_t> concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Expects `fn` to throw lmtune::Error whose message contains every one of `needles`.
template <typename Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> needles) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

DataOptions jsonl_options(DataFormat format) {
  DataOptions o;
  o.format = format;
  return o;
}

// Reads `content` as a JSONL file of `format`; returns the file's path for the checks.
std::vector<Document> read_jsonl(const std::string& name, const std::string& content, DataFormat format,
                                 std::string* path_out = nullptr) {
  const std::string path = write_file(testing::temp_dir("lmtune-data") / name, content);
  if (path_out) *path_out = path;
  return read_documents({path}, jsonl_options(format));
}

// ---- shuffling ----

TEST(ShuffledOrder, IsADeterministicPermutationThatDependsOnTheSeed) {
  const auto a = shuffled_order(1000, 7);
  EXPECT_EQ(a, shuffled_order(1000, 7));
  EXPECT_NE(a, shuffled_order(1000, 8));
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_TRUE(shuffled_order(0, 1).empty());
  EXPECT_EQ(shuffled_order(1, 1), std::vector<int64_t>{0});
}

TEST(ShuffledOrder, IsTheSameWithEveryStandardLibrary) {
  // std::mt19937_64's output is fixed by the standard and the Fisher–Yates is our own, so
  // this golden order (checked against an independent Python mt19937_64) holds with
  // libstdc++, libc++ and MSVC alike.
  EXPECT_EQ(shuffled_order(10, 42), (std::vector<int64_t>{1, 7, 9, 0, 3, 8, 4, 2, 5, 6}));
}

// ---- packing ----

Example make_example(std::vector<int32_t> tokens, std::vector<uint8_t> mask) { return Example{tokens, mask}; }

TEST(PackedDataset, PackingCutsOneStreamIntoOverlappingRows) {
  // stream: 1 10 11 12 2 | 1 20 21 2   (1 = BOS, mask 0; 2 = EOS)
  const std::vector<Example> ex = {make_example({1, 10, 11, 12, 2}, {0, 1, 1, 1, 1}),
                                   make_example({1, 20, 21, 2}, {0, 1, 1, 1})};
  const auto ds = PackedDataset::build(ex, 3, Packing::on, Shuffle::off, /*pad_id=*/2);
  ASSERT_EQ(ds.num_rows(), 3);
  auto row = [&](int64_t r) {
    return std::pair{std::vector<int32_t>(ds.inputs(r).begin(), ds.inputs(r).end()),
                     std::vector<int32_t>(ds.targets(r).begin(), ds.targets(r).end())};
  };
  EXPECT_EQ(row(0).first, (std::vector<int32_t>{1, 10, 11}));
  EXPECT_EQ(row(0).second, (std::vector<int32_t>{10, 11, 12}));
  EXPECT_EQ(row(1).first, (std::vector<int32_t>{12, 2, 1}));
  EXPECT_EQ(row(1).second, (std::vector<int32_t>{2, -1, 20}));  // BOS is never a target
  EXPECT_EQ(row(2).first, (std::vector<int32_t>{20, 21, 2}));
  EXPECT_EQ(row(2).second, (std::vector<int32_t>{21, 2, -1}));  // padding
  EXPECT_EQ(ds.stats().targets, 7);
  EXPECT_EQ(ds.stats().tokens, 9);
}

TEST(PackedDataset, PackingLosesNoTrainedTokenAndShiftsTargetsByOne) {
  std::mt19937_64 rng(3);
  std::vector<Example> ex;
  std::vector<int32_t> stream;
  std::vector<uint8_t> mask;
  for (int i = 0; i < 50; ++i) {
    Example e;
    const int n = 1 + static_cast<int>(rng() % 40);
    for (int j = 0; j < n; ++j) {
      e.tokens.push_back(static_cast<int32_t>(3 + rng() % 1000));
      e.train_mask.push_back(static_cast<uint8_t>(rng() % 3 != 0));
    }
    stream.insert(stream.end(), e.tokens.begin(), e.tokens.end());
    mask.insert(mask.end(), e.train_mask.begin(), e.train_mask.end());
    ex.push_back(std::move(e));
  }
  for (int64_t T : {1, 7, 16, 64}) {
    SCOPED_TRACE("T = " + std::to_string(T));
    const auto ds = PackedDataset::build(ex, T, Packing::on, Shuffle::off, 0);
    // Every stream token i >= 1 is target (i - 1) % T of row (i - 1) / T (rows with no trained
    // target are dropped, so walk the rows that are there).
    int64_t expected_targets = 0;
    for (size_t i = 1; i < stream.size(); ++i) expected_targets += mask[i];
    int64_t got_targets = 0;
    int64_t r = 0;
    for (int64_t start = 0; start + 1 < static_cast<int64_t>(stream.size()); start += T) {
      bool any = false;
      for (int64_t t = 0; t < T && start + t + 1 < static_cast<int64_t>(stream.size()); ++t) any |= mask[start + t + 1] != 0;
      if (!any) continue;
      ASSERT_LT(r, ds.num_rows());
      const auto in = ds.inputs(r);
      const auto tg = ds.targets(r);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t i = start + t;
        if (i < static_cast<int64_t>(stream.size())) {
          EXPECT_EQ(in[t], stream[i]);
        }
        const int32_t want = (i + 1 < static_cast<int64_t>(stream.size()) && mask[i + 1]) ? stream[i + 1] : -1;
        EXPECT_EQ(tg[t], want);
        got_targets += tg[t] >= 0;
        // targets are the inputs shifted by one
        if (t + 1 < T && tg[t] >= 0) {
          EXPECT_EQ(tg[t], in[t + 1]);
        }
      }
      ++r;
    }
    EXPECT_EQ(r, ds.num_rows());
    EXPECT_EQ(got_targets, expected_targets);
    EXPECT_EQ(ds.stats().targets, expected_targets);
  }
}

TEST(PackedDataset, WithoutPackingEachExampleIsTruncatedOrPadded) {
  const std::vector<Example> ex = {make_example({1, 10, 11, 12, 13, 14, 2}, {0, 1, 1, 1, 1, 1, 1}),
                                   make_example({1, 20, 2}, {0, 1, 1}),
                                   make_example({1, 30, 31, 32}, {0, 0, 0, 0})};  // nothing trained: dropped
  const auto ds = PackedDataset::build(ex, 4, Packing::off, Shuffle::off, 99);
  ASSERT_EQ(ds.num_rows(), 2);
  EXPECT_EQ(std::vector<int32_t>(ds.inputs(0).begin(), ds.inputs(0).end()), (std::vector<int32_t>{1, 10, 11, 12}));
  EXPECT_EQ(std::vector<int32_t>(ds.targets(0).begin(), ds.targets(0).end()), (std::vector<int32_t>{10, 11, 12, 13}));
  EXPECT_EQ(std::vector<int32_t>(ds.inputs(1).begin(), ds.inputs(1).end()), (std::vector<int32_t>{1, 20, 2, 99}));
  EXPECT_EQ(std::vector<int32_t>(ds.targets(1).begin(), ds.targets(1).end()), (std::vector<int32_t>{20, 2, -1, -1}));
  EXPECT_EQ(ds.stats().truncated_examples, 1);  // the first: 7 tokens, rows hold 5
  EXPECT_EQ(ds.stats().truncated_tokens, 2);
  EXPECT_EQ(ds.stats().dropped_rows, 1);
}

TEST(PackedDataset, ContentHashSeesEveryToken) {
  const std::vector<Example> ex = {make_example({1, 10, 11, 12, 13, 14, 2}, {0, 1, 1, 1, 1, 1, 1}),
                                   make_example({1, 20, 2}, {0, 1, 1})};
  const auto a = PackedDataset::build(ex, 4, Packing::on, Shuffle::off, 99);
  EXPECT_EQ(a.content_hash(), PackedDataset::build(ex, 4, Packing::on, Shuffle::on, 99).content_hash());
  std::vector<Example> other = ex;
  other[1].tokens[1] = 21;  // one token
  EXPECT_NE(a.content_hash(), PackedDataset::build(other, 4, Packing::on, Shuffle::off, 99).content_hash());
  other = ex;
  other[1].train_mask[1] = 0;  // one target
  EXPECT_NE(a.content_hash(), PackedDataset::build(other, 4, Packing::on, Shuffle::off, 99).content_hash());
  EXPECT_NE(a.content_hash(), PackedDataset::build(ex, 5, Packing::on, Shuffle::off, 99).content_hash());
}

// ---- documents and masks with the real tokenizer ----

TEST(Dataset, TextFilesAreDocumentsWithEveryTokenTrained) {
  REQUIRE_TOKENIZER(tok);
  const fs::path dir = testing::temp_dir("lmtune-data");
  const std::string a = "Once upon a time there was a little dog.";
  const std::string b = "The cat sat on the mat and looked at the sun.";
  write_file(dir / "a.txt", a);
  write_file(dir / "b.txt", b);
  write_file(dir / "empty.txt", "");
  DataOptions o;
  o.train_files = {(dir / "*.txt").string()};
  o.seq_len = 8;
  o.shuffle = Shuffle::off;
  const DataSplit split = load_data(o, *tok);
  const auto doc_a = tok->encode(a, AddBos::yes, AddEos::yes);
  const auto stream = concat({doc_a, tok->encode(b, AddBos::yes, AddEos::yes)});
  const int64_t N = static_cast<int64_t>(stream.size());
  const int64_t T = o.seq_len;
  // Rows s[r*T .. r*T+T]; every target is the next stream token except the second BOS.
  ASSERT_EQ(split.train.num_rows(), (N - 1 + T - 1) / T);
  for (int64_t r = 0; r < split.train.num_rows(); ++r) {
    const auto in = split.train.inputs(r);
    const auto tg = split.train.targets(r);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t i = r * T + t;
      if (i < N) {
        EXPECT_EQ(in[t], stream[i]);
      }
      const bool second_bos = i + 1 == static_cast<int64_t>(doc_a.size());
      EXPECT_EQ(tg[t], i + 1 < N && !second_bos ? stream[i + 1] : -1) << "row " << r << " t " << t;
    }
  }
  EXPECT_EQ(split.train.stats().targets, N - 2);  // all but the two BOS
  EXPECT_EQ(split.train.stats().examples, 2);     // the empty file is skipped
  EXPECT_EQ(split.validation.num_rows(), 0);
}

TEST(Dataset, AlpacaTrainsOnlyTheResponse) {
  REQUIRE_TOKENIZER(tok);
  const auto docs = read_jsonl("alpaca.jsonl",
                               "{\"instruction\": \"Name a color.\", \"output\": \"Blue is a color.\"}\n"
                               "\n"
                               "{\"instruction\": \"Add the numbers.\", \"input\": \"2 and 3\", \"output\": \"5\"}\n",
                               DataFormat::alpaca);
  ASSERT_EQ(docs.size(), 2u);
  const std::string prompt0 =
      "Below is an instruction that describes a task. Write a response that appropriately completes the "
      "request.\n\n### Instruction:\nName a color.\n\n### Response:";
  const std::string prompt1 =
      "Below is an instruction that describes a task, paired with an input that provides further context. "
      "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers.\n\n"
      "### Input:\n2 and 3\n\n### Response:";
  const std::vector<std::pair<std::string, std::string>> pieces = {{prompt0, "Blue is a color."}, {prompt1, "5"}};
  std::vector<Example> examples;
  for (size_t i = 0; i < docs.size(); ++i) {
    const Example ex = tokenize_document(docs[i], *tok, AddBos::yes, AddEos::yes);
    const auto p = tok->encode(pieces[i].first, AddBos::no);
    const auto r = tok->encode(pieces[i].second, AddBos::no);
    EXPECT_EQ(ex.tokens, concat({{tok->bos_id()}, p, r, {tok->eos_id()}}));
    std::vector<uint8_t> mask(1 + p.size(), 0);
    mask.insert(mask.end(), r.size() + 1, 1);
    EXPECT_EQ(ex.train_mask, mask);
    examples.push_back(ex);
  }
  // Unpacked rows: targets are -1 over the prompt, the response (and EOS) after it.
  const auto ds = PackedDataset::build(examples, 256, Packing::off, Shuffle::off, tok->eos_id());
  ASSERT_EQ(ds.num_rows(), 2);
  const auto p0 = tok->encode(prompt0, AddBos::no);
  const auto r0 = concat({tok->encode("Blue is a color.", AddBos::no), {tok->eos_id()}});
  const auto tg = ds.targets(0);
  for (size_t t = 0; t < p0.size(); ++t) EXPECT_EQ(tg[t], -1) << t;  // predicting prompt tokens 1.. and nothing for BOS
  for (size_t k = 0; k < r0.size(); ++k) EXPECT_EQ(tg[p0.size() + k], r0[k]) << k;
  EXPECT_EQ(tg[p0.size() + r0.size()], -1);
  EXPECT_EQ(tok->decode(r0), "Blue is a color.");
}

TEST(Dataset, AlpacaCustomPromptTemplate) {
  EXPECT_EQ(render_alpaca_prompt("Do it", "", "Q: {instruction} {input}|{other}"), "Q: Do it |{other}");
  EXPECT_EQ(render_alpaca_prompt("{input}", "x", "{instruction}/{input}"), "{input}/x");  // no rescanning
  EXPECT_NE(render_alpaca_prompt("a", "b", "").find("### Input:\nb"), std::string::npos);
  EXPECT_EQ(render_alpaca_prompt("a", "", "").find("### Input:"), std::string::npos);
}

TEST(Dataset, ChatmlTrainsOnlyAssistantTurnsAndTheirEndMarker) {
  REQUIRE_TOKENIZER(tok);
  const auto docs = read_jsonl("chat.jsonl",
                               R"({"messages": [{"role": "system", "content": "You are kind."},)"
                               R"( {"role": "user", "content": "Hi there."},)"
                               R"( {"role": "assistant", "content": "Hello, friend."},)"
                               R"( {"role": "user", "content": "Bye."},)"
                               R"( {"role": "assistant", "content": "Goodbye."}]})"
                               "\n",
                               DataFormat::chat);
  ASSERT_EQ(docs.size(), 1u);
  const Example ex = tokenize_document(docs[0], *tok, AddBos::yes, AddEos::yes);
  const auto u0 = tok->encode(
      "<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nHi there.<|im_end|>\n<|im_start|>assistant\n",
      AddBos::no);
  const auto a0 = tok->encode("Hello, friend.<|im_end|>", AddBos::no);
  const auto u1 = tok->encode("\n<|im_start|>user\nBye.<|im_end|>\n<|im_start|>assistant\n", AddBos::no);
  const auto a1 = tok->encode("Goodbye.<|im_end|>", AddBos::no);
  const auto nl = tok->encode("\n", AddBos::no);
  EXPECT_EQ(ex.tokens, concat({{tok->bos_id()}, u0, a0, u1, a1, nl, {tok->eos_id()}}));
  std::vector<uint8_t> mask(1 + u0.size(), 0);
  mask.insert(mask.end(), a0.size(), 1);
  mask.insert(mask.end(), u1.size(), 0);
  mask.insert(mask.end(), a1.size(), 1);
  mask.insert(mask.end(), nl.size(), 0);
  mask.push_back(1);
  EXPECT_EQ(ex.train_mask, mask);
  // What is trained decodes to the assistant replies and their end markers only (the newline
  // after <|im_end|> belongs to the next turn's prompt).
  std::vector<int32_t> trained;
  for (size_t i = 0; i < ex.tokens.size(); ++i)
    if (ex.train_mask[i] && ex.tokens[i] != tok->eos_id()) trained.push_back(ex.tokens[i]);
  EXPECT_EQ(tok->decode(trained), "Hello, friend.<|im_end|> Goodbye.<|im_end|>");
}

TEST(Dataset, Llama2ChatUsesSpecialTokensAsTurnMarkers) {
  REQUIRE_TOKENIZER(tok);
  const std::vector<ChatMessage> msgs = {
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}, {"assistant", "Ciao"}};
  Document doc;
  doc.segments = render_chat(msgs, "llama2");
  const Example ex = tokenize_document(doc, *tok, AddBos::yes, AddEos::yes);
  const int32_t bos = tok->bos_id(), eos = tok->eos_id();
  const auto p0 = tok->encode("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]", AddBos::no);
  const auto a0 = tok->encode("Hello", AddBos::no);
  const auto p1 = tok->encode("[INST] Bye [/INST]", AddBos::no);
  const auto a1 = tok->encode("Ciao", AddBos::no);
  // The final </s> comes from the template; add_eos does not double it.
  EXPECT_EQ(ex.tokens, concat({{bos}, p0, a0, {eos}, {bos}, p1, a1, {eos}}));
  std::vector<uint8_t> mask(1 + p0.size(), 0);
  mask.insert(mask.end(), a0.size() + 1, 1);
  mask.insert(mask.end(), 1 + p1.size(), 0);
  mask.insert(mask.end(), a1.size() + 1, 1);
  EXPECT_EQ(ex.train_mask, mask);
}

TEST(Dataset, PlainChatTemplate) {
  const auto segs = render_chat({{"user", "Hi"}, {"assistant", "Yo"}}, "plain");
  ASSERT_EQ(segs.size(), 2u);
  EXPECT_EQ(segs[0].text, "User: Hi\nAssistant:");
  EXPECT_EQ(segs[0].trained, Trained::no);
  EXPECT_EQ(segs[1].text, "Yo\n");
  EXPECT_EQ(segs[1].trained, Trained::yes);
  expect_error([] { render_chat({{"user", "Hi"}}, "vicuna"); }, {"unknown chat_template 'vicuna'"});
}

// ---- the loader ----

PackedDataset numbered_rows(int64_t n, int64_t T, Shuffle shuffle) {
  // Row r holds tokens r*T .. r*T+T, all trained.
  std::vector<Example> ex;
  for (int64_t r = 0; r < n; ++r) {
    Example e;
    for (int64_t t = 0; t <= T; ++t) {
      e.tokens.push_back(static_cast<int32_t>(r * 1000 + t));
      e.train_mask.push_back(1);
    }
    ex.push_back(e);
  }
  return PackedDataset::build(ex, T, Packing::off, shuffle, 0);
}

int64_t row_of(const Batch& b, int64_t i) { return b.tokens[i * b.T] / 1000; }

TEST(DataLoader, ShufflesDeterministicallyBySeedAndVisitsEveryRowOncePerEpoch) {
  const PackedDataset ds = numbered_rows(12, 4, Shuffle::on);
  auto rows_of = [&](uint64_t seed, int steps) {
    DataLoader loader(ds, 3, seed);
    std::vector<int64_t> rows;
    for (int s = 0; s < steps; ++s) {
      const Batch b = loader.next();
      EXPECT_EQ(b.B, 3);
      EXPECT_EQ(b.T, 4);
      EXPECT_EQ(b.num_targets, 12);
      for (int64_t i = 0; i < b.B; ++i) rows.push_back(row_of(b, i));
    }
    return rows;
  };
  const auto a = rows_of(5, 8);  // two epochs
  EXPECT_EQ(a, rows_of(5, 8));
  EXPECT_NE(a, rows_of(6, 8));
  std::vector<int64_t> e0(a.begin(), a.begin() + 12), e1(a.begin() + 12, a.end());
  EXPECT_NE(e0, e1);  // reshuffled with seed + epoch
  std::sort(e0.begin(), e0.end());
  std::sort(e1.begin(), e1.end());
  for (int64_t i = 0; i < 12; ++i) {
    EXPECT_EQ(e0[i], i);
    EXPECT_EQ(e1[i], i);
  }
  EXPECT_EQ(std::vector<int64_t>(a.begin(), a.begin() + 12), shuffled_order(12, 5));
  // Without shuffling rows come in order.
  const PackedDataset plain = numbered_rows(6, 4, Shuffle::off);
  DataLoader loader(plain, 2, 5);
  EXPECT_EQ(row_of(loader.next(), 0), 0);
  EXPECT_EQ(row_of(loader.next(), 1), 3);
}

TEST(DataLoader, RestoreGivesTheSameBatchesAcrossAnEpochBoundary) {
  const PackedDataset ds = numbered_rows(11, 4, Shuffle::on);  // 11 rows, B = 3: 3 steps an epoch, 2 rows left over
  DataLoader reference(ds, 3, 9);
  EXPECT_EQ(reference.steps_per_epoch(), 3);
  std::vector<Batch> expected;
  for (int s = 0; s < 10; ++s) expected.push_back(reference.next());
  for (int stop = 0; stop <= 9; ++stop) {
    SCOPED_TRACE("stopped after " + std::to_string(stop) + " steps");
    DataLoader first(ds, 3, 9);
    for (int s = 0; s < stop; ++s) first.next();
    const DataLoader::State st = first.state();
    DataLoader resumed(ds, 3, 9);
    resumed.restore(st);
    for (int s = stop; s < 10; ++s) {
      const Batch b = resumed.next();
      ASSERT_EQ(b.tokens, expected[s].tokens) << "step " << s;
      ASSERT_EQ(b.targets, expected[s].targets) << "step " << s;
    }
  }
  DataLoader at_end(ds, 3, 9);
  for (int s = 0; s < 3; ++s) at_end.next();
  EXPECT_EQ(at_end.state().epoch, 0);
  EXPECT_EQ(at_end.state().position, 9);
  at_end.next();
  EXPECT_EQ(at_end.state().epoch, 1);
  EXPECT_EQ(at_end.state().position, 3);
  DataLoader bad(ds, 3, 9);
  expect_error([&] { bad.restore({0, 10}); }, {"cannot restore", "position 10"});
}

TEST(DataLoader, ShardsSplitEachGlobalBatchLikeGradientAccumulation) {
  const PackedDataset ds = numbered_rows(12, 2, Shuffle::on);
  DataLoader single(ds, 2, 4);
  DataLoader r0(ds, 2, 4, {0, 2}), r1(ds, 2, 4, {1, 2});
  EXPECT_EQ(r0.steps_per_epoch(), 3);
  for (int s = 0; s < 6; ++s) {  // two epochs
    EXPECT_EQ(r0.next().tokens, single.next().tokens);
    EXPECT_EQ(r1.next().tokens, single.next().tokens);
  }
}

TEST(DataLoader, TooFewRowsIsAnError) {
  const PackedDataset ds = numbered_rows(2, 4, Shuffle::on);
  expect_error([&] { DataLoader(ds, 3, 0); }, {"2 rows", "micro_batch_size 3"});
}

// ---- files and splits ----

TEST(Dataset, GlobExpansionLiteralPathsAndOrder) {
  const fs::path dir = testing::temp_dir("lmtune-glob");
  write_file(dir / "b.txt", "b");
  write_file(dir / "a.txt", "a");
  write_file(dir / "c.md", "c");
  const std::string a = (dir / "a.txt").string(), b = (dir / "b.txt").string(), c = (dir / "c.md").string();
  EXPECT_EQ(expand_file_patterns({(dir / "*.txt").string()}, "train_files"), (std::vector<std::string>{a, b}));
  EXPECT_EQ(expand_file_patterns({c, (dir / "?.*").string(), b}, "train_files"), (std::vector<std::string>{c, a, b}));
  EXPECT_EQ(expand_file_patterns({(dir / "[ab].txt").string()}, "train_files"), (std::vector<std::string>{a, b}));
}

TEST(Dataset, ValidationFractionSplitIsDeterministicBySeed) {
  REQUIRE_TOKENIZER(tok);
  const fs::path dir = testing::temp_dir("lmtune-split");
  for (int i = 0; i < 20; ++i) write_file(dir / ("doc" + std::to_string(100 + i) + ".txt"), "Story number " + std::to_string(i) + ".");
  DataOptions o;
  o.train_files = {(dir / "*.txt").string()};
  o.validation_fraction = 0.2;
  o.packing = Packing::off;
  o.seq_len = 32;
  auto held_out = [&](uint64_t seed) {
    o.seed = seed;
    const DataSplit split = load_data(o, *tok);
    EXPECT_EQ(split.train.num_rows(), 16);
    EXPECT_EQ(split.validation.num_rows(), 4);
    EXPECT_EQ(split.validation.shuffle(), Shuffle::off);
    std::set<std::string> texts;
    for (int64_t r = 0; r < split.validation.num_rows(); ++r) {
      const auto in = split.validation.inputs(r);
      texts.insert(tok->decode(std::vector<int32_t>(in.begin(), in.end())));
    }
    return texts;
  };
  const auto a = held_out(1);
  EXPECT_EQ(a.size(), 4u);
  EXPECT_EQ(a, held_out(1));
  EXPECT_NE(a, held_out(2));
  o.validation_files = {(dir / "doc100.txt").string()};
  expect_error([&] { load_data(o, *tok); }, {"at most one of"});
}

TEST(Dataset, ValidationEveryNthHoldsOutFixedDocuments) {
  REQUIRE_TOKENIZER(tok);
  const fs::path dir = testing::temp_dir("lmtune-split");
  for (int i = 0; i < 10; ++i) write_file(dir / ("doc" + std::to_string(i) + ".txt"), "Story number " + std::to_string(i) + ".");
  DataOptions o;
  o.train_files = {(dir / "*.txt").string()};
  o.validation_every_nth = 4;  // documents 3 and 7
  o.packing = Packing::off;
  o.seq_len = 32;
  const DataSplit split = load_data(o, *tok);
  EXPECT_EQ(split.train.num_rows(), 8);
  ASSERT_EQ(split.validation.num_rows(), 2);
  auto text = [&](int64_t r) {
    const auto in = split.validation.inputs(r);
    const std::string s = tok->decode(std::vector<int32_t>(in.begin(), in.end()));
    return s.substr(0, s.find('.') + 1);
  };
  EXPECT_EQ(text(0), "Story number 3.");
  EXPECT_EQ(text(1), "Story number 7.");
  o.validation_every_nth = 11;
  expect_error([&] { load_data(o, *tok); }, {"validation_every_nth 11 holds out nothing from 10 documents"});
  o.validation_every_nth = 1;
  expect_error([&] { load_data(o, *tok); }, {"at least 2"});
}

TEST(Dataset, ValidationFilesAreReadAsTheirOwnSplit) {
  REQUIRE_TOKENIZER(tok);
  const fs::path dir = testing::temp_dir("lmtune-split");
  write_file(dir / "train" / "1.txt", "One day a girl went to the park.");
  write_file(dir / "val" / "1.txt", "The boy ran home.");
  DataOptions o;
  o.train_files = {(dir / "train" / "*.txt").string()};
  o.validation_files = {(dir / "val" / "*.txt").string()};
  o.seq_len = 64;
  const DataSplit split = load_data(o, *tok);
  EXPECT_EQ(split.train.num_rows(), 1);
  ASSERT_EQ(split.validation.num_rows(), 1);
  EXPECT_EQ(split.validation.stats().targets,
            static_cast<int64_t>(tok->encode("The boy ran home.", AddBos::yes, AddEos::yes).size()) - 1);
}

// ---- malformed datasets: each error names the file and the 1-based line ----

TEST(MalformedData, InvalidJsonLine) {
  std::string path;
  expect_error(
      [&] {
        read_jsonl("bad.jsonl",
                   "{\"instruction\": \"a\", \"output\": \"b\"}\n\n{\"instruction\": \"a\", \"output\": \"b\"\n",
                   DataFormat::alpaca, &path);
      },
      {"bad.jsonl:3:", "invalid JSON"});
}

TEST(MalformedData, MissingOutput) {
  expect_error([] { read_jsonl("nooutput.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"a\"}\n", DataFormat::alpaca); },
               {"nooutput.jsonl:2:", "missing required field \"output\""});
}

TEST(MalformedData, InstructionNotAString) {
  expect_error([] { read_jsonl("instr.jsonl", "{\"instruction\": 42, \"output\": \"b\"}\n", DataFormat::alpaca); },
               {"instr.jsonl:1:", "\"instruction\" must be a string, not number"});
}

TEST(MalformedData, NonObjectLine) {
  expect_error([] { read_jsonl("array.jsonl", "\n\n[1, 2, 3]\n", DataFormat::alpaca); },
               {"array.jsonl:3:", "expected a JSON object, not array"});
}

TEST(MalformedData, UnknownChatRole) {
  expect_error(
      [] {
        read_jsonl("roles.jsonl",
                   R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})"
                   "\n"
                   R"({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]})"
                   "\n",
                   DataFormat::chat);
      },
      {"roles.jsonl:2:", "messages[1]", "unknown role \"robot\""});
}

TEST(MalformedData, EmptyMessages) {
  expect_error([] { read_jsonl("empty_msgs.jsonl", "{\"messages\": []}\n", DataFormat::chat); },
               {"empty_msgs.jsonl:1:", "\"messages\" is empty"});
}

TEST(MalformedData, MessagesNotAnArrayOrNoAssistant) {
  expect_error([] { read_jsonl("m1.jsonl", "{\"messages\": {\"role\": \"user\"}}\n", DataFormat::chat); },
               {"m1.jsonl:1:", "\"messages\" must be an array, not object"});
  expect_error([] { read_jsonl("m2.jsonl", R"({"messages": [{"role": "user", "content": "hi"}]})", DataFormat::chat); },
               {"m2.jsonl:1:", "no \"assistant\" message"});
  expect_error([] { read_jsonl("m3.jsonl", R"({"messages": [{"role": "user", "content": 3}]})", DataFormat::chat); },
               {"m3.jsonl:1:", "messages[0]", "\"content\" must be a string"});
}

TEST(MalformedData, GlobMatchingNothing) {
  const fs::path dir = testing::temp_dir("lmtune-glob");
  const std::string pattern = (dir / "nothing-*.jsonl").string();
  expect_error([&] { expand_file_patterns({pattern}, "train_files"); },
               {"train_files: pattern '" + pattern + "' matches no file"});
  expect_error([&] { expand_file_patterns({}, "validation_files"); }, {"validation_files: no files given"});
  write_file(dir / "sub" / "x.txt", "x");
  expect_error([&] { expand_file_patterns({(dir / "su*").string()}, "train_files"); }, {"matches the directory"});
}

TEST(MalformedData, EmptyTextFileSet) {
  REQUIRE_TOKENIZER(tok);
  const fs::path dir = testing::temp_dir("lmtune-empty");
  write_file(dir / "a.txt", "");
  write_file(dir / "b.txt", "");
  DataOptions o;
  o.train_files = {(dir / "*.txt").string()};
  expect_error([&] { load_data(o, *tok); }, {(dir / "*.txt").string(), "hold no documents"});
}

TEST(MalformedData, OptionsOutOfRange) {
  REQUIRE_TOKENIZER(tok);
  const fs::path dir = testing::temp_dir("lmtune-opts");
  DataOptions o;
  o.train_files = {write_file(dir / "a.txt", "Hello there.")};
  o.validation_fraction = 1.0;
  expect_error([&] { load_data(o, *tok); }, {"validation_fraction must be in [0, 1)"});
  o.validation_fraction = 0.5;
  expect_error([&] { load_data(o, *tok); }, {"of 1 documents leaves no training documents"});
  o.validation_fraction = 0;
  o.seq_len = 0;
  expect_error([&] { load_data(o, *tok); }, {"seq_len must be at least 1"});
  expect_error([] { parse_data_format("csv"); }, {"unknown data format 'csv'"});
}

// ---- the real corpus ----

TEST(Dataset, MobyDickTokenizesQuickly) {
  REQUIRE_TOKENIZER(tok);
  const fs::path dir = fs::path(LMTUNE_MODELS_DIR) / "moby-dick";
  if (!fs::exists(dir / "train")) GTEST_SKIP() << "models/moby-dick not fetched (scripts/fetch_data.sh)";
  DataOptions o;
  o.train_files = {(dir / "train" / "*.txt").string()};
  o.validation_files = {(dir / "validation" / "*.txt").string()};
  o.seq_len = 256;
  const auto t0 = std::chrono::steady_clock::now();
  const DataSplit split = load_data(o, *tok);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("moby-dick: train %lld chapters, %lld tokens, %lld rows; validation %lld chapters, %lld tokens, %lld rows; %.2f s\n",
              static_cast<long long>(split.train.stats().examples), static_cast<long long>(split.train.stats().tokens),
              static_cast<long long>(split.train.num_rows()), static_cast<long long>(split.validation.stats().examples),
              static_cast<long long>(split.validation.stats().tokens),
              static_cast<long long>(split.validation.num_rows()), s);
  EXPECT_EQ(split.train.stats().examples, 123);
  EXPECT_EQ(split.validation.stats().examples, 13);
  EXPECT_GT(split.train.stats().tokens, 200000);
  EXPECT_LT(s, 3.0);
}

}  // namespace
}  // namespace lmtune
