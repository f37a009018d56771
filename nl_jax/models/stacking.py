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
"""Ad-hoc level stacking (paper section 7.3, spec 6.3): a CMS that starts from trained MLPs.

``stack_levels(transformer)`` turns a trained Transformer++ into a Hope-Attention model: the
embedding, attention, norms and head are copied, and the k CMS levels of block b start from
block b's SwiGLU (``level_{l}_init``, eq. 71's theta_0). With every CMS learning rate 0 the levels
never move and the converted model computes the Transformer++ exactly (tested); with rates > 0
they keep learning in context from the pretrained weights, the paper's use (its Llama-3 MLPs
turned into CMS for continual learning).

Which pretrained weights start which level is not in the paper (spec open question 18). The
``mapping`` option names three readings; each reproduces the pretrained block at rate 0:

* ``"split"`` (default): level l starts from hidden units [l h/k, (l + 1) h/k) of the SwiGLU
  (columns of w_gate and w_up, rows of w_down). A SwiGLU is a sum over its hidden units, so
  the levels' outputs add up to the pretrained MLP's: variant ``independent`` with every
  aggregation weight 1. The level widths add up to the pretrained width, which is how the
  Hope-Attention presets are size-matched to Transformer++ (2 levels of F / 2).
* ``"copy"``: every level starts from the whole SwiGLU (width h each, k times the parameters);
  variant ``independent`` with aggregation weights 1 / k.
* ``"slowest"``: the slowest level (the last: the longest chunk, where knowledge persists)
  starts from the SwiGLU; the faster ones start from its w_gate and w_up with w_down = 0, so
  they add nothing until they have learned (their w_down gets the in-context gradient at once).
  Exact for both the ``sequential`` chain (the zero levels pass x through) and
  ``independent`` (aggregation weights 1).

The CMS norm of every level starts from the block's ``mlp_norm`` scale (the independent variant
has one norm, shared by its levels).
"""

import dataclasses
from typing import Any

import flax.nnx as nnx
import jax.numpy as jnp
import numpy as np

from nl_jax import config_tree
from nl_jax.models import registry
from nl_jax.models.hope import HopeAttentionConfig
from nl_jax.models.transformer_pp import TransformerPPConfig

MAPPINGS = ("split", "copy", "slowest")
# The CMS variants with which each mapping reproduces the pretrained block; the first is the
# default.
_VARIANTS = {"split": ("independent",), "copy": ("independent",),
             "slowest": ("sequential", "independent")}


def stacked_config(tpp: TransformerPPConfig, *, mapping: str = "split",
                   **overrides: Any) -> HopeAttentionConfig:
  """The Hope-Attention config of the converted model (same widths, heads, vocabulary, depth).

  ``overrides`` sets Hope-Attention's own fields (dotted names or nested dicts, as
  ``registry.model_config`` takes them: ``cms=dict(chunk_sizes=..., learning_rates=...,
  variant=...)``); the number of levels is ``len(cms.chunk_sizes)`` (Hope-Attention's default
  when not given). Every error names the field and the fix, before any weight is built.
  """
  if not isinstance(tpp, TransformerPPConfig):
    raise ValueError(f"stack_levels: the source must be a Transformer++ (TransformerPPConfig), "
                     f"got {type(tpp).__name__}")
  if mapping not in MAPPINGS:
    raise ValueError(f"stack_levels: mapping={mapping!r} is not one of {MAPPINGS}")
  if tpp.conv_width:
    raise ValueError(f"stack_levels: the Transformer++ has conv_width={tpp.conv_width}, and "
                     "Hope-Attention's blocks have no short conv to take its kernel; convert a "
                     "Transformer++ trained with conv_width=0")
  shared = {f.name: getattr(tpp, f.name) for f in dataclasses.fields(TransformerPPConfig)
            if f.name in {g.name for g in dataclasses.fields(HopeAttentionConfig)}
            and f.name != "mlp_hidden"}
  overrides = config_tree.unflatten(overrides)
  cms = dict(overrides.pop("cms", {}))
  variant = cms.pop("variant", _VARIANTS[mapping][0])
  if variant not in _VARIANTS[mapping]:
    raise ValueError(f"stack_levels: mapping={mapping!r} reproduces the pretrained MLP only with "
                     f"cms.variant in {_VARIANTS[mapping]}, got {variant!r}")
  chunks = cms.get("chunk_sizes", HopeAttentionConfig().cms.chunk_sizes)
  k = 1 if isinstance(chunks, int) else len(chunks)
  hidden = tpp.mlp_hidden
  if mapping == "split":
    if hidden % k:
      raise ValueError(f"stack_levels: mapping='split' divides the SwiGLU's {hidden} hidden "
                       f"units among {k} levels; choose a cms.chunk_sizes of a length that "
                       f"divides {hidden}, or mapping='copy'")
    hidden //= k
  asked = overrides.pop("mlp_hidden", hidden)
  if asked != hidden:
    raise ValueError(f"stack_levels: mlp_hidden={asked} does not match the pretrained SwiGLU "
                     f"({hidden} per level with mapping={mapping!r})")
  return config_tree.replace(HopeAttentionConfig(**shared), {
      **overrides, "mlp_hidden": hidden, "cms": {**cms, "variant": variant}})


