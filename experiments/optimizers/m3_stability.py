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
"""Why M3 diverges in the quickstart setting: per-step update spectra, instrumented.

The quickstart notebook's M3 run (Hope tiny, batch 16 x 128 bytes, ``optim.m3`` with a
warmup-cosine rate peaking at 1e-2 after 20 steps, global-norm clip 1) went NaN at step 25.
This script reruns that setting for ``--steps`` steps with several M3 variants and logs, per
step, the loss and the largest spectral norm of ``update / lr`` over the matrix leaves (which
leaf), so the divergence is seen where it starts, not only as a NaN.

Variants: ``notebook`` (the old partition: every 2-D leaf, the embedding included, is an M3
matrix; post-NS element-wise division with the ``rms`` guard), ``rms`` (the logical-axes
partition, same guard), ``precondition`` (logical-axes partition, second moment applied to the
momentum before its Newton-Schulz: the new default) and ``muon`` (``use_second_moment=False``).

  python experiments/optimizers/m3_stability.py --steps 40 --out experiments/optimizers/results/m3_stability.json
"""

import argparse
import json
import time

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nl_jax import optim
from nl_jax.eval import fit
from nl_jax.models import registry
from nl_jax.optim import newton_schulz as ns
from nl_jax.optim import partition
from nl_jax.train import config as config_lib


def _variant(name, assignments, schedule):
  dims = partition.dimension_numbers(assignments)
  if name == "notebook":
    return optim.m3(schedule, denominator_guard="rms"), None
  guard = {"rms": "rms", "precondition": "precondition", "muon": "rms"}[name]
  return optim.m3(schedule, denominator_guard=guard, weight_dimension_numbers=dims,
                  use_second_moment=name != "muon"), dims


def run(variant, steps, model_name="hope", batch=16, seq=128, peak=1e-2, seed=0):
  config = registry.model_config(model_name, "tiny")
  model = registry.build_model(config, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  pure = nnx.to_pure_dict(params)
  assignments = partition.assign(pure, config_lib.PARAM_RULES)
  total = 300
  schedule = optax.warmup_cosine_decay_schedule(0.0, peak, max(total // 15, 1), total, peak / 10)
  m3_tx, dims = _variant(variant, assignments, schedule)
  tx = optax.chain(optax.clip_by_global_norm(1.0), m3_tx)
  params = pure
  opt_state = tx.init(params)
  flat_dims = {partition.path_str(p): d for p, d in jax.tree_util.tree_leaves_with_path(
      dims if dims is not None else jax.tree.map(lambda _: None, pure),
      is_leaf=lambda x: x is None or isinstance(x, ns.DimensionNumbers))}

  @jax.jit
  def step(params, opt_state, batch, i):
    def loss_fn(p):
      return fit._loss(nnx.merge(graphdef, p, rest), batch)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    lr = jnp.maximum(schedule(i), 1e-12)
    spec = {}
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
      key = partition.path_str(path)
      if u.ndim < 2:
        continue
      d = flat_dims.get(key)
      if variant != "notebook" and d is None:
        continue
      view = ns.matrix_view(tuple(u.shape), d)
      m = jnp.transpose(u, view.perm).reshape(view.flat_shape)
      spec[key] = jnp.max(jnp.linalg.norm(m, ord=2, axis=(-2, -1))) / lr
    return optax.apply_updates(params, updates), opt_state, loss, spec

  rng = np.random.default_rng(seed)
  rows = []
  t0 = time.time()
  for i in range(steps):
    b = {k: jnp.asarray(v) for k, v in fit.lm_batch(rng, batch, seq).items()}
    params, opt_state, loss, spec = step(params, opt_state, b, i)
    spec = {k: float(v) for k, v in spec.items()}
    top = max(spec, key=spec.get)
    rows.append({"step": i, "loss": float(loss), "max_update_spectral_norm_over_lr": spec[top],
                 "argmax_leaf": top,
                 "embedding": spec.get("embed/embedding")})
    print(variant, rows[-1], flush=True)
    if not np.isfinite(float(loss)):
      break
  return {"variant": variant, "rows": rows, "seconds": time.time() - t0}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--variants", default="notebook,rms,precondition,muon")
  parser.add_argument("--model", default="hope")
  parser.add_argument("--out", default="experiments/optimizers/results/m3_stability.json")
  args = parser.parse_args()
  out = {"jax": jax.__version__, "device": jax.devices()[0].device_kind, "model": args.model,
         "runs": []}
  for v in args.variants.split(","):
    out["runs"].append(run(v, args.steps, args.model))
    with open(args.out, "w") as f:  # after every variant: a killed run keeps what it measured
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
