"""containers-policy.json(5) for the `docker` transport: parsing and scope lookup.

`load_policy(path)` reads a policy as containers/image does (strict: unknown,
duplicate or missing fields are errors, each named by file and key) and loads every
key it names, so a policy that loads here has keys that can be used. `Policy.scope_for`
picks the requirements of the most specific scope matching an image.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegw.domain.errors import ConfigError

from .dockerref import (
    DockerRef,
    ReferenceSyntaxError,
    is_domain,
    parse_exact_named,
    parse_named,
    policy_identity,
    policy_namespaces,
)
from .gpg import GpgKeyring, load_keyring
from .sigstore import SigstoreKey, load_sigstore_key

#: Transports whose scopes we enforce; the others are kept out of our decisions.
DOCKER = "docker"
IDENTITY_RULES = ("matchExact", "matchRepoDigestOrExact", "matchRepository",
                  "exactReference", "exactRepository", "remapIdentity")
REQUIREMENT_TYPES = ("insecureAcceptAnything", "reject", "signedBy", "sigstoreSigned")
MAX_POLICY_BYTES = 4 << 20


class PolicyFormatError(ConfigError):
    """The policy file (or a key it names) cannot be used; the message names file and key."""


@dataclass(frozen=True)
class IdentityRule:
    """A `signedIdentity`: which docker-reference in a signature is accepted for an image."""

    kind: str = "matchRepoDigestOrExact"
    #: exactReference's dockerReference / exactRepository's dockerRepository.
    reference: DockerRef | None = None
    #: remapIdentity's prefix and signedPrefix.
    prefix: str = ""
    signed_prefix: str = ""

    def accepts(self, image: DockerRef, signed: str) -> bool:
        try:
            claimed = parse_named(signed)
        except ReferenceSyntaxError:
            return False
        if self.kind == "matchExact":
            return not image.name_only and not claimed.name_only and str(claimed) == str(image)
        if self.kind == "matchRepoDigestOrExact":
            return _repo_digest_or_exact(image, claimed)
        if self.kind == "matchRepository":
            return claimed.name == image.name
        if self.kind == "exactReference":
            assert self.reference is not None
            return not claimed.name_only and str(claimed) == str(self.reference)
        if self.kind == "exactRepository":
            assert self.reference is not None
            return claimed.name == self.reference.name
        remapped = self._remap(image)
        return remapped is not None and _repo_digest_or_exact(remapped, claimed)

    def _remap(self, image: DockerRef) -> DockerRef | None:
        name = image.name
        if not (name == self.prefix or (name.startswith(self.prefix)
                                         and name[len(self.prefix)] == "/")):
            return image
        try:
            return parse_exact_named(str(image).replace(self.prefix, self.signed_prefix, 1))
        except ReferenceSyntaxError:
            return None

    def describe(self) -> str:
        if self.kind in ("exactReference", "exactRepository"):
            return f"{self.kind} {self.reference}"
        if self.kind == "remapIdentity":
            return f"remapIdentity {self.prefix} -> {self.signed_prefix}"
        return self.kind


def _repo_digest_or_exact(image: DockerRef, claimed: DockerRef) -> bool:
    if claimed.name_only:
        return False
    if image.tag is not None:
        return str(claimed) == str(image)
    if image.digest is not None:
        return claimed.name == image.name
    return False


@dataclass(frozen=True)
class Requirement:
    """One policy requirement. `keys` is set for signedBy, `sigstore_key` for sigstoreSigned."""

    type: str
    #: Where it is written: 'transports.docker."host/repo"[0]'.
    where: str
    identity: IdentityRule = IdentityRule()
    keys: GpgKeyring | None = None
    sigstore_key: SigstoreKey | None = None
    #: Where its keys came from, for messages ("keyPath /etc/pki/a.gpg").
    key_source: str = ""

    def describe(self) -> str:
        if self.type in ("signedBy", "sigstoreSigned"):
            return f"{self.type} ({self.key_source}, {self.identity.describe()})"
        return self.type


@dataclass(frozen=True)
class Scope:
    """The requirements that apply to an image and the scope they were chosen by."""

    name: str
    requirements: tuple[Requirement, ...]


@dataclass(frozen=True)
class Policy:
    path: str
    #: sha256 of the policy file and of every key file it names, "sha256:<hex>".
    digest: str
    default: tuple[Requirement, ...]
    docker: dict[str, tuple[Requirement, ...]]
    warnings: tuple[str, ...] = ()

    def scope_for(self, image: DockerRef) -> Scope:
        """The most specific docker scope naming `image`, then "" and then default."""
        for scope in (policy_identity(image), *policy_namespaces(image), ""):
            if scope in self.docker:
                return Scope(f'transports.docker."{scope}"', self.docker[scope])
        return Scope("default", self.default)

    @property
    def needs_signatures(self) -> bool:
        every = [self.default, *self.docker.values()]
        return any(r.type in ("signedBy", "sigstoreSigned") for rs in every for r in rs)


class _Reader:
    """Strict object reading with errors that name the file and the key."""

    def __init__(self, path: str, base: Path, hasher: Any, warnings: list[str]) -> None:
        self.path = path
        self.base = base
        self.hasher = hasher
        self.warnings = warnings

    def fail(self, where: str, message: str) -> PolicyFormatError:
        return PolicyFormatError(f"{self.path}: {where}: {message}" if where
                                 else f"{self.path}: {message}")

    def fields(self, value: Any, where: str, required: tuple[str, ...],
               optional: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "expected an object")
        unknown = [k for k in value if k not in required and k not in optional]
        if unknown:
            raise self.fail(where, f"unknown field {unknown[0]!r}")
        missing = [k for k in required if k not in value]
        if missing:
            raise self.fail(where, f"missing field {missing[0]!r}")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"expected a string, got {_json_kind(value)}")
        return value

    def key_file(self, value: Any, where: str) -> bytes:
        name = self.string(value, where)
        try:
            data = (self.base / name).read_bytes() if name else b""
        except OSError as exc:
            raise self.fail(where, f"cannot read key file {name}: {exc.strerror}") from exc
        self.hasher.update(data)
        return data

    def key_data(self, value: Any, where: str) -> bytes:
        text = self.string(value, where)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self.fail(where, "not valid base64") from exc
        return data


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false",
            type(None): "null"}.get(type(value), "a number")


def _no_duplicates(path: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise PolicyFormatError(f"{path}: duplicate field {key!r}")
            result[key] = value
        return result
    return build


def load_policy(path: str | Path) -> Policy:
    """Reads and checks a containers-policy.json(5) file and the keys it names."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyFormatError(f"cannot read signature policy {path}: {exc.strerror}") from exc
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyFormatError(f"{path}: larger than {MAX_POLICY_BYTES} bytes")
    return parse_policy(raw, str(path), base=path.parent)


