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
"""Checkpoints: orbax ``CheckpointManager`` with params, train state and data iterator.

Layout (``<workdir>/checkpoints/<step>/``)::

  params/       the model parameters (a pure dict, ``nnx.to_pure_dict`` layout)
  train_state/  optimizer state, step, RNG key data, count of skipped non-finite steps
  data/         the grain iterator state (``process_<i>-of-<n>.json``, one per process)

All three are written together by one ``save`` (asynchronously by default) and committed
atomically; `Checkpointer.latest_step` returns the newest committed step, so a run killed
mid-save resumes from the previous complete checkpoint. Restoring takes abstract targets
carrying the *current* mesh's shardings, so a checkpoint written on one mesh shape restores
onto another (e.g. 8 -> 4 devices) with identical values. ``params`` is its own item so
evaluation (`load_for_eval`) reads only the weights.
"""

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from nl_jax.data import checkpointing as data_ckpt

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
ITEMS = ("params", "train_state", data_ckpt.DATA_ITEM_NAME)


_HANDLER_SET = []


def _cpu_array_handler() -> None:
  """On CPU, saves arrays without orbax's replica-parallel slicing.

  Replica-parallel saving compiles a slicing program per array shape on first save (40 s
  for a 40-array tree on 8 simulated CPU devices, 0.25 s without); it only pays off when
  many accelerator replicas share the writing, so accelerators keep orbax's default.
  """
  if _HANDLER_SET or jax.default_backend() != "cpu":
    return
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  _HANDLER_SET.append(True)


class Checkpointer:
  """Saves and restores ``(params, train_state, data iterator)`` under ``<workdir>``.

  Args:
    workdir: the run directory (checkpoints go to ``<workdir>/checkpoints``).
    keep: how many checkpoints to keep (oldest deleted first).
    async_save: write in a background thread (training continues); `wait` blocks.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    _cpu_array_handler()
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    """The newest committed step, or None."""
    steps = self._mngr.all_steps()
    return max(steps) if steps else None

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, step: int, params: Any, train_state: Any, data_iterator: Any) -> bool:
    """Starts saving everything at ``step`` (returns at once when async)."""
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        train_state=ocp.args.StandardSave(train_state),
        **{data_ckpt.DATA_ITEM_NAME: data_ckpt.save_args(data_iterator)})
    saved = self._mngr.save(step, args=args, force=True)
    logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, step: int, abstract_params: Any, abstract_train_state: Any,
              data_iterator: Any) -> tuple[Any, Any]:
    """Restores ``step`` onto the shardings of the abstract targets; the iterator in place."""
    args = ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        train_state=ocp.args.StandardRestore(abstract_train_state),
        **{data_ckpt.DATA_ITEM_NAME: data_ckpt.restore_args(data_iterator)})
    restored = self._mngr.restore(step, args=args)
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    return restored["params"], restored["train_state"]

  def reached_preemption(self, step: int) -> bool:
    """True when the JAX distributed runtime saw a preemption notice (multi-process)."""
    return self._mngr.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until pending async saves are committed (raises their errors)."""
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def write_config(workdir: str, config: Any) -> str:
  """Writes the run's config as JSON (read back by `load_for_eval`); process 0 only."""
  path = os.path.join(workdir, CONFIG_FILE)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(config.to_dict() if hasattr(config, "to_dict") else dict(config), f, indent=2,
                default=list)
    os.replace(path + ".tmp", path)
  return path


def _find_run(path: str) -> tuple[str, int | None]:
  """(workdir, explicit step or None) from a workdir, checkpoints dir or step dir."""
  path = os.path.abspath(path)
  if os.path.exists(os.path.join(path, CONFIG_FILE)):
    return path, None
  parent = os.path.dirname(path)
  if os.path.basename(path) == CHECKPOINT_DIR and os.path.exists(
      os.path.join(parent, CONFIG_FILE)):
    return parent, None
  grand = os.path.dirname(parent)
  if os.path.basename(parent) == CHECKPOINT_DIR and os.path.basename(path).isdigit() and (
      os.path.exists(os.path.join(grand, CONFIG_FILE))):
    return grand, int(os.path.basename(path))
  raise FileNotFoundError(
      f"load_for_eval: {path} is not a training workdir (no {CONFIG_FILE}), its "
      f"{CHECKPOINT_DIR}/ directory or a step directory inside it")


def load_for_eval(workdir_or_checkpoint_dir: str, *, step: int | None = None):
  """Loads a trained model for evaluation.

  Args:
    workdir_or_checkpoint_dir: a training workdir, its ``checkpoints`` directory or one
      step directory ``checkpoints/<step>``.
    step: which step (default: the step directory given, else the newest committed one).

  Returns:
    ``(model, config)``: the ``nnx.Module`` with the trained parameters (on the default
    device) and the run's training config (``ml_collections.ConfigDict``; the model config
    dataclass is ``registry.config_from_dict(config.model_name, config.model)``).

  Raises:
    FileNotFoundError: no workdir or no committed checkpoint there.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from nl_jax.models import registry  # pylint: disable=g-import-not-at-top
  from nl_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top

  workdir, dir_step = _find_run(workdir_or_checkpoint_dir)
  with open(os.path.join(workdir, CONFIG_FILE), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  model_cfg = registry.config_from_dict(
      config.model_name, config_lib.to_plain(config.model.to_dict()))
  model = nnx.eval_shape(lambda: registry.build_model(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_params, rest = nnx.split(model, nnx.Param, ...)
  abstract_pure = nnx.to_pure_dict(abstract_params)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        abstract_pure)
  mngr = ocp.CheckpointManager(
      os.path.join(workdir, CHECKPOINT_DIR),
      options=ocp.CheckpointManagerOptions(read_only=True), item_names=ITEMS)
  step = step if step is not None else dir_step
  if step is None:
    steps = mngr.all_steps()
    if not steps:
      raise FileNotFoundError(f"load_for_eval: no committed checkpoint in {workdir}")
    step = max(steps)
  restored = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(target)))
  mngr.close()
  if jax.tree.leaves(rest):
    # Non-parameter variables (e.g. RNG streams) are not checkpointed: take fresh ones.
    _, _, rest = nnx.split(registry.build_model(model_cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
  model = nnx.merge(graphdef, restored["params"], rest)
  return model, config
