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
r"""Compiles the train step ahead of time for a target topology and prints memory per device.

Finds an out-of-memory before a job is launched::

  # TPU topologies (needs libtpu installed on this host; no TPU required):
  python launch/compile_only.py --config=experiments/configs/lm.py:hope,1_3b --topology=v5p:4x4x4
  # Simulated CPU devices (anywhere):
  python launch/compile_only.py --config=experiments/configs/lm.py:hope,tiny --topology=cpu:8

TPU topologies come from ``jax.experimental.topologies.get_topology_desc`` (e.g.
``v5e:4x4``, ``v5p:2x2x2``, ``v4:2x2x1``); every override of launch/train.py works
(``--config.data.batch_size=...``, ``--config.mesh.fsdp=...``). The step is lowered with
abstract inputs only: nothing is allocated.
"""

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string(
    "topology", "cpu:8", "cpu:<n devices> or a TPU topology '<chip>:<AxBxC>' (e.g. v5p:2x2x2).")
_PEAK_TFLOPS = flags.DEFINE_float(
    "peak_tflops", 0.0, "Peak dense TFLOP/s of one device; with --mfu, prints an estimated "
    "tokens/s per device (XLA's flop count / (peak * mfu)). 0: no estimate.")
_MFU = flags.DEFINE_float("mfu", 0.4, "Assumed model-flops utilisation for the estimate.")
flags.mark_flags_as_required(["config"])


def _devices(topology: str):
  import jax  # pylint: disable=g-import-not-at-top

  if topology.startswith("cpu:"):
    n = int(topology.split(":", 1)[1])
    if jax.device_count() < n:
      raise app.UsageError(f"--topology={topology}: only {jax.device_count()} CPU devices; "
                           f"set XLA_FLAGS=--xla_force_host_platform_device_count={n}")
    return jax.devices()[:n]
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  chip, _, shape = topology.partition(":")
  try:
    desc = topologies.get_topology_desc(topology_name=f"{chip}:{shape}", platform="tpu")
  except Exception as e:  # pylint: disable=broad-except
    raise app.UsageError(
        f"--topology={topology}: could not describe this TPU topology ({e}); TPU AOT "
        "compilation needs libtpu on this host (pip install 'jax[tpu]')") from e
  return desc.devices


def _mib(n) -> str:
  return f"{n / 2**20:,.1f} MiB"


def _print_flops(compiled, tokens_per_device: float) -> None:
  """XLA's flop count of the step and, given a peak, the tokens/s it implies (an estimate)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  if not flops:
    print("flops: not reported by this backend")
    return
  print(f"  flops per device per step {flops:.4g}; per token {flops / tokens_per_device:.4g}")
  if _PEAK_TFLOPS.value > 0:
    rate = _PEAK_TFLOPS.value * 1e12 * _MFU.value / (flops / tokens_per_device)
    print(f"  estimated tokens/s per device at {_MFU.value:.0%} of {_PEAK_TFLOPS.value:g} "
          f"TFLOP/s: {rate:,.0f} (an estimate from the flop count, not a measurement)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _TOPOLOGY.value.startswith("cpu:"):
    n = _TOPOLOGY.value.split(":", 1)[1]
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={n}")
  import jax  # pylint: disable=g-import-not-at-top

  from nl_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from nl_jax.train import loop  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  devices = _devices(_TOPOLOGY.value)
  try:
    setup = loop.build_setup(config, devices=devices)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  data_cfg = setup.resolved.data_config
  shape = (data_cfg.batch_size, data_cfg.seq_len)
  spec = data_lib.batch_spec(data_cfg)
  batch = {k: jax.ShapeDtypeStruct(shape, spec[k][1], sharding=setup.batch_sh)
           for k in data_lib.BATCH_KEYS}
  rest = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), setup.rest)
  step = loop.make_train_step(setup)
  t0 = time.perf_counter()
  traced = step.trace(setup.abstract_params, setup.abstract_train_state, batch, rest)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3 = time.perf_counter()
  print(f"model {config.model_name}: {setup.num_params:,} parameters; mesh "
        f"{dict(setup.mesh.shape)} on {len(devices)} x {devices[0].device_kind}; batch "
        f"{shape[0]} x {shape[1]}")
  print(f"  trace {t1 - t0:.1f} s, lower {t2 - t1:.1f} s, compile {t3 - t2:.1f} s; "
        f"{len(lowered.as_text().splitlines()):,} lines of StableHLO")
  _print_flops(compiled, shape[0] * shape[1] / len(devices))
  mem = compiled.memory_analysis()
  if mem is None:
    print("memory analysis: not available for this backend")
    return
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  for f in fields:
    if hasattr(mem, f):
      print(f"  {f.replace('_in_bytes', ''):<24} {_mib(getattr(mem, f))} per device")
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes)
  print(f"  {'peak (args+out-alias+temp)':<24} {_mib(total)} per device")


if __name__ == "__main__":
  app.run(main)
