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

Trust (`restore_latest`): once a save is committed, ``checkpoints/<step>/checksums.json``
records the size and SHA-256 of every file of the step. On resume each step, newest first,
is verified against it; a damaged step (a file missing, truncated, grown, with other
content, an unexpected extra file, an unreadable record of checksums, or a step that fails
to restore) is reported with its step, file and fault, set aside (renamed into
``<workdir>/checkpoints_damaged/``, never deleted) and the next older step is tried. A step
without ``checksums.json`` (the run was killed between the commit and the checksums) is
restored unverified, with a warning. Half-written ``<step>.orbax-checkpoint-tmp*``
directories are removed at start.

Saving: before each save the free space of the checkpoint directory is compared with the
size of the previous checkpoint (or the arrays' bytes for the first one); a save that
cannot start or that fails in the background raises `CheckpointSaveError` with one line
(step, directory, free space, cause) at that save (async saves are polled after every
step), so nothing after the last good checkpoint is trained and lost. An asynchronous save
overlaps the one training step that follows it: the loop waits for its commit before it
reports that step (`poll` with ``wait=True``), so a SIGKILL loses at most
``checkpoint_every`` reported steps (when killed before step ``N + 1`` is reported, the
save of ``N - checkpoint_every`` is the newest committed one).
"""

import hashlib
import json
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from nl_jax.data import checkpointing as data_ckpt

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"
CHECKSUM_FILE = "checksums.json"
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


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (the message is one line: step, where, free space)."""


class DamagedCheckpointError(RuntimeError):
  """A checkpoint step failed verification (step, file and fault in the message)."""


def _free_bytes(path: str) -> int:
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def _fmt_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return f"{n} B"


def _step_files(step_dir: str) -> dict[str, str]:
  """Relative path -> absolute path of every file under ``step_dir`` (checksums excluded)."""
  out = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      full = os.path.join(root, name)
      rel = os.path.relpath(full, step_dir)
      if not rel.startswith(CHECKSUM_FILE):  # also a checksums.json.tmp cut by a kill
        out[rel] = full
  return out


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def write_checksums(step_dir: str) -> str:
  """Writes ``<step_dir>/checksums.json`` (size and SHA-256 of every file) atomically."""
  files = {rel: {"size": os.path.getsize(full), "sha256": _sha256(full)}
           for rel, full in sorted(_step_files(step_dir).items())}
  path = os.path.join(step_dir, CHECKSUM_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"version": 1, "files": files}, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + ".tmp", path)
  return path


def verify_step(step_dir: str) -> str | None:
  """Checks a step directory against its checksums.

  Returns:
    None when every file matches, ``"unverified"`` when there is no ``checksums.json``.

  Raises:
    DamagedCheckpointError: naming the file and what is wrong with it.
  """
  path = os.path.join(step_dir, CHECKSUM_FILE)
  if not os.path.isdir(step_dir):
    raise DamagedCheckpointError(f"{step_dir}: the step directory is missing")
  if not os.path.exists(path):
    return "unverified"
  try:
    with open(path, encoding="utf-8") as f:
      expected = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DamagedCheckpointError(f"{path}: unreadable record of checksums ({e})") from e
  present = _step_files(step_dir)
  for rel, want in expected.items():
    full = os.path.join(step_dir, rel)
    if rel not in present:
      raise DamagedCheckpointError(f"{full}: file missing")
    size = os.path.getsize(full)
    if size != want["size"]:
      raise DamagedCheckpointError(
          f"{full}: {'truncated' if size < want['size'] else 'grown'} to {size} bytes, "
          f"{want['size']} expected")
    if _sha256(full) != want["sha256"]:
      raise DamagedCheckpointError(f"{full}: content differs from its checksum (garbage or "
                                   "flipped bytes)")
  extra = sorted(set(present) - set(expected))
  if extra:
    raise DamagedCheckpointError(
        f"{os.path.join(step_dir, extra[0])}: unexpected file ({len(extra)} not in "
        f"{CHECKSUM_FILE})")
  return None


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(p) for p in _step_files(path).values()) if os.path.isdir(
      path) else 0


