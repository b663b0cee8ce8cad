"""The compiled layer scanner gives exactly the Python scanner's index, or its error.

Every check scans the same bytes with `compact.scan_layer_python` and
`native_scan.scan_layer` and compares the bytes returned, or the error's class, message
and hint, and how much of the stream each read: crafted layers in every tar dialect, GNU
tar's archives, the hostile corpus, every layer the flatten/members/tarstream tests read,
thousands of generated names, numbers, PAX headers and damaged headers, cuts at every
position, and a 400k-member layer.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import tarfile
import textwrap
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import pytest
import zstandard

from imagegw.domain.errors import ContentRejected
from imagegw.pipeline import compact
from imagegw.pipeline.decompress import open_layer
from imagegw.pipeline.members import MAX_MTIME, MemberPolicy
from tests.support import hostile_corpus
from tests.support.layers import (
    BLOCK,
    compress,
    device,
    dir,
    fifo,
    file,
    hardlink,
    opaque,
    raw_member,
    symlink,
    tar_bytes,
    whiteout,
)

try:
    from imagegw.pipeline import native_scan
except ImportError as exc:  # reported by test_the_compiled_scanner_is_built
    native_scan = None  # type: ignore[assignment]
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

ROOT = Path(__file__).resolve().parents[2]
POLICIES = (MemberPolicy(), MemberPolicy(keep_setuid=True, owner_access=True))
NOT_BUILT = ("the compiled scanner imagegw.pipeline.native._scan is not built "
             "(scripts/setup, or `pip install -e .` with python3-dev installed)")


@pytest.fixture(autouse=True)
def _compiled() -> None:
    if native_scan is None:
        pytest.fail(f"{NOT_BUILT}: {_IMPORT_ERROR}")


def outcome(scan: Callable[..., bytes], data: bytes | Callable[[], Any],
            policy: MemberPolicy, layer: str) -> tuple[Any, ...]:
    """What a scan returns or raises, and how much of the stream it read."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data()
    try:
        result: tuple[Any, ...] = ("index", scan(stream, layer=layer, policy=policy))
    except ContentRejected as exc:
        result = ("rejected", type(exc).__name__, exc.message, exc.hint)
    except struct.error as exc:
        result = ("struct.error", str(exc))
    read = getattr(stream, "bytes_out", None)  # a LayerStream counts what it inflated
    return (*result, stream.tell() if read is None else read)


def assert_same(data: bytes | Callable[[], Any], *, policy: MemberPolicy = POLICIES[0],
                layer: str = "sha256:0123") -> tuple[Any, ...]:
    """Both scanners' outcome on `data` (bytes, or a function opening a fresh stream)."""
    expected = outcome(compact.scan_layer_python, data, policy, layer)
    assert outcome(native_scan.scan_layer, data, policy, layer) == expected
    return expected


def test_the_compiled_scanner_is_built() -> None:
    assert native_scan is not None, NOT_BUILT
    assert Path(native_scan._scan.__file__).parent == \
        ROOT / "services/common/imagegw/pipeline/native"


