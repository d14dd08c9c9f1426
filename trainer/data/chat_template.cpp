// Chat templates — design note.
//
// Models declare how a conversation becomes text as a Jinja program (tokenizer_config.json's
// chat_template). lmtune does not run Jinja: it has a renderer for each template it knows, in
// C++, and recognises a declared template by a fingerprint of its exact source (FNV-1a over
// the text without surrounding whitespace). Exactness is the point: a renderer that is "close"
// to a model's template trains the model on text it will never see. So an unrecognised
// template is an error that says which ones lmtune knows and how to pick one by name
// (data.chat_template), not a guess. The tests render conversations with Jinja2 (the real
// templates, as transformers' apply_chat_template sets Jinja up) and compare text and masks.
//
// Known templates (fingerprint -> renderer):
//   llama3  Meta Llama 3 Instruct: <|begin_of_text|> first, then per message
//           "<|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>". Two
//           published versions: the first appends the assistant header after every
//           rendering (header_always), the later one only with add_generation_prompt.
//   qwen3   Qwen3 (its template without tools): ChatML, a system message first if given;
//           assistant messages after the last user query get a <think>...</think> block
//           (empty unless the content has one), earlier ones lose theirs.
//   chatml  "<|im_start|>{role}\n{content}<|im_end|>\n" per message (the canonical ChatML
//           template of HF's documentation).
// And two formats with no declared template: llama2 ([INST] ... [/INST], Meta's Llama-2-chat
// format with <s>/</s> as tokens) and plain ("User: ...", "Assistant:").
//
// What is trained: an assistant turn is what the model writes after the generation prompt
// (the assistant header) up to and including its end-of-turn marker — content + <|eot_id|>,
// <think> block + content + <|im_end|>, content + </s>; the newline ChatML puts after
// <|im_end|> belongs to the next turn's prompt. plain has no end marker: its "\n" is trained.
// Everything else (system and user turns, headers, BOS) is prompt.
//
// Special tokens: markup the template writes (<|im_start|>, <|eot_id|>) is always parsed into
// its token; message content is parsed or kept literal as the caller says (data.
// parse_special_tokens), so user data can be kept from injecting control tokens.
#include "trainer/data/chat_template.h"

#include <string_view>

#include "trainer/core/error.h"
#include "trainer/data/unicode_text.h"

namespace lmtune {

namespace {

constexpr uint64_t kLlama3First = 0x74891e390e614ae2ull;   // Meta-Llama-3-8B-Instruct, first version
constexpr uint64_t kLlama3 = 0x0e60067a5537498eull;        // ... with add_generation_prompt
constexpr uint64_t kQwen3 = 0x2bfdb7aa9754484eull;         // Qwen3
constexpr uint64_t kChatml = 0xa41d6bae9b9141bcull;        // canonical ChatML

// Python's str.isspace() set, which Jinja's trim and str.strip() use.
bool python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Python's s.strip() (whitespace) — or s.strip(chars) with `only` set to one ASCII char.
enum class Side { both, left, right };
std::string py_strip(std::string_view s, Side side = Side::both, char only = 0) {
  auto is_strip = [&](size_t i, size_t len) {
    if (only != 0) return len == 1 && s[i] == only;
    return python_space(utf8_decode(s, i, len));
  };
  size_t b = 0, e = s.size();
  if (side != Side::right) {
    while (b < e) {
      const size_t len = utf8_char_len(s, b);
      if (!is_strip(b, len)) break;
      b += len;
    }
  }
  if (side != Side::left) {
    while (e > b) {
      const size_t p = utf8_prev_start(s, e);
      if (!is_strip(p, e - p)) break;
      e = p;
    }
  }
  return std::string(s.substr(b, e - b));
}

// Python's s.split(sep): every piece, in order.
std::vector<std::string> py_split(std::string_view s, std::string_view sep) {
  std::vector<std::string> out;
  size_t i = 0;
  while (true) {
    const size_t j = s.find(sep, i);
    if (j == std::string_view::npos) break;
    out.emplace_back(s.substr(i, j - i));
    i = j + sep.size();
  }
  out.emplace_back(s.substr(i));
  return out;
}

class Builder {
 public:
  explicit Builder(SpecialTokens content_specials) : content_specials_(content_specials) {}
  void markup(std::string text, Trained t) { push(Segment::Kind::text, std::move(text), t, SpecialTokens::parse); }
  void content(std::string text, Trained t) { push(Segment::Kind::text, std::move(text), t, content_specials_); }
  void token(Segment::Kind kind, Trained t) { push(kind, "", t, SpecialTokens::parse); }
  std::vector<Segment> take() { return std::move(s_); }

