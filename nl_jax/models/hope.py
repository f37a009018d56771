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
"""Hope and Hope-Attention language models (paper section 8.3, eqs. 94-97; spec 7).

Hope block (pre-norm residual)::

    x <- x + SelfModifyingTitans(RMSNorm(x))       # small memory, expressive learning rule
    x <- ContinuumMemorySystem(x)                   # chain of MLP levels, each x + MLP_l(norm_l(x))

Hope-Attention replaces the self-modifying Titans layer by causal softmax attention (RoPE);
its attention sees the current call only (like TransformerPP), while the CMS fast weights
carry across calls.

The memory state carried between calls holds, per block, the self-modifying memories and the
conv cache (Hope) and the CMS fast weights, their accumulated gradients and positions; all
leaves have the batch as leading axis. Memories reset at the first token of each new segment.

CMS objective: ``cms.objective="local"`` (default; each level learns from a per-block
associative loss, nl_jax.layers.cms) or ``"ntp"`` (the paper's: each level learns from the
whole model's next-token loss). With "ntp" both models override ``forward_embedded`` with
nl_jax.models.cms_ntp.ntp_forward_embedded: the call runs segment by segment (S = the smallest
CMS chunk) with every fast state carried; Hope-Attention's queries then see the keys/values
of the call's earlier segments through a key/value buffer (Attention.attend_with_buffer), so
its attention still covers the whole call. Pass ``targets`` / ``loss_mask`` for the last
token of a call to count (the trainer does).

The paper as one switch: ``profile`` ("default" or "paper"; ``--config.model.profile=paper``)
sets every field below that is left unset (None) to its literal reading of the paper; a field
set explicitly wins over the profile (``--config.model.profile=paper
--config.model.cms.objective=local`` is the paper's model with the local CMS objective).
``config.choice("smt.rule")`` / ``config.choices()`` give the values the model runs with.
Hope-Attention has the two CMS rows. The paper profile computes
the paper's equations but does not train: Hope tiny's first forward under it overflows (the
summed step of (1) with the unnormalised values of (3); either default alone keeps it
finite; experiments/stability/README.md).

======================  ==========================================  =========  ===
field (dotted)          paper (profile="paper")                     default    why it differs
======================  ==========================================  =========  ===
``smt.anchored_step``   ``sum``: eq. 90's anchored step, no 1/C     ``mean``   (1)
``smt.rule``            ``paper_l2``: eq. 88 / 93 as printed        ``dgd``    (2)
``smt.value_norm``      ``none``: only q and k are L2-normalised    ``l2``     (3)
``smt.momentum``        ``True``: Table 6 ablates "w/o momentum"    ``False``  (4)
``smt.adaptive_q``      ``True``: eq. 88 writes M_q; Table 6        ``False``  (5)
                        ablates "w/o inner-projection q"
``cms.objective``       ``ntp``: the model's next-token loss        ``local``  (6)
``cms.max_step_norm``   ``inf``: eq. 71's step unclipped            ``1.0``    (7)
======================  ==========================================  =========  ===

(1) A chunk's C gradients are all taken at the same anchor: summed, C identical tokens move
    the weights C times as far as one exact step and repeated tokens diverge; the mean is the
    TTT / Titans mini-batch step (nl_jax.memory.mlp).
(2) Eq. 88 erases the key direction twice (factor alpha - 2 eta along k, a sign flip for
    eta > alpha / 2; spec 9.1); DGD's exact step c = eta / (1 + eta ||k||^2) keeps the factor
    in (0, 1] (and the output-side weight's step is normalised by its own input).
(3) With v unnormalised, ||v|| grew with training, the self-generated targets M(v) amplified
    the memories at every write and Hope tiny hit NaN at step 308
    (experiments/stability/README.md).
(4) Eq. 88 as printed has none (and it costs a momentum state per memory). The paper-scale
    configs and the ablations' reference set it (experiments/configs/common.py
    ``HOPE_REFERENCE``).
(5) The text calls q the only non-adaptive projection (spec 9.6; and it costs a fifth
    memory). ``HOPE_REFERENCE`` sets it with momentum.
(6) About a third of ntp's step time (ntp runs the model segment by segment, second order).
(7) A chunk's summed gradient grows with C_l and with repeated tokens; an unclipped step
    makes the fast MLP diverge within a few chunks (nl_jax.layers.cms._step_scale).

Open choices the profile leaves as they are, because the paper gives no value or the default
already is its reading: the anchored index of eq. 90 (the previous chunk's end, spec 9.3),
``smt.read_at="pre"`` (eq. 94: o_t = M_{t-1}(q_t)), the form of the momentum (Titans', spec 9.7),
the gates' squashing, chunk sizes, widths, learning rates, ``cms.retention=None`` (eq. 71),
``cms.variant="sequential"`` (eq. 97) and the gates' initial biases (8).

(8) The paper gives no initial value for the eta / alpha gates. ``smt.alpha_bias_init=8`` starts
    the self-modifying Titans' retention at 0.9998 per token. The earlier 4 (0.991 per token)
    emptied the memories within a 512-token call (their weights x0.01), the trained gates
    stayed there, and switching the trained model's writes off changed its loss by 1e-4;
    at 8 the writes count (+0.003 over 3 seeds, +0.006 at 1,000 steps) at no measurable cost in
    held-out loss (experiments/in_context/README.md). Saved runs keep the value they were
    trained with.
"""

