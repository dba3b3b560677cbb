"""Data modules: tokenizer, the stdlib corpus split, shards, the generated images, and bad input."""
import numpy as np
import pytest
import torch

from helpers import CONFIGS, lm_args, vit_args, write_toy_corpus, write_toy_images
from lit_hc.cli import main
from lit_hc.data import shapes
from lit_hc.data.images import ImageFolderDataModule, UnreadableImage
from lit_hc.data.prepare import prepare_shards
from lit_hc.data.text import FixedWindows, RandomWindows, TextDataModule, split_files, stdlib_root
from lit_hc.data.tokenizers import ByteTokenizer


def test_byte_tokenizer_round_trips():
    tok = ByteTokenizer()
    text = "def f(x):\n    return x ** 2  # π ≈ 3.14159, naïve café 🐍\n"
    ids = tok.encode(text)
    assert ids.dtype == np.uint8 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text


def test_stdlib_split_is_deterministic_and_disjoint():
    root = stdlib_root()
    train, val = split_files(root, 0.05)
    train2, val2 = split_files(root, 0.05)
    assert train == train2 and val == val2
    assert not set(train) & set(val)
    assert len(train) > 500 and 0.02 < len(val) / (len(train) + len(val)) < 0.08
    assert all(p.suffix in (".py", ".txt", ".md") and "site-packages" not in p.parts for p in train + val)
    total = sum(p.stat().st_size for p in train + val)
    assert total > 10e6  # the embedded default is a real corpus (~30 MB on CPython 3.11)


def test_windows_are_deterministic_shifted_and_in_range():
    tokens = np.arange(1000, dtype=np.uint16)
    ds = RandomWindows(tokens, block_size=16, num_samples=50, seed=3)
    x, y = ds[7]
    assert torch.equal(x, ds[7][0]) and torch.equal(y[:-1], x[1:]) and torch.equal(y, x + 1)
    assert not torch.equal(ds[7][0], ds[8][0])
    assert not torch.equal(ds[7][0], RandomWindows(tokens, 16, 50, seed=4)[7][0])
    val = FixedWindows(tokens, block_size=16, max_windows=10)
    assert len(val) == 10 and all(int(val[i][0][0]) % 16 == 0 for i in range(10))


def test_prepared_shards_match_the_folder(tmp_path):
    corpus = write_toy_corpus(tmp_path / "corpus")
    meta = prepare_shards(str(corpus), str(tmp_path / "shards"), "byte", val_fraction=0.3)
    from_folder = TextDataModule(str(corpus), val_fraction=0.3, block_size=8)
    from_shards = TextDataModule(str(tmp_path / "shards"), block_size=8)
    from_folder.setup(), from_shards.setup()
    assert np.array_equal(np.asarray(from_shards.train_tokens), from_folder.train_tokens)
    assert np.array_equal(np.asarray(from_shards.val_tokens), from_folder.val_tokens)
    assert meta["train_tokens"] == len(from_folder.train_tokens) and from_shards.vocab_size == 256


def test_generated_images_have_documented_classes_and_counts(tmp_path):
    dm = ImageFolderDataModule(image_size=16, synthetic_train_per_class=3, synthetic_val_per_class=2,
                               num_workers=0)
    assert dm.num_classes == 10 and dm.classes == sorted(shapes.CLASSES)
    dm.root = tmp_path / "shapes"
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) == 30 and len(dm.val_set) == 20
    assert dm.train_set.classes == sorted(shapes.CLASSES)
    image, label = dm.val_set[0]
    assert image.shape == (3, 16, 16) and label == 0


