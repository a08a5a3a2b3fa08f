"""Where examples come from: a TFDS dataset name, an image folder, or the bundled sample.

    get_source("cifar10", data_dir=...)            # TFDS (downloads when not prepared)
    get_source("/data/cifar10-jpeg")               # split/label/*.jpg, TFDS ImageFolder
    get_source("sample:cifar10")                   # ~3 MB of CIFAR-10 JPEGs in the package

Every source yields dicts ``{"image": encoded bytes, "label": int64, "filename": str}``
(TFDS sources have no filename); decoding happens in `thinjax.data.pipeline`, where a
file that does not decode is reported by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable

from thinjax.data._tf import graph_fn, host_only, tf
from thinjax.errors import DataError, require
from thinjax.folders import ASSETS, SAMPLES, Folder, folder_root, parse_split, sample_dir

__all__ = ["ASSETS", "SAMPLES", "DataError", "Source", "get_source", "parse_split", "sample_dir",
           "unreachable"]

tfds = require("tensorflow_datasets", "train", "thinjax.data (training and evaluation input)")

CONNECT_TIMEOUT_S = 10.0  # per download host, before TFDS's downloader is started


@dataclasses.dataclass
class Source:
    name: str
    splits: dict[str, int]          # split name -> number of examples
    num_classes: int
    image_size: int | None          # native size when all images share one (32 for CIFAR)
    _make: Callable[[str, bool, int | None], tf.data.Dataset]
    files: Callable[[str], list[str]] | None = None   # per split, in the dataset's order

    def num_examples(self, split: str) -> int:
        base, lo, hi = self._range(split)
        return hi - lo

    def as_dataset(self, split: str, shuffle_files: bool = False,
                   seed: int | None = None) -> tf.data.Dataset:
        base, lo, hi = self._range(split)
        ds = self._make(base, shuffle_files and (lo, hi) == (0, self.splits[base]), seed)
        return ds if (lo, hi) == (0, self.splits[base]) else ds.skip(lo).take(hi - lo)

    def split_files(self, split: str) -> list[str] | None:
        """The image files of `split` (a slice too), in the dataset's order; None for TFDS."""
        if self.files is None:
            return None
        base, lo, hi = self._range(split)
        return self.files(base)[lo:hi]

    def _range(self, split: str) -> tuple[str, int, int]:
        """(base split, first, end) of ``name`` or a slice ``name[a:b]`` of the dataset's
        fixed example order (a held-out validation split: ``train[45000:]``)."""
        base, lo, hi = parse_split(split)
        if base not in self.splits:
            raise DataError(f"dataset {self.name!r} has no split {base!r}; available: "
                            f"{', '.join(sorted(self.splits))}")
        n = self.splits[base]
        lo, hi = (0 if lo is None else lo), (n if hi is None else hi)
        lo, hi = (lo + n if lo < 0 else lo), (hi + n if hi < 0 else hi)
        if not 0 <= lo < hi <= n:
            raise DataError(f"split {split!r} of {self.name!r} selects no examples or more "
                            f"than the {n} of {base!r}; give {base}[a:b] with 0 <= a < b <= {n}")
        return base, lo, hi


def _folder_source(path: str, name: str | None = None) -> Source:
    root = folder_root(path)
    builder = tfds.folder_dataset.ImageFolder(root)
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    if not any(splits.values()):
        raise DataError(f"{root} has class folders but no .jpg/.jpeg/.png images")
    labels = builder.info.features["label"].names

    def make(split, shuffle_files, seed):
        del seed  # ImageFolder orders files deterministically; shuffling is the pipeline's
        ds = builder.as_dataset(split=split, shuffle_files=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
        return ds.map(graph_fn(lambda ex: {"image": ex["image"], "label": ex["label"],
                                           "filename": ex["image/filename"]}),
                      num_parallel_calls=tf.data.AUTOTUNE)

    def files(split):
        return [e.image_path for e in builder._split_examples[split]]  # pylint: disable=protected-access

    size = Folder(root, tuple(labels)).image_size
    return Source(name or root, splits, len(labels), size, make, files)


def _tfds_source(name: str, data_dir: str | None, download: bool) -> Source:
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        close = difflib.get_close_matches(name, tfds.list_builders(), n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise DataError(f"unknown dataset {name!r}: not an existing image folder, not a "
                        f"bundled sample ({', '.join('sample:' + s for s in SAMPLES)}), and not "
                        "a TFDS dataset (image classification ones include cifar10, cifar100, "
                        f"imagenet2012, imagenette; all: tfds.list_builders()).{hint}") from e
    if download and not builder.data_path.exists():  # download_and_prepare's own test
        _prepare(builder, name)
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    num_classes = builder.info.features["label"].num_classes
    shape = builder.info.features["image"].shape
    size = shape[0] if shape and shape[0] and shape[0] == shape[1] else None

    def make(split, shuffle_files, seed):
        rc = tfds.ReadConfig(shuffle_seed=seed) if shuffle_files else None
        ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=rc,
                                decoders={"image": tfds.decode.SkipDecoding()})
        return ds.map(graph_fn(lambda ex: {"image": ex["image"], "label": ex["label"],
                                           "filename": ""}),
                      num_parallel_calls=tf.data.AUTOTUNE)

    return Source(name, splits, num_classes, size, make)


def _prepare(builder, name: str) -> None:
    """Downloads and prepares a TFDS dataset, or says in one line why it cannot. Without a
    network the download hosts are found unreachable first, in seconds: TFDS's own
    downloader retries each URL for minutes."""
    where = (f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and cannot be "
             "downloaded")
    point = "point data_dir (config.data.data_dir, --data_dir) at a TFDS data folder holding it"
    fix = f"run this where there is network access (TFDS prepares it in data_dir), or {point}"
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:  # imagenet2012: the files come by hand
        fix = f"follow TFDS's instructions, or {point}"
    else:
        why = unreachable(list(builder.url_infos or {}))
        if why:
            raise DataError(f"{where}: no network ({why}); {fix}")
    try:
        builder.download_and_prepare()
    except Exception as e:
        raise DataError(f"{where} ({' '.join(str(e).split())}); {fix}") from e


def unreachable(urls: list[str], timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """'host: reason' for the first host of the http(s) `urls` that takes no connection,
    or None when all do. Behind a proxy (HTTP_PROXY, ...) the download itself tells."""
    if urllib.request.getproxies():
        return None
    parsed = [urllib.parse.urlsplit(u) for u in urls]
    hosts = sorted({(u.hostname, u.port or (443 if u.scheme == "https" else 80))
                    for u in parsed if u.scheme in ("http", "https") and u.hostname})
    for host, port in hosts:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError as e:
            return f"{host}: {e.strerror or str(e) or type(e).__name__}"
    return None


def get_source(name: str, data_dir: str | None = None, download: bool = True) -> Source:
    """A dataset by TFDS name, image-folder path, or ``sample:<name>``."""
    host_only()
    if name.startswith("sample:"):
        return _folder_source(sample_dir(name.split(":", 1)[1]), name)
    if os.path.isdir(os.path.expanduser(name)):
        return _folder_source(os.path.expanduser(name))
    if os.sep in name or name.startswith("."):
        raise DataError(f"dataset path {name!r} does not exist (or is not a folder)")
    return _tfds_source(name, data_dir, download)
