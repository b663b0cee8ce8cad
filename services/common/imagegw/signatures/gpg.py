"""OpenPGP "simple signing" signatures, checked by the system's `gpgv`.

We do no OpenPGP ourselves: `load_keyring` turns the configured key files or key
data (armored or binary) into one binary keyring and asks `gpg --show-keys` what is
in it; `GpgKeyring.verify` runs `gpgv` with only that keyring, so a signature is good
only when one of the configured keys made it. gpgv writes the signed payload out.
"""

from __future__ import annotations

import base64
import binascii
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

GPG = "gpg"
GPGV = "gpgv"
#: A signature larger than this is refused unread (containers/image's limit too).
MAX_SIGNATURE_BYTES = 4 << 20
TIMEOUT = 60.0
_ARMOR_BEGIN = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
_ARMOR_END = b"-----END PGP PUBLIC KEY BLOCK-----"


class SignatureInvalid(Exception):
    """A signature that does not verify; `reason` says why, for the refusal message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class GpgKeyring:
    """The trusted keys of one signedBy requirement, as a binary OpenPGP keyring."""

    data: bytes
    #: Primary key fingerprints (upper-case hex), in the order given.
    fingerprints: tuple[str, ...]

    def verify(self, signature: bytes) -> tuple[bytes, str]:
        """(the signed payload, the signer's primary key fingerprint) or SignatureInvalid."""
        if len(signature) > MAX_SIGNATURE_BYTES:
            raise SignatureInvalid(f"signature larger than {MAX_SIGNATURE_BYTES} bytes")
        with tempfile.TemporaryDirectory(prefix="imagegw-gpgv-") as tmp:
            home = Path(tmp)
            (home / "trusted.gpg").write_bytes(self.data)
            (home / "signature").write_bytes(signature)
            try:
                done = subprocess.run(
                    [GPGV, "--homedir", tmp, "--keyring", str(home / "trusted.gpg"),
                     "--status-fd", "1", "--output", str(home / "payload"),
                     str(home / "signature")],
                    capture_output=True, timeout=TIMEOUT, check=False,
                    env={**os.environ, "LC_ALL": "C"})
            except FileNotFoundError as exc:
                raise SignatureInvalid(f"cannot run {GPGV}: it is not installed") from exc
            except subprocess.TimeoutExpired as exc:
                raise SignatureInvalid(f"{GPGV} took longer than {TIMEOUT:.0f} s") from exc
            status = _status(done.stdout)
            valid = status.get("VALIDSIG")
            if done.returncode != 0 or valid is None or "GOODSIG" not in status:
                raise SignatureInvalid(_failure(status, done.stderr))
            payload = (home / "payload").read_bytes()
        fields = valid.split()
        return payload, (fields[9] if len(fields) >= 10 else fields[0]).upper()


def _status(output: bytes) -> dict[str, str]:
    status: dict[str, str] = {}
    for line in output.decode("utf-8", "replace").splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, _, rest = line[9:].partition(" ")
            status.setdefault(keyword, rest)
    return status


def _failure(status: dict[str, str], stderr: bytes) -> str:
    if "NO_PUBKEY" in status:
        return f"signed by key {status['NO_PUBKEY']}, which this requirement does not trust"
    if "BADSIG" in status:
        return f"the signature by {status['BADSIG']} does not match its content"
    for keyword in ("EXPKEYSIG", "EXPSIG", "REVKEYSIG"):
        if keyword in status:
            return f"{keyword.lower()}: {status[keyword]}"
    if "NODATA" in status or "BADARMOR" in status:
        return "not an OpenPGP signature"
    text = stderr.decode("utf-8", "replace").strip().splitlines()
    return f"gpgv refused it: {text[-1] if text else 'no reason given'}"


def dearmor(data: bytes) -> bytes:
    """The binary packets of ASCII-armored public key blocks (binary data unchanged)."""
    if _ARMOR_BEGIN not in data:
        return data
    out = bytearray()
    for block in data.split(_ARMOR_BEGIN)[1:]:
        body, end, _ = block.partition(_ARMOR_END)
        if not end:
            raise ValueError("an armored key block has no END line")
        # Armor headers ("Comment: ...") hold a colon, base64 never does; "=" starts the CRC.
        text = b"".join(line.strip() for line in body.splitlines()
                        if line.strip() and b":" not in line and not line.startswith(b"="))
        try:
            out += base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("an armored key block is not valid base64") from exc
    return bytes(out)


def load_keyring(blobs: list[bytes]) -> GpgKeyring:
    """A keyring of every public key in `blobs`; ValueError when one holds none."""
    parts = []
    fingerprints: list[str] = []
    for number, blob in enumerate(blobs):
        binary = dearmor(blob)
        found = _show_keys(binary)
        if not found:
            which = f"key {number + 1}: " if len(blobs) > 1 else ""
            raise ValueError(f"{which}no OpenPGP public key found in it")
        parts.append(binary)
        fingerprints += [f for f in found if f not in fingerprints]
    return GpgKeyring(b"".join(parts), tuple(fingerprints))


def _show_keys(binary: bytes) -> list[str]:
    """Primary key fingerprints `gpg --show-keys` finds in a binary keyring."""
    if not binary:
        return []
    with tempfile.TemporaryDirectory(prefix="imagegw-gpg-") as tmp:
        keyfile = Path(tmp) / "keys.gpg"
        keyfile.write_bytes(binary)
        try:
            done = subprocess.run(
                [GPG, "--homedir", tmp, "--batch", "--no-autostart", "--with-colons",
                 "--show-keys", str(keyfile)],
                capture_output=True, timeout=TIMEOUT, check=False,
                env={**os.environ, "LC_ALL": "C"})
        except FileNotFoundError as exc:
            raise ValueError(f"cannot run {GPG} to read the key: it is not installed") from exc
    fingerprints = []
    expect_primary = False
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            expect_primary = True
        elif fields[0] == "fpr" and expect_primary:
            fingerprints.append(fields[9].upper())
            expect_primary = False
        elif fields[0] == "sub":
            expect_primary = False
    return fingerprints
