"""Reference renderings of chat templates with Jinja2, as transformers' apply_chat_template sets
Jinja up (sandboxed environment, trim_blocks, lstrip_blocks, loopcontrols, tojson,
raise_exception, strftime_now), for tests/data/chat_template_test.cpp.

    chat_template_ref.py TOKENIZER_CONFIG.json CASES.json OUT.json HEADER END

TOKENIZER_CONFIG.json: its chat_template is rendered, with its special tokens (bos_token,
eos_token, ...) as variables. CASES.json: [{"messages": [...], "add_generation_prompt": bool}].
OUT.json: per case {"text": rendering, "spans": [[begin, end], ...]} where the spans are the
assistant turns in UTF-8 byte offsets, found in the rendered text alone: each runs from the
end of an occurrence of HEADER (the assistant header, e.g. "<|im_start|>assistant\\n") to the
end of the next END (the end-of-turn marker, e.g. "<|im_end|>"); a header with no END after
it (a generation prompt) opens no span.
"""
import json
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def token_text(v):
    if isinstance(v, dict):
        return v.get("content")
    return v


def main():
    config_path, cases_path, out_path, header, end = sys.argv[1:6]
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    template = make_env().from_string(config["chat_template"])
    specials = {k: token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)
    out = []
    for case in cases:
        text = template.render(messages=case["messages"], add_generation_prompt=case["add_generation_prompt"],
                               **specials)
        spans = []
        at = 0
        while True:
            h = text.find(header, at)
            if h < 0:
                break
            begin = h + len(header)
            e = text.find(end, begin)
            if e < 0:
                break
            stop = e + len(end)
            spans.append([len(text[:begin].encode("utf-8")), len(text[:stop].encode("utf-8"))])
            at = stop
        out.append({"text": text, "spans": spans})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
