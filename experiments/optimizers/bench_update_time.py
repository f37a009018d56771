# Copyright 2026 The nl_jax Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Optimizer step time of M3 vs optax.contrib.muon vs optax.adamw on a 12-layer d=768 Transformer.

Only the parameter shapes matter: per layer q, k, v, o (768x768), MLP up (768x3072) and down
(3072x768), two LayerNorm scales and biases (768); a 32000x768 embedding (AdamW in M3/Muon) and a
final norm. Each update is jitted, warmed up, then timed N times (median reported).

M3 runs its slow-memory Newton-Schulz only at refresh steps (every f steps), so we report the
regular step (f=10), the refresh step (f=1, refresh every step) and the amortised cost
((f-1) * regular + refresh) / f for f=10.

Run (about 15 minutes on 2 shared CPU cores with the defaults; --layers 2 for a quick check):
  cd /work/main && .venv/bin/python experiments/optimizers/bench_update_time.py --repeats 3
"""

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from nl_jax import optim


def transformer_params(layers: int, d: int, d_ff: int, vocab: int) -> dict:
  params = {"embed": jnp.zeros((vocab, d)), "final_norm": {"scale": jnp.ones((d,)),
                                                           "bias": jnp.zeros((d,))}}
  for i in range(layers):
    params[f"layer_{i}"] = {
        "q": jnp.zeros((d, d)), "k": jnp.zeros((d, d)), "v": jnp.zeros((d, d)),
        "o": jnp.zeros((d, d)), "up": jnp.zeros((d, d_ff)), "down": jnp.zeros((d_ff, d)),
        "ln1": {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))},
        "ln2": {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))},
    }
  return params


def matrix_mask(params):
  # Embeddings go to AdamW, as in Muon practice; every other 2D leaf is a matrix.
  return {k: (jax.tree.map(lambda x: x.ndim == 2, v) if k != "embed" else False)
          for k, v in params.items()}


def time_update(tx, params, grads, repeats: int, warmup: int) -> float:
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(warmup):
    u, state = step(grads, state, params)
    jax.block_until_ready(u)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    u, state = step(grads, state, params)
    jax.block_until_ready((u, state))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--layers", type=int, default=12)
  parser.add_argument("--d", type=int, default=768)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--f", type=int, default=10)
  args = parser.parse_args()

  params = transformer_params(args.layers, args.d, 4 * args.d, args.vocab)
  grads = jax.tree.map(
      lambda p: jax.random.normal(jax.random.key(p.size % 9973), p.shape, p.dtype), params)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  mask = matrix_mask(params)
  muon_dims = jax.tree.map(lambda m: optax.contrib.MuonDimensionNumbers() if m else None, mask)
  optimizers = {
      "adamw": optax.adamw(1e-3),
      "muon (optax.contrib)": optax.contrib.muon(1e-3, muon_weight_dimension_numbers=muon_dims),
      f"m3 regular step (f={args.f})": optim.m3(1e-3, f=args.f, matrix_mask=mask),
      "m3 refresh step (f=1)": optim.m3(1e-3, f=1, matrix_mask=mask),
      "m3 no 2nd moment (f=10)": optim.m3(1e-3, f=args.f, matrix_mask=mask,
                                          use_second_moment=False),
  }
  results = {}
  for name, tx in optimizers.items():
    results[name] = time_update(tx, params, grads, args.repeats, args.warmup)
    print(f"  measured {name}: {results[name] * 1e3:.1f} ms", flush=True)
  f = args.f
  regular = results[f"m3 regular step (f={f})"]
  refresh = results["m3 refresh step (f=1)"]
  results[f"m3 amortised (f={f})"] = ((f - 1) * regular + refresh) / f
  muon = results["muon (optax.contrib)"]

  print(f"\nMachine: {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}, "
        f"optax {optax.__version__}")
  print(f"Parameters: {n_params / 1e6:.1f}M ({args.layers} layers, d={args.d}, "
        f"vocab={args.vocab}); median of {args.repeats} timed runs after {args.warmup} warmup\n")
  print("| optimizer | step time (ms) | vs muon | vs adamw |")
  print("|---|---:|---:|---:|")
  for name, t in results.items():
    print(f"| {name} | {t * 1e3:.1f} | {t / muon:.2f}x | {t / results['adamw']:.2f}x |")
  verdict = "meets" if results[f"m3 amortised (f={f})"] <= 1.5 * muon else "misses"
  print(f"\nTarget M3 (amortised) within 1.5x of Muon: {verdict}.")


if __name__ == "__main__":
  main()