def _level_weights(mlp: dict, mapping: str, k: int) -> list[dict]:
  """The k levels' initial SwiGLU weights from one block's (leading axes allowed)."""
  w_gate, w_up, w_down = (np.asarray(mlp[n]) for n in ("w_gate", "w_up", "w_down"))
  if mapping == "copy":
    return [dict(w_gate=w_gate, w_up=w_up, w_down=w_down) for _ in range(k)]
  if mapping == "slowest":
    fast = dict(w_gate=w_gate, w_up=w_up, w_down=np.zeros_like(w_down))
    return [dict(fast) for _ in range(k - 1)] + [dict(w_gate=w_gate, w_up=w_up, w_down=w_down)]
  h = w_gate.shape[-1] // k
  cut = [slice(lvl * h, (lvl + 1) * h) for lvl in range(k)]
  return [dict(w_gate=w_gate[..., c], w_up=w_up[..., c], w_down=w_down[..., c, :]) for c in cut]


def _convert_block(src: dict, dst: dict, mapping: str, k: int, variant: str) -> None:
  for name in ("attn", "attn_norm"):
    dst[name] = src[name]
  levels = _level_weights(src["mlp"], mapping, k)
  for lvl, w in enumerate(levels):
    dst["cms"][f"level_{lvl}_init"] = w
  scale = np.asarray(src["mlp_norm"]["scale"])
  norm = np.asarray(dst["cms"]["norm_scale"])
  dst["cms"]["norm_scale"] = np.broadcast_to(scale[..., None, :], norm.shape).copy()
  if variant == "independent":
    agg = np.asarray(dst["cms"]["agg"])
    dst["cms"]["agg"] = np.full_like(agg, 1.0 / k if mapping == "copy" else 1.0)


def stack_levels(transformer: nnx.Module, *, mapping: str = "split", rngs: nnx.Rngs | None = None,
                 **overrides: Any) -> nnx.Module:
  """A Hope-Attention model whose CMS levels start from ``transformer``'s MLPs.

  Args:
    transformer: a Transformer++ (``registry.build_model``, or ``nl_jax.train.load_for_eval``
      of a trained run); ``scan_layers`` is kept.
    mapping: which pretrained weights start which level: "split" | "copy" | "slowest" (module
      docstring).
    rngs: for the converted model's construction (every parameter is then overwritten; default
      ``nnx.Rngs(0)``).
    **overrides: Hope-Attention config fields (as `stacked_config` takes them:
      ``cms=dict(chunk_sizes=..., learning_rates=..., variant=...)``).

  Returns:
    The Hope-Attention ``nnx.Module``; its config is ``model.config``.
  """
  cfg = stacked_config(transformer.config, mapping=mapping, **overrides)
  model = registry.build_model(cfg, rngs=rngs or nnx.Rngs(0))
  src = nnx.to_pure_dict(nnx.state(transformer, nnx.Param))
  state = nnx.state(model, nnx.Param)
  dst = nnx.to_pure_dict(state)
  for name in ("embed", "final_norm", "lm_head"):
    if name in src:
      dst[name] = src[name]
  k = len(cfg.cms.chunk_sizes)
  if "scanned_blocks" in src:
    _convert_block(src["scanned_blocks"], dst["scanned_blocks"], mapping, k, cfg.cms.variant)
  else:
    for b in src["blocks"]:
      _convert_block(src["blocks"][b], dst["blocks"][b], mapping, k, cfg.cms.variant)
  dst = _as_arrays(dst, nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, dst)
  nnx.update(model, state)
  return model


def _as_arrays(new: Any, like: Any) -> Any:
  """``new`` with the dtypes of ``like``, every shape checked (a mapping bug fails here)."""
  if isinstance(like, dict):
    return {key: _as_arrays(new[key], like[key]) for key in like}
  arr = jnp.asarray(new, like.dtype)
  if arr.shape != like.shape:
    raise ValueError(f"stack_levels: converted weight of shape {arr.shape}, the model needs "
                     f"{like.shape}")
  return arr
