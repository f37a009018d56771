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
"""Table 6 at small scale: Hope ablations, one command for every row.

Every row is Hope with config overrides (model registry fields), trained from the same seed on
the same corpus batches (next-token loss, byte tokens) and scored by held-out perplexity
(nats/byte and perplexity per byte, validation split). The paper's second metric (average
common-sense reasoning accuracy) needs benchmarks and scale this machine does not have.

Rows: every row is a difference from the reference "hope" row, experiments/configs/common.py
``HOPE_REFERENCE`` (the same Hope as the paper-scale configs lm.py:hope,760m / hope,1_3b): the
default profile with inner momentum and adaptive q on, since Table 6 ablates them (the default
profile has both off). Its other differences from the paper's literal choices (table in
nl_jax/models/hope.py; ``--model-overrides profile=paper`` runs every row on the paper
profile instead): smt.anchored_step mean (paper sum), smt.rule dgd (paper_l2), smt.value_norm
l2 (none), cms.objective local (ntp), cms.max_step_norm 1.0 (inf). Fields by their dotted names
(nl_jax.config_tree).

=================  ==============================================================
row                overrides on top of the reference
=================  ==============================================================
hope               smt.momentum=True, smt.adaptive_q=True
w/o DGD            smt.rule=gd (plain gradient step, no rank-1 erase)
w/o momentum       smt.momentum=False
w/o retention      smt.alpha_min=1.0 (alpha_t == 1: no weight decay of the memories)
w/o CMS            one CMS level with learning rate 0 (a static MLP, eq. 70 with k=1)
static q           smt.adaptive_q=False
static k           smt.static_projections=("k",) (k_t = l2norm of the static projection)
static v           smt.static_projections=("v",)
nested CMS         cms.variant="nested" (eq. 72: level s meta-learns level s+1's start)
nested CMS (slow   the same with cms.learning_rates=(1e-3, 1e-4): the parent moves the
parent)           child's start 10x more slowly than the child adapts (at equal rates
                   nested is sequential but for the step clip, nl_jax.layers.cms)
slow level 1       cms.learning_rates=(1e-3, 1e-4) in the sequential chain: the control of
(sequential)       the row above (same rates, no nesting)
fully adaptive     smt.targets="shared" (eqs. 79-82: adaptive projections, no vhat = M(v))
=================  ==============================================================

The last four rows are not in Table 6 (no paper number): the nested CMS and the fully adaptive
memory are the paper's other variants, measured beside the ablations.

  python experiments/ablations/run.py                    # full (see README for time)
  python experiments/ablations/run.py --shrunk --out /tmp/ab       # seconds, smoke test
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.configs.common import HOPE_REFERENCE  # noqa: E402
from nl_jax.eval import experiment, fit, perplexity, runner  # noqa: E402

REFERENCE = HOPE_REFERENCE
ROWS = {
    "hope": {},
    "w/o DGD": {"smt.rule": "gd"},
    "w/o momentum": {"smt.momentum": False},
    "w/o retention": {"smt.alpha_min": 1.0},
    "w/o CMS": "no_cms",
    "static q": {"smt.adaptive_q": False},
    "static k": {"smt.static_projections": ("k",)},
    "static v": {"smt.static_projections": ("v",)},
    # Not in Table 6: the paper's other variants (issue 21), stated as differences too.
    "nested CMS": {"cms.variant": "nested"},
    "nested CMS (slow parent)": {"cms.variant": "nested", "cms.learning_rates": (1e-3, 1e-4)},
    "slow level 1 (sequential)": {"cms.learning_rates": (1e-3, 1e-4)},
    "fully adaptive": {"smt.targets": "shared"},
}
# Table 6 (spec 8.7): average LM perplexity and reasoning accuracy, 1.3B / 100B tokens.
PAPER = {"hope": (12.24, 58.1), "w/o DGD": (13.41, 56.5), "w/o momentum": (13.58, 56.9),
         "w/o retention": (13.71, 57.2), "w/o CMS": (13.04, 57.3), "static k": (13.77, 56.9),
         "static v": (13.90, 55.1), "static q": (12.19, 57.4)}


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", default=",".join(ROWS))
  p.add_argument("--preset", default="tiny")
  p.add_argument("--model-overrides", default="", help="applied to every row")
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--seq-len", type=int, default=256)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--eval-windows", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--shrunk", action="store_true")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if args.shrunk:
    args.rows, args.model_overrides = "hope,w/o CMS", "n_layers=1"
    args.steps, args.seq_len, args.batch_size, args.eval_windows = 2, 32, 4, 2
  return args


def row_overrides(row: str, base: dict, preset: str) -> dict:
  from nl_jax.models import registry  # noqa: PLC0415

  spec = ROWS[row]
  if spec == "no_cms":
    chunks = registry.model_config("hope", preset, **base).cms.chunk_sizes
    return {**base, "cms.chunk_sizes": (min(chunks),), "cms.learning_rates": (0.0,)}
  return {**base, **spec}


def run_row(row, args):
  import optax  # noqa: PLC0415

  base = {**REFERENCE, **experiment.parse_overrides(args.model_overrides)}
  overrides = row_overrides(row, base, args.preset)
  model = experiment.build("hope", args.preset, args.seed, **overrides)
  align = runner.model_alignment(model)
  seq_len = -(-args.seq_len // align) * align
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, args.lr, max(args.steps // 15, 1), args.steps,
                                         args.lr / 10), weight_decay=0.1))
  log = fit.train(model, experiment.mixture([(1.0, experiment.lm_source(args.batch_size,
                                                                         seq_len))],
                                            args.seed), args.steps, tx,
                  log_every=max(args.steps // 10, 1))
  nll = perplexity.position_nll(runner.make_logits_fn(model),
                                perplexity.windows(seq_len, args.eval_windows, args.seed + 1))
  return {"overrides": {k: v for k, v in overrides.items()}, "params": experiment.num_params(
      model), "train_seconds": log["seconds"], "losses": log["losses"],
          "diverged_at": log["diverged_at"],
          "heldout_nll": float(nll.mean()), "heldout_ppl": float(np.exp(nll.mean())),
          "buckets": perplexity.bucket(nll)}


def main(argv=None):
  args = parse(argv)
  path = experiment.out_dir(__file__, args.out)
  rows = [r for r in args.rows.split(",") if r]
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    raise SystemExit(f"--rows: unknown {unknown}; choose from {list(ROWS)}")
  t0 = time.time()
  results = {}
  for row in rows:
    print(f"== {row}", flush=True)
    results[row] = run_row(row, args)
    print(f"   held-out ppl/byte {results[row]['heldout_ppl']:.3f}", flush=True)
  table_rows = []
  ref = results.get("hope")
  for row in ROWS:
    paper = ([f"{PAPER[row][0]:.2f}", f"{PAPER[row][1]:.1f}"] if row in PAPER
             else ["not in Table 6", ""])
    if row in results:
      r = results[row]
      delta = "" if ref is None else f"{r['heldout_nll'] - ref['heldout_nll']:+.4f}"
      if r["diverged_at"] is not None:
        delta += f" (diverged at step {r['diverged_at']})"
      table_rows.append([row, f"{r['heldout_nll']:.4f}", f"{r['heldout_ppl']:.3f}", delta]
                        + paper)
    else:
      table_rows.append([row, "not run", "", ""] + paper)
  table = experiment.markdown_table(
      ["row", "held-out nats/byte", "ppl/byte", "vs hope", "paper ppl (1.3B)",
       "paper reasoning acc"], table_rows)
  experiment.plot_lines(
      os.path.join(path, "train_loss.png"),
      {row: (list(range(len(r["losses"]))),
             np.convolve(r["losses"], np.ones(min(20, len(r["losses"]))) / min(
                 20, len(r["losses"])), mode="same").tolist())
       for row, r in results.items()},
      "step", "train loss (nats/byte, moving average)", "Hope ablations")
  settings = experiment.settings(args)
  experiment.write(path, {"settings": settings, "results": results,
                          "wall_seconds": time.time() - t0}, table)
  print(table)
  print(f"wall time {time.time() - t0:.0f}s; wrote {path}")
  return results


if __name__ == "__main__":
  main()
