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
"""One trainer per workdir: the workdir lock, the config check on resume, metrics on resume.

* `WorkdirLock`: ``<workdir>/.lock`` held with an exclusive ``flock`` and holding the
  owner's host and pid. A second trainer on the same workdir refuses to start and names the
  owner; a lock left by a process that is gone (SIGKILL, crash) is taken over with a
  message. The kernel drops a ``flock`` when its process dies, so a stale lock never blocks.
  On filesystems where ``flock`` is not shared between hosts, a lock file naming another
  host is honoured until removed by hand.
* `check_config_change`: a resumed run must use the config its checkpoints were trained
  with. Fields describing where and how the run executes (`ENVIRONMENT_FIELDS`) may change
  freely; fields in `MAY_CHANGE_FIELDS` (length of the run, learning-rate schedule,
  logging, evaluation, checkpointing, NaN policy) change only with
  ``train.allow_config_changes=True``; any other change is refused, listing the fields.
* `prepare_metrics_for_resume`: drops the ``metrics.jsonl`` rows of steps after the
  restored one (they are trained again) and appends a ``{"split": "resume", "step": N}``
  row, so every step appears once and the resume point is marked.
"""

import fcntl
import json
import os
import socket
import time
from typing import Any

from absl import logging

from nl_jax import config_tree

LOCK_FILE = ".lock"

# Where and how the run executes; these never change what is trained.
ENVIRONMENT_FIELDS = (
    "mesh.", "sharding.", "data.num_threads", "data.prefetch_buffer_size",
    "data.shard_index", "train.tensorboard", "train.async_checkpointing",
    "train.peak_flops_per_device", "train.allow_config_changes",
)
# May change on resume with train.allow_config_changes=True.
MAY_CHANGE_FIELDS = (
    "train.steps", "train.log_every", "train.eval_every", "train.eval_batches",
    "train.checkpoint_every", "train.keep_checkpoints", "train.nan_policy",
    "train.nan_skip_budget", "optimizer.learning_rate", "optimizer.schedule",
    "optimizer.warmup_steps", "optimizer.decay_steps", "optimizer.end_lr_fraction",
)


class WorkdirLockedError(RuntimeError):
  """Another live trainer holds the workdir."""


