"""Unpacking an untrusted dataset archive (zip, or tar: plain, gzip, bzip2 or xz) with bounded
memory, bytes and names.

* The format is decided by the magic bytes at offset 0, nothing else: ``zipfile.is_zipfile`` looks
  for a zip directory near the end, so a tar whose last member is a zip would be unpacked as that
  zip, and the wrong content cached under the tar's SHA256.
* Nothing is read whole before it is bounded. A tar member's PAX or GNU long-name header is read
  by ``tarfile`` into memory in one piece, before any limit of ours applies: ``BoundedTarInfo``
  checks each header's declared size (``MAX_HEADER_BYTES``), the global headers' total, the chain
  of headers before a member and refuses sparse members (whose maps ``tarfile`` also reads whole)
  before ``tarfile`` reads them. A zip's central directory is read whole by ``zipfile``: its
  declared size and entry count are checked first. An xz stream's decoder memory is capped.
* Names are relative, without ``..``, at most ``MAX_NAME_CHARS``; links and device files are
  refused; so are more than ``Limits.members`` entries, more than ``Limits.total_bytes`` unpacked
  (counted as written, not as declared) and a member that inflates more than ``Limits.ratio`` times
  (a zip bomb). A file and a folder of the same name is an error naming the member. Every error is
  a ``SourceError`` naming ``spec.dataset.source.http``; nothing is written outside the destination.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import stat
import tarfile
import zipfile
import zlib
from _compression import DecompressReader
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

FIELD = "spec.dataset.source.http"
COPY_BLOCK = 1 << 20
MAX_HEADER_BYTES = 64 * 2**10  # one PAX / GNU long-name header: a long path needs 4 KiB
MAX_GLOBAL_HEADER_BYTES = 2**20  # PAX global headers accumulate for the whole archive
MAX_HEADER_CHAIN = 8  # headers before one member: a PAX header, long name, long link, ...
MAX_NAME_CHARS = 1024
# The central directory of a zip, read whole: 200,000 entries with long names fit in 64 MiB.
MAX_ZIP_DIRECTORY_BYTES = 64 * 2**20
# xz's decoder memory (its dictionary): the largest preset (9e) needs 65 MiB.
XZ_MEMORY_LIMIT = 128 * 2**20
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's directory end
TAR_MAGIC_OFFSET = 257
COMPRESSED_TAR_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}


class SourceError(Exception):
    """The dataset could not be fetched; the message names the spec field to fix."""


@dataclass(frozen=True)
class Limits:
    members: int = 200_000
    total_bytes: int = 50 * 2**30
    ratio: float = 250.0  # unpacked / packed, per zip member and for a whole compressed tar


DEFAULT_LIMITS = Limits()


def safe_name(name: str, field: str = FIELD) -> PurePosixPath:
    """A member or object name as a relative path that stays inside the destination, or a SourceError.

    A colon is an ordinary character on the Linux volumes datasets land on (``C:`` is a folder
    name there), so S3 keys and member names may hold one."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name or path.is_absolute() or ".." in path.parts:
        raise SourceError(f"{field}: {name!r} would be written outside the dataset directory; refused")
    if len(name) > MAX_NAME_CHARS or "\x00" in name or any(len(part.encode()) > 255 for part in path.parts):
        raise SourceError(f"{field}: {name[:80]!r}...: not a usable file name (too long, or a NUL byte)")
    return path


def archive_format(archive: Path) -> str:
    """``zip``, ``tar``, ``gzip``, ``bzip2`` or ``xz``, from the magic bytes at offset 0 (a tar's at
    offset 257), or a SourceError."""
    with archive.open("rb") as handle:
        head = handle.read(TAR_MAGIC_OFFSET + 8)
    if head.startswith(ZIP_MAGIC):
        return "zip"
    for magic, kind in COMPRESSED_TAR_MAGIC.items():
        if head.startswith(magic):
            return kind
    if head[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + 5] == b"ustar":
        return "tar"
    raise SourceError(f"{FIELD}: the file is neither a zip nor a tar archive (gzip, bzip2, xz or plain)")


