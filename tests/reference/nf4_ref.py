#!/usr/bin/env python3
"""NF4 with double quantization, as bitsandbytes computes it: the independent reference for
lmtune's QLoRA storage (trainer/peft/nf4.h, kernels/cpu/quant.h). numpy only; it shares no
code with lmtune.

What it implements (bitsandbytes/functional.py quantize_4bit(compress_statistics=True,
quant_type="nf4", blocksize=64) with the pure-PyTorch "default" backend's kernels,
bitsandbytes/backends/default/ops.py), all in float32:
  quantize_4bit   flatten; blocks of 64 (the last may be partial); absmax = max|x| per block;
                  scaled = clamp(x * (1 / max(absmax, 1e-38)), -1, 1) — the partial block
                  computes x / max(absmax, 1e-38) and stores that clamped absmax;
                  code = torch.bucketize(scaled, midpoints of the NF4 table, right=False);
                  packed = (code[0::2] << 4) | code[1::2], an odd count padded with scaled 0.
  double quant    offset = mean(absmax); quantize_blockwise(absmax - offset, blocksize=256)
                  with the signed dynamic map, by the same rule (bucketize on the map's
                  midpoints), one absmax per block of 256.
  dequantize      absmax' = map[qabsmax] * nested_absmax + offset; value = nf4[code] * absmax'.
Two choices where bitsandbytes' own computation is not reproducible off its torch build:
  * the mean is summed sequentially in float64 and rounded to float32 (torch's float32 mean
    may differ in the last bit);
  * the dynamic map (create_dynamic_map(signed=True)) is computed in exact arithmetic: each
    value the integer ratio (2(f-1) + 9(2j+1)) / (20 (f-1) 10^(6-i)) in float64, rounded to
    float32 (torch builds it with float32 linspace; `map-vs-torch` reports the difference).

Usage (run with /usr/bin/python3):
  nf4_ref.py quantize IN OUT.safetensors [--projections]
      IN a safetensors file or an HF model directory; for every F32 tensor NAME of it (with
      --projections: only the blocks' projection matrices): NAME.codes (U8, (n+1)/2), NAME.absmax (U8),
      NAME.nested_absmax, NAME.nested_offset (1), NAME.nested_quant_map (256), NAME.dequantized
  nf4_ref.py to-bnb HF_DIR OUT_DIR
      the HF model as a bitsandbytes 4-bit checkpoint: every block projection replaced by
      bitsandbytes' six state-dict tensors (weight, weight.absmax, weight.quant_map,
      weight.nested_absmax, weight.nested_quant_map, weight.quant_state.bitsandbytes__nf4),
      config.json with a quantization_config, the tokenizer files copied
  nf4_ref.py dequantize-bnb DIR OUT.safetensors
      reads a bitsandbytes 4-bit checkpoint and writes each quantized weight dequantized
      (F32, its quant_state shape), under its own name
  nf4_ref.py map-vs-torch
      prints how many values of the map differ from torch's create_dynamic_map, and by how
      many float32 ulps at most
"""

import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402  (safetensors reading and writing only)

F32 = np.float32
BLOCK = 64
NESTED_BLOCK = 256
MIN_ABSMAX = F32(1e-38)

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=F32)

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")


def dynamic_map():
    vals = []
    for i in range(7):
        f = 2 ** i + 1
        for j in range(f - 1):
            v = F32((2 * (f - 1) + 9 * (2 * j + 1)) / (20 * (f - 1) * 10 ** (6 - i)))
            vals += [v, -v]
    vals += [F32(0.0), F32(1.0)]
    return np.sort(np.array(vals, dtype=F32))


def midpoints(code):
    return ((code[:-1] + code[1:]) / F32(2)).astype(F32)


