// Chat templates: conversations rendered into text the way a model's own chat template
// (tokenizer_config.json's Jinja source) renders them, by built-in renderers, with the
// assistant turns marked as what is trained. See the design note in chat_template.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/data/added_tokens.h"

namespace lmtune {

enum class Trained : uint8_t { no = 0, yes = 1 };

// One piece of a document: text, or a special token of the tokenizer (llama2's <s> / </s>).
struct Segment {
  enum class Kind : uint8_t { text, bos, eos };
  Kind kind = Kind::text;
  std::string text;  // Kind::text only
  Trained trained = Trained::no;
  // Whether text spelling a special token becomes it: a template's own markup always does;
  // message content as data.parse_special_tokens says.
  SpecialTokens specials = SpecialTokens::parse;
};

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant"
  std::string content;
};

// A built-in renderer and its variant.
struct ChatFormat {
  std::string renderer = "chatml";  // "llama3" | "qwen3" | "chatml" | "llama2" | "plain"
  // llama3 as Meta first published it: the assistant header ends every rendering, with or
  // without add_generation_prompt.
  bool header_always = false;
  std::string bos_token = "<|begin_of_text|>";  // what llama3 writes first (tokenizer_config's bos_token)
  bool operator==(const ChatFormat&) const = default;
};

// The names data.chat_template accepts besides "auto", with a few words on each (for errors
// and help).
const std::vector<std::pair<std::string, std::string>>& chat_template_choices();

// The format for data.chat_template = `requested`: a renderer name, or "auto" for the one the
// model declares (`declared`, tokenizer_config.json's chat_template; recognised by its exact
// text, surrounding whitespace aside). auto with nothing declared is chatml. A declared
// template lmtune has no renderer for, or an unknown name, is an error naming `source`, what
// was found and the choices. bos_token: the tokenizer's BOS spelling (llama3 writes it).
ChatFormat resolve_chat_format(const std::string& requested, const std::string& declared, const std::string& bos_token,
                               const std::string& source);

enum class GenerationPrompt { no, yes };

// The segments of a conversation: template markup (SpecialTokens::parse) and message content
// (`content_specials`), with exactly the assistant turns — what follows the assistant header,
// up to and including the end-of-turn marker — Trained::yes. Adjacent segments with the same
// marks are joined. GenerationPrompt::yes ends with the assistant header (what generation
// continues from). Text equals the model's Jinja template rendered with the same messages.
std::vector<Segment> render_chat(const std::vector<ChatMessage>& messages, const ChatFormat& format,
                                 SpecialTokens content_specials = SpecialTokens::parse,
                                 GenerationPrompt generation_prompt = GenerationPrompt::no);
// By renderer name ("auto" is not resolved here: it means chatml).
std::vector<Segment> render_chat(const std::vector<ChatMessage>& messages, const std::string& chat_template);

// The concatenated text of text segments (bos/eos segments excluded).
std::string segments_text(const std::vector<Segment>& segments);

// 64-bit FNV-1a of a template with surrounding whitespace removed: how declared templates are
// recognised.
uint64_t chat_template_fingerprint(const std::string& jinja_source);

}  // namespace lmtune
