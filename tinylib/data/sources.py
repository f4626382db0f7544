"""Where the images are read from: a ``tiny-imagenet-200`` folder or the official zip,
read through the same three calls (``names``, ``read``, ``describe``)."""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from pathlib import Path, PurePosixPath


from tinylib.data.common import DATA_ENV, FOLDER_NAME, DataError, HOW_TO_GET_DATA, OFFICIAL_URL


# ----------------------------------------------------------------------------
# Sources: a folder or a zip, read through the same three calls.
# ----------------------------------------------------------------------------


class FolderSource:
    """The official layout unpacked on disk."""

    kind = "folder"

    def __init__(self, root: Path):
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root.resolve())

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def is_dir(self, rel: str) -> bool:
        return (self.root / rel).is_dir()

    def list_dir(self, rel: str) -> list[str]:
        path = self.root / rel
        if not path.is_dir():
            raise DataError(f"missing folder {path}: expected the official '{FOLDER_NAME}' layout")
        try:
            return sorted(os.listdir(path))
        except OSError as err:
            raise DataError(f"cannot read folder {path} ({err.strerror or err})") from None

    def fingerprint(self) -> str | None:
        """What the dataset holds, cheaply: the name and size of every file the layout reads
        (``dataset_file``; no image read), linked folders and files included. An identical
        extraction gives the same; a changed one not (an image rewritten at its very size is
        not seen); None where the folder cannot be read whole (then nothing is known)."""
        def refuse(error):
            raise error

        digest, root = hashlib.sha256(), str(self.root)
        # Each folder's own and its ancestors' real paths: a link back up to one of them is not
        # walked again (a folder reached twice by two paths is: the decoder reads both).
        ancestry = {root: frozenset()}
        try:
            # Through links too: a dataset assembled from linked folders is read through them.
            for top, folders, names in os.walk(root, onerror=refuse, followlinks=True):
                real = os.path.realpath(top)
                if real in ancestry[top]:
                    folders[:] = []
                    continue
                relative = os.path.relpath(top, root).replace(os.sep, "/")
                prefix = "" if relative == "." else relative + "/"  # 'train/n01443537/images/'
                folders[:] = sorted(f for f in folders if not f.startswith(".")  # .ipynb_checkpoints
                                    and (prefix or f in LAYOUT_FOLDERS))  # at the top, only what the layout reads
                for folder in folders:
                    ancestry[os.path.join(top, folder)] = ancestry[top] | {real}
                for name in sorted(names):
                    if dataset_file(prefix + name):
                        size = os.stat(os.path.join(top, name)).st_size
                        # surrogateescape: a name that is not UTF-8 is hashed as its bytes
                        digest.update(f"{prefix}{name}\0{size}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            return None
        return digest.hexdigest()

    def read(self, rel: str) -> bytes:
        """A file's bytes; errors are DataError, so an OSError later means the cache side."""
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            raise DataError(f"missing file {self.root / rel}") from None
        except OSError as err:
            raise DataError(f"cannot read {self.root / rel} ({err.strerror or err})") from None


# The folders of the official layout, the only ones at its top that ``dataset_file`` counts.
LAYOUT_FOLDERS = ("train", "val", "test")


def dataset_file(relative: str) -> bool:
    """Whether a path under the dataset folder is one the layout reads: its text files and
    its JPEGs, not a Thumbs.db, a hidden file or a user's notes (a fingerprint counts these)."""
    parts = relative.split("/")
    if any(part.startswith(".") for part in parts):
        return False
    name = parts[-1]
    if len(parts) == 1:
        return name in ("wnids.txt", "words.txt")
    return parts[0] in LAYOUT_FOLDERS and (name.endswith(".txt") or name.upper().endswith((".JPEG", ".JPG")))


def check_zip_members(names: list[str], zip_path: Path) -> None:
    """Refuse a zip with an entry that would land outside its folder."""
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise DataError(
                f"refusing {zip_path}: entry {name!r} would be written outside the target "
                "folder. This is not the official Tiny ImageNet zip; delete it and get the "
                f"official one ({OFFICIAL_URL})."
            )


def open_zip(zip_path: Path) -> zipfile.ZipFile:
    """Open a zip, turning a truncated or corrupt file into a clear error."""
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(
            f"{zip_path} is not a complete zip archive ({err}); the download was probably "
            "interrupted or truncated. Delete it and download it again."
        ) from None


class ZipSource:
    """The official zip, read in place without unpacking it."""

    kind = "zip"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.zip = open_zip(self.path)
        names = self.zip.namelist()
        check_zip_members(names, self.path)
        self.names = set(names)
        roots = [n[: -len("wnids.txt")] for n in names if PurePosixPath(n).name == "wnids.txt"]
        if not roots:
            raise DataError(
                f"{self.path} holds no wnids.txt: expected the official '{FOLDER_NAME}' zip"
            )
        self.prefix = min(roots, key=len)
        self.children: dict[str, set[str]] = {}
        for name in names:
            if not name.startswith(self.prefix):
                continue
            parts = name[len(self.prefix):].rstrip("/").split("/")
            for depth in range(len(parts)):
                self.children.setdefault("/".join(parts[:depth]), set()).add(parts[depth])

    def describe(self) -> str:
        return str(self.path.resolve())

    def exists(self, rel: str) -> bool:
        return self.prefix + rel in self.names or self.is_dir(rel)

    def is_dir(self, rel: str) -> bool:
        return rel.strip("/") in self.children

    def list_dir(self, rel: str) -> list[str]:
        if not self.is_dir(rel):
            raise DataError(f"{self.path}: missing folder {self.prefix + rel}")
        return sorted(self.children[rel.strip("/")])

    def fingerprint(self) -> str | None:
        """What the dataset holds, from the zip's directory: every member the layout reads
        (``dataset_file``), its path, size and CRC (no member read)."""
        digest = hashlib.sha256()
        for info in sorted(self.zip.infolist(), key=lambda info: info.filename):
            relative = info.filename[len(self.prefix):]
            if info.filename.startswith(self.prefix) and not info.is_dir() and dataset_file(relative):
                digest.update(f"{relative}\0{info.file_size}\0{info.CRC}\n".encode())
        return digest.hexdigest()

    def read(self, rel: str) -> bytes:
        name = self.prefix + rel
        if name not in self.names:
            raise DataError(f"{self.path}: missing file {name}")
        try:
            return self.zip.read(name)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
            raise DataError(f"{self.path}: cannot read {name} ({err}); the zip is corrupt") from None


def locate(path: str | os.PathLike) -> tuple[str, Path]:
    """Where a path's dataset is, without reading it: ("folder" | "zip", path)."""
    path = Path(path).expanduser()
    denied = DataError(f"cannot read {path} (permission denied): point {DATA_ENV} at a dataset you can read, "
                       "or give yourself read access to it")
    try:
        path.stat()
    except PermissionError:
        raise denied from None
    except OSError:
        pass  # missing: said below
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):  # a folder that stat passes and no one lists
        raise denied
    if not path.exists():
        relative = ("" if path.is_absolute() else
                    f" (a relative path, looked up from {Path.cwd()}: a notebook runs in book/, so give an "
                    "absolute one)")
        raise DataError(f"{path} does not exist{relative}. {HOW_TO_GET_DATA}")
    if path.is_file():
        # A .zip cut short is still a zip (open_zip says to download it again); another file is not.
        if path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
            return "zip", path.resolve()
        if path.name == "wnids.txt":
            raise DataError(f"{path} is a file of the dataset: point at the folder that holds it, {path.parent}")
        unpack = (f" Unpack it first (tar xf {path}) and point at the folder that makes, the one holding "
                  "wnids.txt." if ".tar" in path.name.lower() or path.suffix.lower() in (".tgz", ".txz") else "")
        raise DataError(f"{path} is not a zip: tinylib reads the official {FOLDER_NAME}.zip, or the folder "
                        f"unpacked from it.{unpack}")
    for root in (path, path / FOLDER_NAME):
        if (root / "wnids.txt").is_file():
            return "folder", root.resolve()
    raise DataError(
        f"{path} is not in the official layout: missing {path / 'wnids.txt'} "
        f"(expected {FOLDER_NAME}/wnids.txt, words.txt, train/, val/)."
    )


def open_source(path: str | os.PathLike) -> FolderSource | ZipSource:
    """A source from a path: the dataset folder, the folder holding it, or the zip."""
    kind, root = locate(path)
    return ZipSource(root) if kind == "zip" else FolderSource(root)