import dataclasses
import math
from typing import Any, ClassVar

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from nl_jax import config_tree
from nl_jax.layers.attention import Attention
from nl_jax.layers.cms import CMSConfig, ContinuumMemorySystem
from nl_jax.layers.norms import RMSNorm
from nl_jax.layers.self_modifying_titans import SelfModifyingTitans, SelfModifyingTitansConfig
from nl_jax.memory import remat_scan
from nl_jax.models.cms_ntp import ntp_forward_embedded
from nl_jax.models.common import CausalLM, LMConfig, SequenceContext


def _unset_cms() -> CMSConfig:
  """The CMS of a model config: its widths set by the model, its profile fields unset."""
  return config_tree.unbound(CMSConfig, objective=None, max_step_norm=None)


def _unset_smt() -> SelfModifyingTitansConfig:
  """The self-modifying Titans of a model config: its shapes set by the model, its profile
  fields unset."""
  return config_tree.unbound(SelfModifyingTitansConfig, **dict.fromkeys(
      SelfModifyingTitansConfig.PROFILE_FIELDS))


# Flat names of the fields before the configs were nested -> their dotted names now
# (config.json of runs saved before 2026-12-06; registry.config_from_saved migrates them).
_CMS_RENAMED = {f"cms_{f}": f"cms.{f}" for f in (
    "chunk_sizes", "learning_rates", "variant", "objective", "max_step_norm", "retention",
    "meta_gradient")}
_SMT_RENAMED = {
    **{f"smt_{f}": f"smt.{f}" for f in ("chunk_size", "proj_chunk_size", "anchored_step",
                                          "targets", "output_error", "chunk_backward")},
    **{f: f"smt.{f}" for f in ("momentum", "adaptive_q", "static_projections", "read_at",
                               "memory_hidden", "eta_max", "alpha_min", "mu_max",
                               "stop_target_grad", "value_norm", "gate_hidden",
                               "eta_bias_init", "alpha_bias_init", "conv_width")},
    "inner_rule": "smt.rule", "memory_activation": "smt.activation",
    "memory_implementation": "smt.implementation"}


