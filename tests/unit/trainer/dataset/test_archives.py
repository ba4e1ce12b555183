"""Unpacking hostile archives: the format comes from the magic bytes, headers are bounded before
tarfile reads them (peak memory measured in a separate process), and clashing names are errors."""

from __future__ import annotations

import gzip
import json
import lzma
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
from test_dataset_sources import write_tar, write_zip
from zthumb_trainer.dataset.sources import Limits, SourceError, unpack

MiB = 2**20


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(tarfile.USTAR_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _regular(name: str, data: bytes) -> bytes:
    return _header(name, tarfile.REGTYPE, len(data)) + data + _padding(len(data))


def write_huge_header_tar(path: Path, kind: bytes, size: int) -> Path:
    """A .tar.gz whose first member is an extension header (``kind``) of ``size`` bytes, streamed
    into gzip (a few hundred KB on disk), followed by one ordinary file."""
    record_body = b" comment=" if kind == tarfile.XHDTYPE else b""
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(_header("././@LongLink", kind, size))
        prefix = (str(size).encode() + record_body) if record_body else b""
        out.write(prefix)
        left = size - len(prefix) - 1
        while left > 0:
            out.write(b"a" * min(MiB, left))
            left -= MiB
        out.write(b"\n" + _padding(size))
        out.write(_regular("cats/a.txt", b"zt cat") + b"\0" * 1024)
    return path


# The peak memory of one unpack, in a process of its own: (its high-water mark after the imports,
# at the end) in KiB, and what the unpack said.
MEASURE = """
import json, resource, sys
from pathlib import Path
from zthumb_trainer.dataset.sources import Limits, SourceError, unpack
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    unpack(Path(sys.argv[1]), Path(sys.argv[2]), Limits(total_bytes=2**20, ratio=2))
    outcome = "unpacked"
except SourceError as error:
    outcome = str(error)
print(json.dumps([before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, outcome]))
"""
PEAK_EXTRA_KIB = 100 * 1024


def unpack_peak(archive: Path, destination: Path) -> tuple[int, str]:
    destination.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(archive), str(destination)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    before, after, outcome = json.loads(done.stdout.splitlines()[-1])
    return after - before, outcome


@pytest.mark.parametrize(("kind", "label"), [(tarfile.XHDTYPE, "pax"), (tarfile.GNUTYPE_LONGNAME, "gnu")])
def test_a_huge_extension_header_is_refused_before_it_is_read(tmp_path, kind, label):
    archive = write_huge_header_tar(tmp_path / f"{label}.tar.gz", kind, 256 * MiB)
    assert archive.stat().st_size < 2 * MiB  # small on the wire, huge once inflated
    extra_kib, outcome = unpack_peak(archive, tmp_path / "out")
    assert extra_kib < PEAK_EXTRA_KIB, f"{extra_kib // 1024} MiB more while unpacking"
    assert "extension header" in outcome and "spec.dataset.source.http" in outcome


def test_a_zip_bomb_keeps_memory_bounded_and_is_refused(tmp_path):
    bomb = write_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(256 * MiB)})
    extra_kib, outcome = unpack_peak(bomb, tmp_path / "out")
    assert extra_kib < PEAK_EXTRA_KIB
    assert "compression ratio" in outcome


def test_many_global_headers_and_long_header_chains_are_refused(tmp_path):
    # Each global header is small enough, but they accumulate for the rest of the archive.
    globals_ = b"".join(
        _header("pax_global_header", tarfile.XGLTYPE, 60_000) + _pax_record(f"k{i}", 60_000)
        + _regular(f"{i}.txt", b"x")
        for i in range(20)
    )  # fmt: skip
    archive = tmp_path / "globals.tar"
    archive.write_bytes(globals_ + b"\0" * 1024)
    with pytest.raises(SourceError, match="global headers"):
        unpack(archive, tmp_path / "a")
    chain = b"".join(_header(f"h{i}", tarfile.XHDTYPE, 512) + _pax_record("comment", 512) for i in range(12))
    archive.write_bytes(chain + _regular("a.txt", b"x") + b"\0" * 1024)
    with pytest.raises(SourceError, match="extension headers before a member"):
        unpack(archive, tmp_path / "b")


def _pax_record(keyword: str, size: int) -> bytes:
    """One PAX record of exactly ``size`` bytes (padded to a block)."""
    body_len = size - len(f" {keyword}=\n") - len(str(size))
    record = f"{size} {keyword}={'v' * body_len}\n".encode()
    assert len(record) == size
    return record + _padding(size)


def _exact_record(key_value: str) -> bytes:
    """A PAX record ``"<length> <key>=<value>\\n"`` whose length counts its own digits."""
    for digits in range(1, 6):
        length = digits + 1 + len(key_value) + 1
        if len(str(length)) == digits:
            return f"{length} {key_value}\n".encode()
    raise AssertionError(key_value)


