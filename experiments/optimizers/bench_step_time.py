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
"""Optimizer speed in the trainer's terms, as ratios measured in one run.

1. ``update``: the optimizer update alone on a preset's full parameter tree (``small`` by
   default), with the trainer's rule assignment (`nl_jax.train.optimizers`): M3 vs Muon
   (target: M3 <= 1.3x Muon). M3's slow Newton-Schulz runs once per ``f`` steps, so the M3 time
   is the mean over ``f`` consecutive updates (amortised), as is every other row.
2. ``train step``: the whole jitted train step (`nl_jax.train.loop.make_train_step`) of DGD vs
   SGD on the same model and batch (target: DGD <= 1.2x SGD; the layer inputs are recorded in
   the loss's own forward, see `nl_jax.layers.projection`).
3. ``sharded``: M3 and Muon updates with the parameters sharded by the trainer's rules on an
   ``fsdp=8`` mesh of simulated CPU devices vs the same update on 1 device, and whether every
   output keeps its parameter's sharding. M3's Newton-Schulz (`orthogonalize_many`) stacks
   same-shape matrices and shards the stack over all mesh axes, so each device
   orthogonalises whole matrices of its share (1/8 of them), with no communication inside the
   iteration; the reshards into and out of that layout are the only collectives. Simulated
   devices share this host's cores, so the sharded/1-device ratio measures overhead, not
   speed-up.

  python experiments/optimizers/bench_step_time.py --out experiments/optimizers/results/step_time.json
  python experiments/optimizers/bench_step_time.py --quick   # tiny preset, a smoke run
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import flax.nnx as nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from nl_jax.models import registry  # noqa: E402
from nl_jax.train import config as config_lib  # noqa: E402
from nl_jax.train import loop  # noqa: E402
from nl_jax.train import mesh as mesh_lib  # noqa: E402
from nl_jax.train import optimizers  # noqa: E402


def _opt_cfg(name, lr=1e-3):
  c = config_lib.default_config("transformer_pp").optimizer
  c.name = name
  c.schedule = "constant"
  c.learning_rate = lr
  c.grad_clip = 0.0
  return c


def _abstract_params(model_name, preset):
  cfg = registry.model_config(model_name, preset)
  model = nnx.eval_shape(lambda: registry.build_model(cfg, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _median_time(fn, args, repeats, inner):
  """Median over ``repeats`` of the mean time of ``inner`` chained calls (state threaded)."""
  state = fn(*args)  # compile + warm up; the arguments may be donated
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(inner):
      state = fn(*state)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - t0) / inner)
  return statistics.median(times)


def bench_update(model_name, preset, repeats, f, shard_devices=None):
  abstract = _abstract_params(model_name, preset)
  assignments = optimizers.rule_assignment(abstract, config_lib.default_config(
      model_name).sharding)
  keys = iter(jax.random.split(jax.random.key(0), 2 * len(jax.tree.leaves(abstract))))
  params = jax.tree.map(lambda a: 0.02 * jax.random.normal(next(keys), a.shape), abstract)
  grads = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape), abstract)
  mesh = None
  if shard_devices:
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": shard_devices, "tensor": 1},
                              jax.devices()[:shard_devices])
    sh = mesh_lib.param_shardings(abstract, mesh, config_lib.default_config(model_name).sharding)
    params = jax.device_put(params, sh)
    grads = jax.device_put(grads, sh)
  rows = {}
  for name in ("adamw", "muon", "m3"):
    cfg = _opt_cfg(name)
    if name == "m3":
      cfg.kwargs = {"f": f}
    tx, _ = optimizers.make_optimizer(cfg, 1000, assignments=assignments)
    state = tx.init(params)

    def step(p, s, g, tx=tx):
      u, s = tx.update(g, s, p)
      return jax.tree.map(lambda a, b: a + b, p, u), s, g

    jitted = jax.jit(step, donate_argnums=(0, 1))
    if mesh is not None:
      def fn(p, s, g, jitted=jitted):
        with jax.set_mesh(mesh):  # the Newton-Schulz stacks are laid out over this mesh
          return jitted(p, s, g)
    else:
      fn = jitted
    p = jax.tree.map(jnp.copy, params)
    t = _median_time(fn, (p, state, grads), repeats, f)
    kept = None
    if mesh is not None:
      p2, _, _ = fn(jax.tree.map(jnp.copy, params), tx.init(params), grads)
      kept = all(a.sharding.is_equivalent_to(b.sharding, a.ndim)
                 for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(params), strict=True))
    rows[name] = {"seconds": t, "sharding_kept": kept}
    print(f"update {model_name}/{preset} {name:6s} devices={shard_devices or 1}: "
          f"{t * 1e3:8.1f} ms" + ("" if kept is None else f"  sharding kept: {kept}"),
          flush=True)
  return rows


def bench_train_step(model_name, preset, repeats, batch, seq):
  rows = {}
  for name in ("sgd", "dgd"):
    c = config_lib.default_config(model_name, preset, seq_len=seq, batch_size=batch,
                                  eval_batch_size=batch)
    c.optimizer = _opt_cfg(name, 0.1)
    c.optimizer.weight_decay = 0.0
    c.train.steps = 100
    setup = loop.build_setup(c, devices=jax.devices()[:1])
    params, state, rest = loop.init_state(setup, 0)
    step = loop.make_train_step(setup)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, seq)), jnp.int32)
    b = {"inputs": tokens, "targets": tokens, "loss_mask": jnp.ones((batch, seq), jnp.float32),
         "segment_ids": jnp.ones((batch, seq), jnp.int32),
         "positions": jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))}

    def fn(p, s, step=step, b=b, rest=rest):
      p, s, _ = step(p, s, b, rest)
      return p, s

    t = _median_time(fn, (params, state), repeats, 3)
    rows[name] = {"seconds": t}
    print(f"train step {model_name}/{preset} B={batch} T={seq} {name}: {t * 1e3:8.1f} ms",
          flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="transformer_pp")
  parser.add_argument("--preset", default="small")
  parser.add_argument("--step_model", default="transformer_pp")
  parser.add_argument("--step_preset", default="tiny")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--f", type=int, default=10)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--skip", default="", help="comma list of update,train_step,sharded")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  if args.quick:
    args.preset, args.repeats, args.f, args.seq = "tiny", 1, 2, 32
  skip = set(filter(None, args.skip.split(",")))
  out = {"machine": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
         "args": vars(args)}
  if "update" not in skip:
    u = bench_update(args.model, args.preset, args.repeats, args.f)
    out["update"] = u
    out["m3_over_muon"] = u["m3"]["seconds"] / u["muon"]["seconds"]
    print(f"M3 / Muon update ({args.model}/{args.preset}): {out['m3_over_muon']:.2f}x")
  if "train_step" not in skip:
    s = bench_train_step(args.step_model, args.step_preset, args.repeats, args.batch, args.seq)
    out["train_step"] = s
    out["dgd_over_sgd"] = s["dgd"]["seconds"] / s["sgd"]["seconds"]
    print(f"DGD / SGD train step ({args.step_model}/{args.step_preset}): "
          f"{out['dgd_over_sgd']:.2f}x")
  if "sharded" not in skip and len(jax.devices()) >= 8:
    one = bench_update(args.model, args.preset, args.repeats, args.f)
    eight = bench_update(args.model, args.preset, args.repeats, args.f, shard_devices=8)
    out["sharded"] = {"one_device": one, "fsdp8": eight}
    for name in ("muon", "m3"):
      r = eight[name]["seconds"] / one[name]["seconds"]
      out["sharded"][f"{name}_fsdp8_over_one"] = r
      print(f"{name} update, fsdp=8 simulated / 1 device: {r:.2f}x, sharding kept: "
            f"{eight[name]['sharding_kept']}")
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(out, fh, indent=1)
  return out


if __name__ == "__main__":
  main()
