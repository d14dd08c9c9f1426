#!/usr/bin/env python3
"""The PyTorch peer of bench/step_bench.cpp (lora): one LoRA training step of stories15M in float32
per iteration (zero grads, forward, mean cross-entropy, backward, clip_grad_norm_(1.0),
torch.optim.AdamW), adapters of rank 8 (alpha 16, no dropout) on all seven linear layers of
every block, base weights frozen (requires_grad False), B = 8 sequences of T = 256 random
tokens. The model is tests/reference/llama_ref.py's LlamaRef, with LoRA from
tests/reference/train_ref.py's LoraLlamaRef (A Kaiming-uniform, B zero, as PEFT starts).

Usage: /usr/bin/python3 bench/torch_lora.py MODEL_DIR [STEPS=5] [THREADS=2]
Prints one parseable line: torch_lora_tokens_per_s=<x>
"""
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import llama_ref  # noqa: E402
import train_ref  # noqa: E402

B, T, RANK, ALPHA = 8, 256, 8, 16.0
TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]


def main(argv):
    if not 2 <= len(argv) <= 4:
        print(__doc__, file=sys.stderr)
        return 2
    model_dir = argv[1]
    steps = int(argv[2]) if len(argv) > 2 else 5
    threads = int(argv[3]) if len(argv) > 3 else 2
    torch.set_num_threads(threads)

    config, weights = llama_ref.load_hf_dir(model_dir)
    cfg = llama_ref.Config(config)
    rng = np.random.default_rng(0)
    init = {}
    for i in range(cfg.num_hidden_layers):
        for t in TARGETS:
            prefix = f"model.layers.{i}.{train_ref.LORA_MODULES[t]}"
            out_f, in_f = weights[prefix + ".weight"].shape
            bound = 1.0 / math.sqrt(in_f)
            init[f"{train_ref.PEFT_PREFIX}{prefix}.lora_A.weight"] = rng.uniform(-bound, bound, (RANK, in_f))
            init[f"{train_ref.PEFT_PREFIX}{prefix}.lora_B.weight"] = np.zeros((out_f, RANK))
    model = train_ref.LoraLlamaRef(config, weights, torch.float32, RANK, ALPHA, False, TARGETS, init)
    params = [p for _, p in model.trainable()]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    V = model.cfg.vocab_size
    gen = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    targets = torch.cat([tokens[:, 1:], torch.full((B, 1), -100)], dim=1)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model.forward(tokens)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    loss = step()  # warmup
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    seconds = time.perf_counter() - t0
    n_trainable = sum(p.numel() for p in params)
    print(f"torch LoRA step: torch {torch.__version__}, model {model_dir}, all-linear r={RANK}, {n_trainable} trainable, "
          f"B={B} T={T}, {torch.get_num_threads()} threads, {steps} steps, {1e3 * seconds / steps:.1f} ms/step, "
          f"loss {loss:.4f}")
    print(f"torch_lora_tokens_per_s={steps * B * T / seconds:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
