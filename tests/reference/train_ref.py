#!/usr/bin/env python3
"""An independent PyTorch training loop: the reference lmtune's trainer is checked against.

It shares no code with lmtune's C++ trainer. The model is tests/reference/llama_ref.py's
LlamaRef (written from HF LlamaForCausalLM's math); LoRA is added by a subclass that
overrides LlamaRef.linear(); the optimizer is torch.optim.AdamW; clipping is
torch.nn.utils.clip_grad_norm_; gradients come from autograd. What it reproduces of
lmtune's *contract* (not its code):

  per optimizer step s (0-based), with micro-batches b_1..b_k (gradient accumulation):
    loss_s = (sum of token losses over all micro-batches) / (number of targets >= 0 in them)
    grads  = d loss_s / d trainable         (accumulated micro-batch by micro-batch)
    clip_grad_norm_(trainable, max_norm)    (when max_norm > 0)
    AdamW step with lr(s):
      lr(s) = lr * (s + 1) / warmup                      for s < warmup
            = lr                                         for the constant schedule
            = min + (lr - min) * (1 + cos(pi * p)) / 2   cosine, p = min(1, (s - warmup) / max(1, total - warmup - 1))
            = lr + (min - lr) * p                        linear
      with min = lr * min_lr_ratio (so the last step runs at min).
  LoRA (dropout 0): y = x W^T + scaling * (x A^T) B^T, scaling = alpha / r (alpha / sqrt(r)
  with rslora); W frozen, A (r, in) and B (out, r) trained, initial A and B read from a
  safetensors file under PEFT's names ("base_model.model.<module>.lora_A.weight").
  QLoRA: LoRA over the projection matrices' NF4 values, W := dequantize(quantize(W)) by
  tests/reference/nf4_ref.py (numpy, bitsandbytes' algorithm).
  QAT ("qat": "q4_0", with full or lora), llama.cpp's Q4_0 x Q8_0 arithmetic with
  straight-through gradients (x + (fq(x) - x).detach()), the fake quantizers written here
  from ggml's reference quantizers in float32 torch ops: every projection
  y = fq8(x) fq4(W_eff)^T with W_eff = W + scaling B A under LoRA; the embedding rows fq8;
  logits = fq8(h) fq8(W_head)^T.

Usage (run with /usr/bin/python3, which has torch):
  train_ref.py --model HF_DIR --batches BATCHES.json --train-config CFG.json
               --out-losses LOSSES.json --out-weights WEIGHTS.safetensors
               [--adapter INIT.safetensors] [--dtype float64|float32]

  BATCHES.json: [[{"tokens": [...B*T], "targets": [...B*T], "B": B, "T": T}, ...], ...]
                one list of micro-batches per optimizer step (flat row-major (B, T) lists or
                nested [[...], ...] rows); a target < 0 is ignored.
  CFG.json:     {"method": "full" | "lora" | "qlora", "qat": null | "q4_0", "lr", "min_lr_ratio", "warmup_steps",
                 "total_steps", "schedule": "cosine" | "linear" | "constant",
                 "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "max_grad_norm",
                 "lora": {"rank", "alpha", "rslora", "target_modules": ["q", ..., "down"]}}
  Writes LOSSES.json {"loss": [...], "lr": [...], "grad_norm": [...]} (grad_norm before
  clipping) and WEIGHTS.safetensors: the final trainable tensors in float32 under lmtune's
  names (HF names for full fine-tuning; "<module>.lora_A.weight" / ".lora_B.weight").

Precision: float64 by default, so the reference's own rounding is negligible and what is
measured is lmtune's float32 error.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402
import nf4_ref  # noqa: E402

# lmtune's short target names -> HF module paths inside a block (PEFT's q_proj ... down_proj).
LORA_MODULES = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}
PEFT_PREFIX = "base_model.model."


class LoraLlamaRef(llama_ref.LlamaRef):
    """LlamaRef with LoRA adapters on the named linear layers. The base weights are frozen;
    self.adapters maps the module prefix ("model.layers.0.self_attn.q_proj") to [A, B]."""

    def __init__(self, config, weights, dtype, rank, alpha, rslora, targets, init_adapters):
        super().__init__(config, weights, dtype=dtype, requires_grad=False)
        self.scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        self.adapters = {}
        for i in range(self.cfg.num_hidden_layers):
            for t in targets:
                prefix = f"model.layers.{i}.{LORA_MODULES[t]}"
                w = self.params[prefix + ".weight"]
                ab = []
                for part, shape in (("lora_A", (rank, w.shape[1])), ("lora_B", (w.shape[0], rank))):
                    key = f"{PEFT_PREFIX}{prefix}.{part}.weight"
                    if key not in init_adapters:
                        raise ValueError(f"adapter file: missing {key}")
                    arr = np.asarray(init_adapters[key])
                    if tuple(arr.shape) != shape:
                        raise ValueError(f"adapter file: {key} has shape {arr.shape}, expected {shape}")
                    ab.append(torch.from_numpy(np.array(arr, dtype=np.float64)).to(dtype).requires_grad_(True))
                self.adapters[prefix] = ab

    def linear(self, x, prefix):
        y = super().linear(x, prefix)
        ab = self.adapters.get(prefix)
        if ab is None:
            return y
        a, b = ab
        return y + self.scaling * ((x @ a.t()) @ b.t())

    def trainable(self):
        """[(lmtune name, tensor)] of the adapters."""
        out = []
        for prefix, (a, b) in self.adapters.items():
            out.append((prefix + ".lora_A.weight", a))
            out.append((prefix + ".lora_B.weight", b))
        return out


def fq_q4_0(w):
    """ggml's quantize_row_q4_0_ref then dequantization, on the last dimension's runs of 32 (float32)."""
    x = w.detach().to(torch.float32).reshape(-1, 32)
    idx = x.abs().argmax(dim=1, keepdim=True)  # the first of equal magnitudes, as ggml's strict '<'
    d = x.gather(1, idx) / -8.0
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    q = torch.clamp(torch.trunc(x * inv + 8.5), max=15.0)
    return ((q - 8.0) * d.half().float()).reshape(w.shape).to(w.dtype)


def fq_q8_0(w):
    """ggml's quantize_row_q8_0_ref (roundf: half away from zero) then dequantization (float32)."""
    x = w.detach().to(torch.float32).reshape(-1, 32)
    d = x.abs().amax(dim=1, keepdim=True) / 127.0
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    v = x * inv
    t = torch.trunc(v)
    q = t + torch.sign(v) * ((v - t).abs() >= 0.5).to(torch.float32)
    return (q * d.half().float()).reshape(w.shape).to(w.dtype)


