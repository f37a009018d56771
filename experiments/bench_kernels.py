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
"""Pallas kernels vs their XLA references: time, TFLOP/s, GB/s, ratio, fraction of peak.

For each op and shape, every implementation that can run here (the XLA reference always; the
"tpu" / "gpu" kernel on that device; flash-linear-attention's Triton chunk_gated_delta_rule
when torch and fla are installed on a CUDA machine) is compiled, warmed up and timed (median
of --repeats). The device's bf16 matmul peak is measured in the same run.

    python experiments/bench_kernels.py            # issue shapes (needs an accelerator)
    python experiments/bench_kernels.py --quick    # tiny shapes; on CPU: XLA paths only

Memory scan: B=8, H=16, T in {2048, 8192}, d_k=d_v=128, bf16 operands, dgd with retention,
forward+backward. FLOPs are a model count of the chunked algorithm (per token: 4 d_k d_v for
the state reads/writes, 2 C (d_k + d_v) intra-chunk; backward = 2x forward); bytes are the
compulsory HBM traffic (inputs read twice, gradients written once).
Newton-Schulz: 5 quintic steps on 1024^2, 4096^2 and 64 x 768^2; FLOPs counted as dense
products (4 m^2 n + 2 m^3 per step) so symmetric kernels show up as higher TFLOP/s; bytes =
one read and one write of the stack.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from nl_jax.optim.newton_schulz import resolve_coeffs
from pallas_kernels.memory_scan import MemoryScanConfig, memory_scan
from pallas_kernels.newton_schulz import newton_schulz


def _time(fn, args, repeats):
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def matmul_peak(quick: bool, repeats: int) -> float:
  """Measured bf16 matmul TFLOP/s of the default device."""
  n = 1024 if quick else 8192
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.bfloat16)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  return 2 * n**3 / _time(f, (a, a), repeats) / 1e12


def _kernel_backend():
  platform = jax.default_backend()
  return platform if platform in ("tpu", "gpu") else None


def bench_memory_scan(quick, repeats, peak, rows):
  shapes = [(1, 2, 256, 32)] if quick else [(8, 16, 2048, 128), (8, 16, 8192, 128)]
  impls = ["xla"] + ([_kernel_backend()] if _kernel_backend() else [])
  cfg = MemoryScanConfig(chunk_size=64)
  for b, h, t, d in shapes:
    rng = np.random.default_rng(0)

    def bf(*s, rng=rng):
      return jnp.asarray(rng.standard_normal(s) / np.sqrt(s[-1]), jnp.bfloat16)

    def sig(*s, rng=rng):
      return jnp.asarray(1 / (1 + np.exp(-rng.standard_normal(s))), jnp.float32)

    alpha = sig(b, h, t) * 0.1 + 0.9
    args = (bf(b, h, t, d), bf(b, h, t, d), bf(b, h, t, d), sig(b, h, t), alpha,
            jnp.zeros((b, h, d, d), jnp.float32))
    flops = 3 * 2 * b * h * t * (4 * d * d + 2 * cfg.chunk_size * 2 * d)
    nbytes = 2 * sum(x.size * x.dtype.itemsize for x in args[:5]) + sum(
        x.size * x.dtype.itemsize for x in args)
    base = None
    for impl in impls:
      def loss(k, v, q, eta, alpha, m0, impl=impl):
        out = memory_scan(k, v, q, eta, m0, alpha=alpha, implementation=impl, config=cfg)
        return jnp.sum(out.outputs.astype(jnp.float32)) + jnp.sum(out.state)

      f = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5)))
      sec = _time(f, args, repeats)
      base = sec if impl == "xla" else base
      rows.append(("memory_scan fwd+bwd", f"B{b} H{h} T{t} d{d}", impl, sec, flops, nbytes,
                   base / sec, peak))
    fla = _fla_gated_delta(b, h, t, d, repeats)
    if fla is not None:
      rows.append(("memory_scan fwd+bwd", f"B{b} H{h} T{t} d{d}", "fla chunk_gated_delta_rule",
                   fla, flops, nbytes, base / fla, peak))


def _fla_gated_delta(b, h, t, d, repeats):
  """flash-linear-attention's Triton kernel on the same shapes, if torch + fla are installed."""
  try:
    import torch
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
  except ImportError:
    print("(flash-linear-attention not installed: no fla row)")
    return None
  if not torch.cuda.is_available():
    return None
  dev = "cuda"
  q, k, v = (torch.randn(b, t, h, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
             for _ in range(3))
  g = torch.nn.functional.logsigmoid(torch.randn(b, t, h, device=dev)).requires_grad_()
  beta = torch.rand(b, t, h, device=dev).sigmoid().requires_grad_()

  def step():
    o, _ = chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
    o.float().sum().backward()

  step()
  torch.cuda.synchronize()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench_newton_schulz(quick, repeats, peak, rows):
  shapes = [(1, 256, 256), (8, 128, 128)] if quick else [(1, 1024, 1024), (1, 4096, 4096),
                                                          (64, 768, 768)]
  coeffs = resolve_coeffs("muon", 5)
  impls = ["xla"] + ([_kernel_backend()] if _kernel_backend() else [])
  for shape in shapes:
    bsz, m, n = shape
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    flops = bsz * len(coeffs) * (4 * m * m * n + 2 * m**3)
    nbytes = 2 * x.size * 4
    base = None
    for impl in impls:
      f = jax.jit(lambda x, impl=impl: newton_schulz(x, coeffs, 1e-7, implementation=impl))
      sec = _time(f, (x,), repeats)
      base = sec if impl == "xla" else base
      rows.append(("newton_schulz x5", "x".join(map(str, shape)), impl, sec, flops, nbytes,
                   base / sec, peak))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke run)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--ops", default="memory_scan,newton_schulz")
  args = parser.parse_args()
  ops = args.ops.split(",")
  unknown = set(ops) - {"memory_scan", "newton_schulz"}
  if unknown:
    raise SystemExit(f"unknown --ops {sorted(unknown)}; choose memory_scan,newton_schulz")
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax "
        f"{jax.__version__}")
  peak = matmul_peak(args.quick, args.repeats)
  print(f"measured bf16 matmul peak: {peak:.2f} TFLOP/s")
  rows = []
  if "memory_scan" in ops:
    bench_memory_scan(args.quick, args.repeats, peak, rows)
  if "newton_schulz" in ops:
    bench_newton_schulz(args.quick, args.repeats, peak, rows)
  header = (f"{'op':<20} {'shape':<22} {'impl':<28} {'ms':>9} {'TFLOP/s':>8} {'GB/s':>8} "
            f"{'xla/this':>8} {'of peak':>8}")
  print(header)
  print("-" * len(header))
  for op, shape, impl, sec, flops, nbytes, ratio, pk in rows:
    tf = flops / sec / 1e12
    print(f"{op:<20} {shape:<22} {impl:<28} {sec * 1e3:>9.3f} {tf:>8.3f} "
          f"{nbytes / sec / 1e9:>8.2f} {ratio:>8.2f} {tf / pk:>8.1%}")


if __name__ == "__main__":
  main()
