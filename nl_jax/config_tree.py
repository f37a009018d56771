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
"""Nested, typed model configs: frozen dataclasses whose fields may be configs themselves.

A model config (e.g. ``HopeConfig``) holds the configs of its layers (``smt:
SelfModifyingTitansConfig``, ``cms: CMSConfig``). A layer config lists in ``DERIVED`` the
fields its model sets (widths, dtypes): inside a model they stay None, are absent from
`to_dict` and from the command line, and the model fills them in when it builds the layer.
Every other field of every level is reachable by its dotted name, in Python
(``model_config("hope", "tiny", **{"smt.chunk_size": 8})`` or ``smt=dict(chunk_size=8)``) and on
the command line (``--config.model.smt.chunk_size=8``). One schema: the dataclasses; the
training config's ``model`` section is `to_dict` of the model's config.
"""

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np


def derived(cls_or_cfg) -> tuple[str, ...]:
  """The fields of a layer config that the model owning it sets (``DERIVED``)."""
  return tuple(getattr(cls_or_cfg, "DERIVED", ()))


@functools.cache
def hints(cls: type) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def nested_class(tp) -> type | None:
  """The dataclass type of a field annotated as one (else None)."""
  return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def to_dict(cfg, *, nested: bool = False) -> dict[str, Any]:
  """The config as plain nested dicts (tuples kept); a nested config leaves out its
  ``DERIVED`` fields (its model sets them)."""
  skip = set(derived(cfg)) if nested else set()
  out = {}
  for f in dataclasses.fields(cfg):
    if f.name in skip:
      continue
    value = getattr(cfg, f.name)
    out[f.name] = to_dict(value, nested=True) if dataclasses.is_dataclass(value) else value
  return out


def field_paths(cls: type, prefix: str = "") -> dict[str, Any]:
  """Every settable dotted field path of config class `cls` -> its type."""
  out = {}
  for f in dataclasses.fields(cls):
    tp = hints(cls)[f.name]
    sub = nested_class(tp)
    if sub is not None:
      out.update({p: t for p, t in field_paths(sub, f"{prefix}{f.name}.").items()
                  if p.rsplit(".", 1)[1] not in derived(sub)})
    else:
      out[prefix + f.name] = tp
  return out