def ste(x, fq):
    """fq(x) forward, identity backward."""
    return x + (fq(x) - x).detach()


class QatLlamaRef(LoraLlamaRef):
    """QAT for Q4_0 over full fine-tuning (lora None) or LoRA (the weight fake-quantized is the
    merged W + scaling B A)."""

    def __init__(self, config, weights, dtype, lora):
        if lora is None:
            llama_ref.LlamaRef.__init__(self, config, weights, dtype=dtype, requires_grad=True)
            self.adapters, self.scaling, self.full = {}, 0.0, True
        else:
            super().__init__(config, weights, dtype, *lora)
            self.full = False

    def quantized_weight(self, prefix):
        """fq4(W_eff) forward, identity backward. The value quantized is W_eff as float32
        computes it for the export: W (float32) plus the float32 rounding of scaling B A."""
        w = self.params[prefix + ".weight"]
        ab = self.adapters.get(prefix)
        if ab is None:
            return ste(w, fq_q4_0)
        delta = self.scaling * (ab[1] @ ab[0])
        merged32 = w.detach().to(torch.float32) + delta.detach().to(torch.float32)
        return w + delta + (fq_q4_0(merged32).to(w.dtype) - (w + delta)).detach()

    def linear(self, x, prefix):
        y = ste(x, fq_q8_0) @ self.quantized_weight(prefix).t()
        bias = self.params.get(prefix + ".bias")
        return y if bias is None else y + bias

    def embed(self, tokens):
        return ste(super().embed(tokens), fq_q8_0)

    def head(self, h):
        return ste(h, fq_q8_0) @ ste(self.lm_head(), fq_q8_0).t()

    def trainable(self):
        return list(self.params.items()) if self.full else super().trainable()


