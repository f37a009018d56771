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
"""Seeds of run.py at each optimizer's best learning rate: mean, spread and curves.

The learning-rate sweep (one or more ``run.py`` output folders, seed 0) picks each optimizer's
best rate by final held-out loss; the seed folders (``run.py --seed k --grid "<name>:<best>"``)
add seeds at that rate. Prints a markdown table (mean and [min, max] of the final held-out
loss over the seeds, seconds per run) and writes ``eval_loss_seeds.png`` (mean held-out curve
per optimizer, min-max band) into ``--out``.

  python experiments/optimizers/summarize.py --sweep results/tpp results/tpp_ext \\
      --seeds results/tpp_seed1 results/tpp_seed2 --out results/tpp_summary
"""

import argparse
import json
import os
import sys

import numpy as np


def _runs(folder: str) -> dict:
  with open(os.path.join(folder, "results.json")) as f:
    return json.load(f)["runs"]


def summarize(sweeps, seeds):
  """{optimizer: {"lr", "finals": [...], "seconds": [...], "curves": [[(step, loss)]]}}."""
  swept = {}
  for folder in sweeps:
    swept.update(_runs(folder))
  best = {}
  for key, run in swept.items():
    name = key.split("@")[0]
    if name not in best or run["final_eval"] < best[name][1]["final_eval"]:
      best[name] = (key, run)
  out = {}
  for name, (key, run) in best.items():
    runs = [run] + [r[key] for r in map(_runs, seeds) if key in r]
    out[name] = {"lr": run["lr"], "finals": [r["final_eval"] for r in runs],
                 "seconds": [r["seconds"] for r in runs],
                 "curves": [r["curves"]["eval"] for r in runs]}
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sweep", nargs="+", required=True)
  p.add_argument("--seeds", nargs="*", default=[])
  p.add_argument("--out", required=True)
  p.add_argument("--title", default="")
  args = p.parse_args(argv)
  summary = summarize(args.sweep, args.seeds)
  rows = ["| optimizer | best lr | seeds | held-out loss mean | [min, max] | seconds per run |",
          "|---|---:|---:|---:|---:|---:|"]
  for name, s in sorted(summary.items(), key=lambda kv: np.mean(kv[1]["finals"])):
    f = np.asarray(s["finals"])
    rows.append(f"| {name} | {s['lr']:g} | {len(f)} | {f.mean():.4f} | [{f.min():.4f}, "
                f"{f.max():.4f}] | {np.mean(s['seconds']):.0f} |")
  table = "\n".join(rows)
  print(table)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write(table + "\n")
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(6, 4))
  for name, s in summary.items():
    steps = [step for step, _ in s["curves"][0]]
    losses = np.asarray([[loss for _, loss in c] for c in s["curves"]])
    ax.plot(steps, losses.mean(0), marker="o", label=f"{name} lr={s['lr']:g} (n={len(losses)})")
    ax.fill_between(steps, losses.min(0), losses.max(0), alpha=0.2)
  ax.set_xlabel("step")
  ax.set_ylabel("held-out loss (nats/byte)")
  ax.set_title(args.title or "best lr per optimizer: mean and min-max over seeds")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "eval_loss_seeds.png"), dpi=100)
  plt.close(fig)
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])
