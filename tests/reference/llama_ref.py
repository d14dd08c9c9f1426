#!/usr/bin/env python3
"""An independent PyTorch reference for LLaMA-family causal language models.

Written from the math of HF `LlamaForCausalLM`, `Qwen2ForCausalLM` and `Qwen3ForCausalLM`,
not from lmtune's code, so that lmtune's hand-written forward/backward can be checked
against autograd:

  h     = embed_tokens[tokens]
  per layer:
    a   = RMSNorm(h) = h * rsqrt(mean(h^2) + eps) * w_in
    q   = a Wq^T (+ bq), k = a Wk^T (+ bk), v = a Wv^T (+ bv)        (heads of size D)
    q,k = (qwen3) RMSNorm of each head of q and k with q_norm / k_norm, weight (D)
    q,k = RoPE rotate-half: pairs (i, i + D/2) rotated by pos * inv_freq[i],
          inv_freq[i] = theta^(-2i/D), changed by rope_scaling (linear: / factor; llama3:
          HF's _compute_llama3_parameters)
    att = softmax(q k^T / sqrt(D) + causal mask) v,   query head h reads kv head h // (Hq/Hkv)
    h   = h + att Wo^T (+ bo)
    m   = RMSNorm(h) with w_post
    h   = h + down(silu(gate(m)) * up(m))
  logits = RMSNorm(h) with w_final, then lm_head (= embed_tokens when tie_word_embeddings)

Biases as HF's classes have them: llama and qwen3 on q, k, v and o when attention_bias;
qwen2 on q, k, v always (its config has no attention_bias), never on o. D is head_dim
when the config has one (qwen3's default is 128), else hidden_size / num_attention_heads.

Everything runs in float64 by default. The script has no dependency besides torch and
numpy; it reads and writes safetensors itself (json + struct + numpy).

Subcommands (run with /usr/bin/python3, which has torch):
  make-model  --out DIR --config CFG.json [--seed N] [--dtype float32|bfloat16|float16]
              writes a random HF model dir: config.json (as LlamaForCausalLM expects) and
              model.safetensors, weights scaled so logits are O(1) and gradients not tiny.
  grads       (--model DIR | --llama2c MODEL.bin) --input IN.json --out OUT.safetensors
              IN.json = {"tokens": [[...], ...], "targets": [[...], ...]} (B, T); a target
              < 0 (-100, -1) is ignored. Writes float32 "logits" (B*T, V), "loss_sum",
              "count" (and "loss_sum_f64" as float64) and "grad.<hf name>" = d(sum of token
              losses)/d(param) for every parameter.
  forward     same as grads without the gradients (targets optional).
  tokenize    --tokenizer tokenizer.bin --text TEXT: llama2.c's BPE encoding, BOS first,
              printed as a JSON list.
  selftest    checks the reference itself: RoPE and attention against naive loops, autograd
              against finite differences (gradcheck) on a tiny model, llama2.c interleaved
              RoPE against the permuted HF layout, safetensors round trips.

With --llama2c the weights come straight from a llama2.c checkpoint, kept in llama2.c's
own layout (interleaved RoPE, no q/k permutation), which makes the comparison with
lmtune's imported HF checkpoint a check of the importer too.
"""

import argparse
import json
import math
import os
import struct
import sys
import tempfile

import numpy as np
import torch

# ---------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------

_ST_NUMPY = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ST_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_NUMPY_ST = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
             np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
             np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}


