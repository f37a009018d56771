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
"""Table 5 at small scale: formal-language recognition, Hope vs Titans vs Transformer++.

For every (model, language) a fresh model is trained on strings of length 1..max_len (bin0)
to classify membership (class logit T/F after "=", see nl_jax/eval/formal.py), then tested on
fresh strings of bin0 and of bin1 = max_len+1..2*max_len (length generalization).

  python experiments/formal_languages/run.py                  # full (see README for time)
  python experiments/formal_languages/run.py --shrunk --out /tmp/fl   # seconds, smoke test
"""

import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from nl_jax.eval import examples as ex_lib  # noqa: E402
from nl_jax.eval import experiment, fit, formal, runner  # noqa: E402

# Table 5 (paper spec 8.6), accuracy bin0/bin1.
PAPER = {
    "Transformer": {"parity": (46.4, 0.0), "aa_star": (0.0, 0.0), "abab_star": (0.0, 0.0),
                    "anbn": (100.0, 100.0), "anbncn": (100.0, 100.0),
                    "shuffle_2": (100.0, 100.0)},
    "Hope": {lang: (100.0, 100.0) for lang in formal.LANGUAGES},
}


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="hope,titans,transformer_pp")
  p.add_argument("--languages", default=",".join(formal.LANGUAGES))
  p.add_argument("--preset", default="tiny")
  p.add_argument("--model-overrides", default="", help="e.g. n_layers=4,d_model=128")
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--max-len", type=int, default=32, help="longest training string (bin0)")
  p.add_argument("--eval-examples", type=int, default=512)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--shrunk", action="store_true", help="seconds-long smoke run")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if args.shrunk:
    args.models, args.languages = "transformer_pp", "parity"
    args.steps, args.batch_size, args.max_len, args.eval_examples = 3, 8, 6, 16
    args.model_overrides = "n_layers=1"
  return args


def run_one(model_name, language, args):
  import optax  # noqa: PLC0415

  model = experiment.build(model_name, args.preset, args.seed,
                           **experiment.parse_overrides(args.model_overrides))
  align = runner.model_alignment(model)
  bins = formal.length_bins(args.max_len)
  train_cfg = formal.FormalConfig(language=language, min_len=bins["bin0"][0],
                                  max_len=bins["bin0"][1])
  source = experiment.task_source(
      lambda n, s: formal.make_examples(train_cfg, n, s), args.batch_size, args.max_len + 3,
      align)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, args.lr, max(args.steps // 20, 1), args.steps,
                                         args.lr / 10), weight_decay=0.01))
  log = fit.train(model, experiment.mixture([(1.0, source)], args.seed), args.steps, tx,
                  log_every=max(args.steps // 5, 1))
  logits_fn = runner.make_logits_fn(model)
  out = {"train_seconds": log["seconds"], "diverged_at": log["diverged_at"],
         "final_loss": float(np.mean(log["losses"][-20:])),
         "params": experiment.num_params(model), "losses": log["losses"]}
  for name, (lo, hi) in bins.items():
    cfg = formal.FormalConfig(language=language, min_len=lo, max_len=hi)
    exs = formal.make_examples(cfg, args.eval_examples, args.seed + 1000)
    res = ex_lib.score(logits_fn, exs, batch_size=64, pad_to_multiple=align,
                       length=2 * args.max_len + 3)
    out[name] = res["accuracy"]
    by_len = collections.defaultdict(list)
    for e, flags in zip(exs, res["per_example"], strict=False):
      by_len[e.meta["length"]].append(flags[0])
    out[f"{name}_by_length"] = {int(k): float(np.mean(v)) for k, v in sorted(by_len.items())}
  return out


def main(argv=None):
  args = parse(argv)
  path = experiment.out_dir(__file__, args.out)
  models = args.models.split(",")
  languages = args.languages.split(",")
  t0 = time.time()
  results = {}
  for lang in languages:
    for m in models:
      print(f"== {m} on {lang}", flush=True)
      results[f"{m}/{lang}"] = run_one(m, lang, args)
      r = results[f"{m}/{lang}"]
      print(f"   bin0 {100 * r['bin0']:.1f}  bin1 {100 * r['bin1']:.1f}", flush=True)
  header = ["language"] + [f"{m} bin0/bin1" for m in models] + ["paper Hope", "paper Transformer"]
  rows = []
  for lang in languages:
    row = [lang]
    for m in models:
      r = results[f"{m}/{lang}"]
      cell = f"{100 * r['bin0']:.1f}/{100 * r['bin1']:.1f}"
      if r["diverged_at"] is not None:
        cell += f" (diverged at step {r['diverged_at']})"
      row.append(cell)
    row += ["%.1f/%.1f" % PAPER["Hope"][lang], "%.1f/%.1f" % PAPER["Transformer"][lang]]
    rows.append(row)
  table = experiment.markdown_table(header, rows)
  for lang in languages:
    series = {}
    for m in models:
      r = results[f"{m}/{lang}"]
      acc = {**r["bin0_by_length"], **r["bin1_by_length"]}
      series[m] = (list(acc), [100 * v for v in acc.values()])
    experiment.plot_lines(os.path.join(path, f"accuracy_by_length_{lang}.png"), series,
                          "string length", "accuracy (%)",
                          f"{lang}: trained on lengths <= {args.max_len}")
  settings = experiment.settings(args)
  experiment.write(path, {"settings": settings, "results": results,
                          "wall_seconds": time.time() - t0}, table)
  print(table)
  print(f"wall time {time.time() - t0:.0f}s; wrote {path}")
  return results


if __name__ == "__main__":
  main()
