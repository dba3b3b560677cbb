"""`lit-hc prepare`: documents in, nanoGPT-style token shards out (train.bin, val.bin, meta.json).

    lit-hc prepare --source stdlib --out data/stdlib-byte
    lit-hc prepare --source /corpora/fineweb-edu/ --out data/fwe --tokenizer /models/olmo-1b  # parquet / jsonl

Sources: 'stdlib', a folder of .txt/.py/.md files (one document per file), .jsonl / .jsonl.gz files or folders of
them (one document per line, its `text_field`; .jsonl.zst needs zstandard), .parquet files or folders of them (needs
pyarrow), a Hugging Face dataset saved with `save_to_disk` (needs `datasets`), and a Hugging Face dataset name
(`owner/name`, or `owner/name/folder` for a subset) whose files are in the local hub cache (e.g. fetched with
`huggingface-cli download --repo-type dataset owner/name` on a machine with network access). Tokenizers: 'byte', 'gpt2' (tiktoken), or a Hugging Face
tokenizer from a local folder or tokenizer.json (`tokenizers`, installed with the `hf` extra); its end-of-text token
separates documents. Nothing is downloaded.

Documents go to validation by a hash of their id (file path, or path:line / path:row), so the split does not
depend on the order of reading, the number of workers or resumption. Work is done in chunks of documents; each
chunk's tokens are written to a part file (atomically) in a hidden folder of `out`, and an interrupted prepare
reuses the parts it finished. The shards are assembled at the end, and meta.json is written last: a folder without
it is an unfinished prepare, which TextDataModule refuses.
"""
from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lit_hc.data.tokenizers import Tokenizer, get_tokenizer
from lit_hc.io import write_atomic, write_atomic_with

TEXT_SUFFIXES = (".txt", ".py", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")


def stdlib_root() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["stdlib"])


def list_text_files(root: Path) -> list[Path]:
    """Text files below root, sorted by path (site-packages excluded, so the stdlib corpus is the stdlib)."""
    return sorted(
        p for p in root.rglob("*")
        if p.suffix in TEXT_SUFFIXES and p.is_file() and "site-packages" not in p.relative_to(root).parts
    )


def is_val(doc_id: str, val_fraction: float) -> bool:
    """Deterministic train/val split by a document's id: the same document lands in the same split everywhere."""
    return zlib.crc32(doc_id.encode()) % 10_000 < val_fraction * 10_000


def _files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffixes))


def source_kind(root: Path) -> str:
    """'text', 'jsonl', 'parquet' or 'hf-dataset', from what the path holds."""
    if root.is_dir() and ((root / "dataset_info.json").is_file() or (root / "dataset_dict.json").is_file()):
        return "hf-dataset"
    for kind, suffixes in (("jsonl", JSONL_SUFFIXES), ("parquet", (".parquet",))):
        if _files(root, suffixes):
            return kind
    return "text"


def iter_documents(root: Path, text_field: str = "text") -> Iterator[tuple[str, str]]:
    """(document id, text) in a fixed order."""
    kind = source_kind(root)
    base = root if root.is_dir() else root.parent
    if kind == "text":
        for f in list_text_files(root):
            yield f.relative_to(root).as_posix(), f.read_bytes().decode("utf-8", errors="replace")
    elif kind == "jsonl":
        for f in _files(root, JSONL_SUFFIXES):
            with _open_text(f) as lines:
                for n, line in enumerate(lines):
                    if line.strip():
                        yield f"{f.relative_to(base).as_posix()}:{n}", _field(json.loads(line), text_field, f, n)
    elif kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{root} holds parquet files, which need pyarrow: install the `data` extra "
                             "(uv sync --extra data) or pip install pyarrow") from None
        for f in _files(root, (".parquet",)):
            row = 0
            for batch in pq.ParquetFile(f).iter_batches(columns=[text_field]):
                for text in batch.column(0).to_pylist():
                    yield f"{f.relative_to(base).as_posix()}:{row}", text or ""
                    row += 1
    else:
        try:
            import datasets
        except ImportError:
            raise ValueError(f"{root} is a Hugging Face dataset folder, which needs `datasets`: install the "
                             "`data` extra (uv sync --extra data) or pip install datasets") from None
        dataset = datasets.load_from_disk(str(root))
        splits = dataset.items() if isinstance(dataset, datasets.DatasetDict) else [("", dataset)]
        for split, part in splits:
            for row, record in enumerate(part):
                yield f"{split}:{row}", _field(record, text_field, root, row)


