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
"""The shared language-model skeleton every nl_jax model builds on.

What lives here, so TransformerPP, Titans, Hope and HopeAttention share one definition:

* ``LMConfig``: the frozen, ``kw_only`` base config (fields every model has: vocab_size,
  d_model, n_layers, n_heads, head_dim, mlp_hidden, dtype, param_dtype, remat, ...), the
  ``validate_seq_len`` / ``alignment`` hooks, and the preset convention: a subclass sets the
  class attribute ``PRESETS = {"tiny": {...overrides...}, "small": ..., "760m": ...,
  "1_3b": ...}``; ``registry.model_config(name, preset, **overrides)`` builds
  ``cls(**{**cls.PRESETS[preset], **overrides})``.
* ``SequenceContext``: what a block sees besides its input: positions (for RoPE),
  segment_ids, reset (True at the first token of each new segment: memories go back to their
  initial state there; None when the call has no segment_ids, i.e. one document continuing
  the stream), index (the token's index within this call, for causal masks),
  targets and loss_mask (for objectives that need the next token), all [B, T].
* ``prepare_inputs``: validation of tokens / segment_ids / positions / targets / loss_mask with
  ValueErrors that name the field and the fix, before anything is traced or compiled, and the
  defaults (segment_ids = ones; positions = arange(T) + tokens already streamed; targets =
  tokens shifted left with the last target masked).
* ``check_memory_state``: a memory state must have exactly the tree, shapes and dtypes of
  ``init_memory(B)`` (a state from another config is a ValueError, not a shape error deep in
  XLA).
* ``CausalLM``: embedding (`embed`) -> blocks -> final RMSNorm (`final_norm`) -> head
  (tied, or `lm_head` [d_model, vocab]), per-block ``nnx.remat`` when ``config.remat``, and
  aux collection: a block returns a flat dict, which appears as ``block_{i}/<key>``. With
  ``config.scan_layers`` the blocks are built as usual, stacked into one module
  (``scanned_blocks``, every variable [n_layers, ...]; `stack_modules`) and run under one
  ``jax.lax.scan`` (``jax.checkpoint`` per block when ``config.remat``); the memory state and
  aux keep their per-block layout. ``block_list()`` gives per-block views in either layout.
  The CMS next-token driver (`nl_jax.models.cms_ntp`) scans the stacked blocks inside each of
  its segments too.

A model subclasses ``CausalLM`` and implements ``make_block(index, rngs)``; a block is an
``nnx.Module`` with::

    block.init_memory(batch_size) -> pytree   # every leaf [batch_size, ...]; {} if stateless
    block(x_BxTxD, block_state, ctx: SequenceContext) -> (x_BxTxD, new_block_state, aux dict)

The model's memory state is ``{}`` when no block carries state (``stateful = False``), else
``{"stream": {"position": [B] int32, "last_segment": [B] int32}, "block_0": ..., ...}``: the
stream part lets a call continue the RoPE positions and detect a segment change at its first
token. A model that needs its own forward (e.g. CMS with the next-token objective, which runs
the model chunk by chunk) can reuse ``CausalLM.prepare`` (validation + context) and
``CausalLM.head``, or the functions ``prepare_inputs``, ``check_memory_state``,
``stream_context`` and ``advance_stream``, and override ``forward_embedded``.
``__call__`` is ``prepare`` -> ``embed`` -> ``forward_embedded(x_BxTxD, memory_state, ctx)``;
tests differentiate ``forward_embedded`` w.r.t. the embeddings to check causality.
"""

import contextlib
import contextvars
import dataclasses
import functools
from typing import Any, ClassVar, NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from nl_jax import config_tree
from nl_jax.layers.embed import Embed
from nl_jax.layers.mlp import dense_init
from nl_jax.layers.norms import RMSNorm
from nl_jax.memory import remat_scan
from nl_jax.optim.partition import STACKED_BLOCKS

DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("full", "memory_states")