def test_compact_scan_layer_uses_the_compiled_scanner(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = native_scan.scan_layer

    def counted(stream: BinaryIO, **kwargs: Any) -> bytes:
        calls.append(kwargs["layer"])
        return original(stream, **kwargs)

    monkeypatch.setattr(native_scan, "scan_layer", counted)
    data = tar_bytes(file("a", b"1"))
    assert compact.scan_layer(io.BytesIO(data), layer="l", policy=POLICIES[0]) == \
        compact.scan_layer_python(io.BytesIO(data), layer="l", policy=POLICIES[0])
    assert calls == ["l"]


def test_without_the_extension_compact_uses_the_python_scanner(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imagegw.pipeline.native_scan", None)  # import fails
    calls = []
    python_scanner = compact.scan_layer_python

    def counted(stream: BinaryIO, **kwargs: Any) -> bytes:
        calls.append(kwargs["layer"])
        return python_scanner(stream, **kwargs)

    monkeypatch.setattr(compact, "scan_layer_python", counted)
    data = mixed_layer(tarfile.PAX_FORMAT)
    assert compact.scan_layer(io.BytesIO(data), layer="l", policy=POLICIES[0]) == \
        native_scan.scan_layer(io.BytesIO(data), layer="l", policy=POLICIES[0])
    assert calls == ["l"]


# -- crafted layers -------------------------------------------------------------------


def mixed_layer(tar_format: Literal[0, 1, 2]) -> bytes:
    long_dir = "/".join(f"level{n}-" + "d" * 40 for n in range(5))
    return tar_bytes(
        dir("etc", 0o750, mtime=7),
        dir("./usr/"), dir("usr/bin", 0o2755),
        file("etc/passwd", b"root:x:0:0\n", 0o644, mtime=1_700_000_000),
        file("./usr/bin/tool", b"#!/bin/sh\n", 0o4755, uid=1000),
        file("usr/bin/sticky", b"", 0o1777), file("usr/bin/noread", b"x", 0o000),
        file("usr/bin/exec-only", b"x", 0o111),
        hardlink("etc/passwd.bak", "etc/passwd"), hardlink("etc/again", "./etc/passwd/"),
        symlink("etc/motd", "/run/motd"), symlink("etc/up", "../../.."),
        whiteout("usr/lib/old"), opaque("var/cache"), opaque(""),
        device("dev/null"), device("dev/sda", block=True), fifo("run/fifo"),
        file("//abs//./x/", b"abs"), file("/etc/absolute", b"a"), dir("./"), dir("/"),
        file("usr/.wh..wh.plnk", b"aufs"), file("caf\u00e9/na\u00efve", b"utf-8"),
        file(long_dir + "/leaf-" + "f" * 90, b"long"),
        symlink(long_dir + "/link", "t" * 150), hardlink("deep-link", long_dir + "/leaf-" + "f" * 90),
        file("big", bytes(70_000)), file("after-big", b"tail"),
        tar_format=tar_format,
    )


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT,
                                        tarfile.PAX_FORMAT], ids=["ustar", "gnu", "pax"])
@pytest.mark.parametrize("policy", POLICIES, ids=["default", "setuid-owner-access"])
def test_every_tar_dialect_gives_the_same_index(tar_format: Literal[0, 1, 2],
                                               policy: MemberPolicy) -> None:
    if tar_format == tarfile.USTAR_FORMAT:  # ustar cannot hold the long names
        data = tar_bytes(file("usr/" + "p" * 120 + "/" + "n" * 99, b"prefix"),
                         file("a", b"x"), dir("d/"), symlink("s", "t"), tar_format=tar_format)
    else:
        data = mixed_layer(tar_format)
    kind, index, _ = assert_same(data, policy=policy)
    assert kind == "index" and len(compact.decode(index).entries) > 3


def test_gnu_base256_numbers_and_large_owners() -> None:
    info = tarfile.TarInfo("owned")
    info.uid, info.gid, info.mtime = 8**8 + 5, 2**40, 8**12
    gnu = info.tobuf(tarfile.GNU_FORMAT)
    data = (raw_member("big", data=b"0123456789", mtime=2**40, base256=True) + gnu
            + raw_member("old", data=b"x", mtime=2**62, base256=True) + bytes(1024))
    kind, index, _ = assert_same(data)
    # Beyond what a ustar header holds, mtimes are clamped (members.MAX_MTIME).
    assert [(e.path, e.mtime, e.size) for e in compact.decode(index).entries] == [
        ("big", MAX_MTIME, 10), ("owned", MAX_MTIME, 0), ("old", MAX_MTIME, 1)]


