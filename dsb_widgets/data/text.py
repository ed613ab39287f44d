"""Text corpora and their tokenised form, for the n-gram experiments of Belrose et al. (ICML 2024).

``load_corpus`` returns the raw text of a train and a test split; ``tokenize_corpus`` turns it
into int32 token arrays (optionally restricted to the top-V tokens) and caches them on disk.

Named corpora, online through Hugging Face ``datasets`` / offline from ``--data-dir``
(``$DSB_DATA_DIR``) with this layout:

=============== ====================================== ==============================================
name            online                                 offline (under the data dir)
=============== ====================================== ==============================================
tinystories     roneneldan/TinyStories train/validation tinystories/TinyStories-{train,valid}.txt (cased),
                                                       else tinystories/tinystories_train_head_lowercased.txt
                                                       + tinystories_valid_head.txt, BOTH LOWERCASED
wikitext2       Salesforce/wikitext wikitext-2-v1      wikitext-2/{train,test}.txt; without train.txt
                                                       valid.txt is the train split (documented below)
wikitext103     Salesforce/wikitext wikitext-103-v1    wikitext-103/{train,test}.txt (or valid as above)
tinyshakespeare karpathy/tiny_shakespeare (all splits  tinyshakespeare/input.txt
                joined, then split by this module)
=============== ====================================== ==============================================

Caveats (quote them with results):
- Offline TinyStories here is a head of the train split (~5,000 stories, 811k words) that was
  distributed LOWERCASED; we lowercase the (cased) validation head too, so train and test share
  one distribution. Online TinyStories is cased, complete (~470M GPT-2 tokens) and separated
  by blank lines like the offline files.
- WikiText uses the tokenised ``v1`` form (with ``<unk>``) online and offline, because the
  offline files are that form. Offline WikiText-2 has no train split here: the validation split
  (217,646 words) is the train split and the test split the test split.
- A path (one UTF-8 file or a folder of ``*.txt`` files, read in sorted order) and Tiny
  Shakespeare are split here: the test split is the contiguous tail holding about
  ``test_fraction`` of the characters, cut at a blank line (a document boundary), or at a line
  break when the text has no blank lines. Contiguous, like nanoGPT, so no document leaks.

Measured with GPT-2 BPE (2 shared CPU cores, CPU time; cold = tokenise, cached = load npz):
offline TinyStories 1,046,654 train + 198,399 test tokens, 5.7 s cold / 0.09 s cached;
offline WikiText-2 258,659 (valid) + 295,877 (test) tokens, 2.9 s cold / 0.03 s cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dsb_widgets.data.common import DataNotFoundError, MalformedDataError, cache_dir, resolve_data_dir
from dsb_widgets.data.tokenizers import UNK, CharTokenizer, TopVVocab, get_tokenizer

CORPORA = ("tinystories", "wikitext2", "wikitext103", "tinyshakespeare")
_CACHE_VERSION = 1
_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Corpus:
    """Raw text of one corpus: ``train_text`` and ``test_text``; ``source`` says where it came from."""

    name: str
    train_text: str
    test_text: str
    source: str

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            if not getattr(self, f"{split}_text").strip():
                raise MalformedDataError(
                    f"corpus {self.name!r} has an empty {split} split ({self.source}); "
                    "point it at non-empty UTF-8 text"
                )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedDataError(f"{path} is not UTF-8 text ({exc.reason}); re-encode it as UTF-8") from exc


def split_text(text: str, test_fraction: float) -> tuple[str, str]:
    """Split at the document boundary (blank line, else line break) nearest to 1 - test_fraction."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    target = len(text) * (1.0 - test_fraction)
    lo, hi = len(text) - len(text.lstrip()), len(text.rstrip())  # text outside [lo, hi) is blank
    for pattern in (r"\n[ \t]*\n+", r"\n+"):
        cuts = np.array([m.end() for m in re.finditer(pattern, text)], dtype=np.int64)
        cuts = cuts[(cuts > lo) & (cuts < hi)]  # both sides keep some text
        if cuts.size:
            cut = int(cuts[np.argmin(np.abs(cuts - target))])
            return text[:cut], text[cut:]
    raise MalformedDataError("text has no line break to split train from test; give it two or more lines")


