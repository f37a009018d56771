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
"""One entry point for every nl_jax language model: configs, presets, construction, size.

    config = model_config("hope", "tiny", d_model=128)     # frozen dataclass
    model = build_model(config, rngs=nnx.Rngs(0))
    state = model.init_memory(batch_size)                 # {} for TransformerPP
    logits_BxTxV, state, aux = model(tokens_BxT, state, segment_ids=..., positions=...)

Interface of every model (nl_jax.models.common has the shared skeleton):

* ``init_memory(B)``: a pytree whose every leaf has leading axis B (sharded with the batch).
* ``model(tokens, memory_state=None, *, segment_ids=None, positions=None, targets=None,
  loss_mask=None) -> (logits float32 [B, T, V], new_state, aux)``; passing new_state back
  continues the stream (one call == two calls). segment_ids (0 = padding) keep attention inside
  a segment and reset memories at the first token of each new segment; positions default to
  arange(T) + tokens already streamed; aux is a flat dict of named scalars.
  memory_state=None starts from ``init_memory(B)`` and tells the layers so
  (SequenceContext.start_aligned): their chunked scans then run no padded chunk. Prefer it to
  passing a fresh ``init_memory(B)`` (the trainer does; the results are the same).
* Bad input (rank, dtype, ids out of range when concrete, a state from another config) raises
  ValueError before compilation.

Presets: each config class lists ``PRESETS = {"tiny", "small", "760m", "1_3b"}`` (the large two
within 5% of the name, checked by a test).
"""

import importlib
import logging
from collections.abc import Mapping
from typing import Any

import flax.nnx as nnx
import jax
import numpy as np

from nl_jax import config_tree

PRESET_NAMES = ("tiny", "small", "760m", "1_3b")

# name -> (module, config class, model class). Imported lazily: nl_jax.models.hope may not exist
# in every checkout, and importing one model must not import the others.
_ENTRIES = {
    "hope": ("nl_jax.models.hope", "HopeConfig", "Hope"),
    "hope_attention": ("nl_jax.models.hope", "HopeAttentionConfig", "HopeAttention"),
    "titans": ("nl_jax.models.titans", "TitansConfig", "Titans"),
    "transformer_pp": ("nl_jax.models.transformer_pp", "TransformerPPConfig", "TransformerPP"),
}
# The one list of model names (the training config's ``model_name`` is checked against it).
MODEL_NAMES = tuple(_ENTRIES)


def _load(name: str):
  if name not in _ENTRIES:
    raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
  module_name, config_name, model_name = _ENTRIES[name]
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name:
      raise
    raise ValueError(f"model {name!r} is not available: module {module_name} is missing") from e
  return getattr(module, config_name), getattr(module, model_name)


def config_class(name: str) -> type:
  """The config dataclass of a model name."""
  return _load(name)[0]


def presets(name: str) -> dict[str, dict[str, Any]]:
  """Preset overrides of a model: {preset: {field: value}}."""
  return dict(getattr(config_class(name), "PRESETS", {}))


def model_config(name: str, preset: str = "tiny", **overrides):
  """Frozen config of model `name` from `preset` with field overrides.

  A field of a nested layer config is set by its dotted name (``**{"smt.chunk_size": 8}``)
  or as a dict merged into the layer's (``smt=dict(chunk_size=8)``; nl_jax.config_tree).

  Raises:
    ValueError: unknown name, preset or override key (listing the valid choices), or an
      invalid value (from the config's own validation).
  """
  cls = config_class(name)
  table = presets(name)
  if preset not in table:
    raise ValueError(f"unknown preset {preset!r} for model {name!r}; expected one of "
                     f"{tuple(table)}")
  return config_tree.replace(cls(), config_tree.merge(table[preset], overrides))


def config_from_dict(name: str, d: Mapping):
  """Config of model `name` from plain nested mappings (e.g. ``ConfigDict.to_dict()``).

  Every field not in `d` takes the dataclass default. Raises ValueError for unknown keys or
  values of the wrong type, naming the dotted field.
  """
  return config_tree.from_dict(config_class(name), d)


def migrate_saved(name: str, d: Mapping) -> dict[str, Any]:
  """A saved run's model mapping (a workdir's ``config.json``) in today's schema.

  Flat names of fields that now live in a nested layer config (``RENAMED`` of the config
  class: ``smt_chunk_size`` -> ``smt.chunk_size``) move there; a field the saved mapping lacks
  and whose default changed the model when it was added (``SAVED_BEFORE``) takes the value the
  run was trained with, not today's default (logged).
  """
  cls = config_class(name)
  renamed = getattr(cls, "RENAMED", {})
  flat = {renamed.get(k, k): v for k, v in config_tree.flatten(d).items()}
  legacy = {k: v for k, v in getattr(cls, "SAVED_BEFORE", {}).items() if k not in flat}
  if legacy:
    logging.warning("saved %s config predates field(s) %s: using the values it was trained "
                    "with", name, legacy)
  return config_tree.unflatten({**legacy, **flat})


def config_from_saved(name: str, d: Mapping):
  """Config of model `name` from a saved run's mapping (`migrate_saved`, then
  `config_from_dict`)."""
  return config_from_dict(name, migrate_saved(name, d))


def model_name_of(config) -> str:
  """The registry name of a config object."""
  for name in MODEL_NAMES:
    try:
      cls = config_class(name)
    except ValueError:
      continue
    if type(config) is cls:
      return name
  raise ValueError(f"{type(config).__name__} is not the config of a registered model "
                   f"{MODEL_NAMES}")


def build_model(config, *, rngs: nnx.Rngs) -> nnx.Module:
  """Instantiates the model a config object belongs to."""
  return _load(model_name_of(config))[1](config, rngs=rngs)


def count_params(config) -> int:
  """Number of parameters of the model, from shapes only (nnx.eval_shape: nothing allocated)."""
  abstract = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))))


def match_params(name: str, preset: str, target: int, *, field: str = "mlp_hidden",
                 **overrides) -> dict[str, int]:
  """The override ``{field: width}`` that brings model `name`'s size closest to `target`.

  For comparisons at equal size (e.g. Transformer++ and Titans at Hope's parameter count):
  only ``field`` (an int width, by default the SwiGLU hidden width) moves; every other field is
  the preset's, with `overrides` applied. The count is affine in a width such as
  ``mlp_hidden`` (n_layers * 3 * d_model per unit), so two counts give the slope; the nearest
  widths are then counted exactly and the closest kept (ties: the smaller width).

  Raises:
    ValueError: ``field`` is not an int field of the config, or no width >= 1 comes within
      one slope of `target` (the target is below the model's size at width 1).
  """
  base = model_config(name, preset, **overrides)
  value = getattr(base, field, None)
  if isinstance(value, bool) or not isinstance(value, int):
    raise ValueError(f"match_params: {name}.{field} is not an int width (got {value!r}); "
                     "pass field= an int field such as 'mlp_hidden'")

  def count(width: int) -> int:
    return count_params(model_config(name, preset, **{**overrides, field: width}))

  c0, c1 = count(value), count(value + 1)
  slope = c1 - c0
  if slope <= 0:
    raise ValueError(f"match_params: the size of {name!r} does not grow with {field}")
  guess = value + round((target - c0) / slope)
  candidates = [w for w in (guess - 1, guess, guess + 1) if w >= 1]
  if not candidates:
    raise ValueError(f"match_params: {name!r} at {field}=1 already has {count(1)} parameters, "
                     f"more than the target {target}")
  best = min(candidates, key=lambda w: (abs(count(w) - target), w))
  return {field: best}