# Sharding of the [B, T, D] residual stream while a train / eval step is traced (None: leave
# it to XLA). Without it the SPMD partitioner may pick a replicated batch for activations
# when parameters are FSDP-sharded (see activation_sharding).
_ACTIVATION_SHARDING = contextvars.ContextVar("nl_jax_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(sharding):
  """Constrains the residual stream (embeddings and every block output) to ``sharding``.

  Used by nl_jax.train around the model call (batch over ("data", "fsdp"), like MaxText's
  activation rules), so every block's activations stay split over the batch axes whatever the
  parameter sharding. ``None`` leaves the choice to XLA.
  """
  token = _ACTIVATION_SHARDING.set(sharding)
  try:
    yield
  finally:
    _ACTIVATION_SHARDING.reset(token)


# Sharding of the fresh memory state a call creates (memory_state=None) while a train / eval
# step is traced; see memory_sharding.
_MEMORY_SHARDING = contextvars.ContextVar("nl_jax_memory_sharding", default=None)


@contextlib.contextmanager
def memory_sharding(sharding):
  """Constrains the memory state a model call creates (``memory_state=None``) to ``sharding``
  (a pytree of shardings matching ``init_memory(B)``). The trainer lets the model create its
  state, so the layers know it starts at position 0 (SequenceContext.start_aligned)."""
  token = _MEMORY_SHARDING.set(sharding)
  try:
    yield
  finally:
    _MEMORY_SHARDING.reset(token)


def constrain_activations(x_BxTxD):
  """x under the sharding set by ``activation_sharding`` (unchanged when none is set)."""
  sharding = _ACTIVATION_SHARDING.get()
  return x_BxTxD if sharding is None else jax.lax.with_sharding_constraint(x_BxTxD, sharding)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMConfig:
  """Fields every language model has (subclasses add theirs; see the module docstring).

  Attributes:
    vocab_size: number of token ids, ids in [0, vocab_size) (259 = nl_jax.data.ByteTokenizer).
    d_model: residual stream width.
    n_layers: number of blocks.
    n_heads: heads of the sequence mixer.
    head_dim: width of each head.
    mlp_hidden: hidden width of the SwiGLU MLP.
    dtype: activation dtype, "float32" or "bfloat16" (logits and memory states stay float32).
    param_dtype: parameter storage dtype.
    remat: rematerialise each block in the backward pass (memory ~ one block's activations).
    remat_policy: what a rematerialised block keeps for its backward (with ``remat=True``):
      "full" keeps only the block's input and runs the whole block again; "memory_states"
      also keeps what the memory layers' chunk scans keep for their own backward (their fast
      state every few chunks, and their outputs), so the block's recomputation skips the chunk
      loops (nl_jax.memory.remat_scan; Hope `small`, T=512-8192: 0.87-0.88x the step time
      for 2.0-2.4x the step memory, experiments/BENCHMARKS.md). Only the chunk scans of
      ``remat_scan`` (the CMS levels, the self-modifying Titans memories, with
      ``chunk_remat``) name anything: elsewhere (Transformer++, the Titans baseline's matrix
      memory) the two policies are the same.
    scan_layers: run the blocks under one ``jax.lax.scan`` over parameters stacked on a
      leading "layers" axis (``scanned_blocks/...`` [n_layers, ...] instead of
      ``blocks/<i>/...``): the step compiles one block instead of n_layers, and with ``remat``
      the backward keeps one residual stream per block. Same initialisation and outputs as the
      unrolled blocks (a test checks); the memory state keeps its ``block_<i>`` entries. The
      parameter tree differs, so a checkpoint of one layout does not restore into the other
      (the trainer refuses the changed field before restoring). DGD needs the unrolled
      layout (its input statistics are per layer).
    tie_embeddings: the output head reuses the embedding table (else a separate `lm_head`).
    norm_eps: RMSNorm epsilon.
    rope_theta: RoPE base.
  """
  PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
  # Fields added with a default that changed the model: the value a saved config that lacks
  # the field meant (what the code did before the field existed). Used when a saved run is
  # loaded (registry.config_from_saved), never for new configs.
  SAVED_BEFORE: ClassVar[dict[str, Any]] = {}

  vocab_size: int = 259
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  head_dim: int = 16
  mlp_hidden: int = 192
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  remat_policy: str = "full"
  scan_layers: bool = False
  tie_embeddings: bool = True
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0

  def __post_init__(self):
    name = type(self).__name__
    config_tree.check_positive_ints(self, ("vocab_size", "d_model", "n_layers", "n_heads",
                                           "head_dim", "mlp_hidden"))
    config_tree.check_choices(self, {"dtype": DTYPES, "param_dtype": DTYPES,
                                     "remat_policy": REMAT_POLICIES})
    if self.remat_policy != "full" and not self.remat:
      raise ValueError(f"{name}.remat_policy={self.remat_policy!r} applies to rematerialised "
                       "blocks: set remat=True too, or leave remat_policy='full'")
    if self.head_dim % 2:
      raise ValueError(f"{name}.head_dim must be even (RoPE pairs channels), got {self.head_dim}")
    for layer in self.layer_fields():
      object.__setattr__(self, layer, self._unbound(layer))

  # Nested layer configs (nl_jax.config_tree): a field whose value is a layer's config with
  # ``DERIVED`` fields (e.g. HopeConfig.smt). The model sets those fields (`derived`); inside
  # the model config they stay None.

  def layer_fields(self) -> tuple[str, ...]:
    """The fields that hold a layer's config."""
    return tuple(f.name for f in dataclasses.fields(self)
                 if config_tree.derived(getattr(self, f.name)))

  def derived(self, layer: str) -> dict[str, Any]:
    """What this config sets in its layer config `layer` (that config's ``DERIVED`` fields)."""
    raise NotImplementedError(f"{type(self).__name__} does not derive the fields of {layer!r}")

  def _unbound(self, layer: str):
    """Layer config `layer` with its derived fields unset; one set to another value than this
    config derives raises (the model owns it)."""
    sub, want = getattr(self, layer), self.derived(layer)
    clash = {f: getattr(sub, f) for f in want
             if getattr(sub, f) is not None and getattr(sub, f) != want[f]}
    if clash:
      raise ValueError(f"{type(self).__name__}.{layer}: {sorted(clash)} are set from the "
                       f"model's fields ({', '.join(f'{f}={want[f]!r}' for f in clash)}); "
                       "leave them unset and change the model's")
    return dataclasses.replace(sub, **dict.fromkeys(want))

  def layer_config(self, layer: str, **resolved):
    """Layer config `layer` as the layer runs it: the derived fields filled in, and
    `resolved` (e.g. profile values) set."""
    try:
      return dataclasses.replace(getattr(self, layer), **self.derived(layer), **resolved)
    except ValueError as e:
      raise ValueError(f"{type(self).__name__}.{layer}: {e}") from e

  @property
  def checkpoint_policy(self):
    """The ``jax.checkpoint`` policy of a rematerialised block (`remat_policy`)."""
    return remat_scan.save_scan_states() if self.remat_policy == "memory_states" else None

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def alignment(self) -> int:
    """Chunk size that document boundaries must fall on for exact memory resets (1: any)."""
    return 1

  def validate_seq_len(self, seq_len: int) -> None:
    """Raises ValueError if this model cannot train on sequences of seq_len tokens."""
    if not isinstance(seq_len, int) or seq_len < 1:
      raise ValueError(f"{type(self).__name__}: seq_len must be a positive int, got {seq_len!r}")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("positions", "segment_ids", "reset", "index", "targets",
                                "loss_mask"),
                   meta_fields=("start_aligned",))
