#!/usr/bin/env python3
"""The PyTorch peer of bench/step_bench.cpp (fwdbwd): forward + mean cross-entropy + backward of
the reference LLaMA (tests/reference/llama_ref.py) in float32 on B = 8 sequences of
T = 256 random tokens, gradients zeroed every step.

Usage: /usr/bin/python3 bench/torch_fwdbwd.py MODEL_DIR [STEPS=5] [THREADS=2]
Prints one parseable line: torch_tokens_per_s=<x>
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import llama_ref  # noqa: E402

B, T = 8, 256


def main(argv):
    if not 2 <= len(argv) <= 4:
        print(__doc__, file=sys.stderr)
        return 2
    model_dir = argv[1]
    steps = int(argv[2]) if len(argv) > 2 else 5
    threads = int(argv[3]) if len(argv) > 3 else 2
    torch.set_num_threads(threads)

    config, weights = llama_ref.load_hf_dir(model_dir)
    model = llama_ref.LlamaRef(config, weights, dtype=torch.float32, requires_grad=True)
    V = model.cfg.vocab_size
    gen = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    targets = torch.cat([tokens[:, 1:], torch.full((B, 1), -100)], dim=1)
    params = list(model.params.values())

    def step():
        for p in params:
            p.grad = None
        logits = model.forward(tokens)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
        loss.backward()
        return loss.item()

    loss = step()  # warmup
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    seconds = time.perf_counter() - t0
    print(f"torch fwd+bwd: torch {torch.__version__}, model {model_dir}, B={B} T={T}, "
          f"{torch.get_num_threads()} threads, {steps} steps, {1e3 * seconds / steps:.1f} ms/step, loss {loss:.4f}")
    print(f"torch_tokens_per_s={steps * B * T / seconds:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
