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
"""Language modelling in context: Hope vs Titans vs Transformer++ at equal size and tokens.

For every (model, seed) the script trains the tiny config of the model with the trainer
(``launch/train.py --config=experiments/configs/lm.py:<model>,tiny``, same data settings and
steps for all, so equal training tokens; the presets are size-matched), then

1. reads the held-out loss from the run's ``metrics.jsonl`` (last ``eval`` row);
2. measures the loss by position within ``--ppl-len``-token held-out windows
   (`nl_jax.eval.perplexity.position_nll`, whole window in one call: Transformer++ attends
   to all of it, Titans and Hope carry their memories through it);
3. reads ``--twice-texts`` held-out texts of ``--twice-len`` tokens twice in a row with the
   slow weights frozen (`nl_jax.eval.perplexity.read_twice`) in two modes: ``context`` (both
   readings in one call: Transformer++ sees the first reading through its attention, i.e.
   its KV cache) and ``segments`` (one call per reading with the memory state carried:
   Titans and Hope keep what their memories wrote, Transformer++ keeps nothing - a control).
   For Titans and Hope the two modes agree (one call == two calls with carried state).

Tables give the mean and the spread (min-max) over seeds.

  python experiments/in_context/lm.py --models transformer_pp,titans --seeds 0,1,2
  python experiments/in_context/lm.py --shrunk --out /tmp/lm          # seconds, smoke test

Reruns skip training runs whose workdir already holds the final evaluation (the trainer
resumes an unfinished one) and reuse their measurements (``runs/*/in_context_eval.json``)
when the evaluation flags are unchanged, so seeds and models can be added one command at a
time. ``--skip-train`` evaluates existing workdirs without training.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from nl_jax.eval import experiment, perplexity, runner  # noqa: E402

MODELS = ("hope", "titans", "transformer_pp", "hope_attention")  # lm.py's model names


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="transformer_pp,titans,hope")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--steps", type=int, default=300, help="training steps (all models)")
  p.add_argument("--seq-len", type=int, default=None,
                 help="training tokens per row (default: the config's 64)")
  p.add_argument("--batch-size", type=int, default=None,
                 help="training rows per step (default: the config's 32)")
  p.add_argument("--train-flags", default="",
                 help="extra launch/train.py flags, e.g. '--config.optimizer.learning_rate=1e-3'")
  p.add_argument("--minutes", type=float, default=30.0,
                 help="wall-clock cap per training run (SIGTERM: the trainer saves and stops)")
  p.add_argument("--match-params", default=None, metavar="MODEL",
                 help="equal sizes: every other model's mlp_hidden is set so that its "
                      "parameter count is closest to MODEL's tiny preset "
                      "(nl_jax.models.registry.match_params)")
  p.add_argument("--ppl-len", type=int, default=512)
  p.add_argument("--ppl-windows", type=int, default=32)
  p.add_argument("--ppl-reset", type=int, default=None,
                 help="also measure the loss by position with the context cut to blocks of "
                      "this many tokens (a multiple of every model's alignment): the "
                      "short-context control; tables then give the gain of the full context")
  p.add_argument("--twice-len", type=int, default=256)
  p.add_argument("--twice-texts", type=int, default=16)
  p.add_argument("--skip-train", action="store_true")
  p.add_argument("--shrunk", action="store_true")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if args.shrunk:
    args.models, args.seeds, args.steps = "transformer_pp", "0", 2
    args.ppl_len, args.ppl_windows, args.twice_len, args.twice_texts = 64, 2, 32, 2
  return args


def _ints(spec: str) -> list[int]:
  return [int(x) for x in spec.split(",") if x.strip()]


def train_cmd(model: str, seed: int, workdir: str, args) -> list[str]:
  config = os.path.join(ROOT, "experiments", "configs", "lm.py")
  cmd = [sys.executable, os.path.join(ROOT, "launch", "train.py"),
         f"--config={config}:{model},tiny" + (",smoke" if args.shrunk else ""),
         f"--workdir={workdir}",
         f"--config.train.seed={seed}", f"--config.train.steps={args.steps}"]
  if args.seq_len:
    cmd.append(f"--config.data.seq_len={args.seq_len}")
  if args.batch_size:
    cmd += [f"--config.data.batch_size={args.batch_size}",
            f"--config.data.eval_batch_size={args.batch_size}"]
  if args.shrunk:
    cmd += ["--config.train.eval_every=2", "--config.train.checkpoint_every=2"]
  cmd += [f"--config.model.{k}={v}" for k, v in size_overrides(model, args).items()]
  return cmd + args.train_flags.split()


def size_overrides(model: str, args) -> dict:
  """The width that size-matches `model` to ``--match-params`` (empty for that model)."""
  if not args.match_params or model == args.match_params:
    return {}
  from nl_jax.models import registry  # noqa: PLC0415

  target = registry.count_params(registry.model_config(args.match_params, "tiny"))
  return registry.match_params(model, "tiny", target)


def metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def finished(workdir: str, steps: int) -> bool:
  return any(r.get("split") == "eval" and r.get("step") == steps for r in metrics(workdir))


def train(model: str, seed: int, workdir: str, args) -> dict:
  """Runs (or resumes) the trainer; returns the eval curve and the wall time of this call."""
  t0 = time.time()
  status = "done before"
  if not finished(workdir, args.steps):
    cmd = train_cmd(model, seed, workdir, args)
    print("   $ " + " ".join(cmd), flush=True)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "train.log"), "a", encoding="utf-8") as log:
      try:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            timeout=60 * args.minutes, check=False).returncode
        status = "ok" if rc == 0 else f"exit code {rc}" + _failure(workdir)
      except subprocess.TimeoutExpired:
        status = f"stopped after {args.minutes} min"
  rows = metrics(workdir)
  evals = [(r["step"], r["loss"]) for r in rows if r.get("split") == "eval"]
  trains = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train"]
  return {"status": status, "seconds": time.time() - t0, "eval_curve": evals,
          "train_curve": trains, "eval_loss": evals[-1][1] if evals else float("nan"),
          "last_eval_step": evals[-1][0] if evals else None}


def _failure(workdir: str) -> str:
  """' (non-finite loss at step N)' when the trainer stopped on a NaN, else ''."""
  import re  # noqa: PLC0415

  with open(os.path.join(workdir, "train.log"), encoding="utf-8", errors="replace") as f:
    found = re.findall(r"NonFiniteError: non-finite metric\(s\) .*? at step (\d+)", f.read())
  return f" (non-finite loss at step {found[-1]})" if found else ""


def evaluate(workdir: str, args) -> dict:
  """Loss by position and read-twice of the run's last checkpoint."""
  from nl_jax.train import load_for_eval  # noqa: PLC0415

  model, _ = load_for_eval(workdir)
  align = runner.model_alignment(model)
  full = runner.make_logits_fn(model)
  toks = perplexity.windows(args.ppl_len, args.ppl_windows, seed=0)
  nll = perplexity.position_nll(full, toks, batch_size=8)
  out = {"position_nll": nll.tolist(), "buckets": perplexity.bucket(nll)}
  if args.ppl_reset:
    if args.ppl_reset % align:
      raise ValueError(f"--ppl-reset {args.ppl_reset} must be a multiple of the model's "
                       f"alignment {align}")
    short = perplexity.position_nll(full, toks, batch_size=8, reset_every=args.ppl_reset)
    out["position_nll_reset"] = short.tolist()
    out["gain_buckets"] = perplexity.bucket(short - nll)
  if args.twice_len % align:
    raise ValueError(f"--twice-len {args.twice_len} must be a multiple of the model's "
                     f"alignment {align}")
  segmented = runner.make_logits_fn(model, segment_len=args.twice_len)
  for mode, fn in (("context", full), ("segments", segmented)):
    reads = [perplexity.read_twice(fn, t)
             for t in perplexity.heldout_texts(args.twice_texts, args.twice_len, seed=0)]
    first = float(np.mean([np.log(r["first_ppl"]) for r in reads]))
    second = float(np.mean([np.log(r["second_ppl"]) for r in reads]))
    out[f"twice_{mode}"] = {"first_nll": first, "second_nll": second,
                            "per_text": reads}
  return out