def _path_corpus(path: Path, test_fraction: float) -> Corpus:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataNotFoundError(f"folder {path} holds no .txt files; "
                                    "give a UTF-8 text file or a folder of .txt files")
        text = "\n\n".join(_read(p).strip("\n") for p in files)
        source = f"{len(files)} .txt files under {path}"
    else:
        text, source = _read(path), str(path)
    if not text.strip():
        raise MalformedDataError(f"{path} holds no text; give it non-empty UTF-8 text")
    train, test = split_text(text, test_fraction)
    return Corpus(path.stem or path.name, train, test, f"{source} (tail {test_fraction:.0%} as test)")


def _first(root: Path, *names: str) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _local_named(name: str, root: Path, test_fraction: float) -> Corpus | None:
    """The named corpus from the offline layout in the module docstring, or None if absent."""
    if name == "tinystories":
        d = root / "tinystories"
        train, valid = _first(d, "TinyStories-train.txt"), _first(d, "TinyStories-valid.txt")
        if train and valid:
            return Corpus(name, _read(train), _read(valid), f"local {d} (cased)")
        train, valid = _first(d, "tinystories_train_head_lowercased.txt"), _first(d, "tinystories_valid_head.txt")
        if train and valid:
            src = f"local {d}: train head (lowercased) / validation head (lowercased here)"
            return Corpus(name, _read(train).lower(), _read(valid).lower(), src)
        return None
    if name in ("wikitext2", "wikitext103"):
        d = root / ("wikitext-2" if name == "wikitext2" else "wikitext-103")
        train = _first(d, "train.txt", "wiki.train.tokens")
        valid = _first(d, "valid.txt", "wiki.valid.tokens")
        test = _first(d, "test.txt", "wiki.test.tokens")
        if train and test:
            return Corpus(name, _read(train), _read(test), f"local {d} (v1 tokenised): train / test")
        if valid and test:
            return Corpus(name, _read(valid), _read(test), f"local {d} (v1 tokenised): VALID as train / test")
        return None
    if name == "tinyshakespeare":
        f = _first(root / "tinyshakespeare", "input.txt")
        if f is None:
            return None
        train_text, test_text = split_text(_read(f), test_fraction)
        return Corpus(name, train_text, test_text, f"local {f} (tail {test_fraction:.0%} as test)")
    raise ValueError(f"unknown corpus {name!r}")


def _hub_named(name: str, test_fraction: float) -> Corpus:
    """Download a named corpus through Hugging Face ``datasets`` (needs the internet)."""
    from datasets import load_dataset

    if name == "tinystories":
        ds = load_dataset("roneneldan/TinyStories")
        train, test = ("\n\n".join(ds[s]["text"]) for s in ("train", "validation"))
        return Corpus(name, train, test, "hub roneneldan/TinyStories train / validation")
    if name in ("wikitext2", "wikitext103"):
        config = "wikitext-2-v1" if name == "wikitext2" else "wikitext-103-v1"
        ds = load_dataset("Salesforce/wikitext", config)
        train, test = ("".join(ds[s]["text"]) for s in ("train", "test"))
        return Corpus(name, train, test, f"hub Salesforce/wikitext {config} train / test")
    try:  # a script dataset on the hub; newer ``datasets`` may refuse it
        ds = load_dataset("karpathy/tiny_shakespeare")
        text = "".join(t for s in ("train", "validation", "test") for t in ds[s]["text"])
    except Exception:  # noqa: BLE001 - the same file from its original home
        ds = load_dataset("text", data_files={"train": _SHAKESPEARE_URL}, sample_by="document")
        text = "".join(ds["train"]["text"])
    train, test = split_text(text, test_fraction)
    return Corpus(name, train, test, f"hub karpathy/tiny_shakespeare (tail {test_fraction:.0%} as test)")


