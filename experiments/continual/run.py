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
"""Continual learning in context, with and without extra CMS levels (paper Fig. 8, CTNL).

A stream teaches made-up languages one after another (nl_jax/eval/continual.py: every
language translates the same words, so later languages interfere with earlier ones). Each
model is meta-trained on such streams (loss on the answers of queries about every language
seen so far), then tested on held-out streams; the accuracy matrix A[stage, task] and the
average forgetting are reported, both with the whole stream in one call and fed in segments
with only the memory state carried across segments (``--segment-len``), which is where CMS
levels with long chunks should help. Each (variant, seed) is one training run; the tables
give the mean over seeds [min-max].

  python experiments/continual/run.py                    # full (see README for time)
  python experiments/continual/run.py --variants "hope+0:hope:cms.chunk_sizes=16" --seeds 0,1,2
  python experiments/continual/run.py --combine /tmp/c/hope,/tmp/c/tpp --out /tmp/c/all
  python experiments/continual/run.py --shrunk --out /tmp/cl      # seconds, smoke test

Variants: ``--variants "label:model:field=value,field=a|b;label2:model2:"``.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from nl_jax.eval import continual, experiment, fit, runner  # noqa: E402
from nl_jax.eval import examples as ex_lib  # noqa: E402

# Hope with 1 CMS level ("ICL": no extra level) and 1, 2, 3 extra levels of longer chunks.
DEFAULT_VARIANTS = ("hope+0:hope:cms.chunk_sizes=16;"
                    "hope+1:hope:cms.chunk_sizes=16|64;"
                    "hope+2:hope:cms.chunk_sizes=16|64|256;"
                    "hope+3:hope:cms.chunk_sizes=16|64|256|1024;"
                    "transformer_pp:transformer_pp:")
MODES = ("full", "segmented")


def parse_variants(spec: str) -> dict[str, tuple[str, dict]]:
  """``"label:model:overrides;..."`` -> ``{label: (model, overrides)}``, in order."""
  out = {}
  for item in filter(None, (s.strip() for s in spec.split(";"))):
    parts = item.split(":", 2)
    if len(parts) != 3:
      raise ValueError(f"--variants item {item!r} must be label:model:overrides")
    if "," in parts[0] or parts[0] in out:
      raise ValueError(f"--variants label {parts[0]!r} must be unique and have no comma")
    out[parts[0]] = (parts[1], experiment.parse_overrides(parts[2]))
  return out


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variants", default=DEFAULT_VARIANTS)
  p.add_argument("--preset", default="tiny")
  p.add_argument("--num-tasks", type=int, default=3)
  p.add_argument("--num-words", type=int, default=6)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--filler", type=int, default=128, help="corpus characters after each stage")
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--minutes", type=float, default=None,
                 help="wall-clock cap per (variant, seed) training run (the schedule keeps "
                      "--steps); None = run every step")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--eval-streams", type=int, default=40)
  p.add_argument("--segment-len", type=int, default=128)
  p.add_argument("--seeds", default="0", help="comma-separated; one training run per seed "
                                              "(test streams: seed + 1000)")
  p.add_argument("--combine", default="",
                 help="comma-separated result folders of earlier runs (same task settings) "
                      "to merge into one table and plot in --out; trains nothing")
  p.add_argument("--shrunk", action="store_true")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if args.shrunk:
    args.variants = "transformer_pp:transformer_pp:n_layers=1"
    args.num_tasks, args.num_words, args.repeats, args.filler = 2, 3, 1, 0
    args.steps, args.batch_size, args.eval_streams, args.segment_len = 2, 4, 2, 64
  args.models = ",".join(parse_variants(args.variants))  # the labels, checked before any work
  stream_config(args)
  return args


# Settings that must agree between the runs that --combine puts in one table.
_SHARED = ("preset", "num_tasks", "num_words", "repeats", "filler", "batch_size", "lr",
           "eval_streams", "segment_len")


def stream_config(args) -> continual.ContinualConfig:
  return continual.ContinualConfig(num_tasks=args.num_tasks, num_words=args.num_words,
                                   repeats=args.repeats, num_queries=args.num_words,
                                   filler=args.filler)


def run_one(label: str, seed: int, args) -> dict:
  """Meta-trains variant ``label`` on random streams, then scores it on held-out ones."""
  import optax  # noqa: PLC0415

  model_name, overrides = parse_variants(args.variants)[label]
  cfg = stream_config(args)
  model = experiment.build(model_name, args.preset, seed, **overrides)
  align = runner.model_alignment(model)
  probe = continual.make_streams(cfg, 8, seed)
  length = max(len(e.tokens) for e in probe) + 32
  length = -(-length // max(align, args.segment_len)) * max(align, args.segment_len)

  def make(n, stream_seed):
    exs = continual.make_streams(cfg, 1 + n // (cfg.num_tasks * (cfg.num_tasks + 1) // 2),
                                 stream_seed)
    rng = np.random.default_rng(stream_seed)
    return [exs[i] for i in rng.choice(len(exs), n, replace=False)]

  source = experiment.task_source(make, args.batch_size, length, align)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, args.lr, max(args.steps // 20, 1), args.steps,
                                         args.lr / 10), weight_decay=0.01))
  log = fit.train(model, experiment.mixture([(1.0, source)], seed), args.steps, tx,
                  log_every=max(args.steps // 10, 1),
                  max_seconds=None if args.minutes is None else 60 * args.minutes)
  test = continual.make_streams(cfg, args.eval_streams, seed + 1000)
  out = {"model": model_name, "overrides": overrides, "params": experiment.num_params(model),
         "train_seconds": log["seconds"], "steps_done": len(log["losses"]),
         "diverged_at": log["diverged_at"], "losses": log["losses"]}
  for mode, seg in zip(MODES, (None, args.segment_len), strict=True):
    res = ex_lib.score(runner.make_logits_fn(model, segment_len=seg), test, batch_size=8,
                       pad_to_multiple=max(align, seg or 1), length=length)
    acc = continual.accuracy_matrix(res["by_group"], cfg.num_tasks)
    letters = continual.accuracy_matrix(res["token_by_group"], cfg.num_tasks)
    out[mode] = {"matrix": acc.tolist(), "forgetting": continual.forgetting(acc),
                 "final_mean": float(np.nanmean(acc[-1])), "letter_matrix": letters.tolist(),
                 "letter_forgetting": continual.forgetting(letters)}
    print(f"   {mode}: final row {np.round(100 * acc[-1], 1)}  forgetting "
          f"{100 * out[mode]['forgetting']:.1f}; letters {np.round(100 * letters, 1).tolist()}",
          flush=True)
  print(f"   {label} seed {seed}: {out['steps_done']} steps, {out['train_seconds']:.0f}s, "
        f"final loss {np.mean(log['losses'][-20:]):.3f}", flush=True)
  return out


def report(path: str, results: dict, args, extra: dict) -> str:
  """Writes the table (mean [min-max] over seeds), the plots and results.json."""
  header = ["variant", "params", "seeds", "steps"]
  for mode in MODES:
    header += [f"{mode}: A[last] mean", f"{mode}: forgetting",
               f"{mode}: task 0 after each stage (mean)"]
  rows, letter_rows = [], []
  for label, runs in results.items():
    r0 = next(iter(runs.values()))
    if all("letter_matrix" in r["full"] for r in runs.values()):
      for mode in MODES:
        mats = np.asarray([r[mode]["letter_matrix"] for r in runs.values()])
        letter_rows.append([label, mode] + [
            experiment.spread_cell(100 * mats[:, s, j], "{:.1f}")
            for s in range(args.num_tasks) for j in range(s + 1)] + [
            experiment.spread_cell([100 * r[mode]["letter_forgetting"] for r in runs.values()],
                                   "{:.1f}")])
    row = [label, f"{r0['params'] / 1e6:.2f}M", len(runs),
           "/".join(str(r.get("steps_done", args.steps)) for r in runs.values())]
    for mode in MODES:
      task0 = np.mean([np.asarray(r[mode]["matrix"])[:, 0] for r in runs.values()], axis=0)
      row += [experiment.spread_cell([100 * r[mode]["final_mean"] for r in runs.values()],
                                     "{:.1f}"),
              experiment.spread_cell([100 * r[mode]["forgetting"] for r in runs.values()],
                                     "{:.1f}"),
              "/".join(f"{100 * v:.0f}" for v in task0)]
    rows.append(row)
  table = ("Exact match (%) of the code words, mean over seeds [min-max]:\n\n"
           + experiment.markdown_table(header, rows))
  if letter_rows:
    table += ("\n\nLetters of the code words predicted right (%, teacher-forced), A[s, j] "
              "after stage s on language j, mean over seeds [min-max]:\n\n"
              + experiment.markdown_table(
                  ["variant", "mode"] + [f"A[{s},{j}]" for s in range(args.num_tasks)
                                         for j in range(s + 1)] + ["forgetting"],
                  letter_rows))
  for mode in MODES:
    series = {label: (list(range(args.num_tasks)), list(np.mean(
        [100 * np.asarray(r[mode]["matrix"])[:, 0] for r in runs.values()], axis=0)))
              for label, runs in results.items()}
    experiment.plot_lines(os.path.join(path, f"task0_accuracy_{mode}.png"), series,
                          "stage (languages learnt so far - 1)",
                          "accuracy on language 0 (%, mean over seeds)",
                          f"forgetting of the first language ({mode})")
  experiment.write(path, {"settings": experiment.settings(args), "results": results, **extra}, table)
  return table


def main(argv=None):
  args = parse(argv)
  return experiment.run_models_and_seeds(args, experiment.out_dir(__file__, args.out), run_one,
                                         report, _SHARED)


if __name__ == "__main__":
  main()
