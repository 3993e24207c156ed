"""Finding a data set's files: explicit root, else $KDEXP_DATA, system folders, the cache; then download."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tarfile
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .base import DataFormatError, DataNotFoundError, TensorDataModule

log = logging.getLogger(__name__)

DATA_ENV = "KDEXP_DATA"
OFFLINE_ENV = "KDEXP_OFFLINE"
DOWNLOAD_TIMEOUT_S = 15.0  # per connect/read, so a machine without internet fails fast

# Where distributions install data sets; patchable (tests replace it).
SYSTEM_DIRS: dict[str, list[Path]] = {
    "mnist": [Path("/usr/share/datasets/mnist"), Path("/usr/share/mnist")],
    "fashion_mnist": [Path("/usr/share/datasets/fashion-mnist"), Path("/usr/share/fashion-mnist")],
    "cifar10": [Path("/usr/share/datasets/cifar-10"), Path("/usr/share/datasets/cifar10")],
    "cifar100": [Path("/usr/share/datasets/cifar-100"), Path("/usr/share/datasets/cifar100")],
}


@dataclass(frozen=True)
class Download:
    filename: str
    md5: str
    urls: tuple[str, ...]  # mirrors, tried in order
    extract: bool = False  # a tarball, unpacked into the target folder and then deleted


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdexp"


def download_allowed(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def search_bases(name: str, root: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """(label, folder) in search order. An explicit root is the only place searched: it must be right."""
    if root is not None:
        root = Path(root).expanduser()
        return [("data.root", root), ("data.root", root / name)]
    bases = []
    if env := os.environ.get(DATA_ENV):
        bases += [(f"${DATA_ENV}", Path(env)), (f"${DATA_ENV}", Path(env) / name)]
    bases += [("system", d) for d in SYSTEM_DIRS.get(name, [])]
    return bases + [("cache", cache_dir() / name)]


def download_target(name: str, root: str | os.PathLike | None) -> Path:
    base = Path(root).expanduser() if root is not None else Path(os.environ.get(DATA_ENV) or cache_dir())
    return base / name


def missing_files(folder: Path, expected: Sequence[Sequence[str]]) -> list[str]:
    return [" or ".join(alts) for alts in expected if not any((folder / a).is_file() for a in alts)]


def find_data_dir(
    name: str,
    expected: Sequence[Sequence[str]],
    *,
    root: str | os.PathLike | None = None,
    subdirs: Sequence[str] = (),
    downloads: Sequence[Download] = (),
    download: bool | None = None,
    hint: str = "",
) -> Path:
    """First folder holding every expected file (each given as alternative names), else download."""
    tried: list[str] = []

    def search(bases: list[tuple[str, Path]]) -> Path | None:
        for label, base in bases:
            if not base.is_dir():
                tried.append(f"  {base}  [{label}]: no such folder")
                continue
            for folder in dict.fromkeys([base, *(base / s for s in subdirs)]):
                missing = missing_files(folder, expected)
                if not missing:
                    return folder
                state = f"missing {', '.join(missing)}" if folder.is_dir() else "no such folder"
                tried.append(f"  {folder}  [{label}]: {state}")
        return None

    if found := search(search_bases(name, root)):
        return found
    target = download_target(name, root)
    if not downloads:
        note = "no download source known"
    elif not download_allowed(download):
        note = f"download: disabled (data.download=false or ${OFFLINE_ENV}=1)"
    else:
        try:
            fetch(downloads, target)
            if found := search([("downloaded", target)]):
                return found
            note = f"download into {target} finished, but the expected files are still missing"
        except (OSError, DataFormatError, tarfile.TarError, http.client.HTTPException) as e:
            note = f"download into {target} failed: {e}"
    raise DataNotFoundError(
        f"could not find the {name!r} data set.\n"
        f"Expected files: {', '.join(' or '.join(a) for a in expected)}\n"
        "Looked in:\n" + "\n".join(tried) + f"\n{note}\n"
        f"To fix: {hint + '; or ' if hint else ''}"
        f"set data.root (or ${DATA_ENV}) to a folder holding those files."
    )


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(downloads: Sequence[Download], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in downloads:
        dest = target / item.filename
        if not (dest.is_file() and file_md5(dest) == item.md5):
            download_file(item, dest)
        if item.extract:
            extract_tar(dest, target)
            dest.unlink()


def download_file(item: Download, dest: Path) -> None:
    """Download to a temporary file next to `dest`, check the MD5, then rename: never a partial `dest`."""
    errors = []
    for url in item.urls:
        log.warning("downloading %s to %s", url, dest.parent)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
            if digest.hexdigest() != item.md5:
                raise DataFormatError(f"MD5 {digest.hexdigest()} does not match the expected {item.md5}")
            os.replace(tmp, dest)
            return
        except (OSError, DataFormatError, http.client.HTTPException) as e:
            errors.append(f"{url}: {e}")
        finally:
            Path(tmp).unlink(missing_ok=True)
    raise OSError("; ".join(errors))


def extract_tar(archive: Path, target: Path) -> None:
    # Unpack beside the target, then move in, so an interrupted extraction leaves no half folder.
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tempfile.TemporaryDirectory(dir=target, prefix=".extract-") as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, **safe)
        for item in Path(tmp).iterdir():
            if not (target / item.name).exists():
                os.replace(item, target / item.name)


class FileDataModule(TensorDataModule):
    """A data set read from files found by `find_data_dir`."""

    expected: ClassVar[tuple[tuple[str, ...], ...]]  # each entry: alternative names of one file
    subdirs: ClassVar[tuple[str, ...]] = ()  # folders below a search location that may hold the files
    downloads: ClassVar[tuple[Download, ...]] = ()
    hint: ClassVar[str] = ""
    _data_dir: Path | None = None

    def data_dir(self) -> Path:
        if self._data_dir is None:
            self._data_dir = find_data_dir(
                self.name,
                self.expected,
                root=self.root,
                subdirs=self.subdirs,
                downloads=self.downloads,
                download=self.download,
                hint=self.hint,
            )
        return self._data_dir

    def prepare_data(self) -> None:
        self.data_dir()

    def raw_source(self) -> tuple:
        stats = [(str(f.resolve()), f.stat()) for f in (self.path(*names) for names in self.expected)]
        return (type(self).__qualname__, *((path, st.st_size, st.st_mtime_ns) for path, st in stats))

    def path(self, *alternatives: str) -> Path:
        folder = self.data_dir()
        return next((folder / a for a in alternatives if (folder / a).is_file()), folder / alternatives[0])
