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
"""Command line: evaluate a checkpoint (or a fresh model) on a task suite.

  python -m nl_jax.eval --task niah --checkpoint WORKDIR --lengths 1k,2k,4k
  python -m nl_jax.eval --task formal,mqar --model hope --preset tiny --lengths 32

Prints a markdown table (subtasks x lengths) and writes JSON (default
``WORKDIR/eval/<task>.json`` with a checkpoint, ``./eval_<task>.json`` otherwise). Tasks and
what ``--lengths`` means for each: `nl_jax.eval.suite`.
"""

import argparse
import json
import math
import os
import sys
import time


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m nl_jax.eval", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--task", required=True, help="comma list of: niah, mqar, babilong, formal, "
                 "continual, ppl")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--checkpoint", help="training workdir (loaded with "
                   "nl_jax.train.load_for_eval)")
  src.add_argument("--model", help="registry model name: evaluate a freshly initialised model")
  p.add_argument("--preset", default="tiny", help="preset for --model")
  p.add_argument("--lengths", default="1k,2k,4k", help="e.g. 1k,2k,4k (see nl_jax.eval.suite)")
  p.add_argument("--num-examples", type=int, default=20)
  p.add_argument("--batch-size", type=int, default=4)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--segment-len", type=int, default=None,
                 help="feed long inputs in segments of this many tokens, memory carried")
  p.add_argument("--output", default=None, help="JSON path")
  p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
  return p


def load(args):
  """(model, model name) from --checkpoint or --model."""
  import flax.nnx as nnx  # noqa: PLC0415

  from nl_jax.models import registry  # noqa: PLC0415

  if args.checkpoint:
    from nl_jax.train import load_for_eval  # noqa: PLC0415

    model, _ = load_for_eval(args.checkpoint)
    return model, registry.model_name_of(model.config)
  config = registry.model_config(args.model, args.preset)
  return registry.build_model(config, rngs=nnx.Rngs(args.seed)), args.model


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from nl_jax.eval import runner, suite  # noqa: PLC0415

  tasks = [t.strip() for t in args.task.split(",") if t.strip()]
  unknown = [t for t in tasks if t not in suite.TASKS]
  if unknown:
    raise SystemExit(f"--task: unknown {unknown}; choose from {suite.TASKS}")
  lengths = suite.parse_lengths(args.lengths)
  model, name = load(args)
  # Padding every batch to a multiple of 64 lets subtasks share compiled shapes.
  logits_fn = runner.make_logits_fn(model, segment_len=args.segment_len)
  def progress(line):
    print(f"[{time.time() - start:6.1f}s] {line}", file=sys.stderr, flush=True)

  start = time.time()
  for ti, task in enumerate(tasks):
    t0 = time.time()
    progress(f"task {task} ({ti + 1}/{len(tasks)}): lengths {lengths}, {args.num_examples} "
             "examples each (the first call of each shape compiles)")
    rows = suite.run(logits_fn, task, lengths, num_examples=args.num_examples, seed=args.seed,
                     batch_size=args.batch_size,
                     pad_to_multiple=math.lcm(64, runner.model_alignment(model)),
                     progress=progress)
    print(f"\n## {task} ({name}, {args.checkpoint or 'fresh ' + args.preset}) "
          f"{time.time() - t0:.1f}s\n")
    print(suite.format_table(rows))
    print("\n(accuracy in %; chance = uniform guessing, baseline = always the most frequent "
          "answer; a model at or below them has learned nothing measurable)")
    out = args.output
    if out is None:
      out = (os.path.join(args.checkpoint, "eval", f"{task}.json") if args.checkpoint
             else f"eval_{task}.json")
    elif len(tasks) > 1:
      root, ext = os.path.splitext(out)
      out = f"{root}_{task}{ext or '.json'}"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      json.dump({"task": task, "model": name, "checkpoint": args.checkpoint,
                 "preset": None if args.checkpoint else args.preset, "lengths": lengths,
                 "num_examples": args.num_examples, "seed": args.seed,
                 "segment_len": args.segment_len, "seconds": time.time() - t0,
                 "rows": rows}, f, indent=1)
    print(f"\nwrote {out}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except (FileNotFoundError, ValueError) as e:
    # Bad arguments (lengths, task parameters) or a missing workdir: one line, exit 2;
    # --debug shows the traceback.
    if "--debug" in sys.argv:
      raise
    sys.stderr.write(f"python -m nl_jax.eval: error: {e}\n")
    sys.exit(2)
