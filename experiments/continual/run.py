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
levels with long chunks should help.

  python experiments/continual/run.py                    # full (see README for time)
  python experiments/continual/run.py --shrunk --out /tmp/cl      # seconds, smoke test

Variants: ``--variants "label:model:field=value,field=a|b;label2:model2:"``.
"""

import argparse
import os
import sys
import time

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


def parse_variants(spec: str) -> list[tuple[str, str, dict]]:
  out = []
  for item in filter(None, (s.strip() for s in spec.split(";"))):
    parts = item.split(":", 2)
    if len(parts) != 3:
      raise ValueError(f"--variants item {item!r} must be label:model:overrides")
    out.append((parts[0], parts[1], experiment.parse_overrides(parts[2])))
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
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--eval-streams", type=int, default=40)
  p.add_argument("--segment-len", type=int, default=128)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--shrunk", action="store_true")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if args.shrunk:
    args.variants = "transformer_pp:transformer_pp:n_layers=1"
    args.num_tasks, args.num_words, args.repeats, args.filler = 2, 3, 1, 0
    args.steps, args.batch_size, args.eval_streams, args.segment_len = 2, 4, 2, 64
  return args


def run_one(model_name, overrides, args, cfg):
  import optax  # noqa: PLC0415

  model = experiment.build(model_name, args.preset, args.seed, **overrides)
  align = runner.model_alignment(model)
  probe = continual.make_streams(cfg, 8, args.seed)
  length = max(len(e.tokens) for e in probe) + 32
  length = -(-length // max(align, args.segment_len)) * max(align, args.segment_len)

  def make(n, seed):
    exs = continual.make_streams(cfg, 1 + n // (cfg.num_tasks * (cfg.num_tasks + 1) // 2), seed)
    rng = np.random.default_rng(seed)
    return [exs[i] for i in rng.choice(len(exs), n, replace=False)]

  source = experiment.task_source(make, args.batch_size, length, align)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, args.lr, max(args.steps // 20, 1), args.steps,
                                         args.lr / 10), weight_decay=0.01))
  log = fit.train(model, experiment.mixture([(1.0, source)], args.seed), args.steps, tx,
                  log_every=max(args.steps // 10, 1))
  test = continual.make_streams(cfg, args.eval_streams, args.seed + 1000)
  out = {"params": experiment.num_params(model), "train_seconds": log["seconds"],
         "diverged_at": log["diverged_at"],
         "losses": log["losses"]}
  for mode, seg in (("full", None), ("segmented", args.segment_len)):
    res = ex_lib.score(runner.make_logits_fn(model, segment_len=seg), test, batch_size=8,
                       pad_to_multiple=max(align, seg or 1), length=length)
    acc = continual.accuracy_matrix(res["by_group"], cfg.num_tasks)
    out[mode] = {"matrix": acc.tolist(), "forgetting": continual.forgetting(acc),
                 "final_mean": float(np.nanmean(acc[-1]))}
    print(f"   {mode}: final row {np.round(100 * acc[-1], 1)}  forgetting "
          f"{100 * out[mode]['forgetting']:.1f}", flush=True)
  return out


def main(argv=None):
  args = parse(argv)
  path = experiment.out_dir(__file__, args.out)
  cfg = continual.ContinualConfig(num_tasks=args.num_tasks, num_words=args.num_words,
                                  repeats=args.repeats, num_queries=args.num_words,
                                  filler=args.filler)
  t0 = time.time()
  results = {}
  variants = parse_variants(args.variants)
  for label, model_name, overrides in variants:
    print(f"== {label} ({model_name} {overrides})", flush=True)
    results[label] = run_one(model_name, overrides, args, cfg)
  header = ["variant", "params"]
  for mode in ("full", "segmented"):
    header += [f"{mode}: A[last] mean", f"{mode}: forgetting", f"{mode}: task 0 after each stage"]
  rows = []
  for label, _, _ in variants:
    r = results[label]
    row = [label, f"{r['params'] / 1e6:.2f}M"]
    for mode in ("full", "segmented"):
      m = np.asarray(r[mode]["matrix"])
      row += [f"{100 * r[mode]['final_mean']:.1f}", f"{100 * r[mode]['forgetting']:.1f}",
              "/".join(f"{100 * v:.0f}" for v in m[:, 0])]
    rows.append(row)
  table = experiment.markdown_table(header, rows)
  for mode in ("full", "segmented"):
    series = {label: (list(range(cfg.num_tasks)),
                      [100 * v for v in np.asarray(results[label][mode]["matrix"])[:, 0]])
              for label, _, _ in variants}
    experiment.plot_lines(os.path.join(path, f"task0_accuracy_{mode}.png"), series,
                          "stage (languages learnt so far - 1)", "accuracy on language 0 (%)",
                          f"forgetting of the first language ({mode})")
  settings = {k: v for k, v in vars(args).items() if k != "out"}
  experiment.write(path, {"settings": settings, "results": results,
                          "wall_seconds": time.time() - t0}, table)
  print(table)
  print(f"wall time {time.time() - t0:.0f}s; wrote {path}")
  return results


if __name__ == "__main__":
  main()