# chunk_remat_group=None: the CMS levels keep their fast state about every sqrt(n) chunks,
# the self-modifying Titans memories every chunk (see _CMSFields).
CMS_REMAT_GROUP = 0
SMT_REMAT_GROUP = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class _CMSFields(LMConfig):
  """CMS fields shared by Hope and Hope-Attention (mlp_hidden = hidden width of each level).

  Profile fields (``cms.objective``, ``cms.max_step_norm``) are None by default: their value
  then comes from ``profile`` (table in the module docstring); a value set explicitly wins.
  Set layer fields by name (``cms=dict(variant="nested")``, ``**{"cms.variant": "nested"}``):
  a layer config given whole (``cms=CMSConfig(...)``) also sets every profile field it
  carries, and its class defaults are the default profile's values.

  Attributes:
    profile: "default" or "paper" (every unset profile field at its literal paper reading).
    cms: the continuum memory system (nl_jax.layers.cms.CMSConfig; its widths, dtype and
      remat come from this config): ``chunk_sizes`` (C_l per level, multiples of the
      smallest), ``learning_rates`` (None: 1e-3 each), ``variant`` ("sequential", eq. 70;
      "independent", eq. 74; "nested", eq. 72), ``objective`` (profile field: default
      "local", paper "ntp", the whole model's next-token loss, nl_jax.models.cms_ntp, ~3-4x the
      compute), ``max_step_norm`` (profile field: default 1.0, paper inf = eq. 71 unclipped),
      ``retention`` (None: eq. 71 as written), ``meta_gradient`` ("exact" | "first_order",
      objective "local" only), ``chunk_backward`` ("autodiff" | "manual": the hand-written
      backward of a level's chunk, nl_jax.layers.cms_chunk; exact meta-gradient, local).
    chunk_remat: jax.checkpoint every memory chunk / CMS segment (independent of `remat`,
      which rematerialises whole blocks). Without it the backward keeps every segment's
      per-sequence CMS weights and intermediates (Hope small at T=512, B=16 asked XLA for
      48 GB on CPU).
    chunk_remat_group: with chunk_remat, the backward of a chunk scan keeps the fast state
      only every this many chunks (1: every chunk; 0: about sqrt(chunks) per scan, two-level
      checkpointing) and runs the chunks between forward again: the saved fast state falls
      from n copies to about 2 sqrt(n), for one more forward of those chunks
      (nl_jax.memory.remat_scan). An int applies to every chunk scan (CMS levels, the
      self-modifying Titans memories). None (default) chooses per layer: the CMS levels 0,
      the self-modifying Titans memories 1 (CMS_REMAT_GROUP, SMT_REMAT_GROUP). A CMS level's
      fast weights are ~13x its chunk's inputs at ``small`` (3 x 512 x 544 against 128 x 512
      per sequence), so keeping them at every chunk costs far more memory than running its
      chunks again costs time; a memory's state is about its chunk's inputs
      (experiments/BENCHMARKS.md, "the CMS state kept every sqrt(n) chunks"). The tiny
      presets set 1: at their sizes time binds, not memory.
  """
  # profile -> the values of the profile fields left unset (dotted field names).
  PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
      "default": {"cms.objective": "local", "cms.max_step_norm": 1.0},
      "paper": {"cms.objective": "ntp", "cms.max_step_norm": math.inf},
  }
  RENAMED: ClassVar[dict[str, str]] = _CMS_RENAMED

  profile: str = "default"
  cms: CMSConfig = dataclasses.field(default_factory=_unset_cms)
  chunk_remat: bool = True
  chunk_remat_group: int | None = None

  def __post_init__(self):
    super().__post_init__()
    if self.profile not in self.PROFILES:
      raise ValueError(f"{type(self).__name__}.profile={self.profile!r} is not one of "
                       f"{tuple(self.PROFILES)}")
    if self.chunk_remat_group is not None:
      remat_scan.check_group(f"{type(self).__name__}.chunk_remat_group",
                             self.chunk_remat_group)
    self.cms_config()  # validates the CMS fields (ValueError naming the field)

  def derived(self, layer: str) -> dict[str, Any]:
    if layer != "cms":
      return super().derived(layer)
    return dict(d_model=self.d_model, hidden=self.mlp_hidden, remat=self.chunk_remat,
                remat_group=self.remat_group("cms"), norm_eps=self.norm_eps, dtype=self.dtype)

  def remat_group(self, layer: str) -> int:
    """The chunk_remat_group of layer "cms" or "smt" (the field, or the layer's default)."""
    if self.chunk_remat_group is not None:
      return self.chunk_remat_group
    return {"cms": CMS_REMAT_GROUP, "smt": SMT_REMAT_GROUP}[layer]

  def choice(self, name: str) -> Any:
    """The value the model uses for profile field `name` (dotted, e.g. "cms.objective"): the
    field if set, else the profile's."""
    layer, _, field = name.partition(".")
    value = getattr(getattr(self, layer), field)
    return self.PROFILES[self.profile][name] if value is None else value

  def choices(self) -> dict[str, Any]:
    """Every profile field with the value the model uses."""
    return {name: self.choice(name) for name in self.PROFILES[self.profile]}

  def _bind(self, layer: str):
    """Layer config `layer` with its derived and profile fields filled in."""
    return self.layer_config(layer, **{
        p.partition(".")[2]: self.choice(p) for p in self.PROFILES[self.profile]
        if p.startswith(layer + ".")})

  def cms_config(self) -> CMSConfig:
    """The CMS layer's config (widths from this config, profile fields resolved)."""
    return self._bind("cms")

  @property
  def alignment(self) -> int:
    return min(self.cms.chunk_sizes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HopeConfig(_CMSFields):
  """Config of Hope: LMConfig fields, CMS fields and the self-modifying Titans options.

  Presets (layers x width x heads; parameter counts from registry.count_params, size-matched
  to TransformerPP/Titans at "small", within 5% of the name for 760m / 1_3b; a test checks):

  * tiny: 2 x 64, 4 heads x 16, CMS 2 levels x 96 (chunks 8, 32), SMT chunks 8 (CPU; every
    chunk's state kept, chunk_remat_group=1: at these sizes time binds, not memory).
  * small: 6 x 512, 8 heads x 64, CMS 2 levels x 544 (chunks 128, 512), SMT chunks 64 (~19.45M).
  * 760m: 24 x 1536, 12 heads x 128, CMS 2 levels x 1600 (chunks 64, 512), untied 32K vocab.
  * 1_3b: 24 x 2048, 16 heads x 128, CMS 2 levels x 2240 (chunks 64, 512), tied 32K vocab.

  Attributes:
    smt: the self-modifying Titans (nl_jax.layers.self_modifying_titans.
      SelfModifyingTitansConfig; its widths, dtypes and remat come from this config). Its
      profile fields are None by default and take the profile's value: ``smt.anchored_step``
      (default "mean", paper "sum"), ``smt.rule`` (default "dgd", paper "paper_l2"),
      ``smt.value_norm`` (default "l2", paper "none"), ``smt.momentum`` and
      ``smt.adaptive_q`` (default False, paper True). Its other fields: ``chunk_size`` (the
      output memory's), ``proj_chunk_size`` (the k, v, (q,) eta, alpha memories'),
      ``targets``, ``output_error``, ``chunk_backward``, ``static_projections``, ``read_at``,
      ``memory_hidden``, ``gate_hidden``, ``activation`` (sigma of eq. 89), ``eta_max``,
      ``alpha_min``, ``mu_max``, ``memory_init_scale``, ``eta_bias_init``,
      ``alpha_bias_init`` ((8) in the module docstring), ``stop_target_grad``, ``conv_width``,
      ``implementation``, ``one_scan`` (equal chunk sizes: every memory in one chunk scan,
      less memory for more compile time; False: two).
  """
  PRESETS = {
      "tiny": dict(vocab_size=259, d_model=64, n_layers=2, n_heads=4, head_dim=16,
                   mlp_hidden=96, cms=dict(chunk_sizes=(8, 32)),
                   smt=dict(chunk_size=8, proj_chunk_size=8), chunk_remat_group=1),
      "small": dict(vocab_size=259, d_model=512, n_layers=6, n_heads=8, head_dim=64,
                    mlp_hidden=544, cms=dict(chunk_sizes=(128, 512)),
                    smt=dict(chunk_size=64, proj_chunk_size=64)),
      "760m": dict(vocab_size=32000, d_model=1536, n_layers=24, n_heads=12, head_dim=128,
                   mlp_hidden=1600, cms=dict(chunk_sizes=(64, 512)),
                   smt=dict(chunk_size=64, proj_chunk_size=64), tie_embeddings=False,
                   remat=True, scan_layers=True, dtype="bfloat16"),
      "1_3b": dict(vocab_size=32000, d_model=2048, n_layers=24, n_heads=16, head_dim=128,
                   mlp_hidden=2240, cms=dict(chunk_sizes=(64, 512)),
                   smt=dict(chunk_size=64, proj_chunk_size=64), tie_embeddings=True,
                   remat=True, scan_layers=True, dtype="bfloat16"),
  }

  # Saved before value_norm existed (the fix of experiments/stability): v was not normalised.
  SAVED_BEFORE: ClassVar[dict[str, Any]] = {"smt.value_norm": "none"}
  PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
      "default": {**_CMSFields.PROFILES["default"], "smt.anchored_step": "mean",
                  "smt.rule": "dgd", "smt.momentum": False, "smt.adaptive_q": False,
                  "smt.value_norm": "l2"},
      "paper": {**_CMSFields.PROFILES["paper"], "smt.anchored_step": "sum",
                "smt.rule": "paper_l2", "smt.momentum": True, "smt.adaptive_q": True,
                "smt.value_norm": "none"},
  }
  RENAMED: ClassVar[dict[str, str]] = {**_CMS_RENAMED, **_SMT_RENAMED}

  smt: SelfModifyingTitansConfig = dataclasses.field(default_factory=_unset_smt)

  def __post_init__(self):
    super().__post_init__()
    self.smt_config()  # validates the self-modifying Titans fields

  def derived(self, layer: str) -> dict[str, Any]:
    if layer != "smt":
      return super().derived(layer)
    return dict(d_model=self.d_model, n_heads=self.n_heads, head_dim=self.head_dim,
                remat=self.chunk_remat, remat_group=self.remat_group("smt"), dtype=self.dtype,
                param_dtype=self.param_dtype)

  def smt_config(self) -> SelfModifyingTitansConfig:
    """The self-modifying Titans layer's config (shapes from this config, profile fields
    resolved)."""
    return self._bind("smt")

  @property
  def alignment(self) -> int:
    return math.lcm(self.smt.chunk_size, self.smt.proj_chunk_size, min(self.cms.chunk_sizes))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HopeAttentionConfig(_CMSFields):
  """Config of Hope-Attention: LMConfig fields, CMS fields and the attention options.

  Presets (size-matched to TransformerPP: its SwiGLU of width F becomes 2 CMS levels of F / 2):

  * tiny: 2 x 64, 4 heads x 16, CMS 2 levels x 96 (chunks 8, 32), chunk_remat_group=1 (as
    Hope's).
  * small: 6 x 512, 8 heads x 64, CMS 2 levels x 704 (chunks 128, 512) (~19.4M).
  * 760m: 24 x 1536, 12 heads x 128, CMS 2 levels x 2048 (chunks 64, 512), untied.
  * 1_3b: 24 x 2048, 16 heads x 128, CMS 2 levels x 2816 (chunks 64, 512), tied.

  Attributes:
    sliding_window: attention span or None (global).
    attention_block_size: query rows per rematerialised attention block.
  """
  PRESETS = {
      "tiny": dict(vocab_size=259, d_model=64, n_layers=2, n_heads=4, head_dim=16,
                   mlp_hidden=96, cms=dict(chunk_sizes=(8, 32)), chunk_remat_group=1),
      "small": dict(vocab_size=259, d_model=512, n_layers=6, n_heads=8, head_dim=64,
                    mlp_hidden=704, cms=dict(chunk_sizes=(128, 512))),
      "760m": dict(vocab_size=32000, d_model=1536, n_layers=24, n_heads=12, head_dim=128,
                   mlp_hidden=2048, cms=dict(chunk_sizes=(64, 512)), tie_embeddings=False,
                   remat=True, scan_layers=True, dtype="bfloat16"),
      "1_3b": dict(vocab_size=32000, d_model=2048, n_layers=24, n_heads=16, head_dim=128,
                   mlp_hidden=2816, cms=dict(chunk_sizes=(64, 512)), tie_embeddings=True,
                   remat=True, scan_layers=True, dtype="bfloat16"),
  }

  sliding_window: int | None = None
  attention_block_size: int | None = 512