def blockwise(x, blocksize, code):
    """bitsandbytes' quantize_blockwise / quantize_4bit rule: (codes, absmax), float32."""
    x = np.asarray(x, dtype=F32).reshape(-1)
    n = x.size
    mid = midpoints(code)
    full = n - n % blocksize
    blocks = x[:full].reshape(-1, blocksize)
    absmax = np.abs(blocks).max(axis=1) if full else np.zeros(0, dtype=F32)
    inv = (F32(1.0) / np.maximum(absmax, MIN_ABSMAX)).astype(F32)
    scaled = np.clip(blocks * inv[:, None], F32(-1), F32(1)).reshape(-1)
    if n % blocksize:
        am = np.maximum(np.abs(x[full:]).max(), MIN_ABSMAX)
        absmax = np.concatenate([absmax, np.array([am], dtype=F32)])
        scaled = np.concatenate([scaled, np.clip(x[full:] / am, F32(-1), F32(1))])
    codes = np.searchsorted(mid, scaled.astype(F32), side="left").astype(np.uint8)
    return codes, absmax.astype(F32)


def dequantize_blockwise(codes, absmax, blocksize, code):
    idx = np.arange(codes.size) // blocksize
    return (code[codes.astype(np.int64)] * absmax[idx]).astype(F32)


def quantize(x, nested_code=None):
    """x (any shape) -> dict of codes (packed), absmax (u8), nested_absmax, offset, nested_quant_map."""
    nested_code = dynamic_map() if nested_code is None else nested_code
    flat = np.asarray(x, dtype=F32).reshape(-1)
    codes, absmax = blockwise(flat, BLOCK, NF4)
    if codes.size % 2:
        zero = np.searchsorted(midpoints(NF4), np.array([0], dtype=F32), side="left").astype(np.uint8)
        codes = np.concatenate([codes, zero])
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8)
    offset = F32(np.cumsum(absmax.astype(np.float64))[-1] / absmax.size)
    qabsmax, nested = blockwise((absmax - offset).astype(F32), NESTED_BLOCK, nested_code)
    return {"codes": packed, "absmax": qabsmax, "nested_absmax": nested, "nested_offset": np.array([offset], dtype=F32),
            "nested_quant_map": nested_code}