# What a damaged or unsupported archive raises while it is read (an encrypted zip member: a
# RuntimeError; an unknown zip compression: NotImplementedError).
_UNREADABLE = (zipfile.BadZipFile, tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, RuntimeError,
               NotImplementedError, OSError)  # fmt: skip


def unpack(archive: Path, destination: Path, limits: Limits = DEFAULT_LIMITS) -> None:
    """Unpack a zip or tar ``archive`` (detected by its magic bytes) into ``destination``, safely."""
    kind = archive_format(archive)
    try:
        if kind == "zip":
            _unpack_zip(archive, destination, limits)
        else:
            _unpack_tar(archive, kind, destination, limits)
    except _UNREADABLE as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise  # a full volume or a failing disk, not the archive: gzip and bz2 errors have no errno
        raise SourceError(f"{FIELD}: the archive cannot be read: {error}") from error


class _Budget:
    """Bytes left to write: ``[left, total]`` shared by all members."""

    def __init__(self, total: int) -> None:
        self.left, self.total = total, total

    def copy(self, stream: IO[bytes], target: Path, limit: int, name: str) -> None:
        """Copy ``stream`` to ``target``, at most ``limit`` bytes for this member."""
        written = 0
        try:
            out = target.open("wb")
        except (IsADirectoryError, NotADirectoryError, FileExistsError) as error:
            raise _clash(name) from error
        with out:
            while block := stream.read(COPY_BLOCK):
                written += len(block)
                self.left -= len(block)
                if self.left < 0:
                    raise SourceError(
                        f"{FIELD}: the archive unpacks to more than {self.total} bytes in all "
                        "(the limit on a dataset archive, or its compression ratio: a zip bomb?)"
                    )
                if written > limit:
                    raise SourceError(
                        f"{FIELD}: member {name!r} inflates beyond the compression ratio limit (a zip bomb?)"
                    )
                out.write(block)


def _clash(name: str) -> SourceError:
    return SourceError(
        f"{FIELD}: member {name!r} clashes with a file or folder of the same name in the archive"
    )


def _make_folders(target: Path, name: str, *, is_dir: bool = False) -> None:
    """The folders ``target`` needs (``target`` itself for a folder member); a file in the way is a
    clash of names within the archive."""
    try:
        (target if is_dir else target.parent).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise _clash(name) from error


def _unpack_zip(archive: Path, destination: Path, limits: Limits) -> None:
    with archive.open("rb") as handle:
        end = zipfile._EndRecData(handle)  # type: ignore[attr-defined]  # the directory's declared size
    if end is None:
        raise SourceError(f"{FIELD}: a zip archive without its central directory")
    if end[zipfile._ECD_ENTRIES_TOTAL] > limits.members:  # type: ignore[attr-defined]
        raise SourceError(f"{FIELD}: more than {limits.members} entries in the archive")
    if end[zipfile._ECD_SIZE] > MAX_ZIP_DIRECTORY_BYTES:  # type: ignore[attr-defined]
        raise SourceError(f"{FIELD}: the zip directory is larger than {MAX_ZIP_DIRECTORY_BYTES} bytes")
    budget = _Budget(limits.total_bytes)
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        if len(members) > limits.members:
            raise SourceError(f"{FIELD}: more than {limits.members} entries in the archive")
        for member in members:
            path = safe_name(member.filename)
            if stat.S_ISLNK(member.external_attr >> 16):
                raise SourceError(f"{FIELD}: {member.filename!r} is a symbolic link")
            target = destination.joinpath(*path.parts)
            if member.is_dir():
                _make_folders(target, member.filename, is_dir=True)
                continue
            _make_folders(target, member.filename)
            limit = int(max(member.compress_size, 1) * limits.ratio)
            if member.file_size > limit:
                raise SourceError(
                    f"{FIELD}: member {member.filename!r} inflates beyond the compression "
                    f"ratio limit ({limits.ratio:g}x; a zip bomb?)"
                )
            with bundle.open(member) as stream:
                budget.copy(stream, target, min(limit, member.file_size), member.filename)


_EXTENSION_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                      tarfile.GNUTYPE_LONGLINK)  # fmt: skip