def _reset(ctx: SequenceContext) -> jax.Array:
  """ctx.reset, or no resets when the caller gave no segment ids (ctx.reset is None)."""
  if ctx.reset is None:
    return jnp.zeros(ctx.segment_ids.shape, bool)
  return ctx.reset


def _cms_aux(stats) -> dict:
  return {f"cms/{k}": v for k, v in stats.items()}


class HopeBlock(nnx.Module):
  """x + SelfModifyingTitans(RMSNorm(x)), then ContinuumMemorySystem(x)."""

  def __init__(self, config: HopeConfig, *, rngs: nnx.Rngs):
    pdt = config.jnp_param_dtype
    self.smt_norm = RMSNorm(config.d_model, eps=config.norm_eps, param_dtype=pdt)
    self.smt = SelfModifyingTitans(config.smt_config(), rngs=rngs)
    self.cms = ContinuumMemorySystem(config.cms_config(), param_dtype=pdt, rngs=rngs)

  def init_memory(self, batch_size: int):
    return {"smt": self.smt.init_memory(batch_size), "cms": self.cms.init_memory(batch_size)}

  def __call__(self, x_BxTxD: jax.Array, state, ctx: SequenceContext):
    reset = _reset(ctx)
    y, smt_state, smt_aux = self.smt(self.smt_norm(x_BxTxD), state["smt"], ctx.segment_ids,
                                     reset, start_aligned=ctx.start_aligned)
    x_BxTxD = x_BxTxD + y
    x_BxTxD, cms_state, cms_aux = self.cms(x_BxTxD, state["cms"], reset,
                                           start_aligned=ctx.start_aligned)
    aux = {f"smt/{k}": v for k, v in smt_aux.items()}
    aux.update(_cms_aux(cms_aux))
    return x_BxTxD, {"smt": smt_state, "cms": cms_state}, aux

  # The sequence mixer over one segment of the CMS next-token driver (nl_jax.models.cms_ntp).

  def segment_kv(self, batch_size: int, length: int) -> None:
    """No key/value buffer: the memories carry the earlier segments."""
    del batch_size, length

  def segment_aligned(self, segment: int) -> bool:
    """Segments of `segment` tokens from position 0 start on the memories' chunk boundaries."""
    cfg = self.smt.cfg
    return segment % cfg.chunk_size == 0 and segment % cfg.proj_chunk_size == 0

  def mix_segment(self, x_BxSxD, state, kv, seg, segment_ids_BxT, start_aligned: bool):
    """x + SelfModifyingTitans(RMSNorm(x)) on a segment, memories carried: (x, smt state,
    None, aux)."""
    del kv, segment_ids_BxT
    y, smt_state, smt_aux = self.smt(self.smt_norm(x_BxSxD), state["smt"], seg["segment_ids"],
                                     seg["reset"], start_aligned=start_aligned)
    return x_BxSxD + y, smt_state, None, {f"smt/{k}": v for k, v in smt_aux.items()}


