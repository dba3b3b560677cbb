"""`lit-hc prepare`: jsonl(.gz) and text folders in, shards out; Hugging Face tokenizers from local files, uint16 or
uint32 ids, several worker processes, resumption after an interruption, and one-line errors."""
import gzip
import json

import numpy as np
import pytest

from lit_hc.data import prepare
from lit_hc.data.prepare import is_val, prepare_shards
from lit_hc.data.text import TextDataModule
from lit_hc.data.tokenizers import padded_vocab_size

DOCS = ["the quick brown fox", "jumps over the lazy dog", "pack my box", "with five dozen liquor jugs",
        "sphinx of black quartz", "judge my vow"]


def _jsonl_corpus(folder, docs=DOCS):
    folder.mkdir(parents=True)
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[:4])))
    with gzip.open(folder / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": docs[4]}) + "\n\n" + json.dumps({"text": docs[5]}) + "\n")  # a blank line
    ids = [f"a.jsonl:{n}" for n in range(4)] + ["b.jsonl.gz:0", "b.jsonl.gz:2"]
    return folder, ids


def _word_tokenizer(folder, extra_words: int = 0):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for d in DOCS for w in d.split()})
    vocab = {w: i for i, w in enumerate(["<unk>", "<|endoftext|>", *words, *(f"w{k}" for k in range(extra_words))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder, vocab


def test_jsonl_documents_are_split_by_their_id_and_separated(tmp_path):
    corpus, ids = _jsonl_corpus(tmp_path / "corpus")
    meta = prepare_shards(str(corpus), str(tmp_path / "out"), "byte", val_fraction=0.4)
    for split, want_val in (("train", False), ("val", True)):
        expected = b"".join(d.encode() + b"\0" for d, i in zip(DOCS, ids) if is_val(i, 0.4) == want_val)
        assert (tmp_path / "out" / f"{split}.bin").read_bytes() == expected
        assert meta[f"{split}_tokens"] == len(expected) > 0
    assert meta["documents"] == 6 and meta["dtype"] == "uint8" and meta["tokenizer"] == "byte"
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["tokenizer_hash"] == "utf-8"
    assert not list((tmp_path / "out").glob(".parts-*"))  # the work folder is gone


def test_hugging_face_tokenizer_from_a_folder_with_worker_processes(tmp_path):
    corpus, ids = _jsonl_corpus(tmp_path / "corpus")
    folder, vocab = _word_tokenizer(tmp_path / "tok")
    meta = prepare_shards(str(corpus), str(tmp_path / "out"), str(folder), val_fraction=0.4, workers=2, chunk_docs=2)
    eos = vocab["<|endoftext|>"]
    expected = [t for d, i in zip(DOCS, ids) if not is_val(i, 0.4) for t in [*(vocab[w] for w in d.split()), eos]]
    assert np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16).tolist() == expected
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == len(vocab) and meta["separator"] == [eos]
    assert meta["tokenizer"] == str(folder) and len(meta["tokenizer_hash"]) == 16
    data = TextDataModule(str(tmp_path / "out"), block_size=2)  # trains without the tokenizer at hand
    assert data.vocab_size == padded_vocab_size(len(vocab))
    data.setup()
    assert np.asarray(data.train_tokens).tolist() == expected


def test_a_vocabulary_beyond_uint16_writes_uint32(tmp_path):
    corpus, _ = _jsonl_corpus(tmp_path / "corpus")
    folder, vocab = _word_tokenizer(tmp_path / "tok", extra_words=70_000)
    meta = prepare_shards(str(corpus), str(tmp_path / "out"), str(folder), val_fraction=0.4)
    assert meta["dtype"] == "uint32" and len(vocab) > 65_536
    data = TextDataModule(str(tmp_path / "out"), block_size=2)
    data.setup()
    assert data.train_tokens.dtype == np.uint32


def test_an_interrupted_prepare_resumes_with_the_same_shards(tmp_path, monkeypatch):
    corpus, _ = _jsonl_corpus(tmp_path / "corpus")
    straight = prepare_shards(str(corpus), str(tmp_path / "straight"), "byte", 0.4, chunk_docs=2)
    encode = prepare._encode_chunk

    def fails_at_chunk_2(args):
        if args[0] == 2:
            raise KeyboardInterrupt  # as if the process was stopped there
        return encode(args)

    monkeypatch.setattr(prepare, "_encode_chunk", fails_at_chunk_2)
    with pytest.raises(KeyboardInterrupt):
        prepare_shards(str(corpus), str(tmp_path / "out"), "byte", 0.4, chunk_docs=2)
    assert not (tmp_path / "out" / "meta.json").exists() and not (tmp_path / "out" / "train.bin").exists()
    monkeypatch.setattr(prepare, "_encode_chunk", encode)
    resumed = prepare_shards(str(corpus), str(tmp_path / "out"), "byte", 0.4, chunk_docs=2)
    assert resumed["reused_chunks"] == 2
    for split in ("train", "val"):
        assert (tmp_path / "out" / f"{split}.bin").read_bytes() == (tmp_path / "straight" / f"{split}.bin").read_bytes()
    assert resumed["train_tokens"] == straight["train_tokens"]


def test_shards_without_meta_are_an_unfinished_prepare(tmp_path):
    (tmp_path / "train.bin").write_bytes(b"abc")
    with pytest.raises(ValueError, match="train.bin but no meta.json: an interrupted `lit-hc prepare`"):
        TextDataModule(str(tmp_path)).vocab_size


def test_bad_sources_and_tokenizers_are_one_line(tmp_path, capsys):
    from lit_hc.cli import main

    cases = {
        "HuggingFaceFW/fineweb-edu": ("byte", "does not exist: it looks like a Hugging Face dataset name"),
        str(tmp_path / "corpus"): ("no-such-org/no-such-tokenizer", "is not in the local Hugging Face cache"),
    }
    _jsonl_corpus(tmp_path / "corpus")
    for source, (tokenizer, expected) in cases.items():
        with pytest.raises(SystemExit):
            main(["prepare", "--source", source, "--out", str(tmp_path / "out"), "--tokenizer", tokenizer])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    (tmp_path / "nofield").mkdir()
    (tmp_path / "nofield" / "x.jsonl").write_text(json.dumps({"content": "hi"}) + "\n")
    with pytest.raises(ValueError, match="record 0 has no field 'text'.*pass --text_field"):
        prepare_shards(str(tmp_path / "nofield"), str(tmp_path / "o2"))
    assert prepare_shards(str(tmp_path / "nofield"), str(tmp_path / "o3"), text_field="content",
                          val_fraction=0.5)["documents"] == 1


def _expected_bytes(texts_and_ids, val_fraction, want_val):
    return b"".join(t.encode() + b"\0" for t, i in texts_and_ids if is_val(i, val_fraction) == want_val)


def test_parquet_folder_row_ids_and_text_field(tmp_path):
    """Parquet files (pyarrow, the `data` extra): one document per row of the chosen column, id `file:row`."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"content": DOCS[:4], "n": list(range(4))}), corpus / "a.parquet", row_group_size=3)
    pq.write_table(pa.table({"content": DOCS[4:], "n": [4, 5]}), corpus / "sub" / "b.parquet")
    meta = prepare_shards(str(corpus), str(tmp_path / "out"), "byte", val_fraction=0.4, text_field="content")
    ids = [f"a.parquet:{r}" for r in range(4)] + ["sub/b.parquet:0", "sub/b.parquet:1"]
    for split, want_val in (("train", False), ("val", True)):
        assert (tmp_path / "out" / f"{split}.bin").read_bytes() == _expected_bytes(zip(DOCS, ids), 0.4, want_val)
    assert meta["documents"] == 6


def test_hugging_face_dataset_saved_to_disk(tmp_path):
    """A `save_to_disk` folder (`datasets`, the `data` extra): every split, ids `split:row`; a missing text field
    is one line naming the field and the ones there are."""
    datasets = pytest.importorskip("datasets")

    folder = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:4]}),
                          "test": datasets.Dataset.from_dict({"text": DOCS[4:]})}).save_to_disk(str(folder))
    meta = prepare_shards(str(folder), str(tmp_path / "out"), "byte", val_fraction=0.4)
    ids = [f"train:{r}" for r in range(4)] + ["test:0", "test:1"]
    for split, want_val in (("train", False), ("val", True)):
        assert (tmp_path / "out" / f"{split}.bin").read_bytes() == _expected_bytes(zip(DOCS, ids), 0.4, want_val)
    assert meta["documents"] == 6
    with pytest.raises(ValueError, match="has no field 'body'.*'text'.*--text_field"):
        prepare_shards(str(folder), str(tmp_path / "out2"), "byte", text_field="body")


def test_hugging_face_dataset_name_from_the_local_hub_cache(tmp_path, monkeypatch):
    """`--source owner/name[/folder]` reads the dataset's snapshot in the hub cache (the layout `huggingface-cli
    download` leaves: refs/main -> snapshots/<commit>/...), never the network; a name not there is one line."""
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo = cache / "datasets--acme--tiny-corpus"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _, ids = _jsonl_corpus(repo / "snapshots" / commit / "sample" / "1k")
    (repo / "snapshots" / commit / "README.md").write_text("a dataset card, not a document\n")
    for source in ("acme/tiny-corpus", "acme/tiny-corpus/sample/1k"):
        out = tmp_path / source.replace("/", "_")
        meta = prepare_shards(source, str(out), "byte", val_fraction=0.4)
        base = "sample/1k/" if source == "acme/tiny-corpus" else ""  # ids are relative to the folder read
        for split, want_val in (("train", False), ("val", True)):
            expected = _expected_bytes(zip(DOCS, [base + i for i in ids]), 0.4, want_val)
            assert (out / f"{split}.bin").read_bytes() == expected
        assert meta["documents"] == 6
    for missing in ("acme/other-corpus", "acme/tiny-corpus/no/such/folder"):
        with pytest.raises(FileNotFoundError, match=f"not in the local hub cache \\({cache}\\).*huggingface-cli "
                                                    "download --repo-type dataset acme/"):
            prepare.resolve_source(missing)


def test_zstandard_jsonl(tmp_path):
    zstandard = pytest.importorskip("zstandard")

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with zstandard.open(corpus / "a.jsonl.zst", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    prepare_shards(str(corpus), str(tmp_path / "out"), "byte", val_fraction=0.4)
    ids = [f"a.jsonl.zst:{n}" for n in range(6)]
    assert (tmp_path / "out" / "train.bin").read_bytes() == _expected_bytes(zip(DOCS, ids), 0.4, False)