def truncate_text(text: str, max_chars: int) -> str:
    """The longest prefix of at most ``max_chars`` characters ending at a blank line (else a line break)."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if len(text) <= max_chars:
        return text
    for sep in ("\n\n", "\n"):
        cut = text.rfind(sep, 0, max_chars - len(sep) + 1)
        if cut > 0:
            return text[: cut + len(sep)]
    return text[:max_chars]


def load_corpus(
    name_or_path: PathLike,
    data_dir: PathLike | None = None,
    test_fraction: float = 0.1,
    max_train_chars: int | None = None,
) -> Corpus:
    """Raw train/test text of a named corpus (``CORPORA``) or of a text file / folder of .txt files.

    Local data (``data_dir``, else ``$DSB_DATA_DIR``) wins over the hub. ``test_fraction`` only
    applies where this module splits the text (paths, Tiny Shakespeare). ``max_train_chars``
    keeps only the head of the train split (cut at a document boundary): the scale knob, e.g.
    full online TinyStories is ~1.9 GB of text.
    """
    return _train_head(_load_corpus(name_or_path, data_dir, test_fraction), max_train_chars)


def _train_head(corpus: Corpus, max_train_chars: int | None) -> Corpus:
    if max_train_chars is None or len(corpus.train_text) <= max_train_chars:
        return corpus
    head = truncate_text(corpus.train_text, max_train_chars)
    return Corpus(corpus.name, head, corpus.test_text, f"{corpus.source}; train head {len(head):,} chars")


def _load_corpus(name_or_path: PathLike, data_dir: PathLike | None, test_fraction: float) -> Corpus:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    key = str(name_or_path).lower().replace("-", "").replace("_", "")
    if key not in CORPORA:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise DataNotFoundError(
                f"{name_or_path!r} is neither a corpus name ({', '.join(CORPORA)}) nor an existing file or folder"
            )
        return _path_corpus(path, test_fraction)
    root = resolve_data_dir(data_dir)
    if root is not None:
        local = _local_named(key, root, test_fraction)
        if local is not None:
            return local
    try:
        return _hub_named(key, test_fraction)
    except Exception as exc:
        where = f"it is not under {root} and " if root is not None else ""
        raise DataNotFoundError(
            f"corpus {key!r}: {where}the Hugging Face download failed ({type(exc).__name__}: {exc}); "
            "connect to the internet, or pass --data-dir / set DSB_DATA_DIR to a folder with the "
            "layout in dsb_widgets.data.text (e.g. tinystories/tinystories_valid_head.txt)"
        ) from exc


@dataclass(frozen=True, eq=False)
class TokenizedCorpus:
    """Token ids of a corpus. ``train``/``test``: int32 (n,) in [0, vocab_size).

    With a top-V restriction the last id is ``<unk>``. ``bytes_per_token`` = UTF-8 bytes of the
    train text / train tokens, so bits/byte = (nats/token) / ln 2 / bytes_per_token.
    """

    name: str
    train: np.ndarray  # (n_train,) int32
    test: np.ndarray  # (n_test,) int32
    vocab_size: int
    token_strings: list[str]
    bytes_per_token: float
    tokenizer: str
    source: str
    kept: np.ndarray | None = None  # (vocab_size - 1,) base ids when restricted to the top V
    base_vocab_size: int = 0
    _make_base: Callable[[], object] | None = field(default=None, repr=False)
    _base: dict[str, object] = field(default_factory=dict, repr=False)

    def base_tokenizer(self) -> object:
        if "tok" not in self._base:
            if self._make_base is None:
                raise RuntimeError("this TokenizedCorpus has no tokenizer to decode with")
            self._base["tok"] = self._make_base()
        return self._base["tok"]

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Text of token ids (restricted ids when ``kept`` is set; ``<unk>`` spelled out)."""
        base = self.base_tokenizer()
        if self.kept is None:
            return base.decode(ids)  # type: ignore[attr-defined]
        return TopVVocab(self.kept, self.base_vocab_size).decode(ids, base)  # type: ignore[arg-type]

    def nats_to_bits_per_byte(self, nats_per_token: float) -> float:
        return nats_per_token / np.log(2.0) / self.bytes_per_token


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def tokenize_corpus(
    name_or_path: PathLike | Corpus,
    tokenizer: str = "gpt2",
    vocab_size: int | None = None,
    data_dir: PathLike | None = None,
    test_fraction: float = 0.1,
    use_cache: bool = True,
    max_train_chars: int | None = None,
) -> TokenizedCorpus:
    """Tokenise a corpus (``tokenizer`` "gpt2" or "char"), optionally keep only the top-V tokens.

    Cached under ``cache_dir()/text`` keyed by a SHA-256 of the text, the tokenizer and V.
    The char vocabulary is built from train + test text (so test has no unknown characters).
    """
    if isinstance(name_or_path, Corpus):
        corpus = _train_head(name_or_path, max_train_chars)
    else:
        corpus = load_corpus(name_or_path, data_dir, test_fraction, max_train_chars)
    if vocab_size is not None and vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (V-1 tokens + <unk>) or None, got {vocab_size}")
    key = _digest(str(_CACHE_VERSION), corpus.train_text, corpus.test_text, tokenizer, str(vocab_size))
    folder = cache_dir() / "text"
    npz, meta_file = folder / f"{corpus.name}-{tokenizer}-{vocab_size}-{key}.npz", folder / f"{key}.json"
    if use_cache and npz.is_file() and meta_file.is_file():
        return _from_cache(npz, meta_file, data_dir)

    chars = "".join(sorted(set(corpus.train_text + corpus.test_text))) if tokenizer == "char" else ""
    base = CharTokenizer(chars) if tokenizer == "char" else get_tokenizer(tokenizer, data_dir)
    train, test = base.encode(corpus.train_text), base.encode(corpus.test_text)
    if train.size < 2:
        raise MalformedDataError(f"corpus {corpus.name!r} has fewer than 2 train tokens; give it more text")
    kept: np.ndarray | None = None
    all_strings = base.token_strings() if hasattr(base, "token_strings") else list(chars)
    strings = all_strings
    if vocab_size is not None:
        vocab = TopVVocab.fit(train, vocab_size, base.vocab_size)
        train, test, kept = vocab.map(train), vocab.map(test), vocab.kept
        strings = [all_strings[int(k)] for k in kept] + [UNK]
    meta = {
        "name": corpus.name,
        "source": corpus.source,
        "tokenizer": tokenizer,
        "chars": chars,
        "vocab_size": len(strings),
        "base_vocab_size": base.vocab_size,
        "bytes_per_token": len(corpus.train_text.encode("utf-8")) / train.size,
        "token_strings": strings,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    arrays = {"train": train.astype(np.int32), "test": test.astype(np.int32)}
    if kept is not None:
        arrays["kept"] = kept
    if use_cache:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = meta_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_file)
        tmp_npz = folder / f"tmp{os.getpid()}-{key}.npz"
        np.savez(tmp_npz, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds oddly
        os.replace(tmp_npz, npz)
    return _build(meta, arrays, data_dir, base)


def _build(meta: dict, arrays: dict[str, np.ndarray], data_dir: PathLike | None,
           base: object | None) -> TokenizedCorpus:
    chars, kind = meta["chars"], meta["tokenizer"]

    def make_base() -> object:
        return CharTokenizer(chars) if kind == "char" else get_tokenizer(kind, data_dir)

    out = TokenizedCorpus(
        name=meta["name"],
        train=arrays["train"],
        test=arrays["test"],
        vocab_size=int(meta["vocab_size"]),
        token_strings=list(meta["token_strings"]),
        bytes_per_token=float(meta["bytes_per_token"]),
        tokenizer=kind,
        source=meta["source"],
        kept=arrays.get("kept"),
        base_vocab_size=int(meta["base_vocab_size"]),
        _make_base=make_base,
    )
    if base is not None:
        out._base["tok"] = base
    return out


def _from_cache(npz: Path, meta_file: Path, data_dir: PathLike | None) -> TokenizedCorpus:
    meta = json.loads(meta_file.read_text())
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    return _build(meta, arrays, data_dir, None)
