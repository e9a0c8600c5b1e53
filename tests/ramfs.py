"""A Beam FileSystem for ``ram://`` paths, backed by TensorFlow's in-process RAM filesystem.

Tests use it as a stand-in for a remote store (gs://, s3://): a path that
both Beam's FileSystems and tf.io.gfile understand, but that plain ``open``,
``os.path`` or ``shutil`` cannot reach. Importing this module registers the
scheme with Beam (Beam finds FileSystem subclasses by their scheme) and gives
``tf.io.gfile.rename`` the directory semantics of TF's GCS filesystem on
ram:// paths (see ``_rename``). Being in process memory, it only works with
runners that stay in this process (the default in-memory DirectRunner).
"""
from __future__ import annotations

import tensorflow as tf
from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem
from tensorflow.python.lib.io import file_io

gfile = tf.io.gfile
PREFIX = "ram://"
_tf_rename = file_io.rename_v2


def copy_tree_to_ram(local, url: str) -> None:
    """Copy the text files under the local directory ``local`` to ``url`` (a ram:// directory)."""
    for path in local.rglob("*"):
        if path.is_file():
            with gfile.GFile(f"{url}/{path.relative_to(local).as_posix()}", "w") as f:
                f.write(path.read_text(encoding="utf-8"))


def _rename(src: str, dst: str, overwrite: bool = False) -> None:
    """``tf.io.gfile.rename``, moving a ram:// directory with everything in it.

    TF's RAM filesystem renames a directory entry but leaves its files behind;
    its GCS filesystem renames every object below (gcs_file_system.cc,
    RenameFile), and tf.Transform's WriteTransformFn relies on that. This gives
    ram:// directories the GCS behaviour; every other path is TF's own rename.
    """
    if not (str(src).startswith(PREFIX) and gfile.isdir(src)):
        return _tf_rename(src, dst, overwrite)
    for root, _, files in gfile.walk(src):
        target = dst + root[len(src):]
        gfile.makedirs(target)
        for name in files:
            _tf_rename(f"{root}/{name}", f"{target}/{name}", overwrite)
    gfile.rmtree(src)


# tf.io.gfile's names are resolved lazily from file_io, and its API modules can be
# rebuilt after import (it happens once Keras has trained): patch the source too.
file_io.rename_v2 = _rename
for _api in (tf.io.gfile, tf.compat.v1.io.gfile, tf.compat.v2.io.gfile):
    _api.rename = _rename


def _each(items: list, operation, what: str) -> None:
    """Apply ``operation`` to every item; one BeamIOError naming every failure, as Beam's filesystems do."""
    errors = {}
    for item in items:
        try:
            operation(item)
        except Exception as e:  # noqa: BLE001 - reported below
            errors[item] = e
    if errors:
        raise BeamIOError(f"{what} operation failed", errors)


class _GFile(gfile.GFile):
    """A GFile that behaves like the io files Beam's other filesystems hand out.

    It makes its file when opened for writing (a GFile waits for the first
    write, and Beam expects even an empty shard to exist) and answers
    ``closed`` (pyarrow's parquet writer asks).
    """

    closed = False

    def __init__(self, path: str, mode: str):
        super().__init__(path, mode)
        if "w" in mode:
            self.write(b"")

    def close(self) -> None:
        super().close()
        self.closed = True


class RamFileSystem(FileSystem):
    @classmethod
    def scheme(cls) -> str:
        return "ram"

    def join(self, basepath: str, *paths: str) -> str:
        path = basepath
        for part in paths:
            path = path + part if path.endswith("/") else f"{path}/{part}"
        return path

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path[len(PREFIX):].rpartition("/")
        return PREFIX + head, tail

    def mkdirs(self, path: str) -> None:
        gfile.makedirs(path)

    def has_dirs(self) -> bool:
        return True

    def _list(self, dir_or_prefix: str):
        for root, _, files in gfile.walk(dir_or_prefix):
            for name in files:
                yield self.metadata(self.join(root, name))

    def _open(self, path: str, mode: str, compression_type: str):
        raw = _GFile(path, mode)
        compression_type = FileSystem._get_compression_type(path, compression_type)
        return raw if compression_type == CompressionTypes.UNCOMPRESSED else CompressedFile(raw, compression_type)

    def create(self, path: str, mime_type: str = "application/octet-stream",
               compression_type: str = CompressionTypes.AUTO):
        gfile.makedirs(self.split(path)[0])
        return self._open(path, "wb", compression_type)

    def open(self, path: str, mime_type: str = "application/octet-stream",
             compression_type: str = CompressionTypes.AUTO):
        return self._open(path, "rb", compression_type)

    def copy(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        _each(list(zip(source_file_names, destination_file_names)),
              lambda pair: gfile.copy(*pair, overwrite=True), "Copy")

    def rename(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        _each(list(zip(source_file_names, destination_file_names)),
              lambda pair: gfile.rename(*pair, overwrite=True), "Rename")

    def exists(self, path: str) -> bool:
        """A file, or a directory with something in it: TF's RAM filesystem calls every prefix of a name a directory."""
        return bool(gfile.glob(path) or gfile.glob(path.rstrip("/") + "/*"))

    def size(self, path: str) -> int:
        return gfile.stat(path).length

    def last_updated(self, path: str) -> float:
        return gfile.stat(path).mtime_nsec / 1e9

    def checksum(self, path: str) -> str:
        return str(self.size(path))

    def metadata(self, path: str) -> FileMetadata:
        stat = gfile.stat(path)
        return FileMetadata(path, stat.length, stat.mtime_nsec / 1e9)

    def delete(self, paths: list[str]) -> None:
        _each(paths, lambda p: gfile.rmtree(p) if gfile.isdir(p) else gfile.remove(p), "Delete")
