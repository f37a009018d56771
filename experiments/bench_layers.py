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
"""Layer benchmark: attention, SwiGLU, self-modifying Titans and the CMS, forward and backward.

The layers of one Hope block and of one Transformer++ block at a model preset's widths (default
Hope / Transformer++ `small`: d=512, 8 heads x 64, SwiGLU 1408, CMS 2 levels x 544 with chunks
(128, 512), SMT chunks 64). Each layer runs on a fresh memory state, as in training
(start_aligned). For every layer and T: compile seconds of the forward+backward, the median
time of the forward and of the forward+backward of sum(y * w) with respect to the parameters
and the input, the compiled forward+backward's temp memory and its matmul FLOPs
(``matmul_flops.py``) with the rate it ran them at. The programs of one T are timed
round-robin, so the ratios (self-modifying Titans against attention, the CMS against the
SwiGLU) come from one run on one machine state.

    python experiments/bench_layers.py                      # T in {512, 2048}, B = 4096 / T
    python experiments/bench_layers.py --quick              # tiny widths (smoke run)
    python experiments/bench_layers.py --layers cms,cms_first_order,swiglu --lengths 2048
    python experiments/bench_layers.py --layers attention,smt,smt_manual,smt_no_remat,\
        smt_manual_no_remat --lengths 2048                  # the SMT's chunk backwards
    python experiments/bench_layers.py --layers swiglu,cms,cms_manual,cms_no_remat,\
        cms_manual_no_remat --lengths 2048                  # the CMS levels' chunk backwards
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

import flax.nnx as nnx
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import matmul_flops  # noqa: E402  (a sibling script)
from nl_jax.layers.attention import Attention  # noqa: E402
from nl_jax.layers.cms import ContinuumMemorySystem  # noqa: E402
from nl_jax.layers.mlp import SwiGLU  # noqa: E402
from nl_jax.layers.self_modifying_titans import SelfModifyingTitans  # noqa: E402
from nl_jax.models import registry  # noqa: E402

# smt_* variants: the self-modifying Titans with its memories' chunks through the hand-written
# backward ("manual", nl_jax.memory.mlp_chunk) and / or without per-chunk remat.
SMT_VARIANTS = {"smt": {}, "smt_manual": dict(chunk_backward="manual"),
                "smt_no_remat": dict(remat=False),
                "smt_manual_no_remat": dict(chunk_backward="manual", remat=False)}
# cms_* variants: the CMS with its levels' chunks through the hand-written backward
# ("manual", nl_jax.layers.cms_chunk), the first-order meta-gradient, and / or no per-chunk remat.
CMS_VARIANTS = {"cms": {}, "cms_first_order": dict(meta_gradient="first_order"),
                "cms_manual": dict(chunk_backward="manual"), "cms_no_remat": dict(remat=False),
                "cms_manual_no_remat": dict(chunk_backward="manual", remat=False)}
LAYERS = ("attention", "swiglu") + tuple(SMT_VARIANTS) + tuple(CMS_VARIANTS)
REFERENCE = {**{n: "attention" for n in SMT_VARIANTS}, **{n: "swiglu" for n in CMS_VARIANTS}}


def build(name: str, preset: str, rngs: nnx.Rngs):
  """(module, apply(module, x_BxTxD) -> y_BxTxD) for one layer at the preset's widths."""
  hope = registry.model_config("hope", preset)
  tpp = registry.model_config("transformer_pp", preset)
  if name == "attention":
    layer = Attention(tpp.d_model, tpp.n_heads, tpp.head_dim, rngs=rngs)

    def apply(m, x):
      b, t, _ = x.shape
      pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
      return m(x, pos, jnp.ones((b, t), jnp.int32))
    return layer, apply
  if name == "swiglu":
    return SwiGLU(tpp.d_model, tpp.mlp_hidden, rngs=rngs), lambda m, x: m(x)
  if name in SMT_VARIANTS:
    cfg = dataclasses.replace(hope.smt_config(), **SMT_VARIANTS[name])
    layer = SelfModifyingTitans(cfg, rngs=rngs)

    def apply(m, x):
      b, t, _ = x.shape
      return m(x, m.init_memory(b), jnp.ones((b, t), jnp.int32), jnp.zeros((b, t), bool),
               start_aligned=True)[0]
    return layer, apply
  if name in CMS_VARIANTS:
    cfg = dataclasses.replace(hope.cms_config(), **CMS_VARIANTS[name])
    layer = ContinuumMemorySystem(cfg, rngs=rngs)

    def apply(m, x):
      b, t, _ = x.shape
      return m(x, m.init_memory(b), jnp.zeros((b, t), bool), start_aligned=True)[0]
    return layer, apply
  raise ValueError(f"--layers: unknown layer {name!r}; choose from {LAYERS}")