def parse_policy(raw: bytes, path: str, *, base: Path) -> Policy:
    hasher = hashlib.sha256(raw)
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicates(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyFormatError(f"{path}: not valid JSON: {exc}") from exc
    warnings: list[str] = []
    reader = _Reader(path, base, hasher, warnings)
    top = reader.fields(data, "", ("default",), ("transports",))
    default = _requirements(reader, top["default"], "default")
    docker: dict[str, tuple[Requirement, ...]] = {}
    transports = top.get("transports", {})
    if not isinstance(transports, dict):
        raise reader.fail("transports", "expected an object")
    for transport, scopes in transports.items():
        where = f"transports.{transport}"
        if not isinstance(scopes, dict):
            raise reader.fail(where, "expected an object of scopes")
        for scope, requirements in scopes.items():
            scope_where = f'{where}."{scope}"'
            if transport == DOCKER:
                _check_scope(reader, scope, scope_where)
            parsed = _requirements(reader, requirements, scope_where)
            if transport == DOCKER:
                docker[scope] = parsed
    return Policy(path=path, digest=f"sha256:{hasher.hexdigest()}", default=default,
                  docker=docker, warnings=tuple(warnings))


def _check_scope(reader: _Reader, scope: str, where: str) -> None:
    """A docker scope must be able to match something: a wildcard domain, a host, or a
    host/namespace/repository (optionally with a tag or digest)."""
    if scope == "":
        return
    if scope.startswith("*."):
        if not is_domain(scope[2:]) or ":" in scope:
            raise reader.fail(where, "a wildcard scope is '*.' and a domain without a port "
                              "(like *.example.com)")
        return
    if is_domain(scope) and ("." in scope or ":" in scope or scope == "localhost"):
        return
    try:
        ref = parse_exact_named(scope)
    except ReferenceSyntaxError as exc:
        raise reader.fail(where, f"not a valid scope ({exc}); write host[:port][/repository]"
                          "[:tag|@digest] or *.domain") from exc
    if str(ref) != scope:
        raise reader.fail(where, f"not a valid scope; it would be written {ref}")


def _requirements(reader: _Reader, value: Any, where: str) -> tuple[Requirement, ...]:
    if not isinstance(value, list):
        raise reader.fail(where, "expected a list of requirements")
    if not value:
        raise reader.fail(where, "the list of requirements must not be empty")
    return tuple(_requirement(reader, item, f"{where}[{number}]")
                 for number, item in enumerate(value))


def _requirement(reader: _Reader, value: Any, where: str) -> Requirement:
    if not isinstance(value, dict) or "type" not in value:
        raise reader.fail(where, "expected an object with a 'type'")
    kind = value["type"]
    if kind in ("insecureAcceptAnything", "reject"):
        reader.fields(value, where, ("type",))
        return Requirement(type=kind, where=where)
    if kind == "signedBy":
        return _signed_by(reader, value, where)
    if kind == "sigstoreSigned":
        return _sigstore_signed(reader, value, where)
    raise reader.fail(f"{where}.type", f"unknown requirement type {kind!r} "
                      f"(one of {', '.join(REQUIREMENT_TYPES)})")


def _signed_by(reader: _Reader, value: dict, where: str) -> Requirement:
    reader.fields(value, where, ("type", "keyType"),
                  ("keyPath", "keyPaths", "keyData", "signedIdentity"))
    key_type = value["keyType"]
    if key_type != "GPGKeys":
        raise reader.fail(f"{where}.keyType", f"unsupported key type {key_type!r} "
                          "(containers/image implements GPGKeys)")
    given = [k for k in ("keyPath", "keyPaths", "keyData") if k in value]
    if len(given) != 1:
        raise reader.fail(where, "exactly one of keyPath, keyPaths and keyData is required")
    source = given[0]
    if source == "keyPath":
        blobs = [reader.key_file(value["keyPath"], f"{where}.keyPath")]
        described = f"keyPath {value['keyPath']}"
    elif source == "keyPaths":
        paths = value["keyPaths"]
        if not isinstance(paths, list) or not paths:
            raise reader.fail(f"{where}.keyPaths", "expected a non-empty list of files")
        blobs = [reader.key_file(p, f"{where}.keyPaths[{n}]") for n, p in enumerate(paths)]
        described = f"keyPaths {', '.join(map(str, paths))}"
    else:
        blobs = [reader.key_data(value["keyData"], f"{where}.keyData")]
        reader.hasher.update(blobs[0])
        described = "keyData"
    try:
        keyring = load_keyring(blobs)
    except ValueError as exc:
        raise reader.fail(f"{where}.{source}", str(exc)) from exc
    return Requirement(type="signedBy", where=where, keys=keyring, key_source=described,
                       identity=_identity(reader, value.get("signedIdentity"),
                                          f"{where}.signedIdentity"))


def _sigstore_signed(reader: _Reader, value: dict, where: str) -> Requirement:
    reader.fields(value, where, ("type",), ("keyPath", "keyData", "signedIdentity",
                                            "fulcio", "rekorPublicKeyPath", "rekorPublicKeyData"))
    for unsupported in ("fulcio", "rekorPublicKeyPath", "rekorPublicKeyData"):
        if unsupported in value:
            raise reader.fail(f"{where}.{unsupported}", "not supported by this gateway "
                              "(use keyPath or keyData)")
    given = [k for k in ("keyPath", "keyData") if k in value]
    if len(given) != 1:
        raise reader.fail(where, "exactly one of keyPath and keyData is required")
    if given[0] == "keyPath":
        data = reader.key_file(value["keyPath"], f"{where}.keyPath")
        described = f"keyPath {value['keyPath']}"
    else:
        data = reader.key_data(value["keyData"], f"{where}.keyData")
        reader.hasher.update(data)
        described = "keyData"
    try:
        key = load_sigstore_key(data)
    except ValueError as exc:
        raise reader.fail(f"{where}.{given[0]}", str(exc)) from exc
    return Requirement(type="sigstoreSigned", where=where, sigstore_key=key, key_source=described,
                       identity=_identity(reader, value.get("signedIdentity"),
                                          f"{where}.signedIdentity"))


def _identity(reader: _Reader, value: Any, where: str) -> IdentityRule:
    if value is None:
        return IdentityRule()
    if not isinstance(value, dict) or "type" not in value:
        raise reader.fail(where, "expected an object with a 'type'")
    kind = value["type"]
    if kind in ("matchExact", "matchRepoDigestOrExact", "matchRepository"):
        reader.fields(value, where, ("type",))
        return IdentityRule(kind)
    if kind == "exactReference":
        reader.fields(value, where, ("type", "dockerReference"))
        ref = _docker_ref(reader, value["dockerReference"], f"{where}.dockerReference")
        if ref.name_only:
            raise reader.fail(f"{where}.dockerReference", "needs a tag or a digest")
        return IdentityRule(kind, reference=ref)
    if kind == "exactRepository":
        reader.fields(value, where, ("type", "dockerRepository"))
        return IdentityRule(kind, reference=_docker_ref(reader, value["dockerRepository"],
                                                        f"{where}.dockerRepository"))
    if kind == "remapIdentity":
        reader.fields(value, where, ("type", "prefix", "signedPrefix"))
        prefix = _prefix(reader, value["prefix"], f"{where}.prefix")
        signed = _prefix(reader, value["signedPrefix"], f"{where}.signedPrefix")
        return IdentityRule(kind, prefix=prefix, signed_prefix=signed)
    raise reader.fail(f"{where}.type", f"unknown signedIdentity type {kind!r} "
                      f"(one of {', '.join(IDENTITY_RULES)})")


def _docker_ref(reader: _Reader, value: Any, where: str) -> DockerRef:
    text = reader.string(value, where)
    try:
        return parse_named(text)
    except ReferenceSyntaxError as exc:
        raise reader.fail(where, f"not a docker reference: {exc}") from exc


def _prefix(reader: _Reader, value: Any, where: str) -> str:
    text = reader.string(value, where)
    if is_domain(text):
        return text
    try:
        ref = parse_exact_named(text)
    except ReferenceSyntaxError as exc:
        raise reader.fail(where, f"{text!r} is not a host or host/namespace prefix") from exc
    if not ref.name_only:
        raise reader.fail(where, f"{text!r}: a prefix has no tag or digest")
    return text