def test_generated_images_are_deterministic(tmp_path):
    a = shapes.write_dataset(tmp_path / "a", 2, 1, 16, seed=5)
    b = shapes.write_dataset(tmp_path / "b", 2, 1, 16, seed=5)
    c = shapes.write_dataset(tmp_path / "c", 2, 1, 16, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 30
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_generated_pairs_are_every_unordered_pair_once(tmp_path):
    pairs = shapes.classes(2)
    assert len(pairs) == 10 == len({frozenset(p.split("+")) for p in pairs})  # C(4, 2) + 4 same-shape pairs
    dm = ImageFolderDataModule(image_size=16, synthetic_objects=2, synthetic_train_per_class=2,
                               synthetic_val_per_class=1, num_workers=0)
    assert dm.num_classes == 10 and dm.root.name.startswith("pairs-")
    dm.root = tmp_path / "pairs"
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) == 20 and dm.train_set.classes == sorted(pairs)
    again = shapes.write_dataset(tmp_path / "again", 2, 1, 16, objects=2)
    assert all((again / f).read_bytes() == (dm.root / f).read_bytes()
               for f in (p.relative_to(again) for p in again.rglob("*.png")))


def test_pair_images_hold_both_shapes_apart(monkeypatch):
    drawn = []
    real = shapes._shape
    monkeypatch.setattr(shapes, "_shape", lambda d, name, cx, cy, r, *a: (drawn.append((name, cx, cy, r)),
                                                                         real(d, name, cx, cy, r, *a)))
    for k in range(50):
        drawn.clear()
        shapes.draw_pair("ring+ring" if k % 2 else "circle+cross", 32, np.random.default_rng(k))
        (a, xa, ya, ra), (b, xb, yb, rb) = drawn
        assert {a, b} <= {"ring", "circle", "cross"} and (a == b) == (k % 2 == 1)
        assert np.hypot(xa - xb, ya - yb) > 1.2 * (ra + rb)  # polygons reach 1.2 r: the shapes never touch
        assert all(1.2 * r <= c <= 128 - 1.2 * r for _, x, y, r in drawn for c in (x, y))  # inside the image


def test_unsupported_object_count_is_one_line():
    with pytest.raises(ValueError, match="synthetic_objects=3 is not supported: use 1"):
        ImageFolderDataModule(synthetic_objects=3)


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_data_modules_read_nothing_until_asked(tmp_path):
    """Construction is cheap (the CLI builds data modules for --help and --print_config): a missing folder is
    found when the model's vocab_size / num_classes is read from it, not before."""
    text = TextDataModule(str(tmp_path / "nope"))
    images = ImageFolderDataModule(root=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        text.vocab_size
    with pytest.raises(FileNotFoundError, match="has no class folders under train/"):
        images.num_classes
    assert TextDataModule("stdlib").vocab_size == 256  # the byte tokenizer, padded to a multiple of 64


def test_missing_text_folder_is_one_line(tmp_path, capsys):
    err = _one_line_error(capsys, lm_args(tmp_path, tmp_path / "nope"))
    assert str(tmp_path / "nope") in err and "data.source" in err


def test_empty_corpus_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"not text")
    err = _one_line_error(capsys, lm_args(tmp_path, tmp_path / "empty"))
    assert str(tmp_path / "empty") in err and "no .txt/.py/.md files" in err


def test_missing_image_root_is_one_line(tmp_path, capsys):
    argv = ["fit", "--config", str(CONFIGS / "vit/base.yaml"), "--data.init_args.root", str(tmp_path / "imagenet")]
    err = _one_line_error(capsys, argv)
    assert str(tmp_path / "imagenet") in err and "train/" in err


def test_required_paper_data_path_is_one_line(capsys):
    err = _one_line_error(capsys, ["fit", "--config", str(CONFIGS / "lm/olmo-1b.yaml"),
                                   "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto"])
    assert "data.init_args.source is required" in err


def test_invalid_model_value_is_one_line(tmp_path, capsys):
    corpus = write_toy_corpus(tmp_path / "c")
    err = _one_line_error(capsys, lm_args(tmp_path, corpus, 2, "--model.init_args.arch.n_head", "3"))
    assert "n_embd" in err and "n_head" in err


def test_shard_with_wrong_dtype_size_is_an_error(tmp_path):
    from lit_hc.data.text import load_shard

    shard = tmp_path / "train.bin"
    np.arange(7, dtype=np.uint8).tofile(shard)  # 7 bytes cannot be uint16 tokens
    with pytest.raises(ValueError, match="not a multiple of 2"):
        load_shard(shard, np.uint16)
    assert len(load_shard(shard, np.uint8)) == 7