class HopeAttentionBlock(nnx.Module):
  """x + Attention(RMSNorm(x)), then ContinuumMemorySystem(x)."""

  def __init__(self, config: HopeAttentionConfig, *, rngs: nnx.Rngs):
    dt, pdt = config.jnp_dtype, config.jnp_param_dtype
    self.attn_norm = RMSNorm(config.d_model, eps=config.norm_eps, param_dtype=pdt)
    self.attn = Attention(config.d_model, config.n_heads, config.head_dim,
                          rope_theta=config.rope_theta, sliding_window=config.sliding_window,
                          block_size=config.attention_block_size, dtype=dt, param_dtype=pdt,
                          rngs=rngs)
    self.cms = ContinuumMemorySystem(config.cms_config(), param_dtype=pdt, rngs=rngs)

  def init_memory(self, batch_size: int):
    return {"cms": self.cms.init_memory(batch_size)}

  def __call__(self, x_BxTxD: jax.Array, state, ctx: SequenceContext):
    x_BxTxD = x_BxTxD + self.attn(self.attn_norm(x_BxTxD), ctx.positions, ctx.segment_ids)
    x_BxTxD, cms_state, cms_aux = self.cms(x_BxTxD, state["cms"], _reset(ctx),
                                           start_aligned=ctx.start_aligned)
    return x_BxTxD, {"cms": cms_state}, _cms_aux(cms_aux)

  # The sequence mixer over one segment of the CMS next-token driver (nl_jax.models.cms_ntp).

  def segment_kv(self, batch_size: int, length: int):
    """Key/value buffers of the whole call: a segment's queries see the earlier segments."""
    shape = (batch_size, length) + tuple(self.attn.wq[...].shape[1:])
    return jnp.zeros(shape, self.attn.dtype), jnp.zeros(shape, self.attn.dtype)

  def segment_aligned(self, segment: int) -> bool:
    """Attention has no chunks to align."""
    del segment
    return False

  def mix_segment(self, x_BxSxD, state, kv, seg, segment_ids_BxT, start_aligned: bool):
    """x + Attention(RMSNorm(x)) on a segment over the call's buffers: (x, None, buffers,
    {})."""
    del state, start_aligned
    y, k_buf, v_buf = self.attn.attend_with_buffer(self.attn_norm(x_BxSxD), seg["positions"],
                                                   seg["start"], kv[0], kv[1], segment_ids_BxT)
    return x_BxSxD + y, None, (k_buf, v_buf), {}


