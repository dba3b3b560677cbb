"""Tokenizers that need no download: bytes by default; GPT-2 BPE through tiktoken when its file is present; any
Hugging Face tokenizer from a local folder or tokenizer.json (the `tokenizers` package)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


class Tokenizer:
    name: str
    vocab_size: int
    dtype: type = np.uint16
    separator: list[int]  # appended after every document
    fingerprint: str = ""  # a hash of the tokenizer's definition, recorded in meta.json

    def encode(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError


def ids_dtype(vocab_size: int) -> type:
    """uint16 shards while every id fits (GPT-2's, OLMo's and Llama's vocabularies), else uint32."""
    return np.uint16 if vocab_size <= 65536 else np.uint32


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: vocab 256, lossless, no files. The NUL byte separates documents (it never occurs in text)."""

    name, vocab_size, dtype, separator, fingerprint = "byte", 256, np.uint8, [0], "utf-8"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE (tiktoken). Nothing is downloaded at run time: the encoding file must already be in
    tiktoken's cache (TIKTOKEN_CACHE_DIR), e.g. copied from a machine that has network access."""

    name, vocab_size, dtype, fingerprint = "gpt2", 50257, np.uint16, "tiktoken-gpt2"

    def __init__(self):
        try:
            import tiktoken
        except ImportError as e:
            raise ValueError("tokenizer='gpt2' needs tiktoken: `uv sync --extra bpe` (or pip install tiktoken)") from e
        try:
            self.enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # no network: the file is not cached
            raise ValueError(
                "tokenizer='gpt2' needs the GPT-2 encoding file in TIKTOKEN_CACHE_DIR (nothing is downloaded at "
                f"run time); copy tiktoken's cache from a machine with network access ({type(e).__name__})"
            ) from e
        self.separator = [self.enc.eot_token]

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.enc.encode_ordinary(text), dtype=np.uint16)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])


# End-of-text tokens of common Hugging Face tokenizers, tried in order when tokenizer_config.json names none.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer read from a local tokenizer.json (or the folder holding it, e.g. a model folder
    written by save_pretrained or a snapshot in the Hugging Face cache); documents are separated by its
    end-of-text token (tokenizer_config.json's eos_token, else the first of EOS_CANDIDATES it has)."""

    def __init__(self, path: str | Path):
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError as e:
            raise ValueError(f"tokenizer {path!r} needs the `tokenizers` package (the `hf` extra)") from e
        path = Path(path).expanduser()
        if not path.exists() and _looks_like_hub_name(str(path)):
            path = _from_hub_cache(str(path))
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"tokenizer {str(path)!r} is not 'byte', 'gpt2' or a tokenizer.json / a folder with one "
                             "(nothing is downloaded: save the tokenizer with save_pretrained and pass its folder)")
        self.backend = Backend.from_file(str(file))
        self.name, self.fingerprint = str(path), hashlib.sha256(file.read_bytes()).hexdigest()[:16]
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
        self.dtype = ids_dtype(self.vocab_size)
        config = file.parent / "tokenizer_config.json"
        eos = json.loads(config.read_text()).get("eos_token") if config.is_file() else None
        eos = eos.get("content") if isinstance(eos, dict) else eos
        for candidate in ([eos] if eos else []) + list(EOS_CANDIDATES):
            if self.backend.token_to_id(candidate) is not None:
                self.separator = [self.backend.token_to_id(candidate)]
                break
        else:
            raise ValueError(f"tokenizer {file} has no end-of-text token ({', '.join(EOS_CANDIDATES)}) to separate "
                             "documents: set eos_token in its tokenizer_config.json")

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.backend.encode(text, add_special_tokens=False).ids, dtype=self.dtype)

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)


class ShardVocabulary(Tokenizer):
    """What training on prepared shards needs from their tokenizer, read from their meta.json (name, vocabulary,
    id type, separator), so the tokenizer itself need not be on the training machine."""

    def __init__(self, meta: dict):
        self.name, self.vocab_size, self.fingerprint = meta["tokenizer"], meta["vocab_size"], meta.get("tokenizer_hash", "")
        self.dtype, self.separator = np.dtype(meta["dtype"]).type, list(meta.get("separator", []))

    def encode(self, text: str) -> np.ndarray:
        raise ValueError(f"these shards were written by the tokenizer {self.name!r}: load it to encode text")

    decode = encode


def _looks_like_hub_name(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def _from_hub_cache(name: str) -> Path:
    """The folder of `name`'s tokenizer.json in the local Hugging Face cache; one line saying how to fetch it if
    it is not there (nothing is downloaded)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        cached = None
    else:
        cached = try_to_load_from_cache(name, "tokenizer.json")
    if not isinstance(cached, str):
        raise ValueError(f"tokenizer {name!r} is not in the local Hugging Face cache and nothing is downloaded here: "
                         f"fetch it once with `huggingface-cli download {name} tokenizer.json tokenizer_config.json`")
    return Path(cached).parent


def padded_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    """The model's vocabulary: rounded up to a multiple of 64 (GPT-2's 50257 -> 50304, as OLMo) for faster
    matmuls; the extra rows are never a target."""
    return -(-vocab_size // multiple) * multiple


TOKENIZERS = {"byte": ByteTokenizer, "gpt2": GPT2Tokenizer}


def get_tokenizer(name: str) -> Tokenizer:
    """'byte', 'gpt2', or the path of a Hugging Face tokenizer (a tokenizer.json or a folder with one)."""
    if name in TOKENIZERS:
        return TOKENIZERS[name]()
    return HFTokenizer(name)
