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
"""Multi-query associative recall (MQAR, Zoology) for Hope, Titans and Transformer++.

Each model is trained from scratch on MQAR batches (`nl_jax.eval.mqar.training_batch`: byte
tokens, 36 possible keys, 26 values, ``--train-pairs`` key-value pairs and a filler gap of up
to ``--train-gap`` tokens per example, loss on the answers only) for ``--steps`` steps or
``--minutes`` of wall time, whichever ends first, and then scored on fresh examples:

* by number of pairs (gap 0): ``--test-pairs``, some beyond the training range;
* by sequence length at ``--length-pairs`` pairs: ``--test-lengths`` tokens (the rest is
  filler between the context and the queries), some beyond the training length.

Accuracy = fraction of queries whose value is the argmax (teacher-forced, = greedy decoding).
Each (model, seed) is one training run; tables give the mean and the spread (min-max) over
seeds.

  python experiments/in_context/mqar.py --models transformer_pp,titans --seeds 0,1,2
  python experiments/in_context/mqar.py --models hope --out results/mqar/hope
  python experiments/in_context/mqar.py --combine results/mqar/transformer_pp,results/mqar/hope \
      --out results/mqar/all                                   # one table and plots
  python experiments/in_context/mqar.py --shrunk --out /tmp/mq        # seconds, smoke test
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from nl_jax.eval import examples as ex_lib  # noqa: E402
from nl_jax.eval import experiment, fit, mqar, runner  # noqa: E402


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="transformer_pp,titans,hope")
  p.add_argument("--preset", default="tiny")
  p.add_argument("--model-overrides", default="", help="e.g. n_layers=2 (all models)")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--steps", type=int, default=4000)
  p.add_argument("--minutes", type=float, default=30.0,
                 help="wall-clock cap per (model, seed) training run")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--lr", type=float, default=5e-3)
  p.add_argument("--warmup", type=int, default=100)
  p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's decoupled decay")
  p.add_argument("--train-pairs", default="2-8", help="min-max pairs per training example")
  p.add_argument("--train-gap", type=int, default=16, help="max filler tokens in training")
  p.add_argument("--zero-gap-share", type=float, default=0.0,
                 help="share of training examples with no filler (the rest draw their gap "
                      "from 0..--train-gap): more queries next to their pair, the ones "
                      "Hope's CMS blocks cannot recall")
  p.add_argument("--test-pairs", default="4,8,12,16,24")
  p.add_argument("--length-pairs", type=int, default=8)
  p.add_argument("--test-lengths", default="48,96,192,384")
  p.add_argument("--eval-examples", type=int, default=100)
  p.add_argument("--block", type=int, default=8,
                 help="block size of the placement table: queries whose pair was written "
                      "in an earlier block vs the same block (8 = the smallest CMS chunk of "
                      "the tiny Hope, whose CMS takes a block in at the block's end)")
  p.add_argument("--switch-off", action="store_true",
                 help="also score each trained model with each of its in-context updates "
                      "switched off (nl_jax.eval.experiment.switch_off_variants: the SMT's / "
                      "Titans' writes, the CMS steps, both), its weights unchanged")
  p.add_argument("--combine", default="",
                 help="comma-separated result folders of earlier runs (same task settings) "
                      "to merge into one table and plots in --out; trains nothing")
  p.add_argument("--shrunk", action="store_true")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if args.shrunk:
    args.models, args.seeds, args.model_overrides = "transformer_pp", "0", "n_layers=1"
    args.steps, args.batch_size, args.warmup, args.train_pairs = 2, 4, 1, "2-4"
    args.train_gap, args.test_pairs, args.length_pairs = 4, "2,4,6", 2
    args.test_lengths, args.eval_examples = "16,32", 4
  return args


def _range(spec: str) -> tuple[int, int]:
  lo, _, hi = spec.partition("-")
  return int(lo), int(hi or lo)


def _ints(spec: str) -> list[int]:
  return [int(x) for x in spec.split(",") if x.strip()]


def test_configs(args) -> dict[str, mqar.MqarConfig]:
  """{label: config}: ``pairs=N`` (gap 0) and ``len=L`` (``--length-pairs`` pairs + filler)."""
  out = {f"pairs={n}": mqar.MqarConfig(num_pairs=n, num_queries=n) for n in _ints(args.test_pairs)}
  k = args.length_pairs
  for length in _ints(args.test_lengths):
    if length < 4 * k:
      raise ValueError(f"--test-lengths {length} < 4 * --length-pairs = {4 * k}")
    out[f"len={length}"] = mqar.MqarConfig(num_pairs=k, num_queries=k, gap=length - 4 * k)
  return out


def run_one(model_name: str, seed: int, args) -> dict:
  """Trains one model on MQAR and scores it on every test config."""
  import optax  # noqa: PLC0415

  model = experiment.build(model_name, args.preset, seed,
                           **experiment.parse_overrides(args.model_overrides))
  align = runner.model_alignment(model)
  lo, hi = _range(args.train_pairs)
  length = -(-(4 * hi + args.train_gap) // align) * align
  rng = np.random.default_rng([seed, 17])

  def batches():
    while True:
      yield mqar.training_batch(rng, args.batch_size, length, min_pairs=lo, max_pairs=hi,
                                max_gap=args.train_gap, zero_gap_share=args.zero_gap_share,
                                pad_to_multiple=align)

  warmup = min(args.warmup, max(args.steps // 10, 1))
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, max(args.steps, warmup + 1),
                                         args.lr / 10), weight_decay=args.weight_decay))
  log = fit.train(model, batches(), args.steps, tx, log_every=max(args.steps // 10, 1),
                  max_seconds=60 * args.minutes)
  logits_fn = runner.make_logits_fn(model)
  out = {"params": experiment.num_params(model), "train_len": length,
         "steps_done": len(log["losses"]), "train_seconds": log["seconds"],
         "diverged_at": log["diverged_at"],
         "final_loss": float(np.mean(log["losses"][-20:])),
         "losses": log["losses"], "accuracy": {}, "placement": {}}
  out["accuracy"], out["placement"] = evaluate(logits_fn, seed, args, align)
  if args.switch_off:
    out["switch_off"] = {}
    for name, overrides in experiment.switch_off_variants(model.config).items():
      if overrides:
        fn = runner.make_logits_fn(experiment.with_overrides(model, overrides))
        acc, placement = evaluate(fn, seed, args, align)
        out["switch_off"][name] = {"accuracy": acc, "placement": placement}
        print(f"   {name}: " + ", ".join(
            f"{k} {100 * v:.0f} ({100 * placement[k]['same_block']:.0f} in-block)"
            for k, v in acc.items()), flush=True)
  print(f"   {model_name} seed {seed}: {out['steps_done']} steps, {out['train_seconds']:.0f}s, "
        f"final loss {out['final_loss']:.3f}; " + ", ".join(
            f"{k} {100 * v:.0f}" for k, v in out["accuracy"].items()), flush=True)
  print(f"   by placement (block {args.block}; earlier / same block): " + ", ".join(
      f"{k} {100 * v['earlier_block']:.0f}/{100 * v['same_block']:.0f}"
      for k, v in out["placement"].items()), flush=True)
  return out


def evaluate(logits_fn, seed: int, args, align: int) -> tuple[dict, dict]:
  """({label: accuracy}, {label: accuracy by placement}) on fresh examples of every test set."""
  configs = test_configs(args)
  # One padded length for every test set: one compiled forward (right padding changes no
  # causal prediction), which costs less than a compile per length on a CPU.
  eval_len = max(c.length for c in configs.values())
  accuracy, placement = {}, {}
  for label, cfg in configs.items():
    exs = mqar.make_examples(cfg, args.eval_examples, seed + 1000)
    res = ex_lib.score(logits_fn, exs, batch_size=min(50, len(exs)), pad_to_multiple=align,
                       length=eval_len)
    accuracy[label] = res["accuracy"]
    placement[label] = mqar.accuracy_by_placement(exs, res["per_example"], args.block)
  return accuracy, placement


def switch_off_table(results: dict, labels: list[str]) -> str:
  """Accuracy (%, mean over seeds) with each in-context update switched off at evaluation
  (``--switch-off``), and in brackets that of the queries in their pair's block."""
  rows = []
  for m, runs in results.items():
    names = [n for r in runs.values() for n in r.get("switch_off", {})]
    for name in dict.fromkeys(["as trained"] + names if names else []):
      views = [r if name == "as trained" else r["switch_off"][name] for r in runs.values()
               if name == "as trained" or name in r.get("switch_off", {})]
      cells = []
      for lab in labels:
        acc = 100 * np.mean([v["accuracy"][lab] for v in views])
        same = [v["placement"][lab]["same_block"] for v in views]
        cells.append(f"{acc:.1f}" if any(np.isnan(x) for x in same)
                     else f"{acc:.1f} ({100 * np.mean(same):.0f})")
      rows.append([m, name, len(views)] + cells)
  if not rows:
    return ""
  return ("\nSwitched off at evaluation (the trained weights unchanged): accuracy (%, mean over "
          "seeds), in brackets that of the queries in their pair's block.\n\n"
          + experiment.markdown_table(["model", "updates", "seeds"] + labels, rows) + "\n")


