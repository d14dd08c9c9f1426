// The independent reference for lmtune's byte-level tokenizer: @huggingface/tokenizers, a
// pure-JavaScript implementation of HF tokenizers (scripts/fetch_tokenizers.sh puts it in
// models/tokenizers/hf-tokenizers-js), run under node.
//
//   node hf_tokenizers_encode.mjs PKG_DIR TOKENIZER_DIR CORPUS.json OUT.json
//     CORPUS.json: a JSON array of strings. OUT.json: {"parse": [...], "literal": [...],
//     "nfc": [...]}, per string: its ids encoded with add_special_tokens: false (the text's
//     own tokens, special tokens in it included); its ids when the special added tokens are
//     dropped from the tokenizer first, so that text spelling them is ordinary text (what
//     tiktoken does with no special tokens allowed, and HF with split_special_tokens); and the
//     string in NFC (JavaScript's own String.normalize).
//   node hf_tokenizers_encode.mjs PKG_DIR TOKENIZER_DIR --bench FILE [REPEATS]
//     Encodes FILE's text REPEATS times (default 3) and prints one line of JSON:
//     {"bytes": ..., "tokens": ..., "seconds": [...], "mb_per_s": best}
//
// JavaScript strings are UTF-16, so the corpus must be valid UTF-8 (invalid bytes are tested
// on lmtune's side alone).
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [pkgDir, tokDir, ...rest] = process.argv.slice(2);
if (!pkgDir || !tokDir || rest.length < 1) {
  console.error("usage: hf_tokenizers_encode.mjs PKG_DIR TOKENIZER_DIR (CORPUS.json OUT.json | --bench FILE [REPEATS])");
  process.exit(2);
}
const { Tokenizer } = await import(pathToFileURL(path.join(pkgDir, "dist", "tokenizers.mjs")).href);
const readJson = (f) => JSON.parse(fs.readFileSync(path.join(tokDir, f), "utf8"));
const tokenizer = new Tokenizer(readJson("tokenizer.json"), readJson("tokenizer_config.json"));

if (rest[0] === "--bench") {
  const text = fs.readFileSync(rest[1], "utf8");
  const repeats = Number(rest[2] ?? 3);
  const bytes = Buffer.byteLength(text, "utf8");
  const seconds = [];
  let tokens = 0;
  for (let r = 0; r < repeats; ++r) {
    const t0 = process.hrtime.bigint();
    tokens = tokenizer.encode(text, { add_special_tokens: false }).ids.length;
    seconds.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  const best = Math.min(...seconds);
  console.log(JSON.stringify({ bytes, tokens, seconds, mb_per_s: bytes / 1e6 / best }));
} else {
  const corpus = JSON.parse(fs.readFileSync(rest[0], "utf8"));
  const withoutSpecials = readJson("tokenizer.json");
  withoutSpecials.added_tokens = withoutSpecials.added_tokens.filter((t) => !t.special);
  const literal = new Tokenizer(withoutSpecials, readJson("tokenizer_config.json"));
  const out = {
    parse: corpus.map((doc) => tokenizer.encode(doc, { add_special_tokens: false }).ids),
    literal: corpus.map((doc) => literal.encode(doc, { add_special_tokens: false }).ids),
    nfc: corpus.map((doc) => doc.normalize("NFC")),
  };
  fs.writeFileSync(rest[1], JSON.stringify(out));
}
