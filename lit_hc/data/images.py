"""Image classification data: torchvision ImageFolder over <root>/train and <root>/val (ImageNet layout),
timm transforms and Mixup/CutMix. With no root, a generated shapes dataset is written on first use."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from timm.data import Mixup, create_transform
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, pil_loader

from lit_hc.data import shapes, stateful_loader


def data_dir() -> Path:
    """Where generated data goes: $LIT_HC_DATA, else ./data (ignored by git)."""
    return Path(os.environ.get("LIT_HC_DATA", "data"))


def class_names(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []


class UnreadableImage(ValueError):
    """An image file that PIL cannot decode (corrupt, truncated, or not an image)."""


class CheckedImageFolder(ImageFolder):
    """torchvision's ImageFolder that deals with bad files instead of crashing a run hours in.

    At construction every file is looked at: files without an image extension and, with `check_images`, files
    whose header PIL cannot parse (an error page saved as .JPEG, an empty file) are left out and listed in
    `skipped`; with `strict` the first one is an error that names it. A file whose header is fine but whose data
    is not (a truncated download) is found when it is loaded: skipped with a warning naming it (the next image
    takes its place), or an error under `strict`.
    """

    def __init__(self, root: str, transform=None, strict: bool = False, check_images: bool = True):
        self.strict, self.check_images = strict, check_images
        self.skipped: list[tuple[str, str]] = []  # (path, why)
        super().__init__(root, transform=transform, loader=self._load, is_valid_file=self._keep)
        if self.skipped:
            path, why = self.skipped[0]
            if strict:
                raise UnreadableImage(f"{path} is not a readable image ({why}); {len(self.skipped)} such file(s) in "
                                      f"{root}: remove them, or set data.init_args.strict false to skip them")
            rank_zero_warn(f"skipped {len(self.skipped)} unreadable or non-image file(s) in {root}, e.g. {path} "
                           f"({why}); data.init_args.strict true makes this an error")

    def _keep(self, path: str) -> bool:
        if os.path.basename(path).startswith("."):  # .DS_Store, editor and sync files
            return False
        if not path.lower().endswith(IMG_EXTENSIONS):
            self.skipped.append((path, "not an image file extension"))
            return False
        if self.check_images:
            try:
                with Image.open(path):  # parses the header only
                    pass
            except Exception as e:  # PIL raises several types for bad files; all mean the same here
                self.skipped.append((path, f"{type(e).__name__}: {e}"))
                return False
        return True

    @staticmethod
    def _load(path: str):
        try:
            return pil_loader(path)
        except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt image data
            raise UnreadableImage(f"{path} is not a readable image ({type(e).__name__}: {e})") from None

    def __getitem__(self, index: int):
        try:
            return super().__getitem__(index)
        except UnreadableImage as e:
            if self.strict:
                raise UnreadableImage(f"{e}: remove it, or set data.init_args.strict false to skip such files") from None
            rank_zero_warn(f"skipping {e}")
            return self[(index + 1) % len(self)]


class ImageFolderDataModule(L.LightningDataModule):
    """ImageNet-layout folders; `num_classes` is read from the train folder and linked to the model."""

    def __init__(
        self,
        root: str | None = "synthetic",
        image_size: int = 32,
        batch_size: int = 128,
        num_workers: int = 2,
        auto_augment: str | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        color_jitter: float | None = None,
        re_prob: float = 0.0,
        crop_pct: float | None = None,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        label_smoothing: float = 0.0,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        synthetic_train_per_class: int = 500,
        synthetic_val_per_class: int = 100,
        synthetic_seed: int = 0,
        synthetic_objects: int = 1,
        strict: bool = False,
        check_images: bool = True,
        seed: int = 0,
    ):
        """
        Args:
            root: folder with train/<class>/* and val/<class>/* images; 'synthetic' = the generated shapes
                dataset (10 classes), written under $LIT_HC_DATA or ./data on first use; null = required but not
                given (paper-scale configs): the run stops and says so.
            image_size: side of the square model input (linked to the model's image_size).
            batch_size: images per batch per process.
            num_workers: data-loader worker processes.
            auto_augment: timm auto-augment policy, e.g. 'rand-m9-mstd0.5-inc1' (RandAugment); None = off.
            scale: RandomResizedCrop area range for training.
            hflip: horizontal flip probability.
            color_jitter: colour-jitter strength; None = off.
            re_prob: random-erasing probability.
            crop_pct: centre-crop fraction for evaluation (timm default when None).
            mixup: Mixup alpha; 0 = off (paper App. E: 0.2).
            cutmix: CutMix alpha; 0 = off.
            label_smoothing: label smoothing folded into Mixup's soft targets (used only with mixup/cutmix).
            mean: normalisation mean.
            std: normalisation std.
            synthetic_train_per_class: generated training images per class (root=None only).
            synthetic_val_per_class: generated validation images per class (root=None only).
            synthetic_seed: seed of the generated dataset (root=None only).
            synthetic_objects: objects per generated image: 1 = one shape or texture (10 classes); 2 = an
                unordered pair of shapes (10 classes, a compositional task; lit_hc.data.shapes).
            strict: a corrupt or non-image file in the folders is an error naming it; false = skip such files
                (counted in a warning).
            check_images: open every image's header once at setup to find bad files up front (about a minute
                per million files on a local disk); false = find them only when they are loaded.
            seed: seed of the training shuffle (the data order).
        """
        super().__init__()
        self.save_hyperparameters()
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        if root is None:
            raise ValueError("data.init_args.root is required by this config: pass --data.init_args.root with a folder "
                             "in ImageNet layout (<root>/train/<class>/*.JPEG, <root>/val/<class>/*.JPEG)")
        if root == "synthetic":
            shapes.classes(synthetic_objects)  # an unsupported count fails here, in one line
        self.root = (shapes.default_root(data_dir(), synthetic_train_per_class, synthetic_val_per_class, image_size,
                                         synthetic_seed, synthetic_objects)
                     if root == "synthetic" else Path(root).expanduser())
        self.train_set = self.val_set = None
        # Nothing is read here (the CLI builds data modules for --help and --print_config too): the class folders
        # are listed when num_classes is linked into the model (after instantiation) or at setup.

    @functools.cached_property
    def classes(self) -> list[str]:
        if self.hparams.root == "synthetic":
            return sorted(shapes.classes(self.hparams.synthetic_objects))  # ImageFolder orders classes by name
        classes = class_names(self.root / "train")
        if not classes:
            raise FileNotFoundError(f"image root {self.root} has no class folders under train/: expected the "
                                    "ImageNet layout <root>/train/<class>/*.jpg and <root>/val/<class>/*.jpg")
        if not (self.root / "val").is_dir():
            raise FileNotFoundError(f"image root {self.root} has no val/ folder: expected <root>/val/<class>/*")
        return classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def mixup_fn(self) -> Mixup | None:
        """timm's Mixup/CutMix with label smoothing folded into the soft targets; None when both are off."""
        h = self.hparams
        return (Mixup(mixup_alpha=h.mixup, cutmix_alpha=h.cutmix, label_smoothing=h.label_smoothing,
                      num_classes=self.num_classes) if h.mixup > 0 or h.cutmix > 0 else None)

    def prepare_data(self) -> None:
        if self.hparams.root == "synthetic":  # rank 0 only: write the generated dataset once
            h = self.hparams
            shapes.write_dataset(self.root, h.synthetic_train_per_class, h.synthetic_val_per_class,
                                 self.image_size, h.synthetic_seed, h.synthetic_objects)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.classes  # noqa: B018  (checks the folder layout first, with the message that says how to fix it)
        h = self.hparams
        common = dict(input_size=self.image_size, mean=h.mean, std=h.std)
        train_tf = create_transform(**common, is_training=True, scale=h.scale, hflip=h.hflip,
                                    color_jitter=h.color_jitter, auto_augment=h.auto_augment, re_prob=h.re_prob)
        eval_tf = create_transform(**common, is_training=False, crop_pct=h.crop_pct)
        self.train_set = self._folder("train", train_tf)
        self.val_set = self._folder("val", eval_tf)

    def _folder(self, split: str, transform) -> ImageFolder:
        folder, h = self.root / split, self.hparams
        try:
            dataset = CheckedImageFolder(str(folder), transform, strict=h.strict, check_images=h.check_images)
        except FileNotFoundError as e:  # torchvision: no class folders or no images with a known extension
            raise FileNotFoundError(f"{folder}: {e} (image extensions: {', '.join(IMG_EXTENSIONS)})") from None
        if dataset.classes != self.classes:
            raise ValueError(f"{folder} has classes {dataset.classes} but {self.root / 'train'} has {self.classes}: "
                             "train and val must have the same class folders")
        return dataset

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, targets = batch
        if self.mixup_fn is not None and self.trainer is not None and self.trainer.training:
            images, targets = self.mixup_fn(images, targets)  # soft targets (b, classes)
        return images, targets

    def train_dataloader(self) -> DataLoader:
        return stateful_loader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                               generator=torch.Generator().manual_seed(self.hparams.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,
                          generator=torch.Generator().manual_seed(self.hparams.seed))  # not the global generator

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
