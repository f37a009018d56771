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
"""Tokens/s (forward+backward) and peak memory of Hope, Titans and TransformerPP at equal size.

Issue 4's benchmark: the "small" presets (~20M parameters each, size-matched by the registry
tests), sequence lengths T in {512, 2048, 8192}, a fixed number of tokens per step
(``--tokens_per_step``, so B = tokens_per_step / T), one jitted step computing the mean
next-token cross-entropy and its gradient w.r.t. every parameter. Time is the median of
``--repeats`` calls after a compile-and-warm-up call; memory is the compiled program's
temporary buffer size (XLA ``memory_analysis``: the peak scratch memory of the step) plus its
argument size. Ratios are to TransformerPP at the same T; ``MiB/kTok`` checks that memory
grows linearly in T at fixed batch. The program columns: seconds to trace and lower the step,
seconds to compile it, and the lines of its StableHLO. ``GFLOP``: the step's matmul FLOPs
counted on its jaxpr (``matmul_flops.py``; loops and remat recomputation included), and the
rate the step ran them at: two steps that run at the same GFLOP/s have the ratio of their
FLOPs as their tokens/s ratio, whatever else differs. Targets (issue 22): Hope >= 0.8x
TransformerPP's tokens/s at T=2048, >= 1.5x at T=8192, >= 0.5x at T=512; step memory <= 1.5x
at T=2048; compile time <= 2x.

    python experiments/bench_models.py                    # full table (long: shared CPU!)
    python experiments/bench_models.py --quick            # tiny presets, short T: smoke run
    python experiments/bench_models.py --models titans,transformer_pp --lengths 512,2048
    python experiments/bench_models.py --scan_layers --remat      # blocks under one scan
    python experiments/bench_models.py --depths 2,4,8,24 --lengths 2048   # compile vs depth

``--depths`` builds each model at every depth, unrolled and with ``scan_layers``, and prints
the trace+lower and compile seconds and the program size (nothing is run): with the blocks
under one scan, compile time should grow little with depth.
"""

import argparse
import ast
import dataclasses
import os
import statistics
import sys
import time

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import matmul_flops  # noqa: E402  (a sibling script)
from nl_jax.models import registry  # noqa: E402