def _stats(vals) -> tuple[float, float, float, float]:
  a = np.asarray(vals, np.float64)
  return float(a.mean()), float(a.std()), float(a.min()), float(a.max())


_cell = experiment.spread_cell


def tables(results: dict, args) -> str:
  edges = None
  rows_loss, rows_pos, rows_gain, rows_twice = [], [], [], []
  for m, runs in results.items():
    ok = [r for r in runs.values() if r.get("eval")]
    losses = [r["train"]["eval_loss"] for r in runs.values()
              if np.isfinite(r["train"]["eval_loss"])]
    rows_loss.append([m, ok[0]["params"] if ok else "n/a", len(runs),
                      "/".join(str(r["train"]["last_eval_step"]) for r in runs.values()),
                      "/".join(r["train"]["status"] for r in runs.values()),
                      _cell(losses), _cell([np.exp(x) for x in losses], "{:.2f}")])
    if not ok:
      continue
    edges = [(b["start"], b["end"]) for b in ok[0]["eval"]["buckets"]]
    rows_pos.append([m] + [_cell([r["eval"]["buckets"][i]["nll"] for r in ok])
                           for i in range(len(edges))])
    if all("gain_buckets" in r["eval"] for r in ok):
      rows_gain.append([m] + [_cell([r["eval"]["gain_buckets"][i]["nll"] for r in ok])
                              for i in range(len(edges))])
    for mode in ("context", "segments"):
      first = [r["eval"][f"twice_{mode}"]["first_nll"] for r in ok]
      second = [r["eval"][f"twice_{mode}"]["second_nll"] for r in ok]
      rows_twice.append([m, mode, _cell(first), _cell(second),
                         _cell([b - a for a, b in zip(first, second, strict=True)])])
  md = ["### Held-out loss after training (nats/byte, trainer's eval)", "",
        experiment.markdown_table(["model", "params", "seeds", "eval step", "status",
                                   "eval loss", "eval ppl"], rows_loss), ""]
  if edges:
    md += [f"### Loss by position in {args.ppl_len}-token held-out windows (nats/byte, "
           f"{args.ppl_windows} windows)", "",
           experiment.markdown_table(["model"] + [f"[{a},{b})" for a, b in edges], rows_pos), ""]
    if rows_gain:
      md += [f"### Gain of the full context over blocks of {args.ppl_reset} tokens (nats/byte: "
             "loss with the context cut at the block start minus loss with the whole window; "
             "same windows)", "",
             experiment.markdown_table(["model"] + [f"[{a},{b})" for a, b in edges], rows_gain),
             ""]
    md += [f"### Reading {args.twice_texts} held-out texts of {args.twice_len} tokens twice "
           "(mean nats/byte)", "",
           experiment.markdown_table(["model", "mode", "1st reading", "2nd reading",
                                      "2nd - 1st"], rows_twice), ""]
  md.append("Cells: mean over seeds [min-max].")
  return "\n".join(md)