class ConfigChangedError(ValueError):
  """A resumed run's config differs from the one its checkpoints were trained with."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """Exclusive lock on ``<workdir>`` (see module docstring); use as a context manager.

  Args:
    workdir: the run directory (created if missing).
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd = None

  def _owner(self) -> dict[str, Any]:
    try:
      with open(self.path, encoding="utf-8") as f:
        text = f.read().strip()
      return json.loads(text) if text else {}
    except (OSError, ValueError):
      return {}

  @staticmethod
  def _describe(owner: dict[str, Any]) -> str:
    return (f"host {owner.get('host', '?')} pid {owner.get('pid', '?')} (since "
            f"{owner.get('started', '?')})")

  def acquire(self) -> "WorkdirLock":
    """Takes the lock or raises `WorkdirLockedError` naming the owner."""
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      raise WorkdirLockedError(
          f"workdir {self.workdir} is in use by another trainer "
          f"({self._describe(self._owner())}; lock file {self.path}); stop it or use "
          "another --workdir") from e
    owner = self._owner()
    host = socket.gethostname()
    if owner:
      if owner.get("host") not in (None, host):
        # flock may not reach across hosts on network filesystems: honour the file.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise WorkdirLockedError(
            f"workdir {self.workdir} is locked by a trainer on another host "
            f"({self._describe(owner)}; lock file {self.path}); if that run is gone, "
            f"delete {self.path} and start again")
      pid = owner.get("pid")
      state = ("is no longer running" if not isinstance(pid, int) or not _pid_alive(pid)
               else "no longer holds the lock")
      logging.warning("workdir %s: taking over the stale lock of %s, which %s",
                      self.workdir, self._describe(owner), state)
    info = {"host": host, "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    """Empties the lock file (a clean exit) and drops the lock."""
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)
    finally:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


# Config on resume ---------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(value, dict):
    out = {}
    for k, v in value.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    if not value and prefix:
      out[prefix[:-1]] = {}
    return out
  return {prefix[:-1]: value}


def config_as_json(config: Any) -> dict[str, Any]:
  """The config as `nl_jax.train.checkpoint.write_config` writes it (JSON values)."""
  raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(raw, default=list))


def _matches(field: str, patterns) -> bool:
  return any(field == p or (p.endswith(".") and field.startswith(p)) for p in patterns)


def _with_model_fields_it_meant(saved: dict[str, Any]) -> dict[str, Any]:
  """``saved`` with every model field it predates at the value the run was trained with.

  A field added to a model config after the run was saved is absent from its config.json;
  the run meant the field's ``SAVED_BEFORE`` value (registry.config_from_saved), which is the
  default unless the default changed the model. Without this every new field would read as a
  change and refuse the resume. A config saved before the layer configs were nested has its
  flat field names moved to their dotted places first (registry.migrate_saved).
  """
  model, name = saved.get("model"), saved.get("model_name")
  if not isinstance(model, dict) or not isinstance(name, str):
    return saved
  from nl_jax.models import registry  # pylint: disable=g-import-not-at-top

  try:
    migrated = registry.migrate_saved(name, model)
    meant = config_tree.to_dict(registry.config_from_dict(name, migrated))
  except (KeyError, TypeError, ValueError):
    return saved  # an unknown model or field: compared as written, so the change is listed
  filled = config_tree.merge(json.loads(json.dumps(meant, default=list)), migrated)
  return {**saved, "model": filled}


def config_changes(saved: dict[str, Any], config: Any) -> list[tuple[str, Any, Any]]:
  """``(field, saved value, new value)`` for every field that differs (dotted names); a model
  field the saved config predates counts with the value the run was trained with."""
  old, new = _flatten(_with_model_fields_it_meant(saved)), _flatten(config_as_json(config))
  missing = object()
  out = []
  for field in sorted(set(old) | set(new)):
    a, b = old.get(field, missing), new.get(field, missing)
    if a != b:
      out.append((field, None if a is missing else a, None if b is missing else b))
  return out


def check_config_change(saved: dict[str, Any] | None, config: Any, *, allow: bool,
                        workdir: str) -> list[str]:
  """Refuses a resume whose config differs from the saved one (see module docstring).

  Args:
    saved: the workdir's ``config.json`` contents (None: nothing to compare).
    config: the new run's config.
    allow: ``train.allow_config_changes``.
    workdir: for the message.

  Returns:
    The changed fields that were accepted (logged).

  Raises:
    ConfigChangedError: listing every refused field with its old and new value.
  """
  if saved is None:
    return []
  changes = [c for c in config_changes(saved, config)
             if not _matches(c[0], ENVIRONMENT_FIELDS)]
  refused = [c for c in changes if not (allow and _matches(c[0], MAY_CHANGE_FIELDS))]
  if refused:
    lines = [f"{f}: {a!r} -> {b!r}" for f, a, b in refused]
    may = [c[0] for c in refused if _matches(c[0], MAY_CHANGE_FIELDS)]
    hint = (f"; {may} may change with --config.train.allow_config_changes=True" if may
            else "")
    raise ConfigChangedError(
        f"workdir {workdir} holds checkpoints of a different config; changed field(s):\n  "
        + "\n  ".join(lines) + f"\nuse a new --workdir, or the saved values{hint} (only "
        f"{list(MAY_CHANGE_FIELDS)} may change on resume)")
  for f, a, b in changes:
    logging.warning("resuming with a changed config field %s: %r -> %r", f, a, b)
  return [c[0] for c in changes]


def read_saved_config(path: str) -> dict[str, Any] | None:
  """The JSON at ``path``, or None when absent; an unreadable file names itself."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigChangedError(f"cannot read the saved config {path}: {e}") from e


# Metrics on resume ---------------------------------------------------------------------


def prepare_metrics_for_resume(workdir: str, step: int | None) -> None:
  """Drops ``metrics.jsonl`` rows after ``step`` and appends a resume marker row.

  Rows of steps after the restored checkpoint were written by the interrupted run and are
  trained again, so they are removed (the file is rewritten atomically); an unparsable
  line (a row cut by a kill) is dropped too. A run that starts over (no intact checkpoint)
  passes ``step`` 0; ``step`` None keeps the file as it is.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if step is None or not os.path.exists(path):
    return
  kept, dropped = [], 0
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        dropped += 1
        continue
      if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
        dropped += 1
        continue
      kept.append(line if line.endswith("\n") else line + "\n")
  kept.append(json.dumps({"split": "resume", "step": int(step), "dropped_rows": dropped,
                          "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)
