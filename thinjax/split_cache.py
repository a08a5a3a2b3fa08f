"""The evaluation-input cache: a split's preprocessed evaluation inputs, kept in the cache's
``eval-inputs/`` folder (`thinjax.cache`) by the first evaluation of the split, so that a
later one reads them with numpy and never loads TensorFlow.

What is kept is exactly what the tf.data pipeline (`thinjax.data.EvalBatches`) produces
before it normalises: the pixels after decoding and cropping (uint8; float32 in [0, 255]
after a resize) and the labels, in the pipeline's order. `normalize` turns them into the
network's inputs, the same bits as `thinjax.data.preprocess.normalize`; an evaluation that
fills the cache normalises this way too, so a cached and an uncached evaluation see the
same batches (tests/test_split_cache.py).

One file per image folder, split and view. Its key, kept inside it, is a sha256 over the
data (the folder's root, its labels, and the path, size and mtime of every image in the
split's folder), the split (its slice too), the view (crop size, resize), the
preprocessing code (the text of the modules that list, decode and crop) and TensorFlow's
version (its JPEG decoder): touching, adding or removing an image gives a new key, and the
file is built again. Image folders and the bundled samples only: a TFDS dataset is read
through tf.data every time.

A kept file is used only when it proves itself: this format, this key, and a sha256 over
its metadata and arrays that agrees with what is read back. Anything else (truncated,
damaged, another key) is logged and built again from the images; a file that cannot be
written only means reading the images again next time.

``THINJAX_NO_EVAL_CACHE=1`` turns the cache off; a split whose inputs would take more than
``THINJAX_EVAL_CACHE_MAX_MB`` megabytes (1024 unless set) is not kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Iterable, Iterator

import numpy as np

from thinjax import cache, folders, kept
from thinjax.errors import ConfigError
from thinjax.pixels import MEAN, STD

log = logging.getLogger(__name__)
FORMAT = "thinjax-eval-inputs/1"
DEFAULT_MAX_MB = 1024
PKG = os.path.dirname(os.path.abspath(__file__))
# the code that decides which files a split has and what becomes of their pixels
CODE = ("folders.py", "split_cache.py", "data/sources.py", "data/pipeline.py",
        "data/preprocess.py")


@dataclasses.dataclass(frozen=True)
class Entry:
    """Where the inputs of one split of an image folder, in one view, are kept."""
    path: str
    key: str
    folder: folders.Folder
    size: int
    resize: int | None

    def nbytes(self, count: int) -> int:
        """The bytes of `count` examples' pixels (uint8; float32 after a resize)."""
        return count * self.size * self.size * 3 * (4 if self.resize else 1) + 4 * count


def enabled() -> bool:
    return not os.environ.get("THINJAX_NO_EVAL_CACHE")


def max_bytes() -> int:
    """``THINJAX_EVAL_CACHE_MAX_MB`` in bytes (1024 MB unless set)."""
    raw = os.environ.get("THINJAX_EVAL_CACHE_MAX_MB", str(DEFAULT_MAX_MB))
    try:
        return int(float(raw) * 2**20)
    except ValueError:
        raise ConfigError(f"THINJAX_EVAL_CACHE_MAX_MB={raw!r} is not a number of megabytes; "
                          f"set it to one (the default is {DEFAULT_MAX_MB}) or unset it") from None