@dataclasses.dataclass(frozen=True)
class SequenceContext:
  """Per-token side inputs every block receives (all [B, T]); see the module docstring.

  start_aligned (static, part of the tree structure so it survives ``nnx.remat``): the memory
  state was created by this call (``memory_state=None``), so every memory starts at stream
  position 0, on a boundary of every chunk. Chunked layers then need no front padding and run
  ceil(T / C) chunks instead of the ceil((T + C - 1) / C) a traced start position needs.
  """
  positions: jax.Array
  segment_ids: jax.Array
  reset: jax.Array | None
  index: jax.Array
  targets: jax.Array
  loss_mask: jax.Array
  start_aligned: bool = False


class PreparedInputs(NamedTuple):
  """Validated tokens and the context built from them (``CausalLM.prepare``)."""
  tokens: jax.Array
  context: SequenceContext


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _as_int_array(owner: str, name: str, x, shape: tuple[int, ...] | None) -> jax.Array:
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{owner}: {name} must have rank 2 [batch, seq_len], got shape "
                     f"{tuple(x.shape)}; add a batch axis with x[None] for one sequence")
  if shape is not None and tuple(x.shape) != shape:
    raise ValueError(f"{owner}: {name} has shape {tuple(x.shape)}, expected {shape} "
                     "(the shape of tokens)")
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"{owner}: {name} must be an integer array, got dtype {x.dtype}")
  return jnp.asarray(x, jnp.int32)