def aggregate(runs: dict[int, dict], label: str) -> tuple[float, float, float]:
  """(mean, min, max) over seeds of one accuracy, in percent."""
  vals = np.asarray([100 * r["accuracy"][label] for r in runs.values()])
  return float(vals.mean()), float(vals.min()), float(vals.max())


def placement_table(results: dict, labels: list[str], block: int) -> str:
  """Accuracy (%, mean over seeds) of queries whose pair is in an earlier block / the same
  block (`nl_jax.eval.mqar.accuracy_by_placement`); runs saved without it are left out."""
  rows = []
  for m, runs in results.items():
    if not all("placement" in r for r in runs.values()):
      continue
    cells = []
    for lab in labels:
      pair = []
      for kind in ("earlier_block", "same_block"):
        vals = [r["placement"][lab][kind] for r in runs.values()]
        pair.append("-" if any(np.isnan(v) for v in vals) else f"{100 * np.mean(vals):.0f}")
      cells.append(" / ".join(pair))
    rows.append([m] + cells)
  if not rows:
    return ""
  return (f"\nBy placement: accuracy (%) of the queries whose pair was written in an earlier "
          f"{block}-token block / in the same block as the query (- = no such query).\n\n"
          + experiment.markdown_table(["model"] + labels, rows) + "\n")


