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
"""Data for nl_jax: embedded corpus, tokenizers, grain LM pipelines, paper-scale sources.

Quick start (8 fake CPU devices or one host)::

  from nl_jax import data
  it = data.make_train_iterator(data.DataConfig(seq_len=256, batch_size=16))
  batch = next(it)  # inputs/targets/segment_ids/positions [16, 256] int32, loss_mask f32

Importing this package pulls in grain and numpy only: no TensorFlow, seqio or orbax
(`seqio_adapter` and `checkpointing` import those inside their functions).
"""

from nl_jax.data import checkpointing, sources
from nl_jax.data.pipeline import (
    BATCH_KEYS,
    DataConfig,
    DataConfigError,
    MultiShardIterator,
    batch_spec,
    build_dataset,
    check_sources,
    config_from,
    default_config_dict,
    fineweb_edu_config,
    make_eval_iterator,
    make_process_iterator,
    make_train_iterator,
    pack_and_batch,
    per_process_batch_size,
    validate_config,
    vocab_size,
)
from nl_jax.data.shakespeare import list_works, load_corpus
from nl_jax.data.tokenizers import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    ByteTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    get_tokenizer,
    train_sentencepiece,
)

__all__ = [
    "checkpointing",
    "sources",
    "BATCH_KEYS",
    "DataConfig",
    "DataConfigError",
    "MultiShardIterator",
    "batch_spec",
    "build_dataset",
    "check_sources",
    "config_from",
    "default_config_dict",
    "make_eval_iterator",
    "make_process_iterator",
    "make_train_iterator",
    "pack_and_batch",
    "per_process_batch_size",
    "validate_config",
    "vocab_size",
    "list_works",
    "load_corpus",
    "fineweb_edu_config",
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "ByteTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "get_tokenizer",
    "train_sentencepiece",
]