def test_pax_records_apply_as_tarstream_applies_them() -> None:
    cases: list[dict[str, str | bytes]] = [
        {"path": "pax/ü-name", "linkpath": "ignored"},
        {"mtime": "1700000000.123456789", "uid": "70000", "gid": "70000"},
        {"mtime": "-17.5"}, {"size": "3"}, {"size": "-1"}, {"size": "x"},
        {"mtime": "1_000"}, {"mtime": " 12 "}, {"mtime": "\u0661\u0662"}, {"mtime": ""},
        {"mtime": "9" * 30}, {"mtime": str(2**63 - 1)}, {"mtime": str(2**63)},
        {"mtime": "-" + "9" * 40}, {"uid": "1" * 5000}, {"GNU.sparse.major": "1"},
        {"path": "a\nb"}, {"path": "./"}, {"path": "x/../y"}, {"comment": "="},
    ]
    for records in cases:
        for kind in (b"0", b"2", b"5", b"1"):
            outcome = assert_same(raw_member("ustar-name", type=kind, data=b"abc",
                                             linkname="t", pax=records) + bytes(1024))
            assert outcome[0] != "struct.error", records  # huge mtimes are clamped


def test_gnu_long_names_and_links() -> None:
    def long(kind: bytes, text: bytes) -> bytes:
        return raw_member("././@LongLink", type=kind, data=text)

    for name in (b"n" * 300, b"dir/" * 80, b"with\0nul-after", b"", b"./", b"trailing/"):
        for kind in (b"0", b"\0", b"2", b"1", b"5"):
            assert_same(long(b"L", name) + long(b"K", b"target/" * 40)
                        + raw_member("short", type=kind, linkname="l") + bytes(1024))


def test_header_quirks_are_read_as_tarstream_reads_them() -> None:
    quirks = [
        raw_member("olddir/", type=b"\0"), raw_member("contiguous", type=b"7", data=b"c"),
        raw_member("sparse", type=b"S", data=b"s" * 700), raw_member("vendor", type=b"V"),
        raw_member("high", type=b"\xe9", data=b"h"),
        raw_member("pax_global_header", type=b"g", data=b"17 path=evil/../x\n"),
        raw_member("signed-sum", data=b"\xff" * 3, mode=0o644).replace(b"signed-sum",
                                                                      b"signed-\xff\xfe"),
    ]
    for member in quirks:
        assert_same(member + raw_member("next", data=b"n") + bytes(1024))
    assert_same(b"".join(quirks) + bytes(1024))


def with_fields(member: bytes, checksum: Callable[[bytes], int] | None = None,
                **fields: bytes) -> bytes:
    """A one-header member with raw field bytes put in (size=..., mtime=...), checksummed
    as tar writers do, or by `checksum`."""
    offsets = {"mode": (100, 8), "size": (124, 12), "mtime": (136, 12)}
    header = bytearray(member[:BLOCK])
    for key, value in fields.items():
        start, length = offsets[key]
        header[start:start + length] = value
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % (checksum or sum)(bytes(header))
    return bytes(header) + member[BLOCK:]


def test_checksums_in_the_forms_tarstream_accepts() -> None:
    high = raw_member("high-\xff\xfe-bytes".encode("latin-1"), data=b"x")
    for checksum in (sum, lambda h: sum(h) - 2 * sum(b for b in h if b > 127),
                     lambda h: sum(b - 256 if b > 127 else b for b in h), lambda h: sum(h) + 1):
        assert_same(with_fields(high, checksum) + bytes(1024))


def test_a_huge_extension_header_is_refused_with_its_exact_size() -> None:
    for size in (b"\x80" + (2**80).to_bytes(11, "big"), b"\x80" + (2**21).to_bytes(11, "big"),
                 b"%011o\0" % (1 << 20), b"%011o\0" % ((1 << 20) + 1)):
        for kind in (b"L", b"K", b"x", b"g"):
            member = with_fields(raw_member("ext", type=kind, data=b"n" * 600), size=size)
            assert_same(member + raw_member("m", data=b"x") + bytes(1024))


def test_many_distinct_modes_are_all_asked_of_the_rules() -> None:
    """More distinct (mode, kind) pairs than the scanner caches."""
    members = [raw_member(f"f{n}", type=b"05"[n % 2:n % 2 + 1], mode=n * 7 % 0o7777777)
               for n in range(3000)]
    for policy in POLICIES:
        kind, index, _ = assert_same(b"".join(members) + bytes(1024), policy=policy)
        assert len({entry.mode for entry in compact.decode(index).entries}) > 1000