def plot(path: str, results: dict, labels: list[str], xs: list[int], xlabel: str,
         title: str) -> None:
  """Accuracy (mean over seeds, bars = min..max) against xs, one line per model."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(6, 4))
  for m, runs in results.items():
    stats = np.asarray([aggregate(runs, lab) for lab in labels])
    ax.errorbar(xs, stats[:, 0], yerr=[stats[:, 0] - stats[:, 1], stats[:, 2] - stats[:, 0]],
                marker="o", capsize=3, label=f"{m} ({len(runs)} seed{'s' * (len(runs) > 1)})")
  ax.set_xscale("log", base=2)
  ax.set_ylim(-3, 103)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("MQAR accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_losses(path: str, results: dict) -> None:
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (m, runs) in enumerate(results.items()):
    for j, (seed, r) in enumerate(runs.items()):
      losses = np.asarray(r["losses"])
      w = max(1, min(25, len(losses) // 10))
      smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
      ax.plot(np.arange(len(smooth)) + w - 1, smooth, color=f"C{i}", alpha=0.8,
              label=m if j == 0 else None, lw=1)
      del seed
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("answer-token loss (nats)")
  ax.set_title("MQAR training loss (one line per seed)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def report(path: str, results: dict, args, extra: dict | None = None) -> str:
  """Writes results.json / results.md and the plots of ``results`` {model: {seed: run}}."""
  labels = list(test_configs(args))
  header = ["model", "params", "seeds", "steps", "train s", "final loss"] + labels
  rows = []
  for m, runs in results.items():
    r0 = next(iter(runs.values()))
    rows.append([m, f"{r0['params']:,}", len(runs),
                 "/".join(str(r["steps_done"]) for r in runs.values()),
                 "/".join(f"{r['train_seconds']:.0f}" for r in runs.values()),
                 "/".join(f"{r['final_loss']:.3f}" for r in runs.values())]
                + [experiment.spread_cell([100 * r["accuracy"][lab] for r in runs.values()],
                                          "{:.1f}") for lab in labels])
  table = experiment.markdown_table(header, rows)
  table += ("\n\nAccuracy in %: mean over seeds [min-max]. Trained on "
            f"{args.train_pairs} pairs with gaps 0-{args.train_gap} tokens"
            + (f", {args.zero_gap_share:.0%} of the examples with gap 0"
               * bool(args.zero_gap_share))
            + ".\n")
  table += placement_table(results, labels, args.block)
  table += switch_off_table(results, labels)
  pair_labels = [lab for lab in labels if lab.startswith("pairs=")]
  len_labels = [lab for lab in labels if lab.startswith("len=")]
  plot(os.path.join(path, "mqar_vs_pairs.png"), results, pair_labels,
       [int(lab.split("=")[1]) for lab in pair_labels], "key-value pairs (= queries), gap 0",
       f"MQAR, trained on {args.train_pairs} pairs")
  plot(os.path.join(path, "mqar_vs_length.png"), results, len_labels,
       [int(lab.split("=")[1]) for lab in len_labels], "sequence length (tokens)",
       f"MQAR, {args.length_pairs} pairs + filler")
  plot_losses(os.path.join(path, "mqar_train_loss.png"), results)
  experiment.write(path, {"settings": experiment.settings(args), "results": results, **(extra or {})}, table)
  return table


# Settings that must agree between the runs that --combine puts in one table
# (experiment.combine_runs).
_SHARED = ("preset", "model_overrides", "batch_size", "lr", "warmup", "train_pairs",
           "train_gap", "zero_gap_share", "test_pairs", "length_pairs", "test_lengths",
           "eval_examples")


def main(argv=None):
  args = parse(argv)
  return experiment.run_models_and_seeds(args, experiment.out_dir(__file__, args.out), run_one,
                                         report, _SHARED)


if __name__ == "__main__":
  main()
