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
"""Sequential vs chunk-parallel memory scans on this machine: time and peak memory.

Prints one table: forward and forward+backward wall time (median of --repeats, after a
compile-and-warm-up call; the four programs of a row are timed round-robin), the compiled
program's temporary buffer size (XLA's ``memory_analysis``, the peak scratch memory of the
program), and the sequential/chunked ratios, for the matrix memory (B=8, H=4, d_k=d_v=128)
and the MLP memory (anchored).

    python experiments/bench_memory_scan.py                 # full table (several minutes)
    python experiments/bench_memory_scan.py --quick         # tiny shapes, a few seconds
    launch/with_tcmalloc.sh python experiments/bench_memory_scan.py --memories matrix

The header names the malloc serving the process. Under glibc malloc every call of a program
maps fresh pages for its large buffers (page faults, about a quarter of the chunked f+b time
at T=8192 here); launch/with_tcmalloc.sh removes that cost from both paths alike.
"""

import argparse
import os
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp

from nl_jax.memory import MatrixMemory, MemoryInputs, MLPMemory


def describe_allocator(maps_text: str, environ) -> str:
  """The malloc named by a /proc/<pid>/maps listing (and tcmalloc's release rate)."""
  if "libtcmalloc" in maps_text:
    rate = environ.get("TCMALLOC_RELEASE_RATE")
    return f"tcmalloc (TCMALLOC_RELEASE_RATE={rate if rate is not None else 'default'})"
  if "libjemalloc" in maps_text:
    return "jemalloc"
  return "glibc malloc" if "libc.so" in maps_text or "libc-" in maps_text else "system malloc"


def host_allocator() -> str:
  try:
    maps = pathlib.Path("/proc/self/maps").read_text()
  except OSError:
    return "unknown malloc (no /proc/self/maps)"
  return describe_allocator(maps, os.environ)


def make_inputs(key, b, h, t, d, momentum):
  ks = jax.random.split(key, 6)
  shape = (b, h, t)
  k = jax.random.normal(ks[0], shape + (d,))
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  return MemoryInputs(
      keys=k, values=jax.random.normal(ks[1], shape + (d,)), queries=jax.random.normal(
          ks[2], shape + (d,)), eta=jax.random.uniform(ks[3], shape, minval=0.1, maxval=0.9),
      alpha=jax.random.uniform(ks[4], shape, minval=0.9, maxval=1.0),
      momentum=jax.random.uniform(ks[5], shape, maxval=0.9) if momentum else None)


def compile_program(fn, args):
  """Compiles fn, runs it once (warm-up), returns (compiled, temporary bytes)."""
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  temp = getattr(mem, "temp_size_in_bytes", float("nan")) if mem is not None else float("nan")
  jax.block_until_ready(compiled(*args))
  return compiled, temp


def time_interleaved(programs, args, repeats):
  """Median wall time of each program, timed round-robin.

  Alternating the programs run by run (instead of all repeats of one, then the next) puts
  any drift in the machine's speed on every program alike, so the ratios are fair.
  """
  times = [[] for _ in programs]
  for _ in range(repeats):
    for i, prog in enumerate(programs):
      t0 = time.perf_counter()
      jax.block_until_ready(prog(*args))
      times[i].append(time.perf_counter() - t0)
  return [statistics.median(t) for t in times]


def programs(mem, inputs, impl):
  batch = inputs.keys.shape[:-2]

  def fwd(params, inputs):
    out, _ = mem.scan(params, mem.init_state(params, batch), inputs, implementation=impl)
    return out

  def fwd_bwd(params, inputs):
    return jax.grad(lambda p, x: jnp.sum(fwd(p, x) ** 2), argnums=(0, 1))(params, inputs)

  return fwd, fwd_bwd


def run(mem, params, inputs, repeats):
  """(seq fwd, chunked fwd, seq f+b, chunked f+b) times and the two f+b temp sizes."""
  args = (params, inputs)
  execs, temps = {}, {}
  for impl in ("sequential", "chunked"):
    for kind, fn in zip(("fwd", "f+b"), programs(mem, inputs, impl), strict=True):
      execs[impl, kind], temps[impl, kind] = compile_program(fn, args)
  order = [("sequential", "fwd"), ("chunked", "fwd"), ("sequential", "f+b"), ("chunked", "f+b")]
  times = time_interleaved([execs[o] for o in order], args, repeats)
  return times, temps["sequential", "f+b"], temps["chunked", "f+b"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke run)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--lengths", default=None, help="comma-separated T values")
  parser.add_argument("--chunk", type=int, default=64)
  parser.add_argument("--momentum", action="store_true")
  parser.add_argument("--memories", default="matrix,mlp", help="comma-separated: matrix, mlp")
  args = parser.parse_args(argv)
  if args.quick:
    b, h, d, lengths, hidden = 2, 2, 16, [128, 256], 32
  else:
    b, h, d, lengths, hidden = 8, 4, 128, [512, 2048, 8192], 256
  if args.lengths:
    lengths = [int(x) for x in args.lengths.split(",")]
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s); "
        f"B={b} H={h} d={d} C={args.chunk} momentum={args.momentum}; {host_allocator()}")
  header = (f"{'memory':<22}{'T':>6}{'seq fwd s':>11}{'chk fwd s':>11}{'fwd x':>7}"
            f"{'seq f+b s':>11}{'chk f+b s':>11}{'f+b x':>7}{'seq MiB':>9}{'chk MiB':>9}")
  print(header)
  print("-" * len(header))
  key = jax.random.PRNGKey(0)
  configs = [
      ("matrix dgd exact", MatrixMemory(key_dim=d, value_dim=d, rule="dgd",
                                        chunk_size=args.chunk, momentum=args.momentum)),
      ("mlp dgd anchored", MLPMemory(in_dim=d, hidden_dim=hidden, rule="dgd",
                                     semantics="anchored", chunk_size=args.chunk,
                                     momentum=args.momentum)),
  ]
  wanted = set(args.memories.split(","))
  configs = [(name, mem) for name, mem in configs if name.split()[0] in wanted]
  rows = []
  for name, mem in configs:
    params = (mem.init_params(key, head_shape=(h,), scale=0.1) if isinstance(mem, MatrixMemory)
              else mem.init_params(key, head_shape=(h,)))
    for t in lengths:
      inputs = make_inputs(jax.random.fold_in(key, t), b, h, t, d, args.momentum)
      (sf, cf, sb, cb), smb, cmb = run(mem, params, inputs, args.repeats)
      print(f"{name:<22}{t:>6}{sf:>11.3f}{cf:>11.3f}{sf / cf:>7.2f}{sb:>11.3f}{cb:>11.3f}"
            f"{sb / cb:>7.2f}{smb / 2**20:>9.1f}{cmb / 2**20:>9.1f}", flush=True)
      rows.append(dict(memory=name, t=t, fwd_x=sf / cf, fb_x=sb / cb, seq_mib=smb / 2**20,
                       chunked_mib=cmb / 2**20))
  print("x = sequential time / chunked time; MiB = temporary memory of the f+b program")
  return rows


if __name__ == "__main__":
  main()