def test_one_raw_mode_gives_each_kind_its_own_mode() -> None:
    layer = b"".join(raw_member(f"{kind.decode()}-{mode:o}", type=kind, mode=mode, linkname="f")
                     for mode in (0o000, 0o111, 0o4755) for kind in (b"0", b"5", b"2", b"1"))
    layer = raw_member("f") + layer + bytes(1024)
    kind, index, _ = assert_same(layer, policy=POLICIES[1])
    assert len({entry.mode for entry in compact.decode(index).entries
                if entry.path.endswith("-0")}) == 3  # file and hardlink alike


def test_every_cut_of_a_layer_fails_or_succeeds_alike() -> None:
    data = mixed_layer(tarfile.PAX_FORMAT)[:200_000]
    for cut in sorted({*range(0, len(data), 509), *range(0, 6000, 1)}):
        assert_same(data[:cut])


def test_short_reads_and_streams_without_readinto() -> None:
    data = mixed_layer(tarfile.GNU_FORMAT) + raw_member("tail", pax={"c": "v" * 9000})

    class Trickle(io.RawIOBase):
        """At most 777 bytes per read: every header and extension arrives in pieces."""

        def __init__(self) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            chunk = self._data.read(min(len(buffer), 777))
            buffer[: len(chunk)] = chunk
            return len(chunk)

        def read(self, size: int = -1) -> bytes:
            return self._data.read(min(size, 777))

        def tell(self) -> int:
            return self._data.tell()

    class ReadOnly:
        def __init__(self) -> None:
            self._data = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._data.read(size)

        def tell(self) -> int:
            return self._data.tell()

    expected = assert_same(data)
    assert assert_same(Trickle)[:2] == expected[:2]
    assert assert_same(ReadOnly)[:2] == expected[:2]


def test_the_stream_is_read_as_tarstream_reads_it(tmp_path: Path) -> None:
    """Errors of the stream itself (the decompression cap, a cut gzip) surface at the
    same point: the end of the archive stops both before trailing data is inflated."""
    archive = tar_bytes(file("a", b"1"), file("b", bytes(5 << 20)))
    for tail in (b"", bytes(3 << 20), zlib.compress(bytes(3 << 20))):
        for compression in ("zstd", "gzip", "none"):
            blob = tmp_path / f"layer-{len(tail)}.{compression}"
            blob.write_bytes(compress(archive + tail, compression))
            for cap in (2 << 20, 6 << 20, 7 << 20, 9 << 20):
                assert_same(functools.partial(open_layer, blob, max_uncompressed=cap))
    cut = tmp_path / "cut.gz"  # a gzip stream that ends early: the inflater's error
    cut.write_bytes(compress(archive, "gzip")[:-2000])
    assert assert_same(lambda: open_layer(cut, max_uncompressed=1 << 30))[0] == "rejected"


def test_scans_run_in_threads_at_once() -> None:
    data = ManyMembers(3000).readall()  # runs of plain members: scanned without the GIL
    expected = compact.scan_layer_python(io.BytesIO(data), layer="l", policy=POLICIES[0])
    results: list[bytes] = []

    def work() -> None:
        for _ in range(20):
            results.append(native_scan.scan_layer(io.BytesIO(data), layer="l",
                                                  policy=POLICIES[0]))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 80


def test_a_layer_name_that_cannot_be_encoded_fails_alike() -> None:
    data = tar_bytes(file("a", b"1"))
    for scan in (compact.scan_layer_python, native_scan.scan_layer):
        with pytest.raises(UnicodeEncodeError):
            scan(io.BytesIO(data), layer="sha256:\ud800", policy=POLICIES[0])
    assert_same(data, layer="caf\u00e9 \udcff")


def test_a_negative_extension_size_is_refused() -> None:
    """A negative PAX size would move a reader backwards (once, TarReader read the same
    header forever at -512); both scanners refuse every negative size alike."""
    def pax_of_size(size: int) -> bytes:
        header = bytearray(raw_member("PaxHeader", type=b"x"))
        header[124:136] = size.to_bytes(12, "big", signed=True)
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        return bytes(header)

    for size in (-1, -511, -512, -(2**80)):
        data = pax_of_size(size) + raw_member("f", data=b"x") + bytes(1024)
        assert_same(data)
        with pytest.raises(ContentRejected, match="PAX header with a negative size at offset 0"):
            native_scan.scan_layer(io.BytesIO(data), layer="l", policy=POLICIES[0])