class Hope(CausalLM):
  """The Hope language model (see the module docstring)."""
  stateful = True

  def make_block(self, index: int, rngs: nnx.Rngs) -> nnx.Module:
    del index
    return HopeBlock(self.config, rngs=rngs)

  def forward_embedded(self, x_BxTxD: jax.Array, memory_state, ctx: SequenceContext):
    """CausalLM.forward_embedded, or the segment driver when cms_objective == "ntp"."""
    if self.config.choice("cms.objective") == "ntp":
      return ntp_forward_embedded(self, x_BxTxD, memory_state, ctx)
    return super().forward_embedded(x_BxTxD, memory_state, ctx)


class HopeAttention(CausalLM):
  """Hope-Attention: softmax attention -> CMS in every block (see the module docstring)."""
  stateful = True

  def make_block(self, index: int, rngs: nnx.Rngs) -> nnx.Module:
    del index
    return HopeAttentionBlock(self.config, rngs=rngs)

  def forward_embedded(self, x_BxTxD: jax.Array, memory_state, ctx: SequenceContext):
    """CausalLM.forward_embedded, or the segment driver when cms_objective == "ntp"."""
    if self.config.choice("cms.objective") == "ntp":
      return ntp_forward_embedded(self, x_BxTxD, memory_state, ctx)
    return super().forward_embedded(x_BxTxD, memory_state, ctx)