def bf16_bits_to_f32(bits):
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x):
    """float32 -> uint16 bfloat16 bit patterns, round to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def read_safetensors(path):
    """Returns ({name: numpy array}, metadata dict). BF16 is widened to float32."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file ({len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise ValueError(f"{path}: header length {header_len} exceeds the file size {len(data)}")
    header = json.loads(data[8:8 + header_len].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        dt = info["dtype"]
        if dt not in _ST_SIZE:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dt}")
        shape = [int(s) for s in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        count = int(np.prod(shape)) if shape else 1
        if end - begin != count * _ST_SIZE[dt] or begin < 0 or base + end > len(data):
            raise ValueError(f"{path}: tensor {name} has bad offsets [{begin}, {end}) for {dt} {shape}")
        raw = data[base + begin:base + end]
        if dt == "BF16":
            arr = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            arr = np.frombuffer(raw, dtype=_ST_NUMPY[dt]).copy()
        out[name] = arr.reshape(shape)
    return out, meta


def write_safetensors(path, tensors, metadata=None, bf16_names=()):
    """Writes {name: numpy array} atomically (temp file + rename). Names in bf16_names are
    stored as BF16 (rounded to nearest even); other arrays keep their numpy dtype."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        if name in bf16_names:
            dt = "BF16"
            blob = f32_to_bf16_bits(arr.astype(np.float32)).astype("<u2").tobytes()
        else:
            if arr.dtype not in _NUMPY_ST:
                raise ValueError(f"cannot store {name} with dtype {arr.dtype}")
            dt = _NUMPY_ST[arr.dtype]
            blob = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)  # pad so the data starts 8-byte aligned
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def write_json_atomic(path, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# configuration and checkpoints
# ---------------------------------------------------------------------------------------

class Config:
    """The fields of HF LlamaConfig the math needs, with HF's defaults."""

    def __init__(self, d):
        def need(key):
            if key not in d:
                raise ValueError(f"config: missing required key '{key}'")
            return d[key]

        self.hidden_size = int(need("hidden_size"))
        self.intermediate_size = int(need("intermediate_size"))
        self.num_hidden_layers = int(need("num_hidden_layers"))
        self.num_attention_heads = int(need("num_attention_heads"))
        self.num_key_value_heads = int(d.get("num_key_value_heads") or self.num_attention_heads)
        self.vocab_size = int(need("vocab_size"))
        model_type = d.get("model_type", "llama")
        if model_type not in ("llama", "qwen2", "qwen3"):
            raise ValueError(f"config: model_type '{model_type}' is not supported by the reference")
        self.model_type = model_type
        default_head_dim = 128 if model_type == "qwen3" else self.hidden_size // self.num_attention_heads
        self.head_dim = int(d.get("head_dim") or default_head_dim)
        self.rms_norm_eps = float(d.get("rms_norm_eps", 1e-6))  # HF LlamaConfig default
        self.rope_theta = float(d.get("rope_theta", 10000.0))
        self.tie_word_embeddings = bool(d.get("tie_word_embeddings", False))
        if model_type == "qwen2":  # Qwen2Attention: q/k/v biases always, none on o_proj
            self.qkv_bias, self.o_bias = True, False
        else:  # LlamaAttention, Qwen3Attention: bias=config.attention_bias on all four
            self.qkv_bias = self.o_bias = bool(d.get("attention_bias", False))
        self.qk_norm = model_type == "qwen3"
        self.mlp_bias = bool(d.get("mlp_bias", False))
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"config: hidden_act '{act}' is not supported (only silu)")
        self.rope_scaling = d.get("rope_scaling") or None
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind == "default":
                self.rope_scaling = None
            elif kind not in ("linear", "llama3"):
                raise ValueError(f"config: rope_scaling {self.rope_scaling} is not supported by the reference")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("config: num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ValueError("config: head_dim must be even for RoPE")
        # "half" = HF rotate-half; "interleaved" = llama2.c / Meta pairs (2i, 2i+1).
        self.rope_style = d.get("rope_style", "half")


def param_names(cfg, present=()):
    """HF parameter names of the model; optional biases are included when present."""
    names = ["model.embed_tokens.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        names.append(p + "input_layernorm.weight")
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.append(p + f"self_attn.{proj}.weight")
            bias = p + f"self_attn.{proj}.bias"
            if (cfg.o_bias if proj == "o_proj" else cfg.qkv_bias) or bias in present:
                names.append(bias)
        if cfg.qk_norm:
            names += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
        names.append(p + "post_attention_layernorm.weight")
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names.append(p + f"mlp.{proj}.weight")
            if cfg.mlp_bias:
                names.append(p + f"mlp.{proj}.bias")
    names.append("model.norm.weight")
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def param_shapes(cfg):
    C, H, V, D = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    qd, kvd = cfg.num_attention_heads * D, cfg.num_key_value_heads * D
    shapes = {}
    for name in param_names(cfg, present=[f"model.layers.{i}.self_attn.o_proj.bias"
                                          for i in range(cfg.num_hidden_layers)]):
        leaf = name.split(".")[-2] + "." + name.split(".")[-1]
        shapes[name] = {
            "embed_tokens.weight": (V, C), "lm_head.weight": (V, C),
            "input_layernorm.weight": (C,), "post_attention_layernorm.weight": (C,), "norm.weight": (C,),
            "q_norm.weight": (D,), "k_norm.weight": (D,),
            "q_proj.weight": (qd, C), "k_proj.weight": (kvd, C), "v_proj.weight": (kvd, C),
            "o_proj.weight": (C, qd), "q_proj.bias": (qd,), "k_proj.bias": (kvd,), "v_proj.bias": (kvd,),
            "o_proj.bias": (C,), "gate_proj.weight": (H, C), "up_proj.weight": (H, C),
            "down_proj.weight": (C, H), "gate_proj.bias": (H,), "up_proj.bias": (H,), "down_proj.bias": (C,),
        }[leaf]
    return shapes


def load_hf_dir(model_dir):
    """Returns (config dict, {name: numpy array}) from config.json + model.safetensors
    (or the shards listed in model.safetensors.index.json)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    single = os.path.join(model_dir, "model.safetensors")
    index = os.path.join(model_dir, "model.safetensors.index.json")
    weights = {}
    if os.path.exists(single):
        weights, _ = read_safetensors(single)
    elif os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        for shard in sorted(set(weight_map.values())):
            part, _ = read_safetensors(os.path.join(model_dir, shard))
            for name, arr in part.items():
                if weight_map.get(name) != shard:
                    raise ValueError(f"{shard}: tensor {name} is not listed for this shard in the index")
                weights[name] = arr
        missing = set(weight_map) - set(weights)
        if missing:
            raise ValueError(f"{index}: tensors listed but not found in any shard: {sorted(missing)[:5]}")
    else:
        raise FileNotFoundError(f"{model_dir}: neither model.safetensors nor model.safetensors.index.json")
    return config, weights


def load_llama2c(path):
    """A llama2.c checkpoint (legacy format: 7 int32 header, then float32 weights), kept in
    llama2.c's own layout (interleaved RoPE, q/k not permuted), under HF names."""
    with open(path, "rb") as f:
        data = f.read()
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack("<7i", data[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    hd = dim // n_heads
    kvd = n_kv_heads * hd
    floats = np.frombuffer(data, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > floats.size:
            raise ValueError(f"{path}: file too short for the header {dim, hidden, n_layers, n_heads, n_kv_heads}")
        arr = floats[pos:pos + n].reshape(shape).copy()
        pos += n
        return arr

    w = {}
    emb = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, dim, dim)
    wk = take(n_layers, kvd, dim)
    wv = take(n_layers, kvd, dim)
    wo = take(n_layers, dim, dim)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len, hd // 2)  # freq_cis_real (unused: recomputed)
    take(seq_len, hd // 2)  # freq_cis_imag
    w["model.embed_tokens.weight"] = emb
    for i in range(n_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = rms_att[i]
        w[p + "self_attn.q_proj.weight"] = wq[i]
        w[p + "self_attn.k_proj.weight"] = wk[i]
        w[p + "self_attn.v_proj.weight"] = wv[i]
        w[p + "self_attn.o_proj.weight"] = wo[i]
        w[p + "post_attention_layernorm.weight"] = rms_ffn[i]
        w[p + "mlp.gate_proj.weight"] = w1[i]
        w[p + "mlp.down_proj.weight"] = w2[i]
        w[p + "mlp.up_proj.weight"] = w3[i]
    w["model.norm.weight"] = rms_final
    if not shared:
        w["lm_head.weight"] = take(vocab, dim)
    if pos != floats.size:
        raise ValueError(f"{path}: {floats.size - pos} trailing floats after the last tensor")
    config = {"hidden_size": dim, "intermediate_size": hidden, "num_hidden_layers": n_layers,
              "num_attention_heads": n_heads, "num_key_value_heads": n_kv_heads, "vocab_size": vocab,
              "max_position_embeddings": seq_len, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": shared, "rope_style": "interleaved"}
    return config, w


def permute_for_rotate_half(w, n_heads, head_dim):
    """Interleaved-RoPE projection rows -> rotate-half rows (what HF's conversion does):
    within each head, rows (0, 1, 2, 3, ...) become (0, 2, 4, ..., 1, 3, 5, ...)."""
    rows = np.arange(n_heads * head_dim).reshape(n_heads, head_dim // 2, 2)
    order = rows.transpose(0, 2, 1).reshape(-1)
    return w[order]


def read_llama2c_tokenizer(path):
    """tokenizer.bin: int32 max_token_length, then per token float32 score, int32 len, bytes.
    Returns (pieces as bytes, scores)."""
    with open(path, "rb") as f:
        data = f.read()
    pos, pieces, scores = 4, [], []
    while pos < len(data):
        score, n = struct.unpack("<fi", data[pos:pos + 8])
        pieces.append(data[pos + 8:pos + 8 + n])
        scores.append(score)
        pos += 8 + n
    return pieces, scores


def encode_llama2c(tokenizer_bin, text, bos=True):
    """llama2.c's encoder (SentencePiece BPE by piece score, dummy-prefix space, byte
    fallback at id byte + 3), written from its description: start from one token per UTF-8
    character, then repeatedly merge the adjacent pair whose concatenation is the
    highest-scoring piece."""
    pieces, scores = read_llama2c_tokenizer(tokenizer_bin)
    ids = {p: i for i, p in enumerate(pieces)}
    tokens = []
    if text:
        text = " " + text
    for ch in text:
        b = ch.encode("utf-8")
        if b in ids:
            tokens.append(ids[b])
        else:
            tokens.extend(x + 3 for x in b)
    while True:
        best, best_i = None, -1
        for i in range(len(tokens) - 1):
            j = ids.get(pieces[tokens[i]] + pieces[tokens[i + 1]])
            if j is not None and (best is None or scores[j] > scores[best]):
                best, best_i = j, i
        if best is None:
            break
        tokens[best_i:best_i + 2] = [best]
    return ([1] if bos else []) + tokens


# ---------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------

def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_inv_freq(D, theta, rope_scaling=None):
    """(D/2) float64 frequencies theta^(-2i/D), with HF's rope_scaling applied:
    linear divides them by factor (= positions divided by factor); llama3 follows
    transformers' _compute_llama3_parameters (vectorised over the frequencies)."""
    inv_freq = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    if rope_scaling is None:
        return inv_freq
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    factor = float(rope_scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind != "llama3":
        raise ValueError(f"rope_scaling {rope_scaling} is not supported by the reference")
    low, high = float(rope_scaling["low_freq_factor"]), float(rope_scaling["high_freq_factor"])
    old_len = float(rope_scaling["original_max_position_embeddings"])
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_angles(T, D, theta, pos0=0, inv_freq=None):
    """(T, D/2) float64 angles pos * inv_freq[i] (default theta^(-2i/D))."""
    if inv_freq is None:
        inv_freq = rope_inv_freq(D, theta)
    pos = torch.arange(pos0, pos0 + T, dtype=torch.float64)
    return pos[:, None] * inv_freq[None, :]


def apply_rope_half(x, cos, sin):
    """x (B, H, T, D); cos, sin (T, D/2). Pairs (i, i + D/2)."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def apply_rope_interleaved(x, cos, sin):
    """x (B, H, T, D); cos, sin (T, D/2). Pairs (2i, 2i + 1)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def causal_attention(q, k, v):
    """q (B, Hq, T, D), k/v (B, Hkv, T, D) -> (B, Hq, T, D). Query head h reads kv head
    h // (Hq / Hkv) (HF repeat_kv)."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    T = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class LlamaRef:
    def __init__(self, config, weights, dtype=torch.float64, requires_grad=False):
        cfg = Config(config)
        self.cfg = cfg
        self.dtype = dtype
        weights = dict(weights)
        if cfg.tie_word_embeddings:
            weights.pop("lm_head.weight", None)  # HF ties it to the embedding and ignores a stored copy
        for name in list(weights):
            if name.endswith("rotary_emb.inv_freq"):
                del weights[name]  # buffers some old checkpoints carry
        names = param_names(cfg, present=weights.keys())
        missing = [n for n in names if n not in weights]
        unexpected = [n for n in weights if n not in names]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the config: missing {missing[:6]}, "
                             f"unexpected {unexpected[:6]}")
        shapes = param_shapes(cfg)
        self.params = {}
        for name in names:
            arr = np.asarray(weights[name])
            if tuple(arr.shape) != tuple(shapes[name]):
                raise ValueError(f"{name}: shape {tuple(arr.shape)}, expected {tuple(shapes[name])}")
            t = torch.from_numpy(np.array(arr, dtype=np.float64)).to(dtype)
            self.params[name] = t.requires_grad_(requires_grad)

    def lm_head(self):
        return self.params["model.embed_tokens.weight" if self.cfg.tie_word_embeddings else "lm_head.weight"]

    def linear(self, x, prefix):
        y = x @ self.params[prefix + ".weight"].t()
        bias = self.params.get(prefix + ".bias")
        return y if bias is None else y + bias

    def embed(self, tokens):
        """tokens (B, T) -> the embedding rows (B, T, C)."""
        return self.params["model.embed_tokens.weight"][tokens]

    def head(self, h):
        """the final norm's output (B, T, C) -> logits (B, T, V)."""
        return h @ self.lm_head().t()

    def forward(self, tokens):
        """tokens (B, T) int64 -> logits (B, T, V)."""
        cfg, P = self.cfg, self.params
        B, T = tokens.shape
        Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        ang = rope_angles(T, D, cfg.rope_theta, inv_freq=rope_inv_freq(D, cfg.rope_theta, cfg.rope_scaling))
        cos, sin = torch.cos(ang).to(self.dtype), torch.sin(ang).to(self.dtype)
        rope = apply_rope_interleaved if cfg.rope_style == "interleaved" else apply_rope_half
        h = self.embed(tokens)
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            a = rms_norm(h, P[p + "input_layernorm.weight"], cfg.rms_norm_eps)
            q = self.linear(a, p + "self_attn.q_proj").view(B, T, Hq, D).transpose(1, 2)
            k = self.linear(a, p + "self_attn.k_proj").view(B, T, Hkv, D).transpose(1, 2)
            v = self.linear(a, p + "self_attn.v_proj").view(B, T, Hkv, D).transpose(1, 2)
            if cfg.qk_norm:  # Qwen3: each head normalised over its D values, before RoPE
                q = rms_norm(q, P[p + "self_attn.q_norm.weight"], cfg.rms_norm_eps)
                k = rms_norm(k, P[p + "self_attn.k_norm.weight"], cfg.rms_norm_eps)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            att = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, Hq * D)
            h = h + self.linear(att, p + "self_attn.o_proj")
            m = rms_norm(h, P[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
            gate = self.linear(m, p + "mlp.gate_proj")
            up = self.linear(m, p + "mlp.up_proj")
            h = h + self.linear(torch.nn.functional.silu(gate) * up, p + "mlp.down_proj")
        h = rms_norm(h, P["model.norm.weight"], cfg.rms_norm_eps)
        return self.head(h)


def token_losses(logits, targets):
    """logits (B, T, V), targets (B, T) with < 0 ignored -> (sum of -log p, count)."""
    logp = torch.log_softmax(logits, dim=-1)
    mask = targets >= 0
    nll = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (nll * mask).sum(), int(mask.sum())


# ---------------------------------------------------------------------------------------
# random models
# ---------------------------------------------------------------------------------------

def hf_config(overrides, torch_dtype="float32"):
    """config.json as HF LlamaForCausalLM writes it (Qwen2/Qwen3ForCausalLM when the
    overrides set model_type), with `overrides` applied; head_dim is hidden_size /
    num_attention_heads unless the overrides give one."""
    c = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": 48,
        "intermediate_size": 100,
        "num_hidden_layers": 2,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "vocab_size": 97,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": torch_dtype,
        "transformers_version": "4.44.0",
    }
    c.update(overrides)
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
    c["architectures"] = [arch[c["model_type"]]]
    if c["model_type"] != "llama":
        for key in ("mlp_bias", "pretraining_tp"):
            c.pop(key, None)
        c.setdefault("use_sliding_window", False)
    if c["model_type"] == "qwen2":
        c.pop("attention_bias", None)  # Qwen2Config has no such key: q/k/v biases always
    return c


def make_random_weights(cfg, seed):
    """Weights for a model whose logits are O(1) and whose gradients are not tiny:
    matrices ~ N(0, s) with s = clamp(0.7 / sqrt(fan_in), 0.02, 0.1), embeddings N(0, 0.1)
    (tied: also the lm_head, logits ~ 0.1 * sqrt(C)), biases N(0, 0.1), norms U(0.9, 1.1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in param_shapes(cfg).items():
        if name not in param_names(cfg):
            continue
        if name.endswith("norm.weight"):
            arr = rng.uniform(0.9, 1.1, size=shape)
        elif name.endswith(".bias"):
            arr = rng.normal(0.0, 0.1, size=shape)
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            arr = rng.normal(0.0, 0.1, size=shape)
        else:
            std = min(0.1, max(0.02, 0.7 / math.sqrt(shape[1])))
            arr = rng.normal(0.0, std, size=shape)
        out[name] = arr.astype(np.float32)
    return out


def make_model(out_dir, overrides, seed, dtype):
    torch_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[dtype]
    config = hf_config(overrides, torch_dtype)
    cfg = Config(config)
    weights = make_random_weights(cfg, seed)
    os.makedirs(out_dir, exist_ok=True)
    bf16 = set(weights) if dtype == "bfloat16" else set()
    if dtype == "float16":
        weights = {k: v.astype(np.float16) for k, v in weights.items()}
    write_safetensors(os.path.join(out_dir, "model.safetensors"), weights, {"format": "pt"}, bf16_names=bf16)
    write_json_atomic(os.path.join(out_dir, "config.json"), config)


# ---------------------------------------------------------------------------------------
# grads / forward
# ---------------------------------------------------------------------------------------

def load_model_for_cli(args, dtype, requires_grad):
    if args.llama2c:
        config, weights = load_llama2c(args.llama2c)
    else:
        config, weights = load_hf_dir(args.model)
    return LlamaRef(config, weights, dtype=dtype, requires_grad=requires_grad)


def run_reference(args, with_grads):
    dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
    model = load_model_for_cli(args, dtype, with_grads)
    with open(args.input) as f:
        inp = json.load(f)
    tokens = torch.tensor(inp["tokens"], dtype=torch.int64)
    if tokens.dim() != 2:
        raise ValueError("input: tokens must be a (B, T) list of lists")
    V = model.cfg.vocab_size
    if tokens.min() < 0 or tokens.max() >= V:
        raise ValueError(f"input: token ids must lie in [0, {V})")
    targets = None
    if "targets" in inp:
        targets = torch.tensor(inp["targets"], dtype=torch.int64)
        if targets.shape != tokens.shape:
            raise ValueError(f"input: targets {tuple(targets.shape)} and tokens {tuple(tokens.shape)} differ")
        if targets.max() >= V:
            raise ValueError(f"input: target ids must be < {V}")
    elif with_grads:
        raise ValueError("input: grads needs targets")

    with torch.set_grad_enabled(with_grads):
        logits = model.forward(tokens)
        out = {"logits": logits.detach().reshape(-1, V).to(torch.float32).numpy()}
        if targets is not None:
            loss_sum, count = token_losses(logits, targets)
            out["loss_sum"] = np.array([loss_sum.item()], dtype=np.float32)
            out["loss_sum_f64"] = np.array([loss_sum.item()], dtype=np.float64)
            out["count"] = np.array([count], dtype=np.float32)
            if with_grads:
                loss_sum.backward()
                for name, p in model.params.items():
                    g = p.grad if p.grad is not None else torch.zeros_like(p)
                    out["grad." + name] = g.detach().to(torch.float32).numpy()
    write_safetensors(args.out, out, {"format": "lmtune-reference", "dtype": args.dtype})
    if targets is not None:
        print(f"loss_sum={out['loss_sum_f64'][0]:.10g} count={int(out['count'][0])}")


# ---------------------------------------------------------------------------------------
# selftest
# ---------------------------------------------------------------------------------------

def _naive_rope_half(x, theta, pos0=0):
    B, H, T, D = x.shape
    y = x.clone()
    for t in range(T):
        for i in range(D // 2):
            a = (pos0 + t) * theta ** (-2.0 * i / D)
            c, s = math.cos(a), math.sin(a)
            x0, x1 = x[:, :, t, i], x[:, :, t, i + D // 2]
            y[:, :, t, i] = x0 * c - x1 * s
            y[:, :, t, i + D // 2] = x0 * s + x1 * c
    return y


def _meta_apply_scaling(freqs, factor, low_freq_factor, high_freq_factor, old_context_len):
    """Llama 3.1's frequency scaling as Meta's llama-models writes it: a loop over the
    frequencies (independent of the vectorised HF form in rope_inv_freq)."""
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            out.append(freq)
        elif wavelen > low_freq_wavelen:
            out.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return torch.tensor(out, dtype=torch.float64)


def _naive_attention(q, k, v):
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(Hq):
            g = h // (Hq // Hkv)
            for t in range(T):
                scores = [float(q[b, h, t] @ k[b, g, s]) / math.sqrt(D) for s in range(t + 1)]
                mx = max(scores)
                w = [math.exp(sc - mx) for sc in scores]
                z = sum(w)
                for s in range(t + 1):
                    out[b, h, t] += (w[s] / z) * v[b, g, s]
    return out


def selftest():
    torch.manual_seed(0)
    dt = torch.float64
    failures = []

    def check(name, ok, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
        if not ok:
            failures.append(name)

    # RoPE rotate-half against a loop, at an offset position and a theta != 10000.
    x = torch.randn(2, 3, 5, 8, dtype=dt)
    ang = rope_angles(5, 8, 50000.0, pos0=3)
    err = (apply_rope_half(x, torch.cos(ang), torch.sin(ang)) - _naive_rope_half(x, 50000.0, 3)).abs().max().item()
    check("rope_half_vs_loop", err < 1e-12, f"max err {err:.2e}")

    # Interleaved RoPE == rotate-half after the HF permutation of the head dimension.
    xi = torch.randn(2, 3, 5, 8, dtype=dt)
    perm = permute_for_rotate_half(np.eye(8), 1, 8)  # row j of perm selects source row
    order = torch.tensor(np.argmax(perm, axis=1))
    ang = rope_angles(5, 8, 10000.0)
    a = apply_rope_interleaved(xi, torch.cos(ang), torch.sin(ang))[..., order]
    b = apply_rope_half(xi[..., order], torch.cos(ang), torch.sin(ang))
    err = (a - b).abs().max().item()
    check("rope_interleaved_vs_permuted_half", err < 1e-12, f"max err {err:.2e}")

    # RoPE scaling: llama3 (Llama 3.1 8B's values, and a small config whose 8 frequencies
    # fall in all three bands) against Meta's loop; linear = positions divided by factor.
    for D, theta, sc in ((128, 500000.0, {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192}),
                         (16, 10000.0, {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 64})):
        ours = rope_inv_freq(D, theta, dict(sc, rope_type="llama3"))
        base = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        meta = _meta_apply_scaling(base, sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"],
                                   sc["original_max_position_embeddings"])
        err = ((ours - meta).abs() / meta).max().item()
        ratio = base / ours
        bands = (int((ratio == 1).sum()), int(((ratio > 1) & (ratio < sc["factor"])).sum()),
                 int((ratio == sc["factor"]).sum()))
        check(f"rope_llama3_vs_meta_loop D={D}", err < 1e-14 and min(bands) > 0, f"rel err {err:.2e}, bands {bands}")
    lin = rope_angles(7, 8, 10000.0, inv_freq=rope_inv_freq(8, 10000.0, {"type": "linear", "factor": 4.0}))
    err = (lin - rope_angles(7, 8, 10000.0) / 4.0).abs().max().item()
    check("rope_linear_is_positions_over_factor", err < 1e-14, f"max err {err:.2e}")

    # Attention (GQA, causal) against a loop.
    q, k, v = torch.randn(2, 6, 7, 4, dtype=dt), torch.randn(2, 2, 7, 4, dtype=dt), torch.randn(2, 2, 7, 4, dtype=dt)
    err = (causal_attention(q, k, v) - _naive_attention(q, k, v)).abs().max().item()
    check("attention_gqa_vs_loop", err < 1e-12, f"max err {err:.2e}")

    # RMSNorm against the formula element by element.
    xr, wr = torch.randn(3, 10, dtype=dt), torch.randn(10, dtype=dt)
    ref = torch.stack([xr[i] / math.sqrt(float((xr[i] ** 2).mean()) + 1e-5) * wr for i in range(3)])
    err = (rms_norm(xr, wr, 1e-5) - ref).abs().max().item()
    check("rmsnorm_vs_formula", err < 1e-12, f"max err {err:.2e}")

    # Tiny model: gradcheck of the summed loss against finite differences, all parameters.
    for overrides in ({"tie_word_embeddings": False, "attention_bias": False},
                      {"tie_word_embeddings": True, "attention_bias": True},
                      {"model_type": "qwen3", "head_dim": 6, "attention_bias": True}):
        base = {"hidden_size": 12, "intermediate_size": 10, "num_hidden_layers": 2, "num_attention_heads": 3,
                "num_key_value_heads": 1, "vocab_size": 11, "rope_theta": 500.0}
        base.update(overrides)
        config = hf_config(base)
        cfg = Config(config)
        weights = make_random_weights(cfg, seed=1)
        model = LlamaRef(config, weights, dtype=dt, requires_grad=True)
        names = list(model.params)
        tokens = torch.tensor([[1, 5, 7, 2, 9], [3, 3, 10, 0, 4]])
        targets = torch.tensor([[5, 7, -100, 9, 1], [3, 10, 0, -1, 6]])

        def f(*ps):
            saved = dict(model.params)
            model.params = dict(zip(names, ps))
            try:
                return token_losses(model.forward(tokens), targets)[0]
            finally:
                model.params = saved

        ok = torch.autograd.gradcheck(f, tuple(model.params[n] for n in names), eps=1e-6, atol=1e-7, rtol=1e-5,
                                      raise_exception=False)
        check(f"gradcheck_tiny_model {overrides}", ok)
        loss, count = token_losses(model.forward(tokens), targets)
        check("ignored_targets_count", count == 8, f"count {count}")

    # llama2.c layout (interleaved) == HF layout (permuted q/k, rotate-half) on a tiny model.
    config = hf_config({"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 13})
    cfg = Config(config)
    w = make_random_weights(cfg, seed=2)
    inter = LlamaRef(dict(config, rope_style="interleaved"), w, dtype=dt)
    wp = dict(w)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        wp[name] = permute_for_rotate_half(w[name], 2, 8)
    half = LlamaRef(config, wp, dtype=dt)
    tok = torch.tensor([[0, 4, 12, 7, 7, 1]])
    err = (inter.forward(tok) - half.forward(tok)).abs().max().item()
    check("llama2c_layout_vs_hf_layout", err < 1e-12, f"max err {err:.2e}")

    # safetensors round trip, BF16 rounding, sharded loading.
    with tempfile.TemporaryDirectory() as d:
        arrs = {"a": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "b": np.array([1, -2], dtype=np.int64),
                "c": np.array([1.0, 1.00390625, 1.01171875, -3e38, np.inf], dtype=np.float32)}
        write_safetensors(os.path.join(d, "x.safetensors"), arrs, {"k": "v"}, bf16_names={"c"})
        back, meta = read_safetensors(os.path.join(d, "x.safetensors"))
        ok = (np.array_equal(back["a"], arrs["a"]) and np.array_equal(back["b"], arrs["b"])
              and meta == {"k": "v"})
        # 1.00390625 = 1 + 2^-8 is a tie between 1 and 1 + 2^-7 -> even (1.0);
        # 1.01171875 = 1 + 3*2^-8 is a tie between 1+2^-7 and 1+2^-6 -> even (1.015625).
        bf = back["c"]
        ok = ok and bf[0] == 1.0 and bf[1] == 1.0 and bf[2] == 1.015625 and np.isinf(bf[4])
        check("safetensors_roundtrip_bf16", ok, f"bf16 {bf.tolist()}")

        make_model(os.path.join(d, "m"), {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1,
                                          "intermediate_size": 12, "vocab_size": 9, "num_hidden_layers": 2}, 3,
                   "float32")
        config, w = load_hf_dir(os.path.join(d, "m"))
        names = sorted(w)
        half_n = len(names) // 2
        shards = {"model-00001-of-00002.safetensors": names[:half_n],
                  "model-00002-of-00002.safetensors": names[half_n:]}
        os.makedirs(os.path.join(d, "s"))
        weight_map = {}
        for shard, ns in shards.items():
            write_safetensors(os.path.join(d, "s", shard), {n: w[n] for n in ns})
            weight_map.update({n: shard for n in ns})
        write_json_atomic(os.path.join(d, "s", "config.json"), config)
        write_json_atomic(os.path.join(d, "s", "model.safetensors.index.json"),
                          {"metadata": {"total_size": 0}, "weight_map": weight_map})
        _, ws = load_hf_dir(os.path.join(d, "s"))
        ok = sorted(ws) == names and all(np.array_equal(ws[n], w[n]) for n in names)
        check("sharded_checkpoint", ok)

        make_model(os.path.join(d, "b"), {"hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 12,
                                          "vocab_size": 9, "num_hidden_layers": 1}, 3, "bfloat16")
        _, wb = load_hf_dir(os.path.join(d, "b"))
        e = wb["model.embed_tokens.weight"]
        ok = np.array_equal(e.view(np.uint32) & 0xFFFF, np.zeros_like(e.view(np.uint32)))
        check("bf16_checkpoint", ok)

    if failures:
        print(f"selftest: {len(failures)} failure(s): {failures}")
        return 1
    print("selftest: all passed")
    return 0


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    mk = sub.add_parser("make-model", help="write a random HF LLaMA model dir")
    mk.add_argument("--out", required=True)
    mk.add_argument("--config", help="JSON file (or inline JSON) of config.json overrides")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])

    for name in ("grads", "forward"):
        p = sub.add_parser(name)
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--model", help="HF model dir")
        src.add_argument("--llama2c", help="llama2.c model.bin")
        p.add_argument("--input", required=True, help="JSON {tokens: [[...]], targets: [[...]]}")
        p.add_argument("--out", required=True, help="output .safetensors")
        p.add_argument("--dtype", default="float64", choices=["float64", "float32"])

    tk = sub.add_parser("tokenize", help="encode text with a llama2.c tokenizer.bin (BOS first); prints JSON ids")
    tk.add_argument("--tokenizer", required=True)
    tk.add_argument("--text", required=True)

    sub.add_parser("selftest")
    args = ap.parse_args(argv)

    if args.cmd == "make-model":
        overrides = {}
        if args.config:
            text = args.config
            if not text.lstrip().startswith("{"):
                with open(text) as f:
                    text = f.read()
            overrides = json.loads(text)
        make_model(args.out, overrides, args.seed, args.dtype)
        return 0
    if args.cmd == "grads":
        run_reference(args, with_grads=True)
        return 0
    if args.cmd == "forward":
        run_reference(args, with_grads=False)
        return 0
    if args.cmd == "tokenize":
        print(json.dumps(encode_llama2c(args.tokenizer, args.text)))
        return 0
    if args.cmd == "selftest":
        return selftest()
    return 2


if __name__ == "__main__":
    sys.exit(main())