def programs(name: str, preset: str, b: int, t: int):
  """(compiled forward, compiled forward+backward, args, compile seconds, temp MiB, matmul
  FLOPs of the forward+backward)."""
  layer, apply = build(name, preset, nnx.Rngs(0))
  graphdef, params = nnx.split(layer)
  d = registry.model_config("hope", preset).d_model
  x = jax.random.normal(jax.random.key(1), (b, t, d), jnp.float32)
  w = jax.random.normal(jax.random.key(2), (b, t, d), jnp.float32)

  def fwd(params, x):
    return jnp.sum(apply(nnx.merge(graphdef, params), x) * w)

  t0 = time.perf_counter()
  traced = jax.jit(jax.value_and_grad(fwd, argnums=(0, 1))).trace(params, x)
  fb = traced.lower().compile()
  compile_s = time.perf_counter() - t0
  f = jax.jit(fwd).lower(params, x).compile()
  mem = fb.memory_analysis()
  temp = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20 if mem else float("nan")
  return f, fb, (params, x), compile_s, temp, matmul_flops.jaxpr_matmul_flops(traced.jaxpr)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny widths, T=64 (smoke run)")
  parser.add_argument("--preset", default=None, help="model preset whose widths to use "
                      "(default small; tiny with --quick)")
  parser.add_argument("--layers", default=",".join(LAYERS))
  parser.add_argument("--lengths", default=None, help="comma-separated T (default 512,2048)")
  parser.add_argument("--tokens", type=int, default=None,
                      help="tokens per call, B = tokens / T (default 4096; 128 with --quick)")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  preset = args.preset or ("tiny" if args.quick else "small")
  lengths = ([int(v) for v in args.lengths.split(",")] if args.lengths
             else ([64] if args.quick else [512, 2048]))
  tokens = args.tokens or (128 if args.quick else 4096)
  repeats = 1 if args.quick else args.repeats
  names = [n for n in args.layers.split(",") if n]
  for n in names:
    if n not in LAYERS:
      raise SystemExit(f"--layers: unknown layer {n!r}; choose from {LAYERS}")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; widths of preset {preset}; "
        f"{tokens} tokens per call; median of {repeats}, round-robin")
  header = (f"{'layer':<21}{'T':>6}{'B':>4}{'compile s':>10}{'fwd ms':>10}{'fwd+bwd ms':>12}"
            f"{'bwd/fwd':>8}{'x ref':>7}{'temp MiB':>10}{'GFLOP':>8}{'x ref':>7}{'GFLOP/s':>9}")
  print(header)
  print("-" * len(header))
  rows = []
  for t in lengths:
    b = max(1, tokens // t)
    progs = {n: programs(n, preset, b, t) for n in names}
    times = {n: ([], []) for n in names}
    for _ in range(repeats + 1):  # the first round warms up
      for n, (f, fb, args_, *_) in progs.items():
        for i, prog in enumerate((f, fb)):
          t0 = time.perf_counter()
          jax.block_until_ready(prog(*args_))
          times[n][i].append(time.perf_counter() - t0)
    med = {n: tuple(statistics.median(v[1:]) for v in times[n]) for n in names}
    for n in names:
      ref = REFERENCE.get(n)
      ratio = med[n][1] / med[ref][1] if ref in med else float("nan")
      gflop = progs[n][5] / 1e9
      work = gflop / (progs[ref][5] / 1e9) if ref in progs else float("nan")
      row = dict(layer=n, T=t, B=b, compile_s=progs[n][3], fwd_ms=1e3 * med[n][0],
                 fwd_bwd_ms=1e3 * med[n][1], ratio=ratio, temp_mib=progs[n][4],
                 gflop=gflop, gflop_s=gflop / med[n][1])
      rows.append(row)
      print(f"{n:<21}{t:>6}{b:>4}{row['compile_s']:>10.1f}{row['fwd_ms']:>10.1f}"
            f"{row['fwd_bwd_ms']:>12.1f}{med[n][1] / med[n][0]:>8.2f}{ratio:>7.2f}"
            f"{row['temp_mib']:>10.1f}{gflop:>8.2f}{work:>7.2f}{row['gflop_s']:>9.1f}",
            flush=True)
  print("x ref = forward+backward time (then matmul FLOPs) over the reference layer's (smt: "
        "attention; cms: swiglu) at the same T; GFLOP = matmul FLOPs of the forward+backward "
        "(matmul_flops.py), GFLOP/s = GFLOP / its time")
  return rows


if __name__ == "__main__":
  main(sys.argv[1:])