class Checkpointer:
  """Saves and restores ``(params, train_state, data iterator)`` under ``<workdir>``.

  Args:
    workdir: the run directory (checkpoints go to ``<workdir>/checkpoints``).
    keep: how many checkpoints to keep (oldest deleted first).
    async_save: write in a background thread (training continues); `wait` blocks.
    primary: this process writes checksums and sets damaged steps aside (process 0).
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               primary: bool | None = None):
    _cpu_array_handler()
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    self.primary = jax.process_index() == 0 if primary is None else primary
    self._async = async_save
    self._pending: int | None = None  # saved step whose checksums are not written yet
    self._failed = False
    if self.primary and os.path.isdir(self.directory):
      for name in sorted(os.listdir(self.directory)):
        if ".orbax-checkpoint-tmp" in name:
          logging.warning("checkpoint: removing the half-written %s (a save that did not "
                          "finish)", os.path.join(self.directory, name))
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    """The newest committed step, or None."""
    steps = self._mngr.all_steps()
    return max(steps) if steps else None

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _save_failed(self, step: int, cause: BaseException | str) -> CheckpointSaveError:
    self._failed = True
    good = [s for s in self.all_steps() if s != step]
    cause = str(cause).strip().splitlines()
    msg = (f"checkpoint save of step {step} to {self.directory} failed: "
           f"{cause[-1] if cause else 'unknown error'}; free space "
           f"{_fmt_bytes(_free_bytes(self.directory))}; newest good checkpoint: "
           f"{('step ' + str(max(good))) if good else 'none'}")
    logging.error(msg)
    return CheckpointSaveError(msg)

  def _finish_pending(self) -> None:
    """Waits for the in-flight save, raising `CheckpointSaveError`, then writes checksums."""
    if self._pending is None:
      return
    step, self._pending = self._pending, None
    try:
      self._mngr.wait_until_finished()
      self._mngr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from e
    if not self.primary:
      return
    step_dir = self.step_dir(step)
    if not os.path.isdir(step_dir):
      raise self._save_failed(step, "the step directory was not committed")
    try:
      write_checksums(step_dir)
    except OSError as e:
      raise self._save_failed(step, f"writing {CHECKSUM_FILE}: {e}") from e

  def poll(self, wait: bool = False) -> None:
    """Call after every step: finishes a completed async save (errors raise here).

    Args:
      wait: block until the in-flight save is committed. The loop waits after the step
        that follows a save, so a save overlaps one step of training and a SIGKILL never
        loses more than ``checkpoint_every`` reported steps.
    """
    if self._pending is not None and (wait or not self._mngr.is_saving_in_progress()):
      self._finish_pending()

  def save(self, step: int, params: Any, train_state: Any, data_iterator: Any) -> bool:
    """Saves everything at ``step`` (returns at once when async).

    Raises:
      CheckpointSaveError: the previous save failed, the free space is below the size of
        the previous checkpoint, or this save could not be written.
    """
    self._finish_pending()
    previous = self.latest_step()
    need = _dir_bytes(self.step_dir(previous)) if previous is not None else sum(
        int(x.nbytes) for x in jax.tree.leaves((params, train_state)) if hasattr(x, "nbytes"))
    free = _free_bytes(self.directory)
    if free < need:
      raise self._save_failed(step, f"not enough free space ({_fmt_bytes(free)} free, the "
                              f"previous checkpoint takes {_fmt_bytes(need)})")
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        train_state=ocp.args.StandardSave(train_state),
        **{data_ckpt.DATA_ITEM_NAME: data_ckpt.save_args(data_iterator)})
    try:
      saved = self._mngr.save(step, args=args, force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from e
    logging.info("checkpoint: saving step %d to %s", step, self.directory)
    if saved:
      self._pending = step
      if not self._async:
        self._finish_pending()
    return saved

  def set_aside(self, step: int, reason: str) -> str:
    """Renames a damaged step into ``<workdir>/checkpoints_damaged/`` (never deletes)."""
    target_root = os.path.join(self.workdir, DAMAGED_DIR)
    target = os.path.join(target_root, f"{step}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    if self.primary:
      os.makedirs(target_root, exist_ok=True)
      base, n = target, 1
      while os.path.exists(target):
        n += 1
        target = f"{base}.{n}"
      os.rename(self.step_dir(step), target)
      with open(target + ".reason.txt", "w", encoding="utf-8") as f:
        f.write(reason + "\n")
    logging.error("checkpoint step %d is damaged: %s; set aside to %s", step, reason, target)
    self._mngr.reload()
    return target

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

  def restore_latest(self, abstract_params: Any, abstract_train_state: Any,
                     data_iterator: Any) -> tuple[int, Any, Any] | None:
    """Restores the newest intact step, setting damaged newer ones aside.

    Returns:
      ``(step, params, train_state)``, or None when there is no (intact) checkpoint.

    Raises:
      RuntimeError: a verified step that does not restore (e.g. a config that does not
        match the checkpoint), naming the step.
    """
    for step in sorted(self._mngr.all_steps(), reverse=True):
      step_dir = self.step_dir(step)
      try:
        status = verify_step(step_dir)
      except DamagedCheckpointError as e:
        self.set_aside(step, str(e))
        continue
      try:
        params, train_state = self.restore(step, abstract_params, abstract_train_state,
                                           data_iterator)
      except Exception as e:  # pylint: disable=broad-except
        cause = " ".join(str(e).split())[:500] or type(e).__name__
        if status == "unverified":
          self.set_aside(step, f"{step_dir}: no {CHECKSUM_FILE} and the restore failed: "
                         f"{type(e).__name__}: {cause}")
          continue
        raise RuntimeError(
            f"checkpoint step {step} in {self.directory} matches its checksums but does not "
            f"restore onto this run's model/optimizer ({type(e).__name__}: {cause}); was it "
            "written with another config?") from e
      if status == "unverified":
        logging.warning("checkpoint step %d has no %s (the run stopped before it was "
                        "written); restored without verification", step, CHECKSUM_FILE)
        if self.primary:
          write_checksums(step_dir)
      return step, params, train_state
    return None

  def reached_preemption(self, step: int) -> bool:
    """True when the JAX distributed runtime saw a preemption notice (multi-process)."""
    return self._mngr.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until pending saves are committed and checksummed (raises their errors)."""
    self._finish_pending()

  def close(self) -> None:
    try:
      if not self._failed:
        self._finish_pending()
    finally:
      try:
        self._mngr.close()
      except Exception as e:  # pylint: disable=broad-except
        if not self._failed:
          raise
        logging.warning("checkpoint: closing after a failed save: %s", e)


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
    dataclass is ``registry.config_from_saved(config.model_name, config.model)``).

  Raises:
    FileNotFoundError: no workdir or no committed checkpoint there.
    DamagedCheckpointError: the step does not match its ``checksums.json``.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from nl_jax.models import registry  # pylint: disable=g-import-not-at-top
  from nl_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top

  workdir, dir_step = _find_run(workdir_or_checkpoint_dir)
  with open(os.path.join(workdir, CONFIG_FILE), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  model_cfg = registry.config_from_saved(
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
  # A damaged checkpoint names its file instead of loading wrong weights (or crashing late).
  verify_step(os.path.join(workdir, CHECKPOINT_DIR, str(step)))
  restored = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(target)))
  mngr.close()
  if jax.tree.leaves(rest):
    # Non-parameter variables (e.g. RNG streams) are not checkpointed: take fresh ones.
    _, _, rest = nnx.split(registry.build_model(model_cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
  model = nnx.merge(graphdef, restored["params"], rest)
  return model, config
