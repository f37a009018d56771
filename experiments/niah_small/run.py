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
"""Table 1 at small scale: RULER-style NIAH, Hope vs Titans vs Transformer++ vs Hope-Attention.

Each model (~10-20M parameters with ``--preset small``) is trained on a mix of the embedded
corpus (next-token loss on every byte) and NIAH examples whose haystacks come from the
*training* split (loss on the answer only), all at ``--train-len`` tokens. It is then tested
on fresh NIAH examples from the *held-out* split at 1x, 2x and 4x the training length.

Each (model, seed) is one training run; the tables give exact match (and, as a finer signal,
the accuracy of the answer's tokens) as the mean over seeds [min-max].

  python experiments/niah_small/run.py                   # full (see README for time)
  python experiments/niah_small/run.py --models hope --seeds 0,1,2 --out /tmp/n/hope
  python experiments/niah_small/run.py --combine /tmp/n/hope,/tmp/n/titans --out /tmp/n/all
  python experiments/niah_small/run.py --shrunk --out /tmp/ns     # seconds, smoke test
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from nl_jax.eval import examples as ex_lib  # noqa: E402
from nl_jax.eval import experiment, fit, niah, runner  # noqa: E402

# arXiv Table 1 (spec 8.3), accuracy at 4K / 8K / 16K (their training length is not stated).
PAPER = {
    "Transformer": {"s_niah_1": (88.6, 76.4, 79.8), "s_niah_2": (100, 98.8, 94.2),
                    "s_niah_3": (78.0, 69.2, 40.8), "mk_niah_1": (79.4, 83.0, 61.4)},
    "Hope-Attention": {"s_niah_1": (100, 100, 100), "s_niah_2": (100, 98.4, 94.4),
                       "s_niah_3": (76.8, 68.8, 42.4), "mk_niah_1": (80.2, 84.8, 60.8)},
    "Titans": {"s_niah_1": (100, 100, 100), "s_niah_2": (99.6, 84.6, 75.4),
               "s_niah_3": (74.2, 42.8, 21.2), "mk_niah_1": (26.4, 23.6, 8.2)},
    "Hope": {"s_niah_1": (100, 100, 100), "s_niah_2": (99.2, 88.4, 78.2),
             "s_niah_3": (73.2, 46.2, 24.8), "mk_niah_1": (29.4, 24.8, 14.8)},
}
ANSWER_ROOM = 40  # longest answer (" " + UUID = 37 tokens) fits after the prompt


def parser(description: str = __doc__) -> argparse.ArgumentParser:
  """The training and test flags (`length_probe.py` adds its own to them)."""
  p = argparse.ArgumentParser(description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="hope,titans,transformer_pp,hope_attention")
  p.add_argument("--preset", default="small")
  p.add_argument("--model-overrides", default="")
  p.add_argument("--subtasks", default=",".join(niah.TASKS))
  p.add_argument("--train-len", type=int, default=512)
  p.add_argument("--multiples", default="1,2,4", help="test lengths as multiples of train-len")
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--minutes", type=float, default=None,
                 help="wall-clock cap per (model, seed) training run (the schedule keeps "
                      "--steps); None = run every step")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--lm-weight", type=float, default=0.4, help="share of corpus LM batches")
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--eval-examples", type=int, default=50)
  p.add_argument("--segment-len", type=int, default=None,
                 help="evaluate in segments of this many tokens with the memory carried")
  p.add_argument("--seeds", default="0", help="comma-separated; one training run per seed")
  p.add_argument("--switch-off", action="store_true",
                 help="also score each trained model with each of its in-context updates "
                      "switched off (nl_jax.eval.experiment.switch_off_variants), its weights "
                      "unchanged")
  p.add_argument("--combine", default="",
                 help="comma-separated result folders of earlier runs (same task settings) "
                      "to merge into one table and plot in --out; trains nothing")
  p.add_argument("--shrunk", action="store_true")
  p.add_argument("--out", default=None)
  return p


def parse(argv=None, p: argparse.ArgumentParser | None = None):
  args = (p or parser()).parse_args(argv)
  if args.shrunk:
    # Models and seeds named on the command line are kept (a shrunk Hope run, one seed).
    named = {a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv)}
    if "--models" not in named:
      args.models = "transformer_pp"
    if "--seeds" not in named:
      args.seeds = "0,1"
    args.preset, args.model_overrides = "tiny", "n_layers=1"
    args.subtasks, args.train_len, args.multiples = "s_niah_1", 256, "1,2"
    args.steps, args.batch_size, args.eval_examples = 2, 4, 4
  if not 0.0 <= args.lm_weight < 1.0:
    raise ValueError(f"--lm-weight={args.lm_weight} must be in [0, 1) (1 trains no NIAH)")
  return args


# Settings that must agree between the runs that --combine puts in one table.
_SHARED = ("preset", "model_overrides", "subtasks", "train_len", "multiples", "batch_size",
           "lm_weight", "lr", "eval_examples", "segment_len")


def train_model(model_name: str, seed: int, args):
  """One model trained on the corpus + NIAH mix at ``--train-len``: (model, fit log,
  alignment)."""
  import optax  # noqa: PLC0415

  model = experiment.build(model_name, args.preset, seed,
                           **experiment.parse_overrides(args.model_overrides))
  align = runner.model_alignment(model)
  length = -(-args.train_len // align) * align
  subtasks = args.subtasks.split(",")
  sources = [(args.lm_weight, experiment.lm_source(args.batch_size, length))]
  for sub in subtasks:
    cfg = niah.NiahConfig(task=sub, length=args.train_len - ANSWER_ROOM, split="train")
    sources.append(((1 - args.lm_weight) / len(subtasks), experiment.task_source(
        lambda n, s, cfg=cfg: niah.make_examples(cfg, n, s), args.batch_size, length, align)))
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, args.lr, max(args.steps // 20, 1), args.steps,
                                         args.lr / 10), weight_decay=0.1))
  log = fit.train(model, experiment.mixture(sources, seed), args.steps, tx,
                  log_every=max(args.steps // 10, 1),
                  max_seconds=None if args.minutes is None else 60 * args.minutes)
  return model, log, align


def run_one(model_name: str, seed: int, args) -> dict:
  """Trains one model on the corpus + NIAH mix and scores it at every test length."""
  model, log, align = train_model(model_name, seed, args)
  out = {"params": experiment.num_params(model), "train_seconds": log["seconds"],
         "steps_done": len(log["losses"]), "diverged_at": log["diverged_at"],
         "losses": log["losses"]}
  logits_fn = runner.make_logits_fn(model, segment_len=args.segment_len)
  out["accuracy"], out["token_accuracy"] = evaluate(logits_fn, seed, args, align)
  if args.switch_off:
    out["switch_off"] = {}
    for name, overrides in experiment.switch_off_variants(model.config).items():
      if overrides:
        print(f"   -- {name}", flush=True)
        fn = runner.make_logits_fn(experiment.with_overrides(model, overrides),
                                   segment_len=args.segment_len)
        acc, tok = evaluate(fn, seed, args, align)
        out["switch_off"][name] = {"accuracy": acc, "token_accuracy": tok}
  print(f"   {model_name} seed {seed}: {out['steps_done']} steps, {out['train_seconds']:.0f}s, "
        f"final loss {np.mean(log['losses'][-20:]):.3f}", flush=True)
  return out


def evaluate(logits_fn, seed: int, args, align: int) -> tuple[dict, dict]:
  """({cell: exact match}, {cell: answer-token accuracy}) on fresh held-out examples of every
  subtask at every test length (cells ``<subtask>@<k>x``)."""
  accuracy, token_accuracy = {}, {}
  for mult in [int(m) for m in args.multiples.split(",")]:
    for sub in args.subtasks.split(","):
      cfg = niah.NiahConfig(task=sub, length=mult * args.train_len - ANSWER_ROOM)
      exs = niah.make_examples(cfg, args.eval_examples, seed + 1000)
      res = ex_lib.score(logits_fn, exs, batch_size=4, pad_to_multiple=align)
      accuracy[f"{sub}@{mult}x"] = res["accuracy"]
      token_accuracy[f"{sub}@{mult}x"] = res["token_accuracy"]
      print(f"   {sub} @ {mult}x ({cfg.length} tokens): {100 * res['accuracy']:.1f} "
            f"(answer tokens {100 * res['token_accuracy']:.1f})", flush=True)
  return accuracy, token_accuracy


def report(path: str, results: dict, args, extra: dict) -> str:
  """Writes the tables (exact match and answer-token accuracy), the plot and results.json."""
  subtasks = args.subtasks.split(",")
  mults = [int(m) for m in args.multiples.split(",")]
  header = ["model", "params", "seeds", "steps"] + [f"{s} {k}x" for s in subtasks
                                                      for k in mults]

  def rows(key):
    out = []
    for m, runs in results.items():
      r0 = next(iter(runs.values()))
      out.append([m, f"{r0['params'] / 1e6:.2f}M", len(runs),
                  "/".join(str(r.get("steps_done", args.steps)) for r in runs.values())]
                 + [experiment.spread_cell([100 * r[key][f"{s}@{k}x"] for r in runs.values()],
                                           "{:.1f}") for s in subtasks for k in mults])
    return out

  paper = [[f"paper {name} (4K/8K/16K)", "", "", ""]
           + [f"{vals[s][i]:g}" if s in vals else "" for s in subtasks for i in range(len(mults))]
           for name, vals in PAPER.items()] if mults == [1, 2, 4] else []
  table = ("Exact match (%), mean over seeds [min-max]:\n\n"
           + experiment.markdown_table(header, rows("accuracy") + paper)
           + "\n\nAnswer tokens predicted right (%, teacher-forced), mean over seeds "
             "[min-max]:\n\n" + experiment.markdown_table(header, rows("token_accuracy")))
  off = [[m, name, len(views)] + [
      f"{np.mean([100 * v['accuracy'][c] for v in views]):.1f} "
      f"({np.mean([100 * v['token_accuracy'][c] for v in views]):.0f})"
      for c in (f"{s}@{k}x" for s in subtasks for k in mults)]
      for m, runs in results.items()
      for name in sorted({n for r in runs.values() for n in r.get("switch_off", {})})
      for views in [[r["switch_off"][name] for r in runs.values()
                     if name in r.get("switch_off", {})]]]
  if off:
    table += ("\n\nSwitched off at evaluation (the trained weights unchanged): exact match (%), "
              "in brackets answer tokens (%), mean over seeds:\n\n"
              + experiment.markdown_table(["model", "updates", "seeds"] + header[4:], off))
  series = {m: (mults, [np.mean([100 * r["accuracy"][f"{s}@{k}x"] for r in runs.values()
                                 for s in subtasks]) for k in mults])
            for m, runs in results.items()}
  experiment.plot_lines(os.path.join(path, "niah_vs_length.png"), series,
                        "test length / training length", "mean NIAH accuracy (%)",
                        f"NIAH ({', '.join(subtasks)}), trained at {args.train_len} tokens",
                        logx=True)
  experiment.write(path, {"settings": experiment.settings(args), "results": results, **extra}, table)
  return table


def main(argv=None):
  args = parse(argv)
  return experiment.run_models_and_seeds(args, experiment.out_dir(__file__, args.out), run_one,
                                         report, _SHARED)


if __name__ == "__main__":
  main()
