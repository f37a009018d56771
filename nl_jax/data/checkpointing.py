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
"""orbax args for saving the data iterator next to the train state.

Usage in a trainer (``mngr = ocp.CheckpointManager(dir, item_names=("state", "data"))``)::

  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=checkpointing.save_args(train_iter)))
  mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=checkpointing.restore_args(train_iter)))  # restores train_iter in place

grain writes one small JSON file per process (``data/process_<i>-of-<n>.json``), so restore
with the same process count. The restored grain iterator yields exactly the batches the
saved one would have yielded next. orbax and grain's orbax integration are imported only
when these helpers are called.
"""

from typing import Any

DATA_ITEM_NAME = "data"


def save_args(iterator: Any):
  """``grain.checkpoint.CheckpointSave`` for ``iterator`` (a grain or seqio-adapter iterator).

  Args:
    iterator: from `nl_jax.data.make_train_iterator`.
  """
  import grain.checkpoint  # pylint: disable=g-import-not-at-top

  return grain.checkpoint.CheckpointSave(iterator)


def restore_args(iterator: Any):
  """``grain.checkpoint.CheckpointRestore`` that restores into ``iterator`` in place.

  Args:
    iterator: a freshly built iterator from the same config (`make_train_iterator`).
  """
  import grain.checkpoint  # pylint: disable=g-import-not-at-top

  return grain.checkpoint.CheckpointRestore(iterator)


def composite_save_args(iterator: Any, **items):
  """``ocp.args.Composite(data=save_args(iterator), **items)``, e.g. with ``state=...``."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  return ocp.args.Composite(**{DATA_ITEM_NAME: save_args(iterator)}, **items)


def composite_restore_args(iterator: Any, **items):
  """``ocp.args.Composite(data=restore_args(iterator), **items)``."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  return ocp.args.Composite(**{DATA_ITEM_NAME: restore_args(iterator)}, **items)
