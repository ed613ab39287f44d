"""Text corpora, tokenizers, top-V vocabulary and the tokenised-corpus cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsb_widgets.data import text as text_mod
from dsb_widgets.data.common import DataNotFoundError, MalformedDataError
from dsb_widgets.data.text import Corpus, load_corpus, split_text, tokenize_corpus
from dsb_widgets.data.tokenizers import CharTokenizer, TopVVocab, get_tokenizer, restrict_vocab, split_for_batch

DATA = os.environ.get("DSB_DATA_DIR")
needs_data = pytest.mark.skipif(
    not DATA or not Path(DATA, "tinystories").is_dir(), reason="DSB_DATA_DIR with the shared text data is not set"
)
needs_gpt2 = pytest.mark.skipif(
    not DATA or not Path(DATA, "tokenizers", "gpt2", "encoder.json").is_file(),
    reason="DSB_DATA_DIR with tokenizers/gpt2/{encoder.json,vocab.bpe} is not set",
)

DOCS = "\n\n".join(f"Document {i}.\nIt has two lines, number {i}." for i in range(40)) + "\n"


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSB_CACHE_DIR", str(tmp_path / "cache"))


def test_path_corpus_splits_at_a_document_boundary(tmp_path: Path) -> None:
    f = tmp_path / "docs.txt"
    f.write_text(DOCS, encoding="utf-8")
    c = load_corpus(f, test_fraction=0.25)
    assert c.train_text + c.test_text == DOCS
    assert c.train_text.endswith("\n\n") and c.test_text.startswith("Document ")
    assert abs(len(c.test_text) / len(DOCS) - 0.25) < 0.03
    assert load_corpus(f, test_fraction=0.25) == c  # deterministic


def test_folder_corpus_reads_txt_files_in_sorted_order(tmp_path: Path) -> None:
    for name in ["b.txt", "a.txt", "sub/c.txt"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f"file {name} line one\nline two\n", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not text corpus", encoding="utf-8")
    c = load_corpus(tmp_path, test_fraction=0.3)
    full = c.train_text + c.test_text
    assert full.index("a.txt") < full.index("b.txt") < full.index("sub/c.txt")
    assert "not text corpus" not in full
    assert c.test_text.startswith("file sub/c.txt")


def test_without_blank_lines_the_split_falls_back_to_line_breaks() -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    train, test = split_text(text, 0.1)
    assert train + test == text and test.startswith("line 9") and len(test.splitlines()) == 10


@pytest.mark.parametrize(
    "content, error, match",
    [
        (b"", MalformedDataError, "holds no text"),
        (b"  \n\n \n", MalformedDataError, "holds no text"),
        (b"one line without a break", MalformedDataError, "no line break"),
        (b"\xff\xfe bad bytes\nmore\n", MalformedDataError, "not UTF-8"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path: Path, content: bytes, error: type, match: str) -> None:
    f = tmp_path / "x.txt"
    f.write_bytes(content)
    with pytest.raises(error, match=match):
        load_corpus(f)


def test_missing_inputs_name_the_fixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataNotFoundError, match="neither a corpus name"):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(DataNotFoundError, match="no .txt files"):
        load_corpus(tmp_path)
    with pytest.raises(ValueError, match="test_fraction"):
        load_corpus("tinystories", data_dir=tmp_path, test_fraction=1.0)

    def offline(name: str, test_fraction: float) -> Corpus:
        raise ConnectionError("no internet")

    monkeypatch.setattr(text_mod, "_hub_named", offline)
    with pytest.raises(DataNotFoundError, match="connect to the internet.*DSB_DATA_DIR"):
        load_corpus("wikitext-2", data_dir=tmp_path)
    with pytest.raises(MalformedDataError, match="empty test split"):
        Corpus("x", "some text", " \n", "test")


@needs_data
def test_shared_corpora_load_with_the_documented_splits() -> None:
    ts = load_corpus("tinystories", DATA)
    assert ts.train_text == ts.train_text.lower() and ts.test_text == ts.test_text.lower()
    assert "once upon a time" in ts.test_text and len(ts.train_text) > 4 * len(ts.test_text)
    wt = load_corpus("wikitext2", DATA)
    assert "VALID as train" in wt.source and "<unk>" in wt.train_text
    assert wt.train_text == Path(DATA, "wikitext-2", "valid.txt").read_text(encoding="utf-8")
    sh = load_corpus("tinyshakespeare", DATA)
    assert sh.train_text + sh.test_text == Path(DATA, "tinyshakespeare", "input.txt").read_text(encoding="utf-8")
    assert 0.08 < len(sh.test_text) / (len(sh.train_text) + len(sh.test_text)) < 0.12


@settings(max_examples=30, deadline=None)
@given(st.text(min_size=1, max_size=100))
def test_char_tokenizer_round_trips_exactly(text: str) -> None:
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(text)) and "".join(tok.token_str(i) for i in range(tok.vocab_size)) == tok.chars


def test_char_tokenizer_rejects_unknown_characters_and_bad_kinds() -> None:
    with pytest.raises(ValueError, match="not in this char vocabulary"):
        CharTokenizer.from_text("abc").encode("abd")
    with pytest.raises(ValueError, match="needs corpus_text"):
        get_tokenizer("char")
    with pytest.raises(ValueError, match="use 'char' or 'gpt2'"):
        get_tokenizer("bpe")


@needs_gpt2
def test_gpt2_ids_and_exact_round_trip_on_real_text() -> None:
    tok = get_tokenizer("gpt2", DATA)
    assert tok.vocab_size == 50257
    assert tok.encode("Once upon a time").tolist() == [7454, 2402, 257, 640]
    for rel in ("tinystories/tinystories_valid_head.txt", "wikitext-2/test.txt"):
        text = Path(DATA, rel).read_text(encoding="utf-8")[:120_000]
        ids = tok.encode(text)  # chunked encode_batch ...
        assert len(split_for_batch(text)) > 3
        assert ids.tolist() == tok._tok.encode(text).ids  # ... equals one-shot encoding
        assert tok.decode(ids) == text


def test_top_v_vocab_keeps_frequent_tokens_and_their_counts() -> None:
    rng = np.random.default_rng(0)
    ids = rng.zipf(1.5, 5000) % 300  # heavy-tailed base ids in [0, 300)
    mapped, vocab = restrict_vocab(ids, 50, base_vocab_size=300)
    counts = np.bincount(ids, minlength=300)
    assert vocab.vocab_size == 50 and vocab.unk_id == 49 and mapped.max() <= 49
    kept_counts = counts[vocab.kept]
    assert np.all(np.diff(kept_counts) <= 0), "most frequent first"
    assert kept_counts.min() >= np.delete(counts, vocab.kept).max(), "no dropped token beats a kept one"
    new_counts = np.bincount(mapped, minlength=50)
    np.testing.assert_array_equal(new_counts[:49], kept_counts)
    assert new_counts[49] == counts.sum() - kept_counts.sum()
    back = vocab.unmap(mapped)
    np.testing.assert_array_equal(back[mapped != 49], ids[mapped != 49])
    assert np.all(back[mapped == 49] == -1)
    small = TopVVocab.fit(np.array([3, 3, 5]), 10, base_vocab_size=8)
    assert small.vocab_size == 3 and small.kept.tolist() == [3, 5]
    with pytest.raises(ValueError, match="vocab_size must be >= 2"):
        TopVVocab.fit(ids, 1)
    with pytest.raises(ValueError, match="must lie in"):
        small.map(np.array([8]))


def test_top_v_decode_spells_unknown_tokens() -> None:
    tok = CharTokenizer.from_text("aaaabbbc d")
    ids = tok.encode("aaaabbbc d")
    mapped, vocab = restrict_vocab(ids, 3, tok.vocab_size)  # keep a, b
    assert vocab.decode(mapped, tok) == "aaaabbb<unk><unk><unk>"


def test_tokenize_corpus_char_caches_and_decodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "docs.txt"
    f.write_text(DOCS, encoding="utf-8")
    tc = tokenize_corpus(f, "char")
    c = load_corpus(f)
    assert tc.train.dtype == np.int32 and len(tc.train) == len(c.train_text) and len(tc.test) == len(c.test_text)
    assert tc.decode(tc.train) == c.train_text and tc.bytes_per_token == 1.0
    assert tc.vocab_size == len(set(DOCS)) == len(tc.token_strings)
    assert list((tmp_path / "cache" / "text").glob("*.npz"))

    def boom(self: CharTokenizer, text: str) -> np.ndarray:
        raise AssertionError("the second call must come from the cache")

    monkeypatch.setattr(CharTokenizer, "encode", boom)
    again = tokenize_corpus(f, "char")
    np.testing.assert_array_equal(again.train, tc.train)
    assert again.decode(again.test) == c.test_text and again.token_strings == tc.token_strings
    with pytest.raises(AssertionError, match="from the cache"):
        tokenize_corpus(f, "char", vocab_size=5)  # another key: not cached yet


def test_tokenize_corpus_top_v_and_errors(tmp_path: Path) -> None:
    corpus = Corpus("mini", DOCS, "Document 99.\nzzz\n", "test")
    tc = tokenize_corpus(corpus, "char", vocab_size=6, use_cache=False)
    assert tc.vocab_size == 6 and tc.token_strings[-1] == "<unk>" and tc.kept is not None
    assert tc.train.max() == 5 and "<unk>" in tc.decode(tc.test)
    assert tc.decode([0]) == " " and tc.token_strings[0] == " "  # most frequent character first
    with pytest.raises(ValueError, match="vocab_size must be >= 2"):
        tokenize_corpus(corpus, "char", vocab_size=1)


@needs_gpt2
def test_tokenize_corpus_gpt2_top_v(tmp_path: Path) -> None:
    text = Path(DATA, "tinystories", "tinystories_valid_head.txt").read_text(encoding="utf-8")[:60_000]
    corpus = Corpus("ts-mini", text[:50_000], text[50_000:], "test")
    full = tokenize_corpus(corpus, "gpt2", data_dir=DATA)
    assert full.vocab_size == 50257 and full.token_strings[7454] == "Once"
    assert full.decode(full.train) == corpus.train_text
    assert full.bytes_per_token == pytest.approx(len(corpus.train_text.encode()) / len(full.train))
    small = tokenize_corpus(corpus, "gpt2", vocab_size=200, data_dir=DATA)
    kept = np.isin(full.train, small.kept)
    np.testing.assert_array_equal(small.kept[small.train[kept]], full.train[kept])
    assert np.all(small.train[~kept] == 199)
    cached = tokenize_corpus(corpus, "gpt2", vocab_size=200, data_dir=DATA)
    assert cached.decode(cached.train[:50]) == small.decode(small.train[:50])


def test_max_train_chars_keeps_a_head_cut_at_a_document_boundary(tmp_path: Path) -> None:
    f = tmp_path / "docs.txt"
    f.write_text(DOCS, encoding="utf-8")
    full, head = load_corpus(f), load_corpus(f, max_train_chars=300)
    assert len(head.train_text) <= 300 and full.train_text.startswith(head.train_text)
    assert head.train_text.endswith("\n\n") and head.test_text == full.test_text
    assert "train head" in head.source
    assert len(tokenize_corpus(f, "char", max_train_chars=300).train) == len(head.train_text)


def test_hub_loaders_ask_for_the_documented_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The online path (no internet here): a fake ``datasets.load_dataset`` records the calls."""
    import datasets

    calls: list[tuple] = []

    def fake(path: str, name: str | None = None, **kw: object) -> dict:
        calls.append((path, name, kw))
        if path == "karpathy/tiny_shakespeare":
            raise RuntimeError("dataset scripts are no longer supported")
        if path == "text":
            return {"train": {"text": ["First Citizen:\nSpeak.\n\nAll:\nSpeak, speak.\n"]}}
        rows = ["a story.", "another one."] if "TinyStories" in path else [" = A = \n", " text \n"]
        return {s: {"text": rows} for s in ("train", "validation", "test")}

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ts = text_mod._hub_named("tinystories", 0.1)
    assert ts.train_text == "a story.\n\nanother one." and calls[-1][0] == "roneneldan/TinyStories"
    wt = text_mod._hub_named("wikitext103", 0.1)
    assert wt.train_text == " = A = \n text \n" and calls[-1][:2] == ("Salesforce/wikitext", "wikitext-103-v1")
    sh = text_mod._hub_named("tinyshakespeare", 0.3)
    assert sh.train_text + sh.test_text == "First Citizen:\nSpeak.\n\nAll:\nSpeak, speak.\n"
    assert calls[-1][0] == "text" and calls[-1][2]["sample_by"] == "document"