def coerce(path: str, value, tp):
  """value converted to type tp, or ValueError naming the dotted field."""
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    for arm in typing.get_args(tp):
      try:
        return coerce(path, value, arm)
      except ValueError:
        pass
    raise ValueError(f"{path}: {value!r} is not a {tp}")
  if tp is type(None):
    if value is None:
      return None
    raise ValueError(f"{path}: expected None, got {value!r}")
  if tp is bool:
    if isinstance(value, (bool, np.bool_)):
      return bool(value)
    raise ValueError(f"{path}: expected bool, got {type(value).__name__} {value!r}")
  if tp is int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
      return int(value)
    raise ValueError(f"{path}: expected int, got {type(value).__name__} {value!r}")
  if tp is float:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
      return float(value)
    raise ValueError(f"{path}: expected float, got {type(value).__name__} {value!r}")
  if tp is str:
    if isinstance(value, str):
      return value
    raise ValueError(f"{path}: expected str, got {type(value).__name__} {value!r}")
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise ValueError(f"{path}: expected a tuple, got {type(value).__name__}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(coerce(path, v, args[0]) for v in value)
    if args and len(args) != len(value):
      raise ValueError(f"{path}: expected {len(args)} items, got {len(value)}")
    return tuple(coerce(path, v, a) for v, a in zip(value, args or [Any] * len(value),
                                                      strict=True))
  return value


def unflatten(overrides: Mapping[str, Any]) -> dict[str, Any]:
  """Dotted keys to nested dicts: {"smt.chunk_size": 8} -> {"smt": {"chunk_size": 8}};
  nested dicts given as values are merged."""
  out: dict[str, Any] = {}
  for key, value in overrides.items():
    head, _, rest = key.partition(".")
    if rest:
      value = unflatten({rest: value})
    if isinstance(value, Mapping) and isinstance(out.get(head), Mapping):
      out[head] = {**out[head], **unflatten(value)}
    else:
      out[head] = unflatten(value) if isinstance(value, Mapping) else value
  return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dicts to dotted keys (the inverse of `unflatten`)."""
  out = {}
  for key, value in d.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def merge(*overrides: Mapping[str, Any]) -> dict[str, Any]:
  """Override mappings merged left to right, nested configs field by field."""
  return unflatten({k: v for d in overrides for k, v in flatten(unflatten(d)).items()})


def _check_keys(cls: type, d: Mapping, prefix: str) -> None:
  fields = {f.name for f in dataclasses.fields(cls)}
  if prefix:  # a nested config: its model sets the derived fields
    fields -= set(derived(cls))
  unknown = sorted(set(d) - fields)
  if unknown:
    names = [prefix + u for u in unknown]
    raise ValueError(f"unknown config field(s) {names} of {cls.__name__}; valid fields: "
                     f"{sorted(prefix + f for f in fields)}")


def replace(cfg, overrides: Mapping[str, Any], *, typed: bool = False, _prefix: str = "",
            _owner: str = ""):
  """`cfg` with `overrides` applied (dotted keys or nested dicts; a nested config's fields
  merge into it). ``typed``: coerce every value to its field's type (values from JSON or the
  command line). Raises ValueError naming the dotted field of an unknown key or a bad value."""
  cls = type(cfg)
  owner = _owner or cls.__name__
  overrides = unflatten(overrides)
  _check_keys(cls, overrides, _prefix)
  kwargs = {}
  for name, value in overrides.items():
    tp = hints(cls)[name]
    sub = nested_class(tp)
    if sub is not None and isinstance(value, Mapping):
      try:
        value = replace(getattr(cfg, name), value, typed=typed, _prefix=f"{_prefix}{name}.",
                        _owner=owner)
      except ValueError as e:
        raise ValueError(f"{_prefix}{name}: {e}") from e
    elif typed:
      value = coerce(f"{owner}.{_prefix}{name}", value, tp)
    kwargs[name] = value
  return dataclasses.replace(cfg, **kwargs)


def from_dict(cls: type, d: Mapping[str, Any]):
  """Config `cls` from plain nested mappings (e.g. ``ConfigDict.to_dict()``): every field not
  in `d` takes its default; values are type-checked (ValueError naming the dotted field)."""
  return replace(cls(), d, typed=True)


def unbound(cls: type, **fields):
  """Layer config `cls` as a model config holds it: its ``DERIVED`` fields unset (the model
  sets them), `fields` set."""
  return cls(**dict.fromkeys(derived(cls)), **fields)


def check_positive_ints(cfg, names, *, optional=()) -> None:
  """ValueError naming the first of `names` that is not a positive int (a ``DERIVED`` field may
  be None: its model sets it; so may those in `optional`: None means a default)."""
  for f in names:
    v = getattr(cfg, f)
    if v is None and (f in derived(cfg) or f in optional):
      continue
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{type(cfg).__name__}.{f} must be a positive int, got {v!r}")


def check_choices(cfg, choices: Mapping[str, tuple], *, may_be_unset=()) -> None:
  """ValueError naming the first field whose value is not among its allowed `choices` (those
  in `may_be_unset` may also be None: a profile sets them)."""
  for f, allowed in choices.items():
    v = getattr(cfg, f)
    if v not in allowed and not (v is None and f in may_be_unset):
      raise ValueError(f"{type(cfg).__name__}.{f}={v!r} is not one of {allowed}")


def check_bound(cfg) -> None:
  """Raises ValueError when a layer config still has a field its model sets (``DERIVED``) or
  a profile field (``PROFILE_FIELDS``) unset: the layer cannot run on it."""
  unset = [f for f in (*derived(cfg), *getattr(cfg, "PROFILE_FIELDS", ()))
           if getattr(cfg, f) is None]
  if unset:
    raise ValueError(f"{type(cfg).__name__}: {unset} are unset (None). Inside a model config "
                     "the model sets them when it builds the layer (e.g. HopeConfig.smt_config"
                     "()); to use the layer alone, set them")