# -- generated names and numbers --------------------------------------------------------

_PARTS = [b"", b".", b"..", b"a", b"bin", b".wh.x", b".wh..wh..opq", b".wh.", b".wh..",
          b".wh..wh.plnk", b".wh...", "é".encode(), b"\xff\xfe", b"\xed\xa0\x80", b"\0",
          b"\n", b"x\ny", b"a\0b", b"c" * 255, b"c" * 256, b"...", b"./", b"/", b" ",
          *[b"lib", b"site-packages", "日本".encode(), b"a.py", b"..a", b".x", b"x.", b"wh."] * 3]


def generated_name(rng: random.Random) -> bytes:
    parts = [rng.choice(_PARTS) for _ in range(rng.randint(1, 5))]
    name = b"/".join(parts)
    if rng.random() < 0.2:
        name = rng.choice([b"/", b"./", b"//", b"././"]) + name
    if rng.random() < 0.2:
        name += rng.choice([b"/", b"//", b"/."])
    if rng.random() < 0.05:
        name = (b"d" * 200 + b"/") * rng.choice([19, 20, 21]) + name
    if rng.random() < 0.05:
        name = rng.randbytes(rng.randint(0, 40))
    return name


def member_with(rng: random.Random, name: bytes, link: bytes, kind: bytes) -> bytes:
    """The member with `name` and `link` in one of the ways a tar can say it."""
    how = rng.choice(["ustar", "pax", "gnu"])
    mode = rng.choice([0o644, 0o755, 0o4755, 0o7777, 0o000, 0o1777])
    data = b"" if kind in b"123456" else b"d" * rng.choice([0, 1, 600])  # header-only types
    if how == "ustar" and len(name) <= 100 and b"\0" not in name + link and len(link) <= 100:
        return raw_member(name, type=kind, data=data, linkname=link, mode=mode)
    if how == "gnu" and b"\0" not in name + link:
        return (raw_member("././@LongLink", type=b"L", data=name + b"\0")
                + raw_member("././@LongLink", type=b"K", data=link + b"\0")
                + raw_member(name[:100], type=kind, data=data, linkname=link[:100], mode=mode))
    return raw_member("ignored", type=kind, data=data, mode=mode,
                      pax={"path": name, "linkpath": link})


def test_generated_names_are_admitted_or_refused_alike() -> None:
    """Every name rule's fast path equals members.admit: thousands of generated names,
    links and types, each in its own layer (a refusal ends a scan)."""
    rng = random.Random(21)
    kinds = [b"0", b"5", b"2", b"1", b"\0", b"7", b"3", b"6", b"S", b"z"]
    for number in range(3000):
        name = generated_name(rng)
        link = generated_name(rng) if rng.random() < 0.7 else rng.choice([b"", b"t", b"/abs"])
        member = member_with(rng, name, link, rng.choice(kinds))
        assert_same(member + bytes(1024), policy=POLICIES[number % 2])


_NUMBER_BYTES = b"0123456789 \0\t\n\x0b_+-oOx\x80\xff"