def prepare_inputs(owner: str, vocab_size: int, tokens, *, segment_ids=None, positions=None,
                   targets=None, loss_mask=None, start_position=None):
  """Validates the call inputs and fills the defaults (see the module docstring).

  Args:
    owner: name used in error messages (the model class).
    vocab_size: ids must lie in [0, vocab_size) (checked when tokens/targets are concrete).
    tokens: [B, T] integer token ids.
    segment_ids, positions, targets: optional [B, T] integer arrays.
    loss_mask: optional [B, T] bool/number array.
    start_position: optional [B] int32, tokens already streamed (default 0).

  Returns:
    (tokens_BxT int32, segment_ids_BxT, positions_BxT, targets_BxT, loss_mask_BxT float32).

  Raises:
    ValueError: wrong rank, dtype or shape, or ids out of range (named field and fix).
  """
  raw_tokens = tokens
  tokens = _as_int_array(owner, "tokens", tokens, None)
  shape = tuple(tokens.shape)
  if shape[1] < 1:
    raise ValueError(f"{owner}: tokens must have at least one position, got shape {shape}")

  def check_range(name, x):
    if _is_concrete(x):
      # numpy, not jnp: no device op (nothing compiled), and valid inside a jit trace where
      # jnp.min of a constant would be staged.
      xn = np.asarray(x)
      lo, hi = int(xn.min()), int(xn.max())
      if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{owner}: {name} ids must lie in [0, {vocab_size}) (vocab_size), got "
                         f"values in [{lo}, {hi}]; check the tokenizer / config.vocab_size")

  check_range("tokens", raw_tokens)
  seg = (jnp.ones(shape, jnp.int32) if segment_ids is None
         else _as_int_array(owner, "segment_ids", segment_ids, shape))
  if positions is None:
    start = jnp.zeros((shape[0],), jnp.int32) if start_position is None else start_position
    pos = start[:, None] + jnp.arange(shape[1], dtype=jnp.int32)[None, :]
  else:
    pos = _as_int_array(owner, "positions", positions, shape)
  if targets is None:
    tgt = jnp.concatenate([tokens[:, 1:], jnp.zeros((shape[0], 1), jnp.int32)], axis=1)
    default_mask = jnp.ones(shape, jnp.float32).at[:, -1].set(0.0)
  else:
    tgt = _as_int_array(owner, "targets", targets, shape)
    check_range("targets", targets)
    default_mask = jnp.ones(shape, jnp.float32)
  if loss_mask is None:
    mask = default_mask
  else:
    if not hasattr(loss_mask, "shape"):
      loss_mask = np.asarray(loss_mask)
    if tuple(loss_mask.shape) != shape:
      raise ValueError(f"{owner}: loss_mask has shape {tuple(loss_mask.shape)}, expected {shape} "
                       "(the shape of tokens)")
    mask = jnp.asarray(loss_mask).astype(jnp.float32)
  return tokens, seg, pos, tgt, mask