def learning_rate(c, step):
    lr, warmup, total = float(c["lr"]), int(c["warmup_steps"]), int(c["total_steps"])
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if c["schedule"] == "constant":
        return lr
    min_lr = lr * float(c["min_lr_ratio"])
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    if c["schedule"] == "linear":
        return lr + (min_lr - lr) * progress
    if c["schedule"] == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {c['schedule']!r}")


def as_rows(values, B, T):
    t = torch.tensor(values, dtype=torch.int64)
    if t.numel() != B * T:
        raise ValueError(f"micro-batch has {t.numel()} values, expected B*T = {B}*{T}")
    return t.reshape(B, T)


def train(model_dir, steps, c, adapter_file, dtype):
    config, weights = llama_ref.load_hf_dir(model_dir)
    method, qat = c["method"], c.get("qat")
    if method == "qlora":
        weights = {n: nf4_ref.roundtrip(w) if nf4_ref.is_projection(n) else w for n, w in weights.items()}
    lora = None
    if method in ("lora", "qlora"):
        if not adapter_file:
            raise ValueError(f"method {method} needs --adapter (the initial adapter weights)")
        init, _ = llama_ref.read_safetensors(adapter_file)
        lc = c["lora"]
        lora = (int(lc["rank"]), float(lc["alpha"]), bool(lc.get("rslora", False)), lc["target_modules"], init)
    elif method != "full":
        raise ValueError(f"unknown method {method!r}")
    if qat not in (None, "q4_0"):
        raise ValueError(f"unknown qat scheme {qat!r}")
    if qat == "q4_0":
        model = QatLlamaRef(config, weights, dtype, lora)
        named = model.trainable()
    elif lora is None:
        model = llama_ref.LlamaRef(config, weights, dtype=dtype, requires_grad=True)
        named = list(model.params.items())
    else:
        model = LoraLlamaRef(config, weights, dtype, *lora)
        named = model.trainable()
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=float(c["lr"]), betas=(float(c["adam_beta1"]), float(c["adam_beta2"])),
                            eps=float(c["adam_eps"]), weight_decay=float(c["weight_decay"]))
    V = model.cfg.vocab_size
    losses, lrs, norms = [], [], []
    for step, micro in enumerate(steps):
        opt.zero_grad(set_to_none=True)
        batches = [(as_rows(m["tokens"], m["B"], m["T"]), as_rows(m["targets"], m["B"], m["T"])) for m in micro]
        n_targets = sum(int((tgt >= 0).sum()) for _, tgt in batches)
        if n_targets == 0:
            raise ValueError(f"step {step}: no training targets")
        total = 0.0
        for tok, tgt in batches:
            if int(tok.max()) >= V or int(tok.min()) < 0:
                raise ValueError(f"step {step}: token id out of range [0, {V})")
            loss_sum, _ = llama_ref.token_losses(model.forward(tok), tgt)
            (loss_sum / n_targets).backward()  # gradients accumulate over the micro-batches
            total += float(loss_sum.detach())
        losses.append(total / n_targets)
        max_norm = float(c["max_grad_norm"])
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        norms.append(float(norm))
        lr = learning_rate(c, step)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        opt.step()
    final = {name: p.detach().to(torch.float64).numpy().astype(np.float32) for name, p in named}
    return {"loss": losses, "lr": lrs, "grad_norm": norms}, final


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model dir (config.json + model.safetensors)")
    ap.add_argument("--batches", required=True, help="JSON: a list of steps, each a list of micro-batches")
    ap.add_argument("--train-config", required=True, help="JSON training settings (see above)")
    ap.add_argument("--adapter", help="initial LoRA weights, safetensors with PEFT names")
    ap.add_argument("--out-losses", required=True)
    ap.add_argument("--out-weights", required=True)
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with open(args.batches) as f:
        steps = json.load(f)
    with open(args.train_config) as f:
        c = json.load(f)
    if int(c["total_steps"]) != len(steps):
        raise ValueError(f"total_steps {c['total_steps']} but {len(steps)} steps of batches")
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    metrics, final = train(args.model, steps, c, args.adapter, dtype)
    llama_ref.write_json_atomic(args.out_losses, metrics)
    llama_ref.write_safetensors(args.out_weights, final)
    print("train_ref: " + " ".join(f"{x:.6f}" for x in metrics["loss"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
