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
"""Trains a SentencePiece model on the embedded Shakespeare corpus (train split only).

  python -m nl_jax.data.train_spm --vocab_size 4096 --output /tmp/spm/shakespeare_4k

writes ``/tmp/spm/shakespeare_4k.model`` and ``.vocab``; use it with
``tokenizer="spm:/tmp/spm/shakespeare_4k.model"`` in the data config.
"""

import argparse
import sys

from nl_jax.data import shakespeare, tokenizers


def main(argv: list[str] | None = None) -> str:
  """Parses ``argv`` (default: ``sys.argv[1:]``), trains, and returns the model path."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--vocab_size", type=int, default=4096)
  parser.add_argument("--output", required=True, help="model prefix; writes <output>.model")
  parser.add_argument("--model_type", default="bpe", choices=("bpe", "unigram"))
  parser.add_argument("--split", default="train", choices=("train", "all"),
                      help="'train' keeps the validation documents unseen")
  parser.add_argument("--num_threads", type=int, default=2)
  args = parser.parse_args(argv)
  path = tokenizers.train_sentencepiece(
      shakespeare.load_corpus(args.split),
      args.vocab_size,
      args.output,
      model_type=args.model_type,
      num_threads=args.num_threads,
  )
  print(path)
  return path


if __name__ == "__main__":
  main(sys.argv[1:])
