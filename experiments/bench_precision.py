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
"""bfloat16 activations against float32: the error of every model's outputs, memory and gradient.

``model.dtype="bfloat16"`` runs activations and matmuls in bfloat16 while the parameters, the
fast memory states (and their accumulators) and the logits stay float32. This script builds
each model twice from the same seed (identical float32 parameters), once per dtype, runs one
forward+backward of the mean next-token cross-entropy on the same tokens (fresh state, one
document per row) and a second call that carries the memory, and prints relative errors
``||bf16 - f32|| / ||f32||`` (2-norms over all elements):

* logits of the first and of the second (carried-memory) call;
* the memory state after the first call (every leaf; float32 in both);
* the gradient with respect to every parameter;
* the loss, as an absolute difference in nats.

    python experiments/bench_precision.py                 # tiny presets, T=256, B=4
    python experiments/bench_precision.py --preset small --lengths 2048 --batch 1
"""

import argparse
import sys

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nl_jax.models import registry


def _rel(a, b) -> float:
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _tree_rel(a, b) -> float:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  if not lb:
    return float("nan")
  num = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
            for x, y in zip(la, lb, strict=True))
  den = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in lb)
  return float(np.sqrt(num / max(den, 1e-30)))


def run(name: str, preset: str, dtype: str, t: int, batch: int):
  """(loss, logits, state, logits of the carried call, grads) of one model in one dtype."""
  config = registry.model_config(name, preset, dtype=dtype)
  config.validate_seq_len(t)
  graphdef, params, rest = nnx.split(registry.build_model(config, rngs=nnx.Rngs(0)),
                                     nnx.Param, ...)
  tokens = jax.random.randint(jax.random.key(7), (batch, t), 0, config.vocab_size)

  def loss_fn(params):
    m = nnx.merge(graphdef, params, rest)
    logits, state, _ = m(tokens)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
    return jnp.mean(ce), (logits, state)

  def step(params):
    (loss, (logits, state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    logits2 = nnx.merge(graphdef, params, rest)(tokens, state)[0] if state else logits
    return loss, logits, state, logits2, grads

  return jax.jit(step)(params)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="transformer_pp,titans,hope,hope_attention")
  parser.add_argument("--preset", default="tiny")
  parser.add_argument("--lengths", default="256", help="comma-separated T")
  parser.add_argument("--batch", type=int, default=4)
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; preset={args.preset}, "
        f"B={args.batch}; relative 2-norm errors of bfloat16 activations against float32")
  header = (f"{'model':<16}{'T':>6}{'loss f32':>10}{'|dloss|':>10}{'logits':>10}"
            f"{'logits 2nd':>12}{'state':>10}{'grads':>10}{'state dtypes':>14}")
  print(header)
  print("-" * len(header))
  rows = []
  for t in (int(x) for x in args.lengths.split(",")):
    for name in (n for n in args.models.split(",") if n):
      l32, z32, s32, y32, g32 = run(name, args.preset, "float32", t, args.batch)
      l16, z16, s16, y16, g16 = run(name, args.preset, "bfloat16", t, args.batch)
      dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(s16)
                       if jnp.issubdtype(x.dtype, jnp.floating)}) or ["-"]
      row = dict(model=name, T=t, loss=float(l32), dloss=abs(float(l16) - float(l32)),
                 logits=_rel(z16, z32), logits_carried=_rel(y16, y32),
                 state=_tree_rel(s16, s32), grads=_tree_rel(g16, g32),
                 state_dtypes=",".join(dtypes))
      print(f"{name:<16}{t:>6}{row['loss']:>10.4f}{row['dloss']:>10.2e}{row['logits']:>10.2e}"
            f"{row['logits_carried']:>12.2e}{row['state']:>10.2e}{row['grads']:>10.2e}"
            f"{row['state_dtypes']:>14}", flush=True)
      rows.append(row)
  return rows


if __name__ == "__main__":
  main(sys.argv[1:])
