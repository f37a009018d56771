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
"""M3 vs AdamW vs Muon on the tiny language model (paper section 9.7 / Fig. 11 at toy scale).

Every run goes through the real trainer (`nl_jax.train.train_and_evaluate`, the same code as
``launch/train.py``) on the embedded corpus with the byte tokenizer; only
``config.optimizer`` changes. Each optimizer gets a small learning-rate grid; the best
learning rate is picked by the final held-out loss. mixer_quality.py (MLP-Mixer quality) and
bench_step_time.py (speed) sit beside it.

  python experiments/optimizers/run.py                   # full (see README for time)
  python experiments/optimizers/run.py --shrunk --out /tmp/opt     # seconds, smoke test
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from nl_jax.eval import experiment  # noqa: E402

# The trainer's rule assignment (nl_jax.optim.partition) decides which parameters each of these
# orthogonalises / DGD-preconditions; m3_paper is Algorithm 1 literally (nl_jax.train.optimizers).
DEFAULT_GRID = ("adamw:1e-3|3e-3|1e-2;muon:3e-3|1e-2|3e-2;m3:3e-3|1e-2|3e-2;"
                "m3_paper:1e-4|3e-4|1e-3;dgd:3e-2|1e-1|3e-1")


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="transformer_pp")
  p.add_argument("--preset", default="tiny")
  p.add_argument("--grid", default=None,
                 help="optimizer:lr|lr;optimizer:lr (default: DEFAULT_GRID; --shrunk: 2 runs)")
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--seq-len", type=int, default=128)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--eval-batches", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--shrunk", action="store_true")
  p.add_argument("--out", default=None)
  p.add_argument("--opt_kwargs", default="{}",
                 help='JSON of extra optimizer arguments for every run (config.optimizer.kwargs),'
                      ' e.g. \'{"decay": 0.1}\' for dgd')
  args = p.parse_args(argv)
  args.opt_kwargs = json.loads(args.opt_kwargs)
  if args.shrunk:
    args.grid = args.grid or "adamw:3e-3;m3:1e-2"
    args.steps, args.seq_len, args.batch_size = 2, 32, 8
    args.eval_batches = 1
  args.grid = args.grid or DEFAULT_GRID
  return args


def run_one(args, opt_name, lr, workdir):
  from nl_jax import train  # noqa: PLC0415

  overrides = {"n_layers": 1} if args.shrunk else {}
  c = train.default_config(args.model, args.preset, model_overrides=overrides,
                           seq_len=args.seq_len, batch_size=args.batch_size,
                           eval_batch_size=args.batch_size)
  c.optimizer.name = opt_name
  c.optimizer.learning_rate = lr
  c.optimizer.kwargs.update(args.opt_kwargs)
  c.optimizer.warmup_steps = max(args.steps // 15, 0) if args.steps > 15 else 0
  c.train.steps = args.steps
  c.train.seed = args.seed
  c.train.eval_every = max(args.steps // 6, 1)
  c.train.eval_batches = args.eval_batches
  c.train.checkpoint_every = 0
  c.train.log_every = max(args.steps // 30, 1)
  c.train.tensorboard = False
  c.train.async_checkpointing = False
  t0 = time.time()
  diverged = None
  try:
    train.train_and_evaluate(c, workdir)
  except train.NonFiniteError as e:
    # A rate that diverges is a result of the sweep, not a reason to lose the others: it is
    # recorded with an infinite final loss (never "best") and the message.
    diverged = str(e).split(";")[0]
    print(f"   diverged: {diverged}", flush=True)
  curves = {"train": [], "eval": [], "param_norm": []}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if rec.get("split") in curves and "loss" in rec:
        curves[rec["split"]].append((rec["step"], rec["loss"]))
      if rec.get("split") == "train" and "param_norm" in rec:
        curves["param_norm"].append((rec["step"], rec["param_norm"]))
  run = {"lr": lr, "seconds": time.time() - t0, "curves": curves}
  if diverged is None:
    run.update(final_train=curves["train"][-1][1], final_eval=curves["eval"][-1][1])
  else:
    run.update(final_train=math.inf, final_eval=math.inf, diverged=diverged)
  return run


def main(argv=None):
  args = parse(argv)
  path = experiment.out_dir(__file__, args.out)
  grid = {}
  for item in filter(None, args.grid.split(";")):
    name, lrs = item.split(":")
    grid[name] = [float(x) for x in lrs.split("|")]
  t0 = time.time()
  runs = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, lrs in grid.items():
      for lr in lrs:
        print(f"== {name} lr={lr:g}", flush=True)
        runs[f"{name}@{lr:g}"] = run_one(args, name, lr, os.path.join(tmp, f"{name}_{lr:g}"))
        r = runs[f"{name}@{lr:g}"]
        print(f"   train {r['final_train']:.4f}  eval {r['final_eval']:.4f}  "
              f"({r['seconds']:.0f}s)", flush=True)
  best = {name: min((runs[f"{name}@{lr:g}"] for lr in lrs), key=lambda r: r["final_eval"])
          for name, lrs in grid.items()}
  rows = []
  for name, lrs in grid.items():
    for lr in lrs:
      r = runs[f"{name}@{lr:g}"]
      rows.append([name, f"{lr:g}", f"{r['final_train']:.4f}", f"{r['final_eval']:.4f}",
                   f"{math.exp(r['final_eval']):.3f}",
                   "best" if r is best[name] else "", f"{r['seconds']:.0f}"])
  table = experiment.markdown_table(
      ["optimizer", "lr", "final train loss", "final eval loss (nats/byte)", "eval ppl",
       "", "seconds"], rows)
  experiment.plot_lines(
      os.path.join(path, "eval_loss.png"),
      {f"{n} lr={b['lr']:g}": tuple(zip(*b["curves"]["eval"], strict=False)) for n, b in best.items()},
      "step", "held-out loss (nats/byte)", f"{args.model} {args.preset}: best lr per optimizer")
  experiment.plot_lines(
      os.path.join(path, "train_loss.png"),
      {f"{n} lr={b['lr']:g}": tuple(zip(*b["curves"]["train"], strict=False)) for n, b in best.items()},
      "step", "train loss (nats/byte)", f"{args.model} {args.preset}: best lr per optimizer")
  settings = experiment.settings(args)
  experiment.write(path, {"settings": settings, "runs": runs,
                          "wall_seconds": time.time() - t0}, table)
  print(table)
  print(f"wall time {time.time() - t0:.0f}s; wrote {path}")
  return runs


if __name__ == "__main__":
  main()