def test_unknown_config_key_is_one_line(tmp_path, capsys):
    corpus = write_toy_corpus(tmp_path / "c")
    err = _one_line_error(capsys, lm_args(tmp_path, corpus, 2, "--model.init_args.arch.n_layers", "3"))
    assert "n_layers" in err


def test_shards_that_do_not_match_their_meta_are_one_line(tmp_path, capsys):
    import json

    corpus = write_toy_corpus(tmp_path / "c")
    prepare_shards(str(corpus), str(tmp_path / "s"), val_fraction=0.3)
    meta_path, train = tmp_path / "s" / "meta.json", tmp_path / "s" / "train.bin"
    meta, tokens = json.loads(meta_path.read_text()), train.read_bytes()
    broken = {
        "says the shards are uint16": lambda: meta_path.write_text(json.dumps({**meta, "dtype": "uint16"})),
        f"holds {len(tokens) - 1:,} tokens but meta.json says {len(tokens):,}": lambda: train.write_bytes(tokens[:-1]),
    }
    for expected, damage in broken.items():
        damage()
        err = _one_line_error(capsys, lm_args(tmp_path, tmp_path / "s", 2))
        assert expected in err and "lit-hc prepare" in err, err
        meta_path.write_text(json.dumps(meta))
        train.write_bytes(tokens)
    # Ids outside the vocabulary (a shard of another tokenizer) are caught before the embedding fails on them.
    from lit_hc.data.text import load_shard

    np.full(10, 300, dtype=np.uint16).tofile(tmp_path / "gpt2.bin")
    with pytest.raises(ValueError, match="token id 300, outside"):
        load_shard(tmp_path / "gpt2.bin", np.uint16, vocab_size=256)


def _bad_image_files(root):
    """A text file saved as .png, a non-image file, and a PNG cut in half (header fine, data truncated)."""
    (root / "train" / "dark" / "error-page.png").write_text("<html>403 Forbidden</html>")
    (root / "train" / "dark" / "notes.txt").write_text("labels checked by hand")
    (root / "train" / "dark" / ".DS_Store").write_bytes(b"\0\0")
    png = (root / "train" / "bright" / "0.png").read_bytes()
    (root / "train" / "bright" / "truncated.png").write_bytes(png[: len(png) // 2])


def test_corrupt_and_non_image_files_are_skipped_with_a_count(tmp_path):
    root = write_toy_images(tmp_path / "img", train=8, val=2)
    _bad_image_files(root)
    dm = ImageFolderDataModule(root=str(root), image_size=16, batch_size=4, num_workers=0)
    with pytest.warns(UserWarning, match="skipped 2 unreadable or non-image file"):
        dm.setup("fit")
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in dm.train_set.skipped) == ["error-page.png", "notes.txt"]
    assert len(dm.train_set) == 17  # 16 good images + the truncated one, whose header is fine
    truncated = [i for i, (p, _) in enumerate(dm.train_set.samples) if p.endswith("truncated.png")][0]
    with pytest.warns(UserWarning, match="skipping .*truncated.png is not a readable image"):
        image, label = dm.train_set[truncated]
    assert image.shape == (3, 16, 16)  # the next image stands in
    assert label == dm.train_set.samples[truncated + 1][1]


def test_corrupt_image_is_an_error_naming_it_when_strict(tmp_path, capsys):
    root = write_toy_images(tmp_path / "img", train=8, val=2)
    _bad_image_files(root)
    err = _one_line_error(capsys, vit_args(tmp_path, 2, "--data.init_args.root", str(root),
                                           "--data.init_args.strict", "true"))
    assert "error-page.png is not a readable image" in err and "2 such file(s)" in err and "strict false" in err
    (root / "train" / "dark" / "error-page.png").unlink()
    (root / "train" / "dark" / "notes.txt").unlink()
    dm = ImageFolderDataModule(root=str(root), image_size=16, num_workers=0, strict=True)
    dm.setup("fit")
    truncated = [i for i, (p, _) in enumerate(dm.train_set.samples) if p.endswith("truncated.png")][0]
    with pytest.raises(UnreadableImage, match="truncated.png is not a readable image"):
        dm.train_set[truncated]
