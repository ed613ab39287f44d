"""Tokenizers for the language-model experiments, and a top-V vocabulary restriction.

Belrose et al. (ICML 2024, "Neural networks learn statistics of increasing complexity", Sec. 5)
compare a language model's loss on real text with its loss on unigram and bigram sequences;
n-gram statistics are the moments of one-hot token vectors, so the vocabulary the tokens live
in fixes the space those moments live in. Two tokenizers:

- ``char``: one id per distinct character of a corpus, ids in sorted code-point order
  (deterministic: the same text gives the same vocabulary on every machine).
- ``gpt2``: the original GPT-2 byte-level BPE (50,257 tokens), loaded offline from
  ``<data_dir>/tokenizers/gpt2/{encoder.json,vocab.bpe}`` with ``tokenizers.ByteLevelBPETokenizer``
  or online from the hub (``tokenizers.Tokenizer.from_pretrained("gpt2")``).
  "Once upon a time" -> [7454, 2402, 257, 640].

``TopVVocab`` keeps the V-1 most frequent tokens (by training counts) and maps all others to
one ``<unk>`` id (= V-1), so a small model / an n-gram table over V tokens stays tractable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from dsb_widgets.data.common import DataNotFoundError, resolve_data_dir

UNK = "<unk>"
# A split point of the GPT-2 pre-tokenisation regex: a space between two non-space characters
# always starts a new pre-token (" ?\p{L}+" etc.) and ends the previous one, so encoding the
# chunks separately gives exactly the ids of encoding the whole text (tested on real corpora).
_SAFE_SPLIT = re.compile(r"(?<=\S)(?= \S)")
_CHUNK_CHARS = 16_384


@runtime_checkable
class Tokenizer(Protocol):
    """What the data layer needs from a tokenizer."""

    name: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...  # (n_tokens,) int32

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...

    def token_str(self, token_id: int) -> str: ...


@dataclass(frozen=True)
class CharTokenizer:
    """Character-level tokenizer; ``chars[i]`` is the character with id ``i`` (sorted)."""

    chars: str
    name: str = "char"
    _codes: np.ndarray = field(init=False, repr=False, compare=False)  # (V,) uint32, sorted

    def __post_init__(self) -> None:
        if not self.chars:
            raise ValueError("CharTokenizer needs at least one character; the corpus is empty")
        codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        if np.any(np.diff(codes.astype(np.int64)) <= 0):
            raise ValueError("CharTokenizer.chars must be sorted and distinct; use from_text()")
        object.__setattr__(self, "_codes", codes)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (n_chars,)
        ids = np.searchsorted(self._codes, codes)
        ids_clipped = np.minimum(ids, len(self._codes) - 1)
        bad = self._codes[ids_clipped] != codes
        if np.any(bad):
            first = chr(int(codes[np.argmax(bad)]))
            raise ValueError(
                f"character {first!r} is not in this char vocabulary; "
                "build the tokenizer from text that contains it (CharTokenizer.from_text)"
            )
        return ids.astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def token_str(self, token_id: int) -> str:
        return self.chars[int(token_id)]


class HFTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` (GPT-2 BPE); encodes long texts in parallel chunks."""

    def __init__(self, tokenizer: object, name: str) -> None:
        self._tok = tokenizer
        self.name = name

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())  # type: ignore[attr-defined]

    def encode(self, text: str) -> np.ndarray:
        """Ids of ``text``, identical to encoding it in one call, computed with encode_batch."""
        chunks = split_for_batch(text)
        if not chunks:
            return np.zeros(0, dtype=np.int32)
        encs = self._tok.encode_batch(chunks)  # type: ignore[attr-defined]
        return np.concatenate([np.asarray(e.ids, dtype=np.int32) for e in encs])

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids_list = [int(i) for i in ids]
        return str(self._tok.decode(ids_list, skip_special_tokens=False))  # type: ignore[attr-defined]

    def token_str(self, token_id: int) -> str:
        return self.decode([token_id])

    def token_strings(self) -> list[str]:
        """Readable string of every id (byte-level pieces may decode to U+FFFD alone)."""
        ids = [[i] for i in range(self.vocab_size)]
        decoded = self._tok.decode_batch(ids, skip_special_tokens=False)  # type: ignore[attr-defined]
        return [str(s) for s in decoded]