def test_sparse_members_are_refused(tmp_path):
    """GNU sparse 1.0: the map is in the member's data, which tarfile would read whole."""
    pax = ("GNU.sparse.major=1", "GNU.sparse.minor=0", "GNU.sparse.name=a.bin", "GNU.sparse.realsize=9")
    records = b"".join(_exact_record(key_value) for key_value in pax)
    data = b"1\n0\n9\n" + _padding(6) + b"x" * 9
    archive = tmp_path / "sparse.tar"
    archive.write_bytes(
        _header("./PaxHeaders/a.bin", tarfile.XHDTYPE, len(records)) + records + _padding(len(records))
        + _regular("a.bin", data) + b"\0" * 1024
    )  # fmt: skip
    with pytest.raises(SourceError, match="sparse"):
        unpack(archive, tmp_path / "out")


def test_a_tar_whose_last_member_is_a_zip_is_unpacked_as_the_tar(tmp_path):
    inner = write_zip(tmp_path / "inner.zip", {"wrong/zip-content.txt": b"not the dataset"})
    archive = write_tar(
        tmp_path / "d.tar", {"cats/a.txt": b"zt cat", "extra/inner.zip": inner.read_bytes()}, "w"
    )
    destination = tmp_path / "out"
    destination.mkdir()
    unpack(archive, destination)
    files = sorted(str(p.relative_to(destination)) for p in destination.rglob("*") if p.is_file())
    assert files == ["cats/a.txt", "extra/inner.zip"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("gzip of a zip", gzip.compress),
        ("zip after junk", lambda zipped: b"junk" * 100 + zipped),
    ],
)
def test_only_the_magic_bytes_at_the_start_decide_the_format(tmp_path, name, content):
    zipped = write_zip(tmp_path / "z.zip", {"a.txt": b"x"}).read_bytes()
    archive = tmp_path / "d.bin"
    archive.write_bytes(content(zipped))
    with pytest.raises(SourceError, match=r"spec\.dataset\.source\.http"):
        unpack(archive, tmp_path / "out")
    assert not list((tmp_path).rglob("a.txt")), name


def _xz_with_dictionary(data: bytes, dict_size_code: int) -> bytes:
    """An xz stream of ``data`` whose block header declares another LZMA2 dictionary size (the
    header's CRC32 recomputed): what a hostile archive may declare, without compressing with it."""
    stream = bytearray(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32))
    start = 12  # after the stream header
    header_size = (stream[start] + 1) * 4
    header = stream[start : start + header_size - 4]
    position = header.index(bytes([0x21, 0x01]))  # filter LZMA2, one property byte: the dictionary size
    header[position + 2] = dict_size_code
    stream[start : start + header_size] = header + zlib.crc32(header).to_bytes(4, "little")
    return bytes(stream)


def test_an_xz_stream_that_needs_a_huge_dictionary_is_refused(tmp_path):
    tar_bytes = _regular("a.txt", b"x") + b"\0" * 1024
    archive = tmp_path / "d.tar.xz"
    archive.write_bytes(_xz_with_dictionary(tar_bytes, 40))  # 40: 4 GiB - 1
    with pytest.raises(SourceError, match=r"spec\.dataset\.source\.http.*cannot be read.*[Mm]emory"):
        unpack(archive, tmp_path / "out")
    archive.write_bytes(_xz_with_dictionary(tar_bytes, 16))  # 16: 1 MiB, as ordinary xz files
    (tmp_path / "ok").mkdir()
    unpack(archive, tmp_path / "ok")
    assert (tmp_path / "ok" / "a.txt").read_bytes() == b"x"


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("order", [("a", "a/b"), ("a/b", "a")])
def test_a_file_and_a_folder_of_the_same_name_are_an_error_naming_the_member(tmp_path, kind, order):
    members = {name: b"x" for name in order}
    archive = (write_zip if kind == "zip" else write_tar)(tmp_path / f"d.{kind}", members)
    destination = tmp_path / "out"
    destination.mkdir()
    with pytest.raises(SourceError, match=r"spec\.dataset\.source\.http: member 'a(/b)?' clashes"):
        unpack(archive, destination)


def test_names_with_a_colon_are_ordinary_names(tmp_path):
    archive = write_tar(tmp_path / "d.tar.gz", {"c:/a.txt": b"x", "cats/b:c.txt": b"y"})
    destination = tmp_path / "out"
    destination.mkdir()
    unpack(archive, destination)
    assert (destination / "c:" / "a.txt").read_bytes() == b"x"
    assert (destination / "cats" / "b:c.txt").read_bytes() == b"y"


def test_overlong_names_are_refused(tmp_path):
    archive = write_tar(tmp_path / "d.tar.gz", {"a/" + "x" * 300 + ".txt": b"x"})
    with pytest.raises(SourceError, match="not a usable file name"):
        unpack(archive, tmp_path / "out")


def test_unpacking_stays_within_the_limits_given(tmp_path):
    archive = write_tar(tmp_path / "d.tar.gz", {f"{i}.txt": bytes([i]) * 600 for i in range(3)})
    with pytest.raises(SourceError, match="more than 1000 bytes"):
        unpack(archive, tmp_path / "a", Limits(total_bytes=1000))
