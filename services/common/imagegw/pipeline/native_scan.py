"""The compiled layer scanner: a decompressed layer stream to its compact index.

`scan_layer` returns exactly `compact.scan_layer_python`'s bytes and raises the same
ContentRejected. The C extension (native/scan.c) reads the tar as `tarstream.TarReader`
does and admits plain members itself; every other member goes to `members.admit`, and
every error message is made here. Importing this module raises ImportError when the
extension was not built (compact.scan_layer then uses the Python scanner).
"""

from __future__ import annotations

from typing import BinaryIO, NoReturn

from imagegw.domain.errors import ContentRejected

from . import members, tarstream
from .compact import ENTRY_KINDS, MARKER_KINDS, scan_layer_python
from .members import Admitted, Marker, MemberPolicy
from .native import _scan  # ImportError: not built

__all__ = ["scan_layer"]

_ENTRY_CODES = {kind: code for code, kind in enumerate(ENTRY_KINDS)}
_MARKER_CODES = {kind: code for code, kind in enumerate(MARKER_KINDS)}
#: A member type flag for each entry kind (to ask admit the mode of a kind).
_TYPE_OF_KIND = (tarstream.REGULAR, tarstream.DIRECTORY, tarstream.SYMLINK, tarstream.HARDLINK)


def scan_layer(stream: BinaryIO, *, layer: str, policy: MemberPolicy,
               emitter: _scan.Emitter | None = None, number: int = 0) -> bytes:
    """The compact index of a decompressed layer; raises ContentRejected as
    `flatten.index_layer` does. With an `emitter` (native_onepass.py), the layer is layer
    `number` of the one-pass flatten: its visible entries are written too."""
    try:
        name = layer.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # compact.encode fails on it after the scan: same path
        if emitter is not None:
            raise _scan.SpeculationFailed(f"the layer name {layer!r} is not UTF-8") from None
        return scan_layer_python(stream, layer=layer, policy=policy)
    if emitter is None:
        result: bytes = _scan.scan(stream, name, _Hooks(layer, policy))
    else:
        result = _scan.scan(stream, name, _Hooks(layer, policy), emitter, number)
    return result


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _Hooks:
    """What the C scanner asks of Python: the member rules and every error message
    (the same messages as tarstream.TarReader's)."""

    #: Read size, extension header cap, name limits and the whiteout prefix.
    limits = (tarstream.CHUNK, tarstream.MAX_EXTENSION_BYTES, members.MAX_NAME_BYTES,
              members.MAX_COMPONENT_BYTES, members.WHITEOUT_PREFIX.encode())

    def __init__(self, layer: str, policy: MemberPolicy) -> None:
        self.layer = layer
        self.policy = policy

    # -- the member rules ------------------------------------------------------------

    def admit(self, name: bytes, type_code: int, mode: int, uid: int, gid: int, mtime: int,
              size: int, link: bytes, ordinal: int, offset: int
              ) -> tuple[int, int, int, int, int, bytes, bytes] | tuple[int, int, bytes] | None:
        """members.admit of one member: (0, kind, mode, mtime, size, path, link) for an
        entry, (1, kind, path) for a marker, None when it is dropped."""
        member = tarstream.RawMember(name=_text(name), type=chr(type_code), mode=mode, uid=uid,
                                     gid=gid, mtime=mtime, size=size, linkname=_text(link),
                                     ordinal=ordinal, offset=offset)
        result = members.admit(member, layer=self.layer, policy=self.policy)
        if isinstance(result, Admitted):
            return (0, _ENTRY_CODES[result.kind], result.mode, result.mtime, result.size,
                    _bytes(result.path), _bytes(result.link))
        if isinstance(result, Marker):
            return (1, _MARKER_CODES[result.kind], _bytes(result.path))
        return None

    def mode(self, mode: int, kind_code: int) -> int:
        """The mode admit gives a plain member of this raw mode and kind (the C scanner
        asks once per distinct pair)."""
        probe = tarstream.RawMember(name="m", type=_TYPE_OF_KIND[kind_code], mode=mode, uid=0,
                                    gid=0, mtime=0, size=0, linkname="t", ordinal=0, offset=0)
        result = members.admit(probe, layer=self.layer, policy=self.policy)
        assert isinstance(result, Admitted)
        return result.mode

    @staticmethod
    def pax_number(text: bytes) -> int:
        """int() of a PAX number record's text before any '.' (ValueError when bad)."""
        return int(_text(text))

    # -- errors (each raises; the messages of tarstream.TarReader) ----------------------

    def _reject(self, message: str, hint: str | None = None) -> NoReturn:
        raise ContentRejected(message, hint=hint)

    def truncated_header(self) -> NoReturn:
        self._reject(f"layer {self.layer} ends in the middle of a tar header",
                     "the layer is truncated or corrupt")

    def truncated_member(self) -> NoReturn:
        self._reject(f"layer {self.layer} ends in the middle of a tar member",
                     "the layer is truncated or corrupt")

    def extension_too_large(self, size: int, what: str) -> NoReturn:
        self._reject(f"layer {self.layer} has a {size}-byte {what} header "
                     f"(limit {tarstream.MAX_EXTENSION_BYTES})", "the layer is hostile or corrupt")

    def negative_extension(self, what: str, offset: int) -> NoReturn:
        self._reject(f"layer {self.layer} has a {what} header with a negative size at offset "
                     f"{offset}", "the layer is hostile or corrupt")

    def extension_missing(self, what: str) -> NoReturn:
        self._reject(f"layer {self.layer} ends inside a {what} header")

    def bad_number(self, offset: int) -> NoReturn:
        self._reject(f"layer {self.layer} has a tar header with a bad number at offset {offset}",
                     "the layer is corrupt")

    def bad_checksum(self, offset: int) -> NoReturn:
        self._reject(f"layer {self.layer} has a tar header with a bad checksum at offset "
                     f"{offset}", "the layer is corrupt, or not a tar archive")

    def malformed_pax(self) -> NoReturn:
        self._reject(f"layer {self.layer} has a malformed PAX header", "the layer is corrupt")

    def malformed_pax_record(self) -> NoReturn:
        self._reject(f"layer {self.layer} has a malformed PAX record")

    def bad_pax_number(self, name: bytes, key: str, value: bytes) -> NoReturn:
        self._reject(f"member {_text(name)!r} has a bad PAX {key} {_text(value)!r}")

    def negative_size(self, name: bytes) -> NoReturn:
        self._reject(f"layer {self.layer}: member {_text(name)!r} has a negative size")