def split_for_batch(text: str, chunk_chars: int = _CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into ~chunk_chars pieces at GPT-2 pre-token boundaries (a space before a word)."""
    out: list[str] = []
    start = 0
    while start < len(text):
        m = _SAFE_SPLIT.search(text, start + chunk_chars)
        end = m.start() if m else len(text)
        out.append(text[start:end])
        start = end
    return out


def _gpt2(data_dir: str | os.PathLike[str] | None) -> HFTokenizer:
    root = resolve_data_dir(data_dir)
    if root is not None:
        enc, merges = root / "tokenizers" / "gpt2" / "encoder.json", root / "tokenizers" / "gpt2" / "vocab.bpe"
        if enc.is_file() and merges.is_file():
            from tokenizers import ByteLevelBPETokenizer

            tok = ByteLevelBPETokenizer(str(enc), str(merges))
            tok.add_special_tokens(["<|endoftext|>"])  # id 50256, as in GPT-2
            return HFTokenizer(tok, "gpt2")
    try:
        from tokenizers import Tokenizer as _HubTokenizer

        return HFTokenizer(_HubTokenizer.from_pretrained("gpt2"), "gpt2")
    except Exception as exc:
        where = f" ({root}/tokenizers/gpt2/ lacks encoder.json + vocab.bpe)" if root else ""
        raise DataNotFoundError(
            f"GPT-2 tokenizer not found{where} and the hub is unreachable ({type(exc).__name__}): "
            "connect to the internet, or pass --data-dir / set DSB_DATA_DIR to a folder with "
            "tokenizers/gpt2/encoder.json and tokenizers/gpt2/vocab.bpe"
        ) from exc


def get_tokenizer(
    kind: str, data_dir: str | os.PathLike[str] | None = None, corpus_text: str | None = None
) -> CharTokenizer | HFTokenizer:
    """A tokenizer by name: ``"char"`` (needs ``corpus_text``) or ``"gpt2"``."""
    if kind == "char":
        if corpus_text is None:
            raise ValueError("get_tokenizer('char') needs corpus_text to build its vocabulary")
        return CharTokenizer.from_text(corpus_text)
    if kind == "gpt2":
        return _gpt2(data_dir)
    raise ValueError(f"unknown tokenizer {kind!r}; use 'char' or 'gpt2'")


@dataclass(frozen=True, eq=False)
class TopVVocab:
    """Keep the ``vocab_size - 1`` most frequent base tokens; every other token -> ``<unk>``.

    ``kept[j]`` is the base id of restricted id ``j`` (most frequent first, ties by base id);
    ``unk_id = len(kept)`` is the last id, so ``vocab_size = len(kept) + 1``.
    If the training ids hold fewer distinct tokens, all are kept (vocab_size shrinks to fit).
    """

    kept: np.ndarray  # (vocab_size - 1,) int64 base ids
    base_vocab_size: int

    @property
    def vocab_size(self) -> int:
        return len(self.kept) + 1

    @property
    def unk_id(self) -> int:
        return len(self.kept)

    @classmethod
    def fit(cls, train_ids: np.ndarray, vocab_size: int, base_vocab_size: int | None = None) -> "TopVVocab":
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (V-1 tokens + <unk>), got {vocab_size}")
        ids = np.asarray(train_ids, dtype=np.int64)
        if ids.size == 0:
            raise ValueError("cannot choose a top-V vocabulary from zero training tokens")
        base = int(base_vocab_size if base_vocab_size is not None else ids.max() + 1)
        counts = np.bincount(ids, minlength=base)
        order = np.lexsort((np.arange(base), -counts))  # by count desc, then id asc
        n_keep = min(vocab_size - 1, int(np.count_nonzero(counts)))
        return cls(kept=order[:n_keep].astype(np.int64), base_vocab_size=base)

    def _lookup(self) -> np.ndarray:
        table = np.full(self.base_vocab_size, self.unk_id, dtype=np.int32)  # base id -> new id
        table[self.kept] = np.arange(len(self.kept), dtype=np.int32)
        return table

    def map(self, ids: np.ndarray) -> np.ndarray:
        """Base ids -> restricted ids (int32); tokens outside the top V-1 -> unk_id."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.base_vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.base_vocab_size})")
        return self._lookup()[ids]

    def unmap(self, ids: np.ndarray) -> np.ndarray:
        """Restricted ids -> base ids; ``<unk>`` becomes -1 (it has no single base id)."""
        ids = np.asarray(ids, dtype=np.int64)
        return np.where(ids == self.unk_id, -1, np.append(self.kept, -1)[ids])

    def decode(self, ids: Sequence[int] | np.ndarray, base: Tokenizer) -> str:
        """Text of restricted ids: runs of kept tokens decoded by ``base``, ``<unk>`` spelled out."""
        base_ids = self.unmap(np.asarray(ids, dtype=np.int64))
        parts: list[str] = []
        run: list[int] = []
        for i in base_ids.tolist():
            if i < 0:
                if run:
                    parts.append(base.decode(run))
                    run = []
                parts.append(UNK)
            else:
                run.append(i)
        if run:
            parts.append(base.decode(run))
        return "".join(parts)


def restrict_vocab(
    ids: np.ndarray, vocab_size: int, base_vocab_size: int | None = None
) -> tuple[np.ndarray, TopVVocab]:
    """Fit a ``TopVVocab`` on ``ids`` and return ``(restricted ids, vocab)``."""
    vocab = TopVVocab.fit(ids, vocab_size, base_vocab_size)
    return vocab.map(ids), vocab
