"""Image folders (``split/label/image.jpg``) and the bundled samples, read without
TensorFlow: what `thinjax.data.sources` builds its TFDS ImageFolder sources on, and what the
evaluation-input cache (`thinjax.split_cache`) needs to know about a folder (its labels,
the files of a split) before it decides whether TensorFlow is needed at all.

Paths are local: a folder dataset is a folder on this machine (`thinjax.data.get_source`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import zipfile

from thinjax import cache
from thinjax.errors import DataError

SAMPLES = {"cifar10": "cifar10_sample.zip"}
ASSETS = os.path.join(os.path.dirname(__file__), "assets")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # TFDS ImageFolder's: the files it reads
CIFAR_LABELS = ("airplane", "truck")  # a folder with these classes holds 32x32 CIFAR images
_SLICE = re.compile(r"^([\w.-]+)(?:\[(-?\d*):(-?\d*)\])?$")


def parse_split(split: str) -> tuple[str, int | None, int | None]:
    """``'train'`` -> ('train', None, None); ``'train[:45000]'`` -> ('train', None, 45000)."""
    m = _SLICE.match(split.strip())
    if not m:
        raise DataError(f"split {split!r} is not a split name or a slice such as "
                        "train[:45000] / train[45000:]")
    to_int = lambda v: int(v) if v not in (None, "") else None  # noqa: E731
    return m.group(1), to_int(m.group(2)), to_int(m.group(3))


def sample_dir(name: str = "cifar10", cache_dir: str | None = None) -> str:
    """Extracts the bundled sample of `name` (once, into the cache's root: `thinjax.cache`)
    and returns its image-folder root."""
    if name not in SAMPLES:
        raise DataError(f"no bundled sample {name!r}; available: {', '.join(SAMPLES)}")
    zpath = os.path.join(ASSETS, SAMPLES[name])
    cache_dir = cache_dir or cache.root()
    with open(zpath, "rb") as f:
        stamp = hashlib.sha1(f.read()).hexdigest()[:12]
    root = os.path.join(cache_dir, f"{name}_sample-{stamp}")
    if os.path.lexists(cache_dir) and not os.path.isdir(cache_dir):
        raise DataError(f"THINJAX_CACHE={cache_dir} is a file; the sample is unpacked into a "
                        "folder there: point THINJAX_CACHE at a folder (or unset it)")
    if not os.path.isdir(root):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = root + f".tmp{os.getpid()}"
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp)
        try:
            os.replace(tmp, root)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return folder_root(root)


def _subdirs(path: str) -> list[str]:
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def _is_split_root(path: str) -> bool:
    subdirs = _subdirs(path)
    return bool(subdirs) and all(_subdirs(os.path.join(path, d)) for d in subdirs)


def folder_root(path: str) -> str:
    """`path` itself, or its single sub-folder (an unzipped archive's top folder)."""
    path = path.rstrip("/")
    if _is_split_root(path):
        return path
    subdirs = _subdirs(path)
    if len(subdirs) == 1 and _is_split_root(os.path.join(path, subdirs[0])):
        return os.path.join(path, subdirs[0])
    raise DataError(f"{path} is not an image folder: expected split/label/image.jpg "
                    "(for example train/cat/0001.jpg)")


def local_folder(data: str) -> str | None:
    """The image-folder root that `data` names (``sample:NAME``, unpacked when needed, or
    a folder), or None for a TFDS dataset name."""
    if data.startswith("sample:"):
        return sample_dir(data.split(":", 1)[1])
    path = os.path.expanduser(data)
    return folder_root(path) if os.path.isdir(path) else None


@dataclasses.dataclass(frozen=True)
class Folder:
    """An image folder as TFDS's ImageFolder sees it: its labels are the class folders of
    all its splits, sorted (a label's index is its place here)."""
    root: str
    labels: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int | None:
        """32 for CIFAR's classes (`thinjax.data.sources` says so too), else None."""
        return 32 if all(x in self.labels for x in CIFAR_LABELS) else None

    def files(self, base_split: str) -> list[tuple[str, int, int]]:
        """(path under the root, bytes, mtime in ns) of every image of `base_split`, sorted;
        [] when the split has no folder."""
        out = []
        split_dir = os.path.join(self.root, base_split)
        for label in _subdirs(split_dir) if os.path.isdir(split_dir) else []:
            with os.scandir(os.path.join(split_dir, label)) as it:
                for e in it:
                    if e.name.lower().endswith(IMAGE_SUFFIXES):
                        st = e.stat()
                        out.append((f"{base_split}/{label}/{e.name}", st.st_size,
                                    st.st_mtime_ns))
        return sorted(out)


def folder(root: str) -> Folder:
    """The `Folder` at an image-folder root (`folder_root`)."""
    labels = {c for s in _subdirs(root) for c in _subdirs(os.path.join(root, s))}
    return Folder(root, tuple(sorted(labels)))
