"""Data layer: real datasets as tensors (first stage of data -> statistics -> probes -> engine).

Image datasets: ``load_images(name, split, data_dir)`` (see data/README.md for sources and
local layouts). Text corpora: ``load_corpus(name_or_path, data_dir)`` -> raw train/test text,
``tokenize_corpus(...)`` -> cached int32 token arrays (char or GPT-2 BPE, optional top-V
vocabulary with ``<unk>``). Shared pieces (ImageData, errors, data/cache folders) live in ``common``.
"""

from .common import DataNotFoundError, ImageData, MalformedDataError, cache_dir, resolve_data_dir
from .images import KNOWN_IMAGE_DATASETS, load_images
from .text import CORPORA, Corpus, TokenizedCorpus, load_corpus, split_text, tokenize_corpus
from .tokenizers import UNK, CharTokenizer, TopVVocab, get_tokenizer, restrict_vocab

__all__ = [
    "CORPORA",
    "CharTokenizer",
    "Corpus",
    "DataNotFoundError",
    "ImageData",
    "KNOWN_IMAGE_DATASETS",
    "MalformedDataError",
    "TokenizedCorpus",
    "TopVVocab",
    "UNK",
    "cache_dir",
    "get_tokenizer",
    "load_corpus",
    "load_images",
    "resolve_data_dir",
    "restrict_vocab",
    "split_text",
    "tokenize_corpus",
]