def _open_text(path: Path):
    """A .jsonl, .jsonl.gz or .jsonl.zst file as text lines."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise ValueError(f"{path} is zstandard-compressed, which needs zstandard: install the `data` extra "
                             "(uv sync --extra data) or pip install zstandard") from None
        return zstandard.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _field(record: dict, text_field: str, where, n: int) -> str:
    if text_field not in record:
        raise ValueError(f"{where}: record {n} has no field {text_field!r} (it has {sorted(record)[:8]}): "
                         "pass --text_field")
    return record[text_field] or ""


def hub_cache() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), read at call
    time so that a changed environment applies."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def cached_hub_dataset(name: str) -> Path | None:
    """The local snapshot of Hugging Face dataset `owner/name[/path inside it]` in the hub cache (what
    `huggingface-cli download --repo-type dataset owner/name` or `snapshot_download` leave there), or None.
    Never downloads: `local_files_only`. The snapshot's parquet or jsonl files are then read like any folder."""
    parts = name.split("/")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # huggingface_hub comes with timm; without it there is no cache to look in
        return None
    try:
        snapshot = Path(snapshot_download("/".join(parts[:2]), repo_type="dataset", cache_dir=hub_cache(),
                                          local_files_only=True))
    except (LocalEntryNotFoundError, ValueError):  # not cached; or not a valid repository id
        return None
    inside = snapshot.joinpath(*parts[2:])
    return inside if inside.exists() else None


def resolve_source(source: str) -> Path:
    """A source argument as a local path: 'stdlib', an existing file or folder, or a Hugging Face dataset name
    (`owner/name`, optionally `/a/folder/inside`) found in the local hub cache."""
    root = stdlib_root() if source == "stdlib" else Path(source).expanduser()
    if root.exists():
        return root
    hub_name = source.count("/") >= 1 and not source.startswith((".", "/", "~"))
    if hub_name and (cached := cached_hub_dataset(source)) is not None:
        return cached
    hint = ("it looks like a Hugging Face dataset name, and it is not in the local hub cache "
            f"({hub_cache()}); nothing is downloaded here: on a machine with network access run "
            f"`huggingface-cli download --repo-type dataset {'/'.join(source.split('/')[:2])}` (copy its cache "
            "folder here or set HF_HUB_CACHE), or datasets.load_dataset(...).save_to_disk(DIR) and pass DIR"
            if hub_name else "pass an existing file or folder")
    raise FileNotFoundError(f"text source {source!r} does not exist: {hint}")


# --- workers: one tokenizer per process, built once ---
_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer: str) -> None:
    global _TOKENIZER
    _TOKENIZER = get_tokenizer(tokenizer)


def _encode_chunk(args: tuple[int, list[tuple[str, str]], float]) -> tuple[int, np.ndarray, np.ndarray, int]:
    """Tokens of one chunk of documents, train and val apart, each document followed by the separator."""
    index, docs, val_fraction = args
    tok = _TOKENIZER
    sep = np.asarray(tok.separator, dtype=tok.dtype)
    splits: dict[bool, list[np.ndarray]] = {False: [], True: []}
    for doc_id, text in docs:
        splits[is_val(doc_id, val_fraction)] += [tok.encode(text).astype(tok.dtype, copy=False), sep]
    join = lambda parts: np.concatenate(parts) if parts else np.zeros(0, tok.dtype)  # noqa: E731
    return index, join(splits[False]), join(splits[True]), len(docs)


