"""The model zoo: the ThinResNet study's released networks, by name.

    python -m thinjax.zoo list [--dataset=cifar10] [--arch=resnet56] [--json]
    python -m thinjax.zoo get resnet56_w12_cifar10 [--json]
    thinjax-zoo list ...                      (the same, as a console script)

    >>> from thinjax import zoo
    >>> plan, variables = zoo.load("resnet56", width=12, dataset="cifar10")
    >>> zoo.resolve("zoo:resnet56_w12_cifar10")      # a verified local file path

Names are ``{arch}_w{width}_{dataset}``; ``zoo:NAME`` is accepted wherever a checkpoint
is (``config.init_from``, ``thinjax.evaluate --checkpoint``, ``thinjax.convert``,
``thinjax.export``, study configs). The release's file list, sizes and checksums are
bundled (``thinjax/assets/zoo_manifest.tsv``); params and MACs come from each network's
plan. Files come from, in this order:

  * ``$THINJAX_ZOO_DIR``, a local folder holding the release's files (flat, or in the
    release's ``trained_models/...`` layout). When it is set the zoo is offline: it never
    touches the network, and a file missing there is an error.
  * the cache's ``zoo/`` folder (`thinjax.cache`: ``$THINJAX_CACHE/zoo``, by default
    ``~/.cache/thinjax/zoo``);
  * a download from the release repository (``$THINJAX_ZOO_URL``, default its raw URL on
    GitHub), written to a temporary file, checked, and only then renamed into the cache.

Every file is checked against the manifest: its sha256 where known, otherwise its git
blob id (``sha1(b"blob %d\\0" % size + data)``), which for a file kept in Git LFS is the
blob of its pointer (``oid sha256:...``, ``size ...``): both forms are accepted. A file
that does not match is refused (a downloaded one is deleted). Checks are remembered by
(path, size, mtime) in the cache's ``verified.json``, so a file is hashed once. Files are
read as data, never code, and without PyTorch (`thinjax.interop.pt_reader`); a network is
converted once, then read from the cache (`thinjax.zoo.converted`, keyed by the file's
sha256).

This package is the library; the command is ``thinjax/zoo/__main__.py``.
"""

from __future__ import annotations

import builtins
import dataclasses
import difflib
import functools
import os
import urllib.request

from thinjax import cache, fs
from thinjax.cost import count
from thinjax.errors import CheckpointError
from thinjax.plan import Plan, default_input_size, plan_from_width
from thinjax.progress import progress_bar
from thinjax.zoo import converted
from thinjax.zoo.checksums import CHUNK, _remember, digests, file_digests, git_blob_id, matches
from thinjax.zoo.checksums import lfs_pointer as lfs_pointer  # public here too

MANIFEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                        "zoo_manifest.tsv")
DEFAULT_URL = "https://github.com/brain-bzh/baseline-pruning/raw/main"
DEFAULT_LFS_URL = "https://media.githubusercontent.com/media/brain-bzh/baseline-pruning/main"
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
LFS_HEADER = b"version https://git-lfs.github.com/spec/v1"
TIMEOUT_S = 60.0


class ZooError(CheckpointError):
    """An unknown zoo name, a file missing offline, a failed download or a bad checksum."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One released network: a row of the manifest."""
    dataset: str
    arch: str
    width: int
    path: str  # inside the release repository
    size: int | None  # bytes; None where unknown
    sha256: str | None  # of the content; None where unknown
    blob: str  # git blob id (of the content, or of its LFS pointer)

    @property
    def name(self) -> str:
        return f"{self.arch}_w{self.width}_{self.dataset}"

    @property
    def filename(self) -> str:
        return os.path.basename(self.path)

    def plan(self) -> Plan:
        """The network's channel plan (regular ThinResNet; the release's base width)."""
        return plan_from_width(self.arch, self.width, num_classes=NUM_CLASSES[self.dataset])