def make_step(model):
  """Jitted (params, tokens) -> (loss, grads) for the model's parameters."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params, tokens_BxT):
    m = nnx.merge(graphdef, params, rest)
    logits, _, _ = m(tokens_BxT)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens_BxT[:, 1:])
    return jnp.mean(ce)

  return jax.value_and_grad(loss_fn), params


def compile_step(config, t: int, batch: int, abstract: bool = False):
  """Lowers and compiles the step; returns (compiled, params, tokens, lower s, compile s,
  StableHLO lines, matmul FLOPs of one step). ``abstract``: parameters as shapes only
  (nothing allocated)."""
  config.validate_seq_len(t)
  build = lambda: registry.build_model(config, rngs=nnx.Rngs(0))  # noqa: E731
  model = nnx.eval_shape(build) if abstract else build()
  step, params = make_step(model)
  tokens = jax.ShapeDtypeStruct((batch, t), jnp.int32)
  if not abstract:
    tokens = jax.random.randint(jax.random.key(t), (batch, t), 0, config.vocab_size)
  start = time.perf_counter()
  traced = jax.jit(step).trace(params, tokens)
  lowered = traced.lower()
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  return (compiled, params, tokens, lowered_at - start, compiled_at - lowered_at,
          len(lowered.as_text().splitlines()), matmul_flops.jaxpr_matmul_flops(traced.jaxpr))


def depth_sweep(names, preset: str, t: int, batch: int, depths, overrides: dict) -> list[dict]:
  """Program seconds and size against depth, unrolled and scanned (see the docstring)."""
  print(f"{'model':<16}{'layers':>7}{'layout':>9}{'lower s':>9}{'compile s':>10}"
        f"{'total s':>9}{'HLO lines':>10}{'temp MiB':>10}")
  rows = []
  for name in names:
    for depth in depths:
      for scan in (False, True):
        config = registry.model_config(name, preset, **{**for_model(name, overrides),
                                                        "n_layers": depth, "scan_layers": scan})
        compiled, *_, lower_s, compile_s, lines, _ = compile_step(config, t, batch,
                                                                  abstract=True)
        # The step's peak scratch memory: with remat, one block's forward+backward plus what
        # the depth adds (the saved block inputs).
        mem = compiled.memory_analysis()
        temp = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20 if mem else float("nan")
        layout = "scanned" if scan else "unrolled"
        print(f"{name:<16}{depth:>7}{layout:>9}{lower_s:>9.1f}{compile_s:>10.1f}"
              f"{lower_s + compile_s:>9.1f}{lines:>10}{temp:>10.1f}", flush=True)
        rows.append(dict(model=name, layers=depth, scan_layers=scan, lower_s=lower_s,
                         compile_s=compile_s, hlo_lines=lines, temp_mib=temp))
  return rows


def for_model(name: str, overrides: dict) -> dict:
  """The overrides that model `name` has fields for (chunk_remat_group: the Hope models;
  a dotted name by its first part: ``cms.meta_gradient`` goes to the models with a CMS)."""
  fields = {f.name for f in dataclasses.fields(registry.config_class(name))}
  return {k: v for k, v in overrides.items() if k.split(".")[0] in fields}


def parse_set(items) -> dict:
  """``["cms.meta_gradient=first_order", "smt.chunk_size=32"]`` -> overrides (values as
  Python literals where they parse, else strings)."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise SystemExit(f"--set {item!r}: expected NAME=VALUE, e.g. cms.meta_gradient=first_order")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def bench_one(name: str, preset: str, t: int, batch: int, repeats: int, overrides: dict):
  config = registry.model_config(name, preset, **for_model(name, overrides))
  compiled, params, tokens, lower_s, compile_s, hlo_lines, flops = compile_step(config, t,
                                                                               batch)
  mem = compiled.memory_analysis()
  nbytes = float("nan")
  if mem is not None:
    nbytes = (getattr(mem, "temp_size_in_bytes", 0) + getattr(mem, "argument_size_in_bytes", 0)
              + getattr(mem, "output_size_in_bytes", 0))
  jax.block_until_ready(compiled(params, tokens))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, tokens))
    times.append(time.perf_counter() - t0)
  sec = statistics.median(times)
  return dict(model=name, T=t, B=batch, params=registry.count_params(config), sec=sec,
              tok_s=batch * t / sec, mib=nbytes / 2**20, lower_s=lower_s,
              compile_s=compile_s, hlo_lines=hlo_lines, gflop=flops / 1e9,
              gflop_s=flops / 1e9 / sec)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny presets and T (smoke run)")
  parser.add_argument("--models", default="hope,titans,transformer_pp")
  parser.add_argument("--preset", default=None, help="default: small (tiny with --quick)")
  parser.add_argument("--lengths", default=None, help="comma-separated T (default 512,2048,8192)")
  parser.add_argument("--tokens_per_step", type=int, default=None,
                      help="B = tokens_per_step / T (default 8192; 256 with --quick)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--remat", action="store_true", help="rematerialise every block")
  parser.add_argument("--remat_policy", default=None,
                      help="with --remat: what a block keeps (LMConfig.remat_policy; "
                           "default: the config's, 'full')")
  parser.add_argument("--scan_layers", action="store_true", help="blocks under one scan")
  parser.add_argument("--chunk_remat_group", type=int, default=None,
                      help="Hope models: keep the chunk scans' fast state every this many "
                           "chunks in the backward (0: about sqrt(chunks); unset: the "
                           "config's per-layer default, HopeConfig)")
  parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                      help="a config field of the models that have it (dotted for a layer's: "
                           "--set cms.meta_gradient=first_order); repeatable")
  parser.add_argument("--depths", default=None,
                      help="comma-separated layer counts: compile-time sweep (see docstring)")
  args = parser.parse_args(argv)
  preset = args.preset or ("tiny" if args.quick else "small")
  lengths = ([int(x) for x in args.lengths.split(",")] if args.lengths
             else ([64, 128] if args.quick else [512, 2048, 8192]))
  per_step = args.tokens_per_step or (256 if args.quick else 8192)
  repeats = 1 if args.quick else args.repeats
  names = [n for n in args.models.split(",") if n]
  if "transformer_pp" in names:  # the reference row of every T comes first
    names = ["transformer_pp"] + [n for n in names if n != "transformer_pp"]
  overrides = {"remat": True} if args.remat else {}
  if args.remat_policy is not None:
    if not args.remat:
      parser.error("--remat_policy applies with --remat")
    overrides["remat_policy"] = args.remat_policy
  if args.scan_layers:
    overrides["scan_layers"] = True
  if args.chunk_remat_group is not None:
    overrides["chunk_remat_group"] = args.chunk_remat_group
  settings = parse_set(args.set)
  for key in settings:  # a name no selected model has would otherwise change nothing
    if not any(key in for_model(n, {key: None}) for n in names):
      parser.error(f"--set {key}: no field {key.split('.')[0]!r} in the config of any of "
                   f"{names}")
  overrides.update(settings)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)); "
        f"preset={preset}, {per_step} tokens/step, remat={args.remat}, "
        f"remat_policy={args.remat_policy or 'full'}, "
        f"scan_layers={args.scan_layers}, chunk_remat_group={args.chunk_remat_group}, "
        f"set={parse_set(args.set)}, median of {repeats}")
  if args.depths:
    return depth_sweep(names, preset, lengths[0], max(1, per_step // lengths[0]),
                       [int(x) for x in args.depths.split(",")], overrides)
  header = (f"{'model':<16}{'params':>10}{'T':>7}{'B':>5}{'step s':>9}{'tok/s':>10}"
            f"{'x TPP':>7}{'MiB':>9}{'MiB/kTok':>10}{'x TPP mem':>10}{'lower s':>9}"
            f"{'compile s':>10}{'x TPP':>7}{'HLO lines':>10}{'GFLOP':>9}{'x TPP':>7}"
            f"{'GFLOP/s':>9}")
  print(header)
  print("-" * len(header))
  rows = []
  for t in lengths:
    batch = max(1, per_step // t)
    ref = None
    for name in names:
      row = bench_one(name, preset, t, batch, repeats, overrides)
      if name == "transformer_pp":
        ref = row
      speed = row["tok_s"] / ref["tok_s"] if ref else float("nan")
      mem = row["mib"] / ref["mib"] if ref else float("nan")
      comp = ((row["lower_s"] + row["compile_s"]) / (ref["lower_s"] + ref["compile_s"])
              if ref else float("nan"))
      work = row["gflop"] / ref["gflop"] if ref else float("nan")
      print(f"{name:<16}{row['params'] / 1e6:>9.2f}M{t:>7}{batch:>5}{row['sec']:>9.3f}"
            f"{row['tok_s']:>10.0f}{speed:>7.2f}{row['mib']:>9.1f}"
            f"{row['mib'] / (batch * t / 1000):>10.2f}{mem:>10.2f}{row['lower_s']:>9.1f}"
            f"{row['compile_s']:>10.1f}{comp:>7.2f}{row['hlo_lines']:>10}"
            f"{row['gflop']:>9.1f}{work:>7.2f}{row['gflop_s']:>9.1f}", flush=True)
      rows.append(row)
  print("x TPP = ratio to TransformerPP at the same T (tokens/s; memory; trace+lower+compile "
        "seconds); MiB = temp + arguments + outputs of the compiled forward+backward step; "
        "HLO lines = the lowered StableHLO program; GFLOP = matmul FLOPs of one step "
        "(experiments/matmul_flops.py: scan bodies times their length, recomputation "
        "included), GFLOP/s = GFLOP / step s")
  return rows


if __name__ == "__main__":
  main(sys.argv[1:])
