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
"""Streams held-out text through a trained Hope with its memory carried; prints what grows.

For each call of ``--call_len`` tokens (memory carried from the previous call, slow weights
frozen) it records the call's mean NLL and every per-layer memory statistic the model reports
in ``aux`` (inner loss, ||v||, ||vhat||, memory weight norms, CMS drift). A memory whose
in-context dynamics are unstable shows up as a weight norm that grows call after call.

  python experiments/stability/probe_stream.py --workdir=/tmp/hope_tiny \\
      --out=experiments/stability/results/probe.json [--override smt.value_norm=none]

``--override`` changes a model field before the checkpoint is loaded (for runs whose
config.json predates a field).
"""

import json
import os

from absl import app
from absl import flags
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from nl_jax import config_tree
from nl_jax.eval.examples import encode
from nl_jax.eval.perplexity import heldout_text
from nl_jax.models import registry
from nl_jax.train import checkpoint as ckpt_lib
from nl_jax.train import config as config_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir", required=True)
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: newest)")
_CALL_LEN = flags.DEFINE_integer("call_len", 64, "tokens per call")
_CALLS = flags.DEFINE_integer("calls", 32, "calls per stream")
_STREAMS = flags.DEFINE_integer("streams", 4, "independent streams (batch rows)")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "model field=value before loading")
_FRESH = flags.DEFINE_bool("fresh", False, "fresh memory at every call (the baseline: no "
                           "memory carried)")
_FRESH_PART = flags.DEFINE_enum("fresh_part", None, ["smt", "cms"],
                                "fresh state of this part of every block at every call (the "
                                "other parts carried)")
_OUT = flags.DEFINE_string("out", None, "JSON output path")


def load(workdir: str, step: int | None, overrides: dict):
  with open(os.path.join(workdir, ckpt_lib.CONFIG_FILE), encoding="utf-8") as f:
    config = json.load(f)
  saved = registry.migrate_saved(config["model_name"], config_lib.to_plain(config["model"]))
  model_cfg = registry.config_from_dict(config["model_name"],
                                        config_tree.merge(saved, overrides))
  abstract = nnx.eval_shape(lambda: registry.build_model(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, abs_params, rest = nnx.split(abstract, nnx.Param, ...)
  target = nnx.to_pure_dict(abs_params)
  mngr = ocp.CheckpointManager(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  step = step if step is not None else max(mngr.all_steps())
  restored = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(target)))
  mngr.close()
  return nnx.merge(graphdef, restored["params"], rest), step


def parse(value: str):
  for cast in (int, float):
    try:
      return cast(value)
    except ValueError:
      pass
  return None if value == "None" else value


def main(argv):
  del argv
  overrides = dict(kv.split("=", 1) for kv in _OVERRIDE.value)
  model, step = load(_WORKDIR.value, _STEP.value, {k: parse(v) for k, v in overrides.items()})
  n, c = _STREAMS.value, _CALL_LEN.value
  ids = encode(heldout_text())
  rng = np.random.default_rng(0)
  starts = rng.integers(0, len(ids) - c * _CALLS.value - 1, size=n)
  tokens = np.stack([ids[s:s + c * _CALLS.value + 1] for s in starts]).astype(np.int32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def call(params, memory, tok, tgt):
    m = nnx.merge(graphdef, params, rest)
    logits, memory, aux = m(tok, memory, targets=tgt)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    return memory, jnp.mean(nll), aux

  memory = model.init_memory(n)
  rows = []
  for i in range(_CALLS.value):
    tok = tokens[:, i * c:(i + 1) * c]
    tgt = tokens[:, i * c + 1:(i + 1) * c + 1]
    if _FRESH.value:
      memory = model.init_memory(n)
    elif _FRESH_PART.value and i:
      fresh = model.init_memory(n)
      memory = {k: ({**v, _FRESH_PART.value: fresh[k][_FRESH_PART.value]}
                    if k.startswith("block_") else v) for k, v in memory.items()}
    memory, nll, aux = call(params, memory, jnp.asarray(tok), jnp.asarray(tgt))
    row = {"call": i, "start": i * c, "nll": float(nll)}
    row.update({k: float(v) for k, v in aux.items()})
    rows.append(row)
    keys = [k for k in row if k.endswith(("out_w1_norm", "v_rms", "inner_loss", "drift"))]
    print(f"call {i:3d} nll {row['nll']:.3f} " + " ".join(
        f"{k.replace('block_', 'b')}={row[k]:.3g}" for k in keys), flush=True)
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w", encoding="utf-8") as f:
      json.dump({"workdir": _WORKDIR.value, "step": step, "overrides": overrides,
                 "fresh": _FRESH.value, "fresh_part": _FRESH_PART.value,
                 "call_len": c, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