def normalize(pixels: np.ndarray) -> np.ndarray:
    """`thinjax.data.preprocess.normalize` in numpy: float32, the same operations in the
    same order (x / 255, minus the mean, over the std), each rounded to float32."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    return (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)


def _tensorflow_version() -> str | None:
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def _code_digest() -> str:
    h = hashlib.sha256()
    for rel in CODE:
        with open(os.path.join(PKG, rel), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def entry(data: str, split: str, view) -> Entry | None:
    """The `Entry` of `data`:`split` in the view ``view(native size) -> (crop size, resize)``
    (`thinjax.evaluation.eval_view`), or None where nothing is kept: the cache is off, the
    data is a TFDS dataset, the split has no folder or the crop size is not fixed."""
    if not enabled():
        return None
    root = folders.local_folder(data)
    if root is None:
        return None
    folder = folders.folder(os.path.realpath(root))
    size, resize = view(folder.image_size)
    base = folders.parse_split(split)[0]
    files = folder.files(base)
    version = _tensorflow_version()
    if not size or not files or version is None:
        return None
    h = hashlib.sha256(json.dumps({
        "format": FORMAT, "root": folder.root, "labels": folder.labels, "split": split,
        "size": size, "resize": resize, "code": _code_digest(), "tensorflow": version},
        sort_keys=True).encode())
    for name, nbytes, mtime_ns in files:
        h.update(f"{name}\0{nbytes}\0{mtime_ns}\n".encode())
    # one file per folder, split and view: new data or code replaces the file, not adds one
    slot = hashlib.sha256(json.dumps([folder.root, split, size, resize]).encode()).hexdigest()
    return Entry(os.path.join(cache.eval_inputs_dir(), f"{slot[:32]}.safetensors"),
                 h.hexdigest(), folder, size, resize)


def read(e: Entry) -> dict[str, np.ndarray] | None:
    """{'image': pixels, 'label': int32} kept for `e`, or None when none can be trusted."""
    if not os.path.isfile(e.path):
        return None
    try:
        meta, arrays = kept.read(e.path, ("image", "label"))
        if meta.get("format") != FORMAT or meta.get("key") != e.key:
            log.info("thinjax: the kept evaluation inputs %s are of other files or code; "
                     "reading the images again", e.path)
            return None
        n = len(arrays["label"])
        if arrays["image"].shape != (n, e.size, e.size, 3) or n != int(meta["count"]):
            raise ValueError(f"its arrays have shapes {arrays['image'].shape}, "
                             f"{arrays['label'].shape}")
    except kept.ERRORS as err:
        log.warning("thinjax: ignoring the kept evaluation inputs %s (%s: %s); reading the "
                    "images again", e.path, type(err).__name__, err)
        return None
    return arrays


def write(e: Entry, arrays: dict[str, np.ndarray]) -> None:
    """Keeps `arrays` for `e`, atomically; best effort (a warning on failure)."""
    meta = {"format": FORMAT, "key": e.key, "count": str(len(arrays["label"])),
            "data": e.folder.root}
    try:
        kept.write(e.path, arrays, meta, e.key[:16])
    except kept.ERRORS as err:
        log.warning("thinjax: cannot keep the evaluation inputs in %s (%s); the images are "
                    "read again next time", os.path.dirname(e.path), err)


def _batch(pixels: np.ndarray, labels: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """A batch as `thinjax.data.EvalBatches` gives it: normalised images, padded with zeros
    (and mask=False) to `batch_size`."""
    n, pad = len(labels), batch_size - len(labels)
    image = normalize(pixels)
    if pad:
        image = np.concatenate([image, np.zeros((pad,) + image.shape[1:], image.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return {"image": image, "label": labels, "mask": np.arange(batch_size) < n}


def batches(arrays: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The evaluation batches of kept inputs (`read`)."""
    for i in range(0, len(arrays["label"]), batch_size):
        yield _batch(arrays["image"][i:i + batch_size], arrays["label"][i:i + batch_size],
                     batch_size)


def fill(e: Entry, raw: Iterable[dict[str, np.ndarray]], count: int,
         batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The evaluation batches of `raw` (batches of un-normalised pixels: `EvalBatches` with
    ``normalized=False``, `count` examples), each as `batches` gives it; once all have
    passed, they are kept for `e` (`write`)."""
    dtype = np.float32 if e.resize else np.uint8
    kept = {"image": np.empty((count, e.size, e.size, 3), dtype),
            "label": np.empty(count, np.int32)}
    n = 0
    for b in raw:
        k = int(b["mask"].sum())
        if n + k <= count:
            kept["image"][n:n + k], kept["label"][n:n + k] = b["image"][:k], b["label"][:k]
        n += k
        yield _batch(b["image"][:k], b["label"][:k], batch_size)
    if n == count:
        write(e, kept)
    else:
        log.warning("thinjax: %s gave %d evaluation examples, not the %d expected; not kept",
                    e.folder.root, n, count)