@functools.lru_cache(maxsize=8)
def manifest(path: str = MANIFEST) -> tuple[Entry, ...]:
    """The release's files, as bundled with thinjax."""
    with open(path, encoding="utf-8") as f:
        header, *rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    want = ["dataset", "arch", "width", "release_path", "bytes", "sha256", "git_blob_sha1"]
    if header != want:
        raise ZooError(f"{path}: columns {header}, expected {want}")
    return tuple(Entry(d, a, int(w), p, int(b) if b.isdigit() else None, s or None, g)
                 for d, a, w, p, b, s, g in rows)


def _names() -> dict[str, Entry]:
    """Zoo name -> manifest row."""
    return {e.name: e for e in manifest()}


def entry(name: str | None = None, *, arch: str | None = None, width: int | None = None,
          dataset: str | None = None) -> Entry:
    """The manifest row of `name` (``resnet56_w12_cifar10``), or of arch/width/dataset."""
    if name is None:
        if arch is None or width is None:
            raise ZooError("give a zoo name (resnet56_w12_cifar10) or arch and width")
        name = f"{arch}_w{int(width)}_{dataset or 'cifar10'}"
    name = name.removeprefix("zoo:")
    names = _names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else \
            "names are ARCH_wWIDTH_DATASET, e.g. resnet56_w12_cifar10"
        raise ZooError(f"no network {name!r} in the zoo; {hint} (python -m thinjax.zoo list "
                       "shows them all)")
    return names[name]


# -- where files are ------------------------------------------------------------------


def base_url() -> str:
    """Where the release's files are downloaded from (``$THINJAX_ZOO_URL``)."""
    return (os.environ.get("THINJAX_ZOO_URL") or DEFAULT_URL).rstrip("/")


def url_of(e: Entry) -> str:
    """The download URL of `e`'s file."""
    return f"{base_url()}/{e.path}"


def _local_file(e: Entry) -> str | None:
    """`e`'s file in $THINJAX_ZOO_DIR (flat or release layout), if there."""
    d = cache.zoo_local_dir()
    if d is None:
        return None
    for p in (os.path.join(d, e.filename), os.path.join(d, e.path)):
        if os.path.isfile(p):
            return p
    return None


def location(e: Entry) -> tuple[str, str]:
    """('local' | 'cached' | 'missing' | 'remote', path or URL) of `e`'s file, checking
    nothing (``missing``: offline and not in the local folder)."""
    p = _local_file(e)
    if p:
        return "local", p
    cached = os.path.join(cache.zoo_dir(), e.filename)
    if os.path.isfile(cached):
        return "cached", cached
    if cache.zoo_local_dir() is not None:
        return "missing", os.path.join(cache.zoo_local_dir(), e.filename)
    return "remote", url_of(e)


def verify(e: Entry, path: str) -> None:
    """Raises ZooError unless the file at `path` is `e`'s."""
    d = digests(path)
    if not matches(e, d):
        want = f"sha256 {e.sha256}" if e.sha256 else f"git blob {e.blob}"
        raise ZooError(f"{path}: checksum mismatch for {e.name} (expected {want}, size "
                       f"{e.size if e.size is not None else '?'}; got sha256 {d['sha256']}, "
                       f"blob {d['blob']}, size {d['size']})")


# -- downloads -------------------------------------------------------------------------


UNKNOWN_SIZE_CAP = 512 * 2**20  # bytes a download of unknown size may take