class BoundedTarInfo(tarfile.TarInfo):
    """A tar header that refuses, before ``tarfile`` reads them, the extension headers it would
    read whole: oversized PAX/GNU headers, too many in a row, sparse maps."""

    def _proc_member(self, archive: Any) -> Any:  # tarfile's own hook
        if self.type in _EXTENSION_HEADERS:
            if self.size > MAX_HEADER_BYTES:
                raise SourceError(
                    f"{FIELD}: a tar extension header of {self.size} bytes (more than {MAX_HEADER_BYTES}); "
                    "refused before reading it"
                )
            if self.type == tarfile.XGLTYPE:
                archive.global_header_bytes += self.size
                if archive.global_header_bytes > MAX_GLOBAL_HEADER_BYTES:
                    raise SourceError(
                        f"{FIELD}: more than {MAX_GLOBAL_HEADER_BYTES} bytes of PAX global headers"
                    )
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise SourceError(f"{FIELD}: {self.name!r} is a sparse file; only plain files are accepted")
        # Each extension header reads the next header inside its own processing: count the chain.
        archive.header_chain += 1
        try:
            if archive.header_chain > MAX_HEADER_CHAIN:
                raise SourceError(f"{FIELD}: more than {MAX_HEADER_CHAIN} extension headers before a member")
            return super()._proc_member(archive)  # type: ignore[misc]
        finally:
            archive.header_chain -= 1

    def _proc_gnusparse_10(self, member: Any, pax_headers: Any, archive: Any) -> None:
        # GNU sparse 1.0 keeps its map in the member's data, read whole and unbounded by tarfile.
        raise SourceError(f"{FIELD}: {member.name!r} is a sparse file; only plain files are accepted")


class BoundedTarFile(tarfile.TarFile):
    """A TarFile that counts what ``BoundedTarInfo`` bounds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.global_header_bytes = 0
        self.header_chain = 0
        super().__init__(*args, **kwargs)


def _decompressed(raw: IO[bytes], kind: str) -> IO[bytes]:
    """A stream of the tar inside ``raw``; the decoders' memory is bounded."""
    if kind == "gzip":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if kind == "bzip2":
        return cast(IO[bytes], bz2.BZ2File(raw, "rb"))
    if kind == "xz":
        # lzma.open has no memory limit; the reader under it (stdlib's) passes one to the decoder.
        reader = DecompressReader(raw, lzma.LZMADecompressor, trailing_error=lzma.LZMAError,
                                  memlimit=XZ_MEMORY_LIMIT)  # fmt: skip
        return cast(IO[bytes], io.BufferedReader(reader))
    return raw


def _unpack_tar(archive: Path, kind: str, destination: Path, limits: Limits) -> None:
    # A compressed tar's members say nothing about compression: bound the whole archive's ratio.
    ratio_budget = int(max(archive.stat().st_size, 1) * limits.ratio)
    budget = _Budget(min(limits.total_bytes, ratio_budget))
    count = 0
    with archive.open("rb") as raw, _decompressed(raw, kind) as stream, BoundedTarFile.open(
        fileobj=stream, mode="r|", tarinfo=BoundedTarInfo
    ) as bundle:  # fmt: skip
        while (member := bundle.next()) is not None:
            # TarFile keeps every header for random access, which a stream never uses.
            bundle.members.clear()  # type: ignore[attr-defined]
            count += 1
            if count > limits.members:
                raise SourceError(f"{FIELD}: more than {limits.members} entries in the archive")
            path = safe_name(member.name)
            target = destination.joinpath(*path.parts)
            if member.isdir():
                _make_folders(target, member.name, is_dir=True)
                continue
            if not member.isfile() or member.sparse is not None:
                kind_name = "link" if member.issym() or member.islnk() else "special file"
                raise SourceError(f"{FIELD}: {member.name!r} is a {kind_name}; only files are accepted")
            file = bundle.extractfile(member)
            if file is None:
                raise SourceError(f"{FIELD}: {member.name!r} cannot be read")
            _make_folders(target, member.name)
            with file:
                budget.copy(file, target, ratio_budget, member.name)
