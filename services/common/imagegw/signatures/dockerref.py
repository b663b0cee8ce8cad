"""Docker references as containers/image names them in signatures and policy scopes.

`parse_named` normalises a reference the way docker/distribution's
ParseNormalizedNamed does ("busybox" -> "docker.io/library/busybox"); `policy_identity`
and `policy_namespaces` give the scopes a docker-transport image is looked up under,
most specific first. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
_LEGACY_HUB = "index.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_NAME = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_ONLY = re.compile(rf"^{_DOMAIN}$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")
MAX_NAME = 255


class ReferenceSyntaxError(ValueError):
    """A string that is not a Docker reference."""


@dataclass(frozen=True)
class DockerRef:
    """A normalised Docker reference: `name` is "domain/path"; tag and digest optional."""

    name: str
    tag: str | None = None
    digest: str | None = None

    @property
    def domain(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def path(self) -> str:
        return self.name.split("/", 1)[1]

    @property
    def name_only(self) -> bool:
        return self.tag is None and self.digest is None

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if not slash or (not any(c in first for c in ".:") and first != "localhost"
                     and first.lower() == first):
        domain, remainder = DOCKER_HUB, name
    else:
        domain, remainder = first, rest
    if domain == _LEGACY_HUB:
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in remainder:
        remainder = f"library/{remainder}"
    return domain, remainder


def parse_named(text: str) -> DockerRef:
    """A reference in the short or long form, normalised (ParseNormalizedNamed)."""
    if not isinstance(text, str) or not text:
        raise ReferenceSyntaxError("an empty reference")
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.match(digest):
        raise ReferenceSyntaxError(f"invalid digest {digest!r}")
    tag = None
    colon, slash = rest.rfind(":"), rest.rfind("/")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise ReferenceSyntaxError(f"invalid tag {tag!r}")
    domain, remainder = _split_domain(rest)
    if remainder.lower() != remainder:
        raise ReferenceSyntaxError(f"repository name {remainder!r} must be lowercase")
    name = f"{domain}/{remainder}"
    if not _NAME.match(name) or "/" not in name:
        raise ReferenceSyntaxError(f"invalid reference format {text!r}")
    if len(name) > MAX_NAME:
        raise ReferenceSyntaxError(f"repository name longer than {MAX_NAME} characters")
    return DockerRef(name, tag, digest or None)


def parse_exact_named(text: str) -> DockerRef:
    """A fully written reference ("host/path..."): it must need no normalisation."""
    ref = parse_named(text)
    if not text.startswith(ref.name):
        raise ReferenceSyntaxError(f"{text!r} is not fully qualified (it means {ref.name})")
    return ref


def is_domain(text: str) -> bool:
    return bool(_DOMAIN_ONLY.match(text))


def policy_identity(ref: DockerRef) -> str:
    """The most specific scope: the reference itself, with its tag or digest."""
    return str(ref)


def policy_namespaces(ref: DockerRef) -> list[str]:
    """The scopes after the identity: the repository, each parent namespace up to the
    host, then the host's wildcard domains without a port ("*.example.com", "*.com")."""
    name = ref.name
    scopes = [name]
    while "/" in name:
        name = name.rsplit("/", 1)[0]
        scopes.append(name)
    host = name.split(":", 1)[0] if not name.startswith("[") else name
    while "." in host:
        host = host.split(".", 1)[1]
        scopes.append(f"*.{host}")
    return scopes
