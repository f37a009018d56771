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
"""Shared plumbing of the experiment scripts in ``experiments/`` (models, data mixes, output).

Every script takes ``--shrunk`` (a seconds-long smoke version run by tests/eval) and
``--out DIR`` (default: the script's ``results/`` folder) and writes ``results.json``,
``results.md`` and PNG plots there.
"""

import json
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from nl_jax.eval import fit


def build(name: str, preset: str = "tiny", seed: int = 0, **overrides):
  """A fresh registry model (``overrides`` are config fields, checked by the registry)."""
  import flax.nnx as nnx  # noqa: PLC0415

  from nl_jax.models import registry  # noqa: PLC0415

  config = registry.model_config(name, preset, **overrides)
  return registry.build_model(config, rngs=nnx.Rngs(seed))


# The memories' eta_max that switches their writes off (eta in (0, eta_max]: ~0, so they keep
# their meta-learned initial state).
NO_WRITES = 1e-6


def switch_off_variants(config) -> dict[str, dict[str, Any]]:
  """Name -> config overrides (dotted fields) that switch a model's in-context updates off,
  only those it has: "as trained" ({}), "no SMT / Titans writes" (``smt.eta_max`` or
  ``titans.eta_max`` = NO_WRITES), "no CMS steps" (every ``cms.learning_rates`` 0: static
  MLPs) and "both off". No trained weight changes (``with_overrides``)."""
  from nl_jax import config_tree  # noqa: PLC0415

  out = {"as trained": {}}
  fields = config_tree.field_paths(type(config))
  eta = next((f for f in ("smt.eta_max", "titans.eta_max") if f in fields), None)
  writes = {eta: NO_WRITES} if eta else {}
  if writes:
    out["no SMT / Titans writes"] = writes
  if "cms.learning_rates" in fields:
    zero = {"cms.learning_rates": (0.0,) * len(config.cms.chunk_sizes)}
    out["no CMS steps"] = zero
    if writes:
      out["both off"] = {**writes, **zero}
  return out


def with_overrides(model, overrides: dict[str, Any]):
  """The model with its trained weights under config ``overrides`` (fields that change no
  parameter shape, e.g. ``switch_off_variants``'); the model itself when there are none."""
  if not overrides:
    return model
  import flax.nnx as nnx  # noqa: PLC0415

  from nl_jax import config_tree  # noqa: PLC0415
  from nl_jax.models import registry  # noqa: PLC0415

  m = registry.build_model(config_tree.replace(model.config, overrides), rngs=nnx.Rngs(0))
  nnx.update(m, nnx.state(model, nnx.Param))  # the trained weights, unchanged
  return m


def parse_overrides(spec: str) -> dict[str, Any]:
  """``"n_layers=1,dtype=float32,cms.chunk_sizes=16|64"`` -> {"n_layers": 1, "dtype": "float32",
  "cms.chunk_sizes": (16, 64)}: ints, floats, true/false and none are converted, ``a|b`` is a tuple;
  the registry checks names and types."""
  out = {}
  for item in filter(None, (s.strip() for s in spec.split(","))):
    if "=" not in item:
      raise ValueError(f"model override {item!r} must look like field=value")
    key, raw = (x.strip() for x in item.split("=", 1))
    if "|" in raw:
      out[key] = tuple(_scalar(v.strip()) for v in raw.split("|") if v.strip())
    else:
      out[key] = _scalar(raw)
  return out


def _scalar(raw: str):
  low = raw.lower()
  if low in ("true", "false"):
    return low == "true"
  if low == "none":
    return None
  for cast in (int, float):
    try:
      return cast(raw)
    except ValueError:
      pass
  return raw


def num_params(model) -> int:
  import flax.nnx as nnx  # noqa: PLC0415
  import jax  # noqa: PLC0415

  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def mixture(sources: Sequence[tuple[float, Callable[[np.random.Generator], dict]]],
            seed: int) -> Iterator[dict]:
  """Endless batches; each step draws one source with probability proportional to its weight.

  All sources must produce batches of one shape (one compiled train step).
  """
  rng = np.random.default_rng(seed)
  weights = np.asarray([w for w, _ in sources], np.float64)
  weights /= weights.sum()
  while True:
    i = int(rng.choice(len(sources), p=weights))
    yield sources[i][1](rng)


def lm_source(batch_size: int, seq_len: int) -> Callable[[np.random.Generator], dict]:
  return lambda rng: fit.lm_batch(rng, batch_size, seq_len)