def check_memory_state(owner: str, memory_state, expected) -> None:
  """Raises ValueError unless memory_state has the tree, shapes and dtypes of expected.

  Args:
    owner: name for the message.
    memory_state: the state passed to the model.
    expected: ``jax.eval_shape(model.init_memory, B)`` (abstract is enough).
  """
  got_def = jax.tree.structure(memory_state)
  want_def = jax.tree.structure(expected)
  if got_def != want_def:
    raise ValueError(f"{owner}: memory_state does not come from this model's init_memory (tree "
                     f"{got_def} != expected {want_def}); build it with model.init_memory(B) or "
                     "pass the state the same model returned")
  paths = jax.tree_util.tree_flatten_with_path(expected)[0]
  for (path, want), got in zip(paths, jax.tree.leaves(memory_state), strict=True):
    if tuple(got.shape) != tuple(want.shape) or jnp.dtype(got.dtype) != jnp.dtype(want.dtype):
      raise ValueError(f"{owner}: memory_state leaf {jax.tree_util.keystr(path)} has "
                       f"{got.dtype}{list(got.shape)}, expected {want.dtype}{list(want.shape)} "
                       "(a state from another config or batch size?)")


def stream_context(stream, tokens_BxT, segment_ids_BxT, positions_BxT, targets_BxT,
                   loss_mask_BxT, has_segments: bool = True,
                   start_aligned: bool = False) -> SequenceContext:
  """Builds the SequenceContext: reset where the segment id differs from the previous token's
  (the previous token of the first one is the stream's last token, if any).

  With has_segments=False (the caller gave no segment_ids: one document continuing the
  stream) reset is None, which lets memory layers use kernels without reset support.
  start_aligned: the memory state is fresh (see SequenceContext).
  """
  b, t = tokens_BxT.shape
  index_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  if not has_segments:
    return SequenceContext(positions_BxT, segment_ids_BxT, None, index_BxT, targets_BxT,
                           loss_mask_BxT, start_aligned)
  if stream is None:
    prev_B = segment_ids_BxT[:, 0]  # a fresh stream starts from the initial state anyway
  else:
    prev_B = stream["last_segment"]
  prev_BxT = jnp.concatenate([prev_B[:, None], segment_ids_BxT[:, :-1]], axis=1)
  reset_BxT = segment_ids_BxT != prev_BxT
  return SequenceContext(positions_BxT, segment_ids_BxT, reset_BxT, index_BxT, targets_BxT,
                         loss_mask_BxT, start_aligned)


def init_stream(batch_size: int) -> dict[str, jax.Array]:
  """Stream bookkeeping: tokens seen so far and the segment id of the last one."""
  return {"position": jnp.zeros((batch_size,), jnp.int32),
          "last_segment": jnp.zeros((batch_size,), jnp.int32)}


def advance_stream(stream, segment_ids_BxT) -> dict[str, jax.Array]:
  return {"position": stream["position"] + segment_ids_BxT.shape[1],
          "last_segment": segment_ids_BxT[:, -1]}