def prepare_shards(source: str, out: str, tokenizer: str = "byte", val_fraction: float = 0.05,
                   text_field: str = "text", workers: int = 1, chunk_docs: int = 256,
                   progress: bool = False) -> dict:
    """Tokenize `source` into out/train.bin, out/val.bin and out/meta.json (see the module docstring)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
    root = resolve_source(source)
    tok = get_tokenizer(tokenizer)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # from here until the end, the folder is an unfinished prepare
    settings = {"source": str(root), "tokenizer": tok.name, "tokenizer_hash": tok.fingerprint,
                "val_fraction": val_fraction, "text_field": text_field, "chunk_docs": chunk_docs}
    parts = out_dir / f".parts-{hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]}"
    parts.mkdir(exist_ok=True)
    done = {int(p.name.split("-")[1].split(".")[0]) for p in parts.glob("val-*.bin")}  # val is written last
    docs = iter_documents(root, text_field)
    chunks = ((i, list(c), val_fraction) for i, c in enumerate(iter(lambda: list(itertools.islice(docs, chunk_docs)), []))
              if i not in done)
    started, n_docs, n_tokens = time.time(), 0, 0
    bar = _progress(progress)
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer,)) if workers > 1 else None
    try:
        _init_worker(tokenizer)
        results = pool.imap(_encode_chunk, chunks) if pool else map(_encode_chunk, chunks)
        for index, train, val, count in results:
            write_atomic_with(parts / f"train-{index:07d}.bin", train.tofile)
            write_atomic_with(parts / f"val-{index:07d}.bin", val.tofile)
            n_docs, n_tokens = n_docs + count, n_tokens + len(train) + len(val)
            bar(n_docs, n_tokens, time.time() - started)
    finally:
        if pool:
            pool.terminate()
    index_count = len(list(parts.glob("val-*.bin")))
    if index_count == 0:
        raise ValueError(f"text source {root} has no documents: point --source at text, .jsonl(.gz/.zst) or .parquet")
    meta = {"tokenizer": tok.name, "tokenizer_hash": tok.fingerprint, "vocab_size": tok.vocab_size,
            "dtype": np.dtype(tok.dtype).name, "separator": list(tok.separator), "source": str(root),
            "val_fraction": val_fraction, "text_field": text_field}
    for split in ("train", "val"):
        files = sorted(parts.glob(f"{split}-*.bin"))
        write_atomic_with(out_dir / f"{split}.bin", lambda f: _concatenate(files, f))
        meta[f"{split}_tokens"] = sum(p.stat().st_size for p in files) // np.dtype(tok.dtype).itemsize
    if not done:  # documents are counted only when no part was reused
        meta["documents"] = n_docs
    write_atomic(out_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(parts)
    seconds = time.time() - started
    meta["seconds"], meta["reused_chunks"] = seconds, len(done)
    meta["docs_per_s"], meta["tokens_per_s"] = n_docs / max(seconds, 1e-9), n_tokens / max(seconds, 1e-9)
    return meta


def _concatenate(files: list[Path], f) -> None:
    for p in files:
        with open(p, "rb") as part:
            shutil.copyfileobj(part, f, length=1 << 24)


def _progress(enabled: bool):
    """A callback (docs, tokens, seconds) that shows documents/s and tokens/s; tqdm on a terminal."""
    if not enabled:
        return lambda *a: None
    from tqdm import tqdm

    bar = tqdm(unit=" docs", file=sys.stderr, dynamic_ncols=True, mininterval=1.0)

    def update(docs: int, tokens: int, seconds: float) -> None:
        bar.update(docs - bar.n)
        bar.set_postfix_str(f"{tokens / max(seconds, 1e-9):,.0f} tokens/s", refresh=False)

    return update
