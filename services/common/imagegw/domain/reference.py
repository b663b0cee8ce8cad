"""Image references, parsed as Docker parses them, resolved against Locations.

`parse_reference(text, config)` is a pure function: it returns an `ImageReference`
naming the location (a key of `Locations`, or a registry host), the registry's base
URL, the repository, and the tag and/or digest. Shifter's rule applies first: a
first path component that is a key of `Locations` selects that location.
An `oras:` prefix marks a ready-made image stored as an OCI artifact (as does a
location with `remotetype: oras`); `docker:` is the default and is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from imagegw.domain.config import DOCKER_HUB_HOSTS, Config, Location
from imagegw.domain.errors import InvalidReference

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$")
_HOST = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$"
)
MAX_REFERENCE_LENGTH = 512
MAX_NAME_LENGTH = 255


@dataclass(frozen=True)
class ImageReference:
    """A parsed reference. `str()` gives the canonical form."""

    #: The Locations key (or registry host) the image comes from.
    location: str
    #: The registry's base URL, e.g. "https://registry-1.docker.io".
    registry_url: str
    repository: str
    tag: str | None
    digest: str | None
    #: Written `oras:...`: a ready-made image stored as an OCI artifact.
    artifact: bool = False

    @property
    def name(self) -> str:
        return f"{self.location}/{self.repository}"

    @property
    def manifest_ref(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = ("oras:" if self.artifact else "") + self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _split_digest(text: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    name, digest = text.rsplit("@", 1)
    if not _DIGEST.match(digest):
        raise InvalidReference(
            f"invalid digest {digest!r} in reference", hint="expected sha256:<64 hex digits>"
        )
    if digest.startswith("sha256:") and not _SHA256.match(digest):
        raise InvalidReference(f"invalid sha256 digest {digest!r}", hint="64 lowercase hex digits")
    return name, digest


def _split_tag(text: str) -> tuple[str, str | None]:
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        tag = text[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidReference(
                f"invalid tag {tag!r}",
                hint="tags are up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
            )
        return text[:colon], tag
    return text, None


def _looks_like_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost" or (
        component != component.lower()
    )


def _location_at(config: Config, host: str) -> Location | None:
    """The Location whose URL is at `host` ("127.0.0.1:5000"): a registry written by its
    address is reached as that Location says (scheme, CA), and counts as configured."""
    host = host.lower()
    return next((location for location in config.locations.values()
                 if urlsplit(location.url).netloc.lower() == host), None)


def _check_port(host: str, original: str) -> None:
    """A registry port is 1-65535: "host:0" or "host:99999" is a typo, never a registry."""
    after_address = host.rpartition("]")[2]  # an IPv6 literal's colons are not a port
    _, colon, port = after_address.rpartition(":")
    if colon and not 1 <= int(port) <= 65535:
        raise InvalidReference(f"invalid registry port {port} in {original!r}",
                               hint="a port is a number from 1 to 65535")


def parse_reference(text: str, config: Config) -> ImageReference:
    """Parses `text` ("ubuntu:24.04", "host:5000/team/app:1@sha256:...") against `config`."""
    original = text
    text = text.strip()
    if not text:
        raise InvalidReference("empty image reference", hint="for example ubuntu:24.04")
    if len(text) > MAX_REFERENCE_LENGTH:
        raise InvalidReference(f"image reference longer than {MAX_REFERENCE_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in text):
        raise InvalidReference(f"image reference {original!r} contains whitespace or control characters")
    artifact = text.startswith("oras:")
    if text.startswith(("docker:", "oras:")):
        text = text.partition(":")[2]
    name, digest = _split_digest(text)
    name, tag = _split_tag(name)
    if not name:
        raise InvalidReference(f"image reference {original!r} has no repository name")
    parts = name.split("/")
    first = parts[0]
    if len(parts) > 1 and first in config.locations:
        location = config.locations[first]
        location_name, url, path = location.name, location.url, parts[1:]
    elif len(parts) > 1 and _looks_like_host(first):
        if not _HOST.match(first):
            raise InvalidReference(f"invalid registry host {first!r} in {original!r}")
        _check_port(first, original)
        location_name, path = first, parts[1:]
        hub = first in DOCKER_HUB_HOSTS
        configured = config.locations.get(first) or _location_at(config, first)
        if configured is not None:
            url = configured.url
        elif hub:
            url = "https://registry-1.docker.io"
        else:
            url = f"https://{first}"
        if hub:
            location_name = "registry-1.docker.io"
    else:
        location_name = config.default_image_location
        default = config.locations.get(location_name)
        url = default.url if default else f"https://{location_name}"
        path = parts
    docker_hub = location_name in DOCKER_HUB_HOSTS or url == "https://registry-1.docker.io"
    if docker_hub and len(path) == 1:
        path = ["library", *path]
    for component in path:
        if not _COMPONENT.match(component):
            raise InvalidReference(
                f"invalid repository name component {component!r} in {original!r}",
                hint="use lowercase letters, digits and separators '.', '_', '-'",
            )
    repository = "/".join(path)
    if len(repository) > MAX_NAME_LENGTH:
        raise InvalidReference(f"repository name longer than {MAX_NAME_LENGTH} characters")
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(
        location=location_name, registry_url=url, repository=repository, tag=tag, digest=digest,
        artifact=artifact,
    )
