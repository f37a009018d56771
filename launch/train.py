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
r"""Trains an nl_jax model: ``python launch/train.py --config=<file> --workdir=<dir>``.

Examples::

  # The default: Hope (tiny) on the embedded Shakespeare corpus, a few minutes on a CPU.
  python launch/train.py --config=experiments/configs/lm.py:hope,tiny --workdir=/tmp/hope_tiny
  # Any field can be overridden (the config is locked: typos fail):
  python launch/train.py --config=experiments/configs/lm.py:hope,tiny --workdir=/tmp/h \
      --config.model.d_model=256 --config.train.steps=1000 --config.optimizer.name=m3

Running it again with the same workdir resumes from the newest checkpoint. Multi-host
(TPU pod slices, SLURM, or ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/
``JAX_PROCESS_ID``): every process runs this same command; see launch/tpu_vm.sh and
launch/gpu_multihost.sh.
"""

import math
import os
import shlex
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

# `python launch/train.py` puts launch/ (not the repo root) on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (experiments/configs/*.py[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize(): auto = when a coordinator is configured (env vars, "
    "SLURM with several tasks, TPU pod), on = always, off = never.")
flags.mark_flags_as_required(["config", "workdir"])


def _want_distributed(mode: str) -> bool:
  if mode != "auto":
    return mode == "on"
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS") or env.get("COORDINATOR_ADDRESS"):
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1:
    return True
  # A multi-host TPU slice lists several workers.
  return len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1


def _initialize_distributed(mode: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top

  if not _want_distributed(mode):
    return
  if jax.distributed.is_initialized():
    return
  env = os.environ
  address = env.get("JAX_COORDINATOR_ADDRESS") or env.get("COORDINATOR_ADDRESS")
  if address:
    # Plain env-var coordinator (launch/gpu_multihost.sh without SLURM, local tests).
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=int(env["JAX_NUM_PROCESSES"]),
        process_id=int(env["JAX_PROCESS_ID"]))
  else:
    jax.distributed.initialize()  # cluster auto-detection: TPU VM, SLURM, Open MPI, GKE


def _summary(workdir: str, result, seconds: float) -> str:
  """The closing lines: final losses, the loss curve and the next commands."""
  from nl_jax.train import metrics  # pylint: disable=g-import-not-at-top

  train_loss, eval_loss, _ = metrics.last_losses(workdir)
  losses = [f"train loss {train_loss:.4f}" if train_loss is not None else "train loss n/a"]
  if eval_loss is not None:
    losses.append(f"held-out loss {eval_loss:.4f} (perplexity {math.exp(min(eval_loss, 80)):.2f})")
  plot = metrics.write_loss_plot(workdir)
  lines = [f"done: step {result['step']} in {_duration(seconds)} | " + " | ".join(losses)]
  if plot:
    lines.append(f"loss curve: {plot}")
  lines += _next_commands(workdir)
  return "\n".join(lines)


def _duration(seconds: float) -> str:
  from nl_jax.train import progress  # pylint: disable=g-import-not-at-top

  return progress.format_duration(seconds)


def _next_commands(workdir: str) -> list[str]:
  q = shlex.quote
  return ["next:",
          f"  sample:      python launch/sample.py --workdir={q(workdir)} --prompt='ROMEO:'",
          f"  evaluate:    python -m nl_jax.eval --task niah,ppl --checkpoint {q(workdir)} "
          "--lengths 256",
          f"  TensorBoard: tensorboard --logdir {q(os.path.join(workdir, 'tensorboard'))}"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from nl_jax.train import cli  # pylint: disable=g-import-not-at-top

  workdir = cli.check_workdir(_WORKDIR.value)
  _initialize_distributed(_DISTRIBUTED.value)
  import jax  # pylint: disable=g-import-not-at-top

  from nl_jax import train  # pylint: disable=g-import-not-at-top
  from nl_jax.train import metrics  # pylint: disable=g-import-not-at-top

  metrics.quiet_library_logs()
  logging.info("process %d of %d; %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)
  start = time.perf_counter()
  result = train.train_and_evaluate(_CONFIG.value, workdir)
  if jax.process_index() != 0:
    return
  if result.get("already_done"):
    train_loss, eval_loss, _ = metrics.last_losses(workdir)
    steps = _CONFIG.value.train.steps
    done = f"already done: {workdir} finished step {result['step']} (train.steps={steps})"
    if eval_loss is not None:
      done += f", held-out loss {eval_loss:.4f}"
    logging.info("%s; to train longer, rerun with --config.train.steps=%d "
                 "--config.train.allow_config_changes=True\n%s", done, 2 * max(steps, 1),
                 "\n".join(_next_commands(workdir)))
    return
  if result["preempted"]:
    logging.info("stopped at step %d (checkpoint saved); rerun the same command to resume",
                 result["step"])
    return
  logging.info("%s", _summary(workdir, result, time.perf_counter() - start))


if __name__ == "__main__":
  from nl_jax.train import cli as _cli  # pylint: disable=g-import-not-at-top

  _cli.run(main, config_flag="config")
