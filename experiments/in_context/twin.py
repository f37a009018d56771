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
"""Titans and its twin inside Hope: the same function, the same weights, the same MQAR batches.

The Titans-like self-modifying Titans (static k and v, shared targets, read after the write,
Titans' rule, momentum, widths, chunk, retention range and initial scale, static gates) in a
Hope block whose CMS is one static level as wide as Titans' SwiGLU computes Titans' layer and
block. This script builds Titans tiny, copies every weight into that Hope (both models' eta /
alpha gate weights zero, so the gates are their biases in both), then

* ``--mode grads``: the loss and every shared parameter's gradient on one MQAR batch of
  ``mqar.py``'s training distribution (right-padded examples: a new segment starts inside a
  chunk), relative differences per parameter;
* ``--mode train``: both models trained on the same batches with mqar.py's optimizer, the
  mean loss of every 25 steps.

Any difference is in how the two code paths treat the same inputs (the reset at the padding
was one: experiments/in_context/README.md, "The reset that wiped the SMT").

  python experiments/in_context/twin.py --mode grads
  python experiments/in_context/twin.py --mode train --steps 300
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import flax.nnx as nnx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from nl_jax.eval import experiment, fit, mqar, runner  # noqa: E402

TITANS_LIKE = dict(cms=dict(chunk_sizes=(16,), learning_rates=(0.0,)), mlp_hidden=160,
                   smt=dict(static_projections=("k", "v", "gates"), targets="shared",
                            read_at="post", rule="gd", momentum=True, memory_hidden=32,
                            chunk_size=16, proj_chunk_size=16, alpha_min=0.0,
                            memory_init_scale=1.0))


def twins(seed: int):
  """(titans, hope) tiny models computing the same function."""
  tit = experiment.build("titans", "tiny", seed)
  hope = experiment.build("hope", "tiny", seed, **TITANS_LIKE)
  d, h, k = tit.config.d_model, tit.config.n_heads, tit.config.head_dim
  hope.embed.embedding[...] = tit.embed.embedding[...]
  hope.final_norm.scale[...] = tit.final_norm.scale[...]
  for hb, tb in zip(hope.blocks, tit.blocks, strict=True):
    s, t = hb.smt, tb.titans
    t.w_gates[...] = t.w_gates[...].at[:, :2].set(0.0)  # eta, alpha: the biases alone
    hb.smt_norm.scale[...] = tb.titans_norm.scale[...]
    for a, b in (("wq", "wq"), ("wk", "wk"), ("wv", "wv"), ("wg", "w_gate")):
      getattr(s, a)[...] = getattr(t, b)[...].reshape(d, h * k)
    s.wo[...] = t.wo[...].reshape(h * k, d)
    s.conv.kernel[...] = t.qkv_conv.kernel[...]
    s.out_init.w1[...] = t.memory_init_w1[...]
    s.out_init.w2[...] = t.memory_init_w2[...]
    for gate in (s.eta_init, s.alpha_init):
      gate.w1[...] = jnp.zeros_like(gate.w1[...])
    s.w_mu[...] = t.w_gates[...][:, 2, :]
    s.gate_bias[...] = t.b_gates[...][:2]
    for a in ("w_gate", "w_up", "w_down"):
      getattr(hb.cms.level_0_init, a)[...] = getattr(tb.mlp, a)[...]
    hb.cms.norm_scale[...] = tb.mlp_norm.scale[...][None]
  return tit, hope


def batches(seed: int, align: int):
  rng = np.random.default_rng([seed, 17])
  while True:  # mqar.py's training distribution at its default sizes
    yield mqar.training_batch(rng, 64, 48, min_pairs=2, max_pairs=8, max_gap=8,
                              pad_to_multiple=align)


def compare_grads(tit, hope, seed: int) -> dict[str, float]:
  """Relative differences of the loss and of the shared parameters' gradients on one batch."""
  batch = next(batches(seed, runner.model_alignment(tit)))
  vg = nnx.jit(nnx.value_and_grad(fit._loss))  # pylint: disable=protected-access
  (lt, gt), (lh, gh) = vg(tit, batch), vg(hope, batch)
  print(f"loss: titans {float(lt):.6f}  hope {float(lh):.6f}")
  norm = lambda a: float(jnp.linalg.norm(a))  # noqa: E731
  out = {"loss": abs(float(lt) - float(lh)) / abs(float(lt))}
  for i in range(len(tit.blocks)):
    bt, bh = gt.blocks[i], gh.blocks[i]
    t, s = bt.titans, bh.smt
    for name, a, b in (("wq", t.wq, s.wq), ("wk", t.wk, s.wk), ("wv", t.wv, s.wv),
                       ("wo", t.wo, s.wo), ("memory w1", t.memory_init_w1, s.out_init.w1),
                       ("mlp w_down", bt.mlp.w_down, bh.cms.level_0_init.w_down)):
      a, b = a[...].reshape(b[...].shape), b[...]
      out[f"block {i} {name}"] = norm(a - b) / max(norm(a), 1e-30)
      print(f"block {i} {name:10s} |g| {norm(a):.4g} / {norm(b):.4g}  relative difference "
            f"{out[f'block {i} {name}']:.2g}")
  return out


def train_both(tit, hope, seed: int, steps: int) -> None:
  for name, model in (("titans", tit), ("hope", hope)):
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, 3e-3, 100, 4000, 3e-4), weight_decay=0.1))
    losses = fit.train(model, batches(seed, runner.model_alignment(model)), steps, tx)["losses"]
    print(name, "first losses", [round(x, 5) for x in losses[:3]])
    print(" ".join(f"{i + 25}:{np.mean(losses[i:i + 25]):.2f}"
                   for i in range(0, len(losses), 25)), flush=True)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--mode", choices=("grads", "train"), default="grads")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  tit, hope = twins(args.seed)
  if args.mode == "grads":
    compare_grads(tit, hope, args.seed)
  else:
    train_both(tit, hope, args.seed, args.steps)


if __name__ == "__main__":
  main()