def test_generated_numbers_are_read_alike() -> None:
    """Tar number fields in every form Python's int() and tarstream._number know."""
    rng = random.Random(7)
    fields = [(100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (148, 8)]
    for _ in range(4000):
        header = bytearray(raw_member(b"n", type=rng.choice([b"0", b"5", b"2"]),
                                      linkname=b"t"))
        start, length = rng.choice(fields)
        if rng.random() < 0.5:
            text = bytes(rng.choice(_NUMBER_BYTES) for _ in range(length))
        else:
            text = (b"0o" if rng.random() < 0.1 else b"") + b"%o" % rng.randint(0, 8**6)
            text = text.rjust(length - 1, rng.choice([b" ", b"0"])) + rng.choice([b"\0", b" ", b""])
            text = text[:length].ljust(length, b"\0")
        header[start:start + length] = text
        if start != 148 or rng.random() < 0.5:
            header[148:156] = b" " * 8
            header[148:156] = b"%06o\0 " % sum(header)
        assert_same(bytes(header) + bytes(2048))


def test_generated_pax_headers_are_read_alike() -> None:
    rng = random.Random(3)
    lengths = [b"+1_0", b" 12", b"\t9", b"0x10", b"-1", b"1__2", b"12_", b"99999999999999999999",
               b"1" * 5000, b"", b"\xd9\xa1"]
    keys = [b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime", b"GNU.sparse.size",
            b"comment", b"", b"pat"]
    values = [b"1", b"12.5", b"-3", b"1_000", b" 7 ", b"\xff", b"a=b", b"", b"x/y", b"0x1",
              "\u0661".encode(), b"9" * 25]
    for _ in range(2000):
        records = []
        for _ in range(rng.randint(1, 4)):
            body = b" " + rng.choice(keys) + rng.choice([b"=", b""]) + rng.choice(values) + b"\n"
            size = len(body) + len(str(len(body) + 2))
            length = str(size).encode() if rng.random() < 0.7 else rng.choice(lengths)
            records.append(length + body)
        data = b"".join(records) + (b"\0" * rng.randint(0, 3))
        pax = raw_member("PaxHeader", type=b"x", data=data)
        assert_same(pax + raw_member("m", data=b"abc", linkname="t") + bytes(1024))


def test_damaged_headers_are_read_alike() -> None:
    """Random bytes changed in a layer's headers (checksum fixed or not)."""
    rng = random.Random(11)
    layer = mixed_layer(tarfile.GNU_FORMAT)[:80 * BLOCK]
    headers = [offset for offset in range(0, len(layer), BLOCK)
               if layer[offset + 257:offset + 262] == b"ustar"]
    done = 0
    while done < 1500:
        damaged = bytearray(layer)
        for _ in range(rng.randint(1, 3)):
            at = rng.choice(headers)
            damaged[at + rng.randrange(BLOCK)] = rng.choice([0, 0x20, 0x2F, 0x30, 0x37, 0x78,
                                                             0x80, 0xFF, rng.randrange(256)])
            if rng.random() < 0.7:
                damaged[at + 148:at + 156] = b" " * 8
                damaged[at + 148:at + 156] = b"%06o\0 " % sum(damaged[at:at + BLOCK])
        assert_same(bytes(damaged))
        done += 1


def test_gnu_tar_archives_in_every_format(tmp_path: Path) -> None:
    """Archives GNU tar writes (sparse files, long names and links, hardlinks, every
    format it knows), as a layer built by a real tool would be."""
    tree = tmp_path / "tree"
    deep = tree / ("long-" + "d" * 120) / ("deeper-" + "e" * 120)
    deep.mkdir(parents=True)
    (deep / ("file-" + "f" * 90)).write_bytes(b"deep")
    (tree / "caf\u00e9.txt").write_bytes(b"utf-8 name")
    (tree / "plain").write_bytes(b"plain" * 300)
    os.link(tree / "plain", tree / ("hardlink-" + "h" * 110))
    (tree / "symlink").symlink_to("l" * 150)
    (tree / "exec").write_bytes(b"#!/bin/sh\n")
    (tree / "exec").chmod(0o4755)
    with open(tree / "sparse", "wb") as sparse:
        sparse.seek(3 << 20)
        sparse.write(b"end of a sparse file")
    for tar_format in ("gnu", "oldgnu", "posix", "ustar", "v7"):
        out = tmp_path / f"{tar_format}.tar"
        sparse_flag = ["--sparse"] if tar_format in ("gnu", "oldgnu", "posix") else []
        subprocess.run(["tar", "--create", f"--format={tar_format}", *sparse_flag, "--file",
                        str(out), "--sort=name", "-C", str(tree), "."],
                       check=False, capture_output=True)  # ustar/v7 skip what they cannot hold
        kind, index, _ = assert_same(out.read_bytes(), policy=POLICIES[1])
        assert kind == "index" and len(compact.decode(index).entries) >= 4, tar_format


def test_chains_of_extension_headers_apply_alike() -> None:
    """Several PAX, global and GNU headers before one member: later records win, a sparse
    key stays, the GNU long name's trailing slash makes a directory, PAX path wins."""
    rng = random.Random(5)
    records = [{"path": "pax/a"}, {"path": "pax/b/"}, {"linkpath": "pax-target"},
               {"GNU.sparse.name": "s"}, {"mtime": "12.5"}, {"size": "0"}, {"size": "700"},
               {"path": "../evil"}, {}]
    for _ in range(1500):
        chain = b""
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice([b"x", b"g", b"L", b"K"])
            if kind in b"xg":
                chain += raw_member("PaxHeader", type=kind, pax=None,
                                    data=b"".join(pax_record(k, v) for k, v in
                                                  rng.choice(records).items()))
            else:
                text = rng.choice([b"gnu/long-" + b"n" * 120, b"gnu/dir/", b"t", b""])
                chain += raw_member("././@LongLink", type=kind, data=text + b"\0")
        member = raw_member("ustar", type=rng.choice([b"0", b"\0", b"2", b"1", b"5"]),
                            data=b"d" * rng.choice([0, 700]), linkname="l")
        assert_same(chain + member + bytes(1024), policy=POLICIES[1])


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + len(str(len(body) + 2))
    return str(length).encode() + body


# -- the layers of the other tests ------------------------------------------------------


def hostile_layers() -> Iterator[tuple[str, bytes]]:
    for case in hostile_corpus.cases():
        for number, blob in enumerate(case.layers):
            yield f"{case.name}-{number}", decompressed(blob)


def decompressed(blob: bytes) -> bytes:
    """The tar inside a layer blob, as much of it as inflates (cut blobs included)."""
    if blob.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(wbits=31).decompress(blob)
    if blob.startswith(b"\x28\xb5\x2f\xfd"):
        out = io.BytesIO()
        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)) as reader:
                while chunk := reader.read(1 << 20):
                    out.write(chunk)
        except zstandard.ZstdError:
            pass
        return out.getvalue()
    return blob