def task_source(make_examples: Callable[[int, int], list], batch_size: int, length: int,
                align: int = 1) -> Callable[[np.random.Generator], dict]:
  """Batches of ``make_examples(batch_size, seed)`` padded to ``length``."""
  return lambda rng: fit.examples_batch(
      lambda r: make_examples(batch_size, int(r.integers(0, 2**31 - 1))), rng, length, align)


def machine() -> dict[str, Any]:
  import jax  # noqa: PLC0415

  return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
          "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
          "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def out_dir(script_file: str, out: str | None) -> str:
  path = out or os.path.join(os.path.dirname(os.path.abspath(script_file)), "results")
  os.makedirs(path, exist_ok=True)
  return path


def settings(args: Any) -> dict[str, Any]:
  """A script's flags as saved with its results: all but where they go (``out``) and which
  earlier runs were merged (``combine``)."""
  return {k: v for k, v in vars(args).items() if k not in ("out", "combine")}


def write(path: str, results: dict[str, Any], table_md: str) -> None:
  """Writes results.json and results.md (the table plus the run's settings)."""
  results = {**results, "machine": machine()}
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(results, f, indent=1, default=float)
  with open(os.path.join(path, "results.md"), "w") as f:
    f.write(table_md.rstrip() + "\n\n")
    f.write("Settings: `" + json.dumps(results.get("settings", {}), default=str) + "`\n\n")
    f.write(f"Machine: `{json.dumps(results['machine'])}`\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  def cell(v):
    if isinstance(v, float):
      return "n/a" if np.isnan(v) else f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"
    return str(v)

  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
  return "\n".join(lines)


def combine_runs(dirs: Sequence[str], args: Any, shared: Sequence[str]) -> dict[str, dict]:
  """Merges the ``results.json`` of earlier runs (e.g. one per model or seed) into one
  ``{model: {seed: result}}``.

  The settings named in ``shared`` must agree between the runs (else a ValueError names the
  folder and the differing settings); the first run's settings are copied onto ``args`` and
  ``args.models`` lists the merged models.
  """
  results, first = {}, None
  # A setting an older run did not save yet had the script's current default.
  defaults = {k: getattr(args, k, None) for k in shared}
  for d in dirs:
    path = os.path.join(d, "results.json")
    if not os.path.exists(path):
      raise ValueError(f"--combine: {path} does not exist; pass folders written by --out")
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    these = {k: saved["settings"].get(k, defaults[k]) for k in shared}
    if first is None:
      first = these
      for k, v in saved["settings"].items():
        setattr(args, k, v)
    elif these != first:
      diff = {k: (first[k], these[k]) for k in shared if first[k] != these[k]}
      raise ValueError(f"--combine: {d} was run with other settings: {diff}")
    for m, runs in saved["results"].items():
      results.setdefault(m, {}).update(runs)
  args.models = ",".join(results)
  return results


def run_models_and_seeds(args: Any, path: str, run_one: Callable[[str, int, Any], dict],
                         report: Callable[[str, dict, Any, dict], str],
                         shared: Sequence[str]) -> dict[str, dict]:
  """The main of a script that trains each of ``args.models`` once per seed of ``args.seeds``
  (``run_one(model, seed, args) -> result``) or, with ``args.combine``, merges earlier runs
  (`combine_runs`), then writes ``report(path, results, args, extra)`` and prints its table.
  Returns ``{model: {seed: result}}``."""
  t0 = time.time()
  if args.combine:
    results = combine_runs(args.combine.split(","), args, shared)
  else:
    results = {}
    for m in args.models.split(","):
      results[m] = {}
      for seed in (int(x) for x in args.seeds.split(",") if x.strip()):
        print(f"== {m} seed {seed}", flush=True)
        results[m][seed] = run_one(m, seed, args)
  table = report(path, results, args, {"wall_seconds": time.time() - t0})
  print(table)
  print(f"wall time {time.time() - t0:.0f}s; wrote {path}")
  return results


def spread_cell(vals: Sequence[float], fmt: str = "{:.3f}") -> str:
  """A table cell over seeds: ``mean [min-max]``, the mean alone for one value, n/a for none."""
  a = np.asarray(vals, np.float64)
  if a.size == 0:
    return "n/a"
  if a.size == 1:
    return fmt.format(a[0])
  return f"{fmt.format(a.mean())} [{fmt.format(a.min())}-{fmt.format(a.max())}]"


def plot_lines(path: str, series: dict[str, tuple[Sequence[float], Sequence[float]]],
               xlabel: str, ylabel: str, title: str, logx: bool = False) -> None:
  """One PNG with a line per series ``{label: (x, y)}``."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(6, 4))
  for label, (x, y) in series.items():
    ax.plot(x, y, marker="o", label=label)
  if logx:
    ax.set_xscale("log", base=2)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
