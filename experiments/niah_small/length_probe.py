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
"""Why a model's NIAH accuracy falls beyond its training length: accuracy by needle depth,
and how far its CMS fast weights have moved by each position.

Trains one model as ``run.py`` does (same flags; the defaults here are the tiny 256-token
recipe of the README's "NIAH at a size that learns"), then at each test length:

* exact match and answer-token accuracy with the needle at fixed depths (``--depths``): if
  only early needles are lost, later writes overwrite them (forgetting); if late needles are
  lost too, the memory no longer reads or writes as it did at the training length;
* per block and CMS level, the relative distance of the fast weights from where the
  sequence started, ``||W_t - W_0|| / ||W_0||`` (gate, up and down matrices together, mean
  over the examples), after every ``--probe-segment`` tokens. The sequence is fed in
  segments with the state carried, the same computation as one call (the CMS steps at
  global positions).

  python experiments/niah_small/length_probe.py --seeds 0 --out /tmp/probe
  python experiments/niah_small/length_probe.py --shrunk --out /tmp/probe   # smoke test
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run as niah_run  # noqa: E402

from nl_jax.eval import examples as ex_lib  # noqa: E402
from nl_jax.eval import experiment, niah, runner  # noqa: E402
from nl_jax.layers.cms import CMSState  # noqa: E402
from nl_jax.models import registry  # noqa: E402


def parse(argv=None):
  p = niah_run.parser(__doc__)
  p.add_argument("--depths", default="0.1,0.5,0.9", help="needle depths in [0, 1]")
  p.add_argument("--probe-segment", type=int, default=64,
                 help="tokens between two readings of the fast weights")
  p.set_defaults(models="hope", preset="tiny", subtasks="s_niah_1,s_niah_2", train_len=256,
                 steps=2000, lm_weight=0.2, lr=3e-3)
  args = niah_run.parse(argv, p)
  if len(args.models.split(",")) != 1 or len(args.seeds.split(",")) != 1:
    raise ValueError(f"--models={args.models!r} --seeds={args.seeds!r}: the probe trains one "
                     "model with one seed; name one of each")
  if args.shrunk:
    args.depths, args.probe_segment = "0.5", 32
  if args.combine:
    raise ValueError("--combine: the probe has no runs to combine; leave it out")
  return args


def cms_drift(state, state0) -> dict[str, float]:
  """``{"block_<i>/level_<l>": ||W - W0|| / ||W0||}``, mean over the batch."""
  out = {}
  for block in sorted(k for k in state if k.startswith("block_")):
    cms, cms0 = state[block].get("cms"), state0[block].get("cms")
    if not isinstance(cms, CMSState):
      continue
    for lvl, (w, w0) in enumerate(zip(cms.weights, cms0.weights, strict=True)):
      num = sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=tuple(range(1, a.ndim)))
                for a, b in zip(w, w0, strict=True))
      den = sum(np.sum(np.asarray(b) ** 2, axis=tuple(range(1, b.ndim))) for b in w0)
      out[f"{block}/level_{lvl}"] = float(np.mean(np.sqrt(num / den)))
  return out


def drift_curve(model, examples, segment: int, align: int) -> dict[str, list]:
  """Fast-weight drift after every ``segment`` tokens, up to the shortest example."""
  step = runner.make_step(model)
  batch = ex_lib.make_batch(examples, max(segment, align))
  shortest = min(len(e.tokens) for e in examples) // segment * segment
  state0 = model.init_memory(len(examples))
  state, positions, curves = state0, [], {}
  for start in range(0, shortest, segment):
    _, state = step(batch["inputs"][:, start:start + segment],
                    batch["segment_ids"][:, start:start + segment], state)
    positions.append(start + segment)
    for name, v in cms_drift(state, state0).items():
      curves.setdefault(name, []).append(v)
  return {"positions": positions, **curves}


def probe(model, align: int, seed: int, args) -> dict:
  out = {"accuracy": {}, "token_accuracy": {}, "drift": {}}
  logits_fn = runner.make_logits_fn(model)
  for mult in [int(m) for m in args.multiples.split(",")]:
    for sub in args.subtasks.split(","):
      for depth in [float(d) for d in args.depths.split(",")]:
        cfg = niah.NiahConfig(task=sub, length=mult * args.train_len - niah_run.ANSWER_ROOM,
                              depth=depth)
        exs = niah.make_examples(cfg, args.eval_examples, seed + 1000)
        res = ex_lib.score(logits_fn, exs, batch_size=4, pad_to_multiple=align)
        cell = f"{sub}@{mult}x/depth={depth:g}"
        out["accuracy"][cell], out["token_accuracy"][cell] = (res["accuracy"],
                                                               res["token_accuracy"])
        print(f"   {cell}: {100 * res['accuracy']:.1f} (answer tokens "
              f"{100 * res['token_accuracy']:.1f})", flush=True)
        if depth == float(args.depths.split(",")[0]):
          out["drift"][f"{sub}@{mult}x"] = drift_curve(model, exs[:8], args.probe_segment, align)
  return out


def report(path: str, result: dict, args) -> str:
  subtasks, depths = args.subtasks.split(","), [float(d) for d in args.depths.split(",")]
  mults = [int(m) for m in args.multiples.split(",")]
  rows = [[sub, f"{depth:g}"] + [
      f"{100 * result['accuracy'][c]:.0f} ({100 * result['token_accuracy'][c]:.0f})"
      for c in (f"{sub}@{m}x/depth={depth:g}" for m in mults)]
      for sub in subtasks for depth in depths]
  table = ("Exact match (%), in brackets answer tokens (%), needle at a fixed depth:\n\n"
           + experiment.markdown_table(["subtask", "depth"] + [f"{m}x" for m in mults], rows))
  drift = result["drift"][f"{subtasks[0]}@{mults[-1]}x"]
  names = [k for k in drift if k != "positions"]
  last = drift["positions"][-1]
  marks = [p for p in (m * args.train_len for m in [1] + mults) if p <= last] + [last]
  marks = sorted(set(max(q for q in drift["positions"] if q <= p) for p in marks))
  table += ("\n\nCMS fast weights, ||W_t - W_0|| / ||W_0|| after t tokens (" + subtasks[0]
            + f" at {mults[-1]}x, mean over 8 examples):\n\n" + experiment.markdown_table(
                ["block/level"] + [f"t={p}" for p in marks],
                [[n] + [f"{drift[n][drift['positions'].index(p)]:.3f}" for p in marks]
                 for n in names]))
  experiment.plot_lines(os.path.join(path, "cms_drift.png"),
                        {n: (drift["positions"], drift[n]) for n in names},
                        "tokens read", "||W_t - W_0|| / ||W_0||",
                        f"CMS fast weights ({subtasks[0]}, trained at {args.train_len})")
  experiment.plot_lines(
      os.path.join(path, "accuracy_by_depth.png"),
      {f"{sub} @ {m}x": (depths, [100 * result["accuracy"][f"{sub}@{m}x/depth={d:g}"]
                                  for d in depths]) for sub in subtasks for m in mults},
      "needle depth", "exact match (%)", "NIAH by needle depth")
  experiment.write(path, {"settings": experiment.settings(args), "result": result}, table)
  return table


def main(argv=None):
  args = parse(argv)
  path = experiment.out_dir(__file__, args.out)
  seed = int(args.seeds)
  align = registry.model_config(args.models, args.preset,
                                **experiment.parse_overrides(args.model_overrides)).alignment
  if args.probe_segment % align:
    raise ValueError(f"--probe-segment={args.probe_segment} must be a multiple of the "
                     f"model's alignment {align}")
  model, log, align = niah_run.train_model(args.models, seed, args)
  result = {"params": experiment.num_params(model), "train_seconds": log["seconds"],
            "steps_done": len(log["losses"]), "losses": log["losses"],
            **probe(model, align, seed, args)}
  table = report(path, result, args)
  print(table)
  return result


if __name__ == "__main__":
  main()