def plots(path: str, results: dict, args) -> None:
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  w = 16  # running-mean width of the loss-by-position curves
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (m, runs) in enumerate(results.items()):
    ok = [r for r in runs.values() if r.get("eval")]
    if not ok:
      continue
    nll = np.asarray([r["eval"]["position_nll"] for r in ok])
    smooth = np.asarray([np.convolve(x, np.ones(w) / w, mode="valid") for x in nll])
    xs = np.arange(smooth.shape[1]) + w
    ax.plot(xs, smooth.mean(0), color=f"C{i}",
            label=f"{m} ({len(ok)} seed{'s' * (len(ok) > 1)})")
    if len(ok) > 1:
      ax.fill_between(xs, smooth.min(0), smooth.max(0), color=f"C{i}", alpha=0.2)
  if args.seq_len or not args.shrunk:
    ax.axvline(args.seq_len or 64, color="gray", ls="--", lw=1, label="training length")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("position in the held-out window (tokens)")
  ax.set_ylabel(f"next-byte loss (nats, {w}-position running mean)")
  ax.set_title("Held-out loss by position")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(path, "loss_by_position.png"), dpi=100)
  plt.close(fig)
  if args.ppl_reset:
    _plot_gain(plt, path, results, args)

  fig, ax = plt.subplots(figsize=(6, 4))
  names = list(results)
  for j, mode in enumerate(("context", "segments")):
    means, lo, hi = [], [], []
    for m in names:
      vals = [r["eval"][f"twice_{mode}"]["second_nll"] - r["eval"][f"twice_{mode}"]["first_nll"]
              for r in results[m].values() if r.get("eval")]
      mean, _, a, b = _stats(vals) if vals else (np.nan, 0, np.nan, np.nan)
      means.append(mean)
      lo.append(mean - a)
      hi.append(b - mean)
    ax.bar(np.arange(len(names)) + 0.4 * (j - 0.5), means, 0.4, yerr=[lo, hi], capsize=3,
           label={0: "both readings in one context", 1: "memory only (one call per reading)"}[j])
  ax.axhline(0, color="black", lw=0.8)
  ax.set_xticks(np.arange(len(names)), names)
  ax.set_ylabel("2nd reading - 1st reading (nats/byte)")
  ax.set_title(f"Reading a {args.twice_len}-token text twice, slow weights frozen")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(path, "read_twice.png"), dpi=100)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (m, runs) in enumerate(results.items()):
    curves = [r["train"]["eval_curve"] for r in runs.values() if r["train"]["eval_curve"]]
    for j, curve in enumerate(curves):  # the model's name on its first plotted seed
      s, loss = zip(*curve, strict=True)
      ax.plot(s, loss, marker="o", color=f"C{i}", label=m if j == 0 else None)
  ax.set_xlabel("training step")
  ax.set_ylabel("held-out loss (nats/byte)")
  ax.set_title("Held-out loss during training (one line per seed)")
  ax.grid(alpha=0.3)
  if ax.get_lines():  # runs that never evaluated (steps < eval_every) draw no curve
    ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(path, "eval_loss.png"), dpi=100)
  plt.close(fig)