def dequantize(q, n):
    blocks = q["absmax"].size
    absmax = dequantize_blockwise(q["absmax"], q["nested_absmax"], NESTED_BLOCK, q["nested_quant_map"])
    absmax = (absmax + q["nested_offset"][0]).astype(F32)
    assert absmax.size == blocks
    codes = np.empty(q["codes"].size * 2, dtype=np.uint8)
    codes[0::2] = q["codes"] >> 4
    codes[1::2] = q["codes"] & 0x0F
    codes = codes[:n]
    return (NF4[codes.astype(np.int64)] * absmax[np.arange(n) // BLOCK]).astype(F32)


def roundtrip(w):
    """What NF4 storage of w stands for: dequantize(quantize(w)), in w's shape."""
    w = np.asarray(w, dtype=F32)
    return dequantize(quantize(w), w.size).reshape(w.shape)


# ---- bitsandbytes' state-dict layout ----------------------------------------------------

def is_projection(name):
    return name.startswith("model.layers.") and any(name.endswith("." + p + ".weight") for p in PROJECTIONS)


def bnb_tensors(name, w, dtype="float32"):
    q = quantize(w)
    state = {"quant_type": "nf4", "blocksize": BLOCK, "dtype": dtype, "shape": list(w.shape),
             "nested_blocksize": NESTED_BLOCK, "nested_dtype": "float32",
             "nested_offset": float(q["nested_offset"][0])}
    packed_state = np.frombuffer(json.dumps(state).encode("utf-8"), dtype=np.uint8).copy()
    return {name: q["codes"].reshape(-1, 1), name + ".absmax": q["absmax"], name + ".quant_map": NF4.copy(),
            name + ".nested_absmax": q["nested_absmax"], name + ".nested_quant_map": q["nested_quant_map"],
            name + ".quant_state.bitsandbytes__nf4": packed_state}


def read_bnb(tensors, name):
    state = json.loads(bytes(tensors[name + ".quant_state.bitsandbytes__nf4"].astype(np.uint8)).decode("utf-8"))
    if state["quant_type"] != "nf4" or state["blocksize"] != BLOCK or "nested_offset" not in state:
        raise ValueError(f"{name}: not double-quantized NF4 in blocks of 64: {state}")
    if not np.array_equal(tensors[name + ".quant_map"], NF4):
        raise ValueError(f"{name}: quant_map is not NF4's table")
    q = {"codes": tensors[name].reshape(-1), "absmax": tensors[name + ".absmax"],
         "nested_absmax": tensors[name + ".nested_absmax"],
         "nested_offset": np.array([state["nested_offset"]], dtype=F32),
         "nested_quant_map": tensors[name + ".nested_quant_map"]}
    shape = tuple(state["shape"])
    return dequantize(q, int(np.prod(shape))).reshape(shape)


def cmd_quantize(inp, out, projections_only):
    tensors = llama_ref.load_hf_dir(inp)[1] if os.path.isdir(inp) else llama_ref.read_safetensors(inp)[0]
    result = {}
    for name, x in tensors.items():
        if x.dtype != F32 or (projections_only and not is_projection(name)):
            continue
        q = quantize(x)
        for k, v in q.items():
            result[f"{name}.{k}"] = v
        result[name + ".dequantized"] = dequantize(q, x.size)
    llama_ref.write_safetensors(out, result)


def cmd_to_bnb(hf_dir, out_dir):
    config, weights = llama_ref.load_hf_dir(hf_dir)
    os.makedirs(out_dir, exist_ok=True)
    out = {}
    for name, w in weights.items():
        if is_projection(name):
            out.update(bnb_tensors(name, np.asarray(w, dtype=F32)))
        else:
            out[name] = np.asarray(w, dtype=F32)
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                     "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                                     "bnb_4bit_compute_dtype": "float32"}
    llama_ref.write_safetensors(os.path.join(out_dir, "model.safetensors"), out, {"format": "pt"})
    llama_ref.write_json_atomic(os.path.join(out_dir, "config.json"), config)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if os.path.exists(os.path.join(hf_dir, f)):
            shutil.copyfile(os.path.join(hf_dir, f), os.path.join(out_dir, f))


def cmd_dequantize_bnb(path, out):
    single = os.path.join(path, "model.safetensors") if os.path.isdir(path) else path
    tensors, _ = llama_ref.read_safetensors(single)
    names = [n[:-len(".quant_state.bitsandbytes__nf4")] for n in tensors if n.endswith(".quant_state.bitsandbytes__nf4")]
    llama_ref.write_safetensors(out, {n: read_bnb(tensors, n) for n in names})


def cmd_map_vs_torch():
    import torch  # only here: the comparison with bitsandbytes' own construction
    data = []
    for i in range(7):
        b = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        m = (b[:-1] + b[1:]) / 2.0
        data += ((10 ** (-6 + i)) * m).tolist()
        data += (-(10 ** (-6 + i)) * m).tolist()
    data += [0, 1.0]
    data.sort()
    theirs = torch.tensor(data, dtype=torch.float32).numpy()
    ours = dynamic_map()
    ulps = np.abs(ours.view(np.int32).astype(np.int64) - theirs.view(np.int32).astype(np.int64))
    print(f"map-vs-torch: {int((ulps > 0).sum())} of 256 values differ, at most {int(ulps.max())} ulp "
          f"(torch {torch.__version__})")


def main(argv):
    if len(argv) in (3, 4) and argv[0] == "quantize" and argv[3:] in ([], ["--projections"]):
        cmd_quantize(argv[1], argv[2], argv[3:] == ["--projections"])
    elif len(argv) == 3 and argv[0] == "to-bnb":
        cmd_to_bnb(argv[1], argv[2])
    elif len(argv) == 3 and argv[0] == "dequantize-bnb":
        cmd_dequantize_bnb(argv[1], argv[2])
    elif len(argv) == 1 and argv[0] == "map-vs-torch":
        cmd_map_vs_torch()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