def _stream(url: str, dst, total: int | None, progress: bool, label: str) -> int:
    """Copies `url` into the open file `dst` with a progress bar; returns the byte count.
    At most `total` bytes (the manifest's size; UNKNOWN_SIZE_CAP when unknown) are taken:
    a longer or endless answer is cut off there and refused, whatever its Content-Length.
    Raises OSError-like errors (URLError, HTTPError, IncompleteRead) as they come."""
    cap = total if total is not None else UNKNOWN_SIZE_CAP
    req = urllib.request.Request(url, headers={"User-Agent": "thinjax-zoo"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > cap:
            raise OSError(f"the server announces {int(length):,} bytes, more than the "
                          f"{cap:,} expected")
        expected = int(length) if length and length.isdigit() else total
        n = 0
        with progress_bar(expected, "B", label, progress, unit_scale=True,
                          leave=False) as bar:
            # the lambda reads the running count n on purpose (a read never passes the cap)
            for chunk in iter(lambda: resp.read(min(CHUNK, cap + 1 - n)), b""):  # noqa: B023
                n += len(chunk)
                if n > cap:
                    raise OSError(f"the server sent more than the {cap:,} bytes expected")
                dst.write(chunk)
                bar.update(len(chunk))
    if length and length.isdigit() and n != int(length):
        raise OSError(f"connection closed after {n} of {length} bytes")
    return n


def _download_to(url: str, directory: str, e: Entry, progress: bool) -> str:
    """Downloads `url` into a new temporary file in `directory`; returns its path. On any
    failure the temporary file is removed and ZooError says what failed."""
    os.makedirs(directory, exist_ok=True)
    fd, tmp = fs.mkstemp(directory, f".{e.filename}.part-")
    try:
        with os.fdopen(fd, "wb") as f:
            _stream(url, f, e.size, progress, e.filename)
    except BaseException as err:
        os.remove(tmp)
        if isinstance(err, (OSError, ValueError)) or type(err).__module__ == "http.client":
            raise ZooError(f"download of {e.name} from {url} failed ({type(err).__name__}: "
                           f"{err}); nothing was kept. Check the network, or set "
                           "$THINJAX_ZOO_DIR to a local copy of the release") from err
        raise
    return tmp


def _lfs_content(e: Entry, pointer_file: str, directory: str, progress: bool) -> str:
    """The real content behind a downloaded LFS pointer, checked against its oid."""
    with open(pointer_file, "rb") as f:
        text = f.read(1024)
    fields = dict(line.split(" ", 1) for line in text.decode(errors="replace").splitlines()
                  if " " in line)
    oid = fields.get("oid", "").removeprefix("sha256:").strip()
    size = int(fields.get("size", "-1").strip() or -1)
    if git_blob_id(text) != e.blob or not oid:
        raise ZooError(f"{url_of(e)}: an LFS pointer that is not {e.name}'s (blob "
                       f"{git_blob_id(text)}, expected {e.blob})")
    lfs = (os.environ.get("THINJAX_ZOO_LFS_URL") or DEFAULT_LFS_URL).rstrip("/")
    tmp = _download_to(f"{lfs}/{e.path}", directory, e, progress)
    d = file_digests(tmp)
    if d["sha256"] != oid or d["size"] != size:
        os.remove(tmp)
        raise ZooError(f"{lfs}/{e.path}: content does not match its LFS pointer (sha256 "
                       f"{d['sha256']}, size {d['size']}; expected {oid}, {size}); deleted")
    return tmp


def download(e: Entry, progress: bool = True) -> str:
    """Downloads `e` into the cache, checks it, renames it into place; returns its path."""
    directory = cache.zoo_dir()
    final = os.path.join(directory, e.filename)
    tmp = _download_to(url_of(e), directory, e, progress)
    try:
        with open(tmp, "rb") as f:
            head = f.read(len(LFS_HEADER))
        if head == LFS_HEADER and os.path.getsize(tmp) < 1024:
            tmp, pointer = _lfs_content(e, tmp, directory, progress), tmp
            os.remove(pointer)
        d = file_digests(tmp)
        if not matches(e, d):
            want = f"sha256 {e.sha256}" if e.sha256 else f"git blob {e.blob}"
            raise ZooError(f"{url_of(e)}: checksum mismatch for {e.name} (expected {want}; "
                           f"got sha256 {d['sha256']}, {d['size']} bytes); the download was "
                           "deleted")
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _remember(final, d)
    return final


def fetch(e: Entry, progress: bool = True) -> str:
    """A checked local file of `e`: from $THINJAX_ZOO_DIR (offline), the cache, or a
    download."""
    kind, where = location(e)
    if kind == "local":
        verify(e, where)
        return where
    if kind == "cached":
        try:
            verify(e, where)
            return where
        except ZooError:
            os.remove(where)  # ours to replace: fetch it again
    local = cache.zoo_local_dir()
    if local is not None:
        raise ZooError(f"{e.name}: {e.filename} is not in $THINJAX_ZOO_DIR={local} nor "
                       f"in the cache {cache.zoo_dir()}, and the zoo is offline while "
                       "$THINJAX_ZOO_DIR is set; copy the file there or unset it to download")
    return download(e, progress)


def resolve(spec: str, progress: bool = True) -> str:
    """``zoo:NAME`` (or NAME) -> the path of its checked local file."""
    return fetch(entry(spec.removeprefix("zoo:")), progress)


def load(name: str, width: int | None = None, dataset: str = "cifar10",
         progress: bool = True) -> tuple[Plan, dict]:
    """(plan, variables) of a released network: ``load("resnet56", width=12)`` or
    ``load("resnet56_w12_cifar10")``."""
    e = entry(name) if width is None else entry(arch=name, width=width, dataset=dataset)
    plan, variables, _ = load_entry(e, progress)
    return plan, variables


def load_entry(e: Entry, progress: bool = True) -> tuple[Plan, dict, str]:
    """(plan, variables, the checked release file) of `e`: converted from the file once,
    then read from the cache of converted networks (`thinjax.zoo.converted`)."""
    path = fetch(e, progress)
    plan, variables = converted.load(path, digests(path)["sha256"])
    if plan != e.plan():
        raise ZooError(f"{e.name}: the file's plan ({plan.describe()}) is not the expected "
                       f"{e.plan().describe()}")
    return plan, variables, path


# -- the table -------------------------------------------------------------------------


def rows(dataset: str | None = None, arch: str | None = None) -> builtins.list[dict]:
    """The zoo as dicts: name, dataset, arch, width, classes, params, macs, input_size,
    bytes, sha256, blob, release_path, url, where ('local' | 'cached' | 'missing' |
    'remote') and path (the local file, or None)."""
    out = []
    for e in manifest():
        if (dataset and e.dataset != dataset) or (arch and e.arch != arch):
            continue
        plan = e.plan()
        c = count(plan, default_input_size(plan))
        kind, where = location(e)
        out.append({"name": e.name, "dataset": e.dataset, "arch": e.arch, "width": e.width,
                    "classes": plan.num_classes, "params": c.params, "macs": c.macs,
                    "input_size": c.input_size, "bytes": e.size, "sha256": e.sha256,
                    "blob": e.blob, "release_path": e.path, "url": url_of(e), "where": kind,
                    "path": where if kind in ("local", "cached") else None})
    return out


list = rows  # noqa: A001  (thinjax.zoo.list(), as the CLI's "list")


def format_table(table: builtins.list[dict]) -> str:
    """The rows as an aligned text table."""
    head = ("name", "classes", "params", "MACs", "input", "size", "where")
    lines = [(r["name"], str(r["classes"]), f"{r['params']:,}", f"{r['macs'] / 1e6:.2f} M",
              str(r["input_size"]), "?" if r["bytes"] is None else f"{r['bytes'] / 1e6:.2f} MB",
              r["where"] + (f" {r['path']}" if r["path"] else "")) for r in table]
    w = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    right = {1, 2, 3, 4, 5}

    def fmt(cols: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w[i]) if i in right else c.ljust(w[i])
                         for i, c in enumerate(cols)).rstrip()
    return "\n".join(fmt(x) for x in [head, *lines])