def _plot_gain(plt, path: str, results: dict, args) -> None:
  """context_gain.png: short-context loss minus full-context loss, by position."""
  fig, ax = plt.subplots(figsize=(6, 4))
  w = args.ppl_reset
  for i, (m, runs) in enumerate(results.items()):
    ok = [r for r in runs.values() if "position_nll_reset" in r.get("eval", {})]
    if not ok:
      continue
    gain = np.asarray([np.asarray(r["eval"]["position_nll_reset"]) -
                       np.asarray(r["eval"]["position_nll"]) for r in ok])
    # Mean over each block of w positions: every block has the same short context inside.
    n = gain.shape[1] // w
    blocks = gain[:, :n * w].reshape(len(ok), n, w).mean(-1)
    xs = (np.arange(n) + 0.5) * w
    ax.plot(xs, blocks.mean(0), marker="o", ms=3, color=f"C{i}",
            label=f"{m} ({len(ok)} seed{'s' * (len(ok) > 1)})")
    if len(ok) > 1:
      ax.fill_between(xs, blocks.min(0), blocks.max(0), color=f"C{i}", alpha=0.2)
  if args.seq_len:
    ax.axvline(args.seq_len, color="gray", ls="--", lw=1, label="training length")
  ax.axhline(0, color="black", lw=0.8)
  ax.set_xlabel("position in the held-out window (tokens)")
  ax.set_ylabel(f"loss(context cut to {w}-token blocks) - loss(full)")
  ax.set_title("What the earlier context is worth, by position (nats/byte)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(path, "context_gain.png"), dpi=100)
  plt.close(fig)


def check_lengths(models: list[str], args) -> None:
  """Unknown models and lengths that are not multiples of a model's alignment, before any
  training (the alignment of the tiny preset: chunk sizes, never changed by these flags)."""
  from nl_jax.models import registry  # noqa: PLC0415

  for m in models:
    if m not in MODELS:
      raise ValueError(f"--models: unknown model {m!r}; expected some of {sorted(MODELS)}")
    align = getattr(registry.model_config(m, "tiny"), "alignment", 1)
    for flag, value in (("--twice-len", args.twice_len), ("--ppl-reset", args.ppl_reset)):
      if value and value % align:
        raise ValueError(f"{flag} {value} must be a multiple of {m}'s alignment {align} "
                         f"(e.g. {max(align, value // align * align)})")


def main(argv=None):
  args = parse(argv)
  path = experiment.out_dir(__file__, args.out)
  models, seeds = args.models.split(","), _ints(args.seeds)
  t0 = time.time()
  check_lengths(models, args)
  results = {}
  for m in models:
    results[m] = {}
    for s in seeds:
      workdir = os.path.join(path, "runs", f"{m}_seed{s}")
      if args.skip_train and not os.path.isdir(workdir):
        continue  # --skip-train reports the runs that exist
      print(f"== {m} seed {s} ({workdir})", flush=True)
      r = {"train": _read_only(workdir, args.steps) if args.skip_train
           else train(m, s, workdir, args)}
      print(f"   train: {r['train']['status']}, eval loss {r['train']['eval_loss']:.4f} at "
            f"step {r['train']['last_eval_step']}", flush=True)
      cache = os.path.join(workdir, "in_context_eval.json")
      try:
        if os.path.exists(cache) and (args.skip_train or r["train"]["status"] == "done before"):
          with open(cache, encoding="utf-8") as f:
            cached = json.load(f)
        else:
          cached = None
        if cached is not None and cached["settings"] == _eval_settings(args):
          r["eval"] = cached["eval"]
        else:
          r["eval"] = evaluate(workdir, args)
          with open(cache, "w", encoding="utf-8") as f:
            json.dump({"settings": _eval_settings(args), "eval": r["eval"]}, f)
        r["params"] = _params(workdir)
        b = r["eval"]["buckets"]
        print("   loss by position: " + ", ".join(
            f"[{x['start']},{x['end']}) {x['nll']:.3f}" for x in b), flush=True)
        for mode in ("context", "segments"):
          t = r["eval"][f"twice_{mode}"]
          print(f"   read twice ({mode}): {t['first_nll']:.3f} -> {t['second_nll']:.3f}",
                flush=True)
      except FileNotFoundError as e:
        print(f"   no checkpoint to evaluate: {e}", flush=True)
      results[m][s] = r
  results = {m: runs for m, runs in results.items() if runs}
  table = tables(results, args)
  plots(path, results, args)
  settings = experiment.settings(args)
  experiment.write(path, {"settings": settings, "results": results,
                          "wall_seconds": time.time() - t0}, table)
  print(table)
  print(f"wall time {time.time() - t0:.0f}s; wrote {path}")
  return results


def _eval_settings(args) -> dict:
  keys = ("ppl_len", "ppl_windows", "twice_len", "twice_texts") + (
      ("ppl_reset",) if args.ppl_reset else ())  # older caches stay valid without it
  return {k: getattr(args, k) for k in keys}


def _read_only(workdir: str, steps: int) -> dict:
  rows = metrics(workdir)
  evals = [(r["step"], r["loss"]) for r in rows if r.get("split") == "eval"]
  trains = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train"]
  if finished(workdir, steps):
    status = "ok"
  elif os.path.exists(os.path.join(workdir, "train.log")) and _failure(workdir):
    status = _failure(workdir).strip(" ()")
  else:
    status = f"stopped after step {trains[-1][0] if trains else 0}"
  return {"status": status, "seconds": 0.0, "eval_curve": evals,
          "train_curve": trains, "eval_loss": evals[-1][1] if evals else float("nan"),
          "last_eval_step": evals[-1][0] if evals else None}


def _params(workdir: str) -> int:
  from nl_jax.models import registry  # noqa: PLC0415
  from nl_jax.train import config as config_lib  # noqa: PLC0415

  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    c = json.load(f)
  return registry.count_params(registry.config_from_dict(c["model_name"],
                                                         config_lib.to_plain(c["model"])))


if __name__ == "__main__":
  main()