def test_the_hostile_corpus_is_scanned_alike() -> None:
    outcomes = {name: assert_same(data, policy=policy)[0]
                for name, data in hostile_layers() for policy in POLICIES}
    assert "rejected" in outcomes.values() and "index" in outcomes.values()


_RECORDER = textwrap.dedent("""
    import hashlib, json, sys
    import pytest
    from imagegw.pipeline import tarstream

    seen = {}
    original = tarstream.TarReader.__init__

    class Tee:
        def __init__(self, stream):
            self.stream, self.parts = stream, []
            seen[id(self)] = self.parts
        def read(self, size=-1):
            data = self.stream.read(size)
            self.parts.append(data)
            return data

    def recording_init(self, stream, *, layer):
        original(self, Tee(stream), layer=layer)

    tarstream.TarReader.__init__ = recording_init
    code = pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[2:]])
    layers = {}
    for parts in seen.values():
        data = b"".join(parts)
        layers[hashlib.sha256(data).hexdigest()] = data.hex()
    with open(sys.argv[1], "w") as out:
        json.dump({"code": int(code), "layers": list(layers.values())}, out)
""")


def test_the_layers_of_the_flatten_members_and_tarstream_tests(tmp_path: Path) -> None:
    """Every byte stream those tests give TarReader (recorded in a pytest run of them)."""
    record = tmp_path / "layers.json"
    run = subprocess.run(
        [sys.executable, "-c", _RECORDER, str(record), "tests/unit/test_flatten.py",
         "tests/unit/test_members.py", "tests/unit/test_tarstream.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert record.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    recorded = json.loads(record.read_text())  # (those tests' own failures are theirs)
    assert len(recorded["layers"]) > 50, run.stdout[-3000:]
    for text in recorded["layers"]:
        for policy in POLICIES:
            assert_same(bytes.fromhex(text), policy=policy)


# -- a 400k-member layer ------------------------------------------------------------------


class ManyMembers(io.RawIOBase):
    """A generated tar of `count` members (dirs, files, symlinks, hardlinks, whiteouts),
    made a megabyte at a time so it is never held in memory."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._next = 0
        self._pending = memoryview(b"")
        template = bytearray(raw_member("x"))
        template[0:100] = bytes(100)
        template[148:156] = b" " * 8
        self._template = bytes(template)
        self._base_sum = sum(template) - ord("0")  # the type flag varies

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = memoryview(self._make(2048))
        take = min(len(buffer), len(self._pending))
        buffer[:take] = self._pending[:take]
        self._pending = self._pending[take:]
        return take

    def _make(self, members: int) -> bytes:
        out = bytearray()
        stop = min(self._count, self._next + members)
        for number in range(self._next, stop):
            out += self._member(number)
        if stop == self._count and self._next < stop:
            out += bytes(2 * BLOCK)
        self._next = stop
        return bytes(out)

    def _member(self, number: int) -> bytes:
        directory = f"pkgs/p{number // 1000:04d}"
        kind, name, link, size = b"0", f"{directory}/f{number:06d}.py", b"", number % 3 * 300
        if number % 1000 == 0:
            kind, name, size = b"5", directory + "/", 0
        elif number % 97 == 0:
            kind, link, size = b"2", b"../f.py", 0
        elif number % 89 == 0:
            kind, link, size = b"1", f"{directory}/f{number - 1:06d}.py".encode(), 0
        elif number % 83 == 0:
            name, size = f"{directory}/.wh.f{number - 2:06d}.py", 0
        header = bytearray(self._template)
        encoded = name.encode()
        header[0:len(encoded)] = encoded
        header[124:136] = b"%011o\0" % size
        header[156:157] = kind
        header[157:157 + len(link)] = link
        header[148:156] = b"%06o\0 " % (sum(header) - ord(" ") * 8 + 256)
        return bytes(header) + bytes(-(-size // BLOCK) * BLOCK)


def test_a_400k_member_layer() -> None:
    count = 400_000
    native = native_scan.scan_layer(cast(BinaryIO, ManyMembers(count)), layer="many",
                                    policy=POLICIES[0])
    magic, entries, markers, dropped, _ = struct.unpack_from("<8sIIQI", native)
    whiteouts = sum(1 for n in range(count) if n % 1000 and n % 97 and n % 89 and n % 83 == 0)
    assert (magic, entries + markers, markers, dropped) == (compact.MAGIC, count, whiteouts, 0)
    wanted = {0, 1, 89, 97, 83, 398_802}
    sample = {entry[4]: entry for entry in compact.raw_entries(native) if entry[4] in wanted}
    assert sample.pop(0) == (1, 0o644, 0, 0, 0, 512, b"pkgs/p0000", b"")
    assert sample.pop(1) == (0, 0o644, 0, 300, 1, 1024, b"pkgs/p0000/f000001.py", b"")
    assert sample.pop(89)[::7] == (3, b"pkgs/p0000/f000088.py")
    assert sample.pop(97)[::7] == (2, b"../f.py")
    assert sample.pop(398_802)[::6] == (0, b"pkgs/p0398/f398802.py")
    assert not sample  # 83 is a whiteout: a marker
    python = compact.scan_layer_python(cast(BinaryIO, ManyMembers(count)), layer="many",
                                       policy=POLICIES[0])
    assert hashlib.sha256(native).digest() == hashlib.sha256(python).digest()


def test_a_name_limit_past_what_an_index_holds_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # An entry keeps its path and link lengths in 16 bits: the scanner refuses to start
    # with a longer name limit rather than cut a name short.
    chunk, extension, _, component, whiteout = native_scan._Hooks.limits
    monkeypatch.setattr(native_scan._Hooks, "limits",
                        (chunk, extension, 65_536, component, whiteout))
    with pytest.raises(ValueError, match="limits out of range"):
        native_scan.scan_layer(io.BytesIO(bytes(1024)), layer="l", policy=POLICIES[0])