 private:
  void push(Segment::Kind kind, std::string text, Trained t, SpecialTokens sp) {
    if (kind == Segment::Kind::text) {
      if (text.empty()) return;
      if (!s_.empty() && s_.back().kind == Segment::Kind::text && s_.back().trained == t && s_.back().specials == sp) {
        s_.back().text += text;
        return;
      }
    }
    s_.push_back(Segment{kind, std::move(text), t, sp});
  }
  SpecialTokens content_specials_;
  std::vector<Segment> s_;
};

Trained trained_if(bool b) { return b ? Trained::yes : Trained::no; }

void render_llama3(const std::vector<ChatMessage>& ms, const ChatFormat& f, GenerationPrompt gp, Builder& b) {
  for (size_t i = 0; i < ms.size(); ++i) {
    const bool a = ms[i].role == "assistant";
    b.markup((i == 0 ? f.bos_token : "") + "<|start_header_id|>" + ms[i].role + "<|end_header_id|>\n\n", Trained::no);
    b.content(py_strip(ms[i].content), trained_if(a));
    b.markup("<|eot_id|>", trained_if(a));
  }
  if (f.header_always || gp == GenerationPrompt::yes)
    b.markup("<|start_header_id|>assistant<|end_header_id|>\n\n", Trained::no);
}

void render_qwen3(const std::vector<ChatMessage>& ms, GenerationPrompt gp, Builder& b) {
  const size_t n = ms.size();
  if (n == 0) return;
  if (ms[0].role == "system") {
    b.markup("<|im_start|>system\n", Trained::no);
    b.content(ms[0].content, Trained::no);
    b.markup("<|im_end|>\n", Trained::no);
  }
  // The last user message that is not a tool response (the template's ns.last_query_index).
  size_t last_query = n - 1;
  for (size_t k = n; k-- > 0;) {
    const std::string& c = ms[k].content;
    const bool tool_response = c.starts_with("<tool_response>") && c.ends_with("</tool_response>");
    if (ms[k].role == "user" && !tool_response) {
      last_query = k;
      break;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const ChatMessage& m = ms[i];
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      b.markup("<|im_start|>" + m.role + "\n", Trained::no);
      b.content(m.content, Trained::no);
      b.markup("<|im_end|>\n", Trained::no);
    } else if (m.role == "assistant") {
      std::string content = m.content, reasoning;
      if (m.content.find("</think>") != std::string::npos) {
        const auto after = py_split(m.content, "</think>");
        content = py_strip(after.back(), Side::left, '\n');
        reasoning = py_strip(py_split(py_strip(after.front(), Side::right, '\n'), "<think>").back(), Side::left, '\n');
      }
      b.markup("<|im_start|>assistant\n", Trained::no);
      if (i > last_query && (i + 1 == n || !reasoning.empty())) {
        b.markup("<think>\n", Trained::yes);
        b.content(py_strip(reasoning, Side::both, '\n'), Trained::yes);
        b.markup("\n</think>\n\n", Trained::yes);
        b.content(py_strip(content, Side::left, '\n'), Trained::yes);
      } else {
        b.content(content, Trained::yes);
      }
      b.markup("<|im_end|>", Trained::yes);
      b.markup("\n", Trained::no);
    }
  }
  if (gp == GenerationPrompt::yes) b.markup("<|im_start|>assistant\n", Trained::no);
}

void render_chatml(const std::vector<ChatMessage>& ms, GenerationPrompt gp, Builder& b) {
  for (const ChatMessage& m : ms) {
    const bool a = m.role == "assistant";
    b.markup("<|im_start|>" + m.role + "\n", Trained::no);
    b.content(m.content, trained_if(a));
    b.markup("<|im_end|>", trained_if(a));
    b.markup("\n", Trained::no);
  }
  if (gp == GenerationPrompt::yes) b.markup("<|im_start|>assistant\n", Trained::no);
}

// Meta's Llama-2-chat format: "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]" as prompt,
// "{assistant}" and </s> trained; a turn after an assistant reply starts with <s>.
void render_llama2(const std::vector<ChatMessage>& ms, Builder& b) {
  std::string system;
  bool after_reply = false;
  for (const ChatMessage& m : ms) {
    if (m.role == "system") {
      if (!system.empty()) system += "\n";
      system += m.content;
    } else if (m.role == "user") {
      if (after_reply) b.token(Segment::Kind::bos, Trained::no);
      b.markup("[INST] ", Trained::no);
      if (!system.empty()) {
        b.markup("<<SYS>>\n", Trained::no);
        b.content(system, Trained::no);
        b.markup("\n<</SYS>>\n\n", Trained::no);
      }
      system.clear();
      b.content(m.content, Trained::no);
      b.markup(" [/INST]", Trained::no);
      after_reply = false;
    } else {
      b.content(m.content, Trained::yes);
      b.token(Segment::Kind::eos, Trained::yes);
      after_reply = true;
    }
  }
}

void render_plain(const std::vector<ChatMessage>& ms, GenerationPrompt gp, Builder& b) {
  for (const ChatMessage& m : ms) {
    if (m.role == "system" || m.role == "user") {
      b.markup(m.role == "system" ? "System: " : "User: ", Trained::no);
      b.content(m.content, Trained::no);
      b.markup("\n", Trained::no);
    } else {
      b.markup("Assistant:", Trained::no);
      b.content(m.content, Trained::yes);
      b.markup("\n", Trained::yes);
    }
  }
  if (gp == GenerationPrompt::yes) b.markup("Assistant:", Trained::no);
}

std::string choices_text() {
  std::string s;
  for (const auto& [name, what] : chat_template_choices()) s += (s.empty() ? "" : ", ") + name + " (" + what + ")";
  return s;
}

}  // namespace

const std::vector<std::pair<std::string, std::string>>& chat_template_choices() {
  static const std::vector<std::pair<std::string, std::string>> c = {
      {"llama3", "Meta Llama 3 Instruct"}, {"qwen3", "Qwen3"},
      {"chatml", "<|im_start|>role ... <|im_end|>"}, {"llama2", "[INST] ... [/INST]"},
      {"plain", "User: ... Assistant: ..."}};
  return c;
}

uint64_t chat_template_fingerprint(const std::string& source) {
  const size_t b = source.find_first_not_of(" \t\r\n");
  const size_t e = source.find_last_not_of(" \t\r\n");
  uint64_t h = 0xcbf29ce484222325ull;
  if (b == std::string::npos) return h;
  for (size_t i = b; i <= e; ++i) {
    h ^= static_cast<uint8_t>(source[i]);
    h *= 0x100000001b3ull;
  }
  return h;
}

ChatFormat resolve_chat_format(const std::string& requested, const std::string& declared, const std::string& bos_token,
                               const std::string& source) {
  ChatFormat f;
  if (!bos_token.empty()) f.bos_token = bos_token;
  if (requested != "auto") {
    bool known = false;
    for (const auto& [name, what] : chat_template_choices()) known = known || name == requested;
    LMTUNE_CHECK(known, "unknown chat_template '", requested, "'; expected auto or one of: ", choices_text());
    f.renderer = requested;
    return f;
  }
  if (declared.find_first_not_of(" \t\r\n") == std::string::npos) {
    f.renderer = "chatml";
    return f;
  }
  switch (chat_template_fingerprint(declared)) {
    case kLlama3First: f.renderer = "llama3"; f.header_always = true; return f;
    case kLlama3: f.renderer = "llama3"; return f;
    case kQwen3: f.renderer = "qwen3"; return f;
    case kChatml: f.renderer = "chatml"; return f;
  }
  std::string start = declared.substr(declared.find_first_not_of(" \t\r\n"), 60);
  for (char& c : start)
    if (c == '\n' || c == '\r') c = ' ';
  LMTUNE_THROW(source, " declares a chat template lmtune has no built-in renderer for (it begins '", start,
               "...'); set data.chat_template to the one that renders your model's format: ", choices_text(),
               " (lmtune renders them itself; a different template is not matched exactly)");
}

std::vector<Segment> render_chat(const std::vector<ChatMessage>& messages, const ChatFormat& format,
                                 SpecialTokens content_specials, GenerationPrompt generation_prompt) {
  Builder b(content_specials);
  const std::string& r = format.renderer;
  if (r == "llama3") render_llama3(messages, format, generation_prompt, b);
  else if (r == "qwen3") render_qwen3(messages, generation_prompt, b);
  else if (r == "chatml") render_chatml(messages, generation_prompt, b);
  else if (r == "llama2") render_llama2(messages, b);
  else if (r == "plain") render_plain(messages, generation_prompt, b);
  else LMTUNE_THROW("unknown chat_template '", r, "'; expected one of: ", choices_text());
  return b.take();
}

std::vector<Segment> render_chat(const std::vector<ChatMessage>& messages, const std::string& chat_template) {
  ChatFormat f;
  f.renderer = chat_template == "auto" ? "chatml" : chat_template;
  return render_chat(messages, f);
}

std::string segments_text(const std::vector<Segment>& segments) {
  std::string s;
  for (const Segment& seg : segments)
    if (seg.kind == Segment::Kind::text) s += seg.text;
  return s;
}

}  // namespace lmtune