class CausalLM(nnx.Module):
  """Embedding -> blocks -> final norm -> head; see the module docstring.

  Subclasses set ``stateful`` (True when blocks carry memory across calls) and implement
  ``make_block``.
  """
  stateful: bool = False

  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    self.config = config
    dt, pdt = config.jnp_dtype, config.jnp_param_dtype
    self.embed = Embed(config.vocab_size, config.d_model, dtype=dt, param_dtype=pdt, rngs=rngs)
    blocks = [self.make_block(i, rngs) for i in range(config.n_layers)]
    if config.scan_layers:
      # Built one by one and then stacked, so both layouts draw the same initial values.
      setattr(self, STACKED_BLOCKS, stack_modules(blocks))
    else:
      self.blocks = nnx.List(blocks)
    self.final_norm = RMSNorm(config.d_model, eps=config.norm_eps, param_dtype=pdt)
    if not config.tie_embeddings:
      self.lm_head = nnx.Param(dense_init(rngs.params(), (config.d_model, config.vocab_size),
                                          config.d_model, pdt))

  def make_block(self, index: int, rngs: nnx.Rngs) -> nnx.Module:
    raise NotImplementedError

  def init_memory(self, batch_size: int):
    """Initial memory state for batch_size sequences ({} for a stateless model)."""
    if not self.stateful:
      return {}
    state = {"stream": init_stream(batch_size)}
    for i, block in enumerate(self.block_list()):
      state[f"block_{i}"] = block.init_memory(batch_size)
    return state

  def block_list(self) -> list[nnx.Module]:
    """The blocks, one module each. Under ``scan_layers`` these are views that read slices of
    the stacked parameters (differentiable; writing to a view does not reach the model)."""
    if not self.config.scan_layers:
      return list(self.blocks)
    return unstack_module(getattr(self, STACKED_BLOCKS), self.config.n_layers)

  def head(self, x_BxTxD: jax.Array) -> jax.Array:
    """Final norm and read-out; float32 logits."""
    h = self.final_norm(x_BxTxD)
    if self.config.tie_embeddings:
      return self.embed.attend(h)
    return h.astype(jnp.float32) @ self.lm_head[...].astype(jnp.float32)

  def __call__(self, tokens, memory_state=None, *, segment_ids=None, positions=None,
               targets=None, loss_mask=None):
    """Runs the model; see the interface in the module docstring of nl_jax.models.registry.

    Returns:
      (logits_BxTxV float32, new_memory_state, aux flat dict of scalars).
    """
    memory_state, ctx = self.prepare(tokens, memory_state, segment_ids=segment_ids,
                                     positions=positions, targets=targets, loss_mask=loss_mask)
    return self.forward_embedded(self.embed(ctx.tokens), memory_state, ctx.context)

  def prepare(self, tokens, memory_state=None, *, segment_ids=None, positions=None,
              targets=None, loss_mask=None):
    """Validates the inputs and builds the context.

    Returns:
      (memory_state, PreparedInputs(tokens_BxT int32, context SequenceContext)).
    """
    owner = type(self).__name__
    if not hasattr(tokens, "shape"):
      tokens = np.asarray(tokens)
    if tokens.ndim != 2:
      raise ValueError(f"{owner}: tokens must have rank 2 [batch, seq_len], got shape "
                       f"{tuple(tokens.shape)}; add a batch axis with x[None] for one sequence")
    b = tokens.shape[0]
    fresh = memory_state is None
    if fresh:
      memory_state = self.init_memory(b)
      sharding = _MEMORY_SHARDING.get()
      if sharding is not None and self.stateful:
        memory_state = jax.lax.with_sharding_constraint(memory_state, sharding)
    else:
      check_memory_state(owner, memory_state, jax.eval_shape(lambda: self.init_memory(b)))
    stream = memory_state.get("stream") if self.stateful else None
    tokens, seg, pos, tgt, mask = prepare_inputs(
        owner, self.config.vocab_size, tokens, segment_ids=segment_ids, positions=positions,
        targets=targets, loss_mask=loss_mask,
        start_position=None if stream is None else stream["position"])
    ctx = stream_context(stream, tokens, seg, pos, tgt, mask,
                         has_segments=segment_ids is not None, start_aligned=fresh)
    return memory_state, PreparedInputs(tokens, ctx)

  def forward_embedded(self, x_BxTxD: jax.Array, memory_state, ctx: SequenceContext):
    """Blocks -> head from embeddings (the differentiable entry used by causality tests).

    Args:
      x_BxTxD: token embeddings.
      memory_state: a validated state (from ``prepare``). When ``ctx.start_aligned`` (the
        call created it), only its ``stream`` entry is read: the blocks' states are built
        again, with the same values, where each block runs (``_fresh_block_state``).
      ctx: the SequenceContext from ``prepare``.

    Returns:
      (logits_BxTxV float32, new_memory_state, aux).
    """
    if self.config.scan_layers:
      return self._forward_scanned(x_BxTxD, memory_state, ctx)
    new_state = {}
    aux = {}
    x = constrain_activations(x_BxTxD)
    fresh = self.stateful and ctx.start_aligned
    for i, block in enumerate(self.blocks):
      block_state = memory_state.get(f"block_{i}", {}) if self.stateful and not fresh else {}

      def fn(blk, x, s, c, i=i):
        if fresh:  # built where it is used; see _fresh_block_state
          s = self._fresh_block_state(blk, i, x.shape[0])
        return blk(x, s, c)

      if self.config.remat:
        fn = nnx.remat(fn, policy=self.config.checkpoint_policy)
      x, block_state, block_aux = fn(block, x, block_state, ctx)
      x = constrain_activations(x)
      if self.stateful:
        new_state[f"block_{i}"] = block_state
      for k, v in block_aux.items():
        aux[f"block_{i}/{k}"] = v
    if self.stateful:
      new_state["stream"] = advance_stream(memory_state["stream"], ctx.segment_ids)
    return self.head(x), new_state, aux

  def _fresh_block_state(self, block: nnx.Module, index: int, batch: int):
    """Block `index`'s initial state, for a call whose memory_state was None
    (``ctx.start_aligned``): the values of ``init_memory``, built from the block's own
    parameters where the block runs. Built once up front (``prepare``), every block's initial
    fast weights, broadcast over the batch, would be held for the whole step, and under
    ``scan_layers`` stacked into one [L, B, ...] copy more (with its gradient: 450 MiB of Hope
    ``small``'s scanned step at T=2048, B=4; experiments/BENCHMARKS.md)."""
    state = block.init_memory(batch)
    sharding = _MEMORY_SHARDING.get()
    if sharding is not None:
      state = jax.lax.with_sharding_constraint(state, sharding[f"block_{index}"])
    return state

  def _forward_scanned(self, x_BxTxD: jax.Array, memory_state, ctx: SequenceContext):
    """forward_embedded with the blocks under one ``lax.scan`` (``config.scan_layers``)."""
    n = self.config.n_layers
    graphdef, params = nnx.split(getattr(self, STACKED_BLOCKS))
    fresh = self.stateful and ctx.start_aligned
    states_in = None
    if self.stateful and not fresh:
      states_in = stack_trees([memory_state[f"block_{i}"] for i in range(n)])

    def body(x, xs):
      block_params, block_state = xs
      block = nnx.merge(graphdef, block_params)
      if fresh:  # every block's state has block 0's structure and sharding
        block_state = self._fresh_block_state(block, 0, x.shape[0])
      x, block_state, block_aux = block(x, block_state if self.stateful else {}, ctx)
      return constrain_activations(x), (block_state if self.stateful else None, block_aux)

    if self.config.remat:
      # The scan saves each block's input; the block's insides are recomputed (nnx.remat's
      # policy in the unrolled layout).
      body = jax.checkpoint(body, prevent_cse=False, policy=self.config.checkpoint_policy)
    x, (states, auxs) = jax.lax.scan(body, constrain_activations(x_BxTxD), (params, states_in))
    new_state = {}
    if self.stateful:
      for i in range(n):
        new_state[f"block_{i}"] = jax.tree.map(lambda a, i=i: a[i], states)
      new_state["stream"] = advance_stream(memory_state["stream"], ctx.segment_ids)
    aux = {f"block_{i}/{k}": v[i] for i in range(n) for k, v in auxs.items()}
    return self.head(x), new_state, aux


def stack_trees(trees: list[Any]) -> Any:
  """Stacks same-structured pytrees leaf by leaf on a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
  """One module of the first one's structure whose variables are the modules' stacked on a
  leading axis (the ``scan_layers`` layout)."""
  graphdef, state = nnx.split(modules[0])
  shapes = jax.tree.map(lambda a: (a.shape, a.dtype), state)
  for i, m in enumerate(modules[1:], 1):
    other_graphdef, other = nnx.split(m)
    if other_graphdef != graphdef or jax.tree.map(lambda a: (a.shape, a.dtype), other) != shapes:
      raise ValueError(f"scan_layers: block {i} differs in structure from block 0; the stacked "
                       "layout needs identical blocks (set model.scan_layers=False)")
  return nnx.merge(graphdef, stack_trees([nnx.state(m) for m in modules]))


def unstack_module(stacked: nnx.Module, n: int) -> list[nnx.Module]:
  """The ``n`` modules of a `stack_modules` result (views of slices of its variables)."""
  graphdef, state = nnx.split(stacked)
  return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(n)]
