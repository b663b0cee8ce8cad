"""A small reader for Shifter's udiRoot.conf: `key=value` lines and `#` comments.

Only what shifterimg needs is interpreted: the gateway addresses (`imageGateway`)
and the system name (`system`). Everything else is kept as plain strings.
"""

from __future__ import annotations

import re
from pathlib import Path

DEFAULT_PATH = "/etc/shifter/udiRoot.conf"
DEFAULT_GATEWAY_PORT = 7777
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_HTTP = re.compile(r"^https?://", re.IGNORECASE)


def parse_udiroot(text: str) -> dict[str, str]:
    """Keys and values of a udiRoot.conf; the last of repeated keys wins."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        # An inline comment needs whitespace before '#', so values may contain '#'.
        value = re.split(r"\s#", value, maxsplit=1)[0]
        values[key.strip()] = value.strip()
    return values


def read_udiroot(path: str | Path) -> dict[str, str]:
    """Parses the file at `path`; an absent file reads as empty."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    return parse_udiroot(text)


def gateway_address(url: str) -> str:
    """A gRPC target (host:port) from a gateway URL such as "http://host:7777/"."""
    address = _SCHEME.sub("", url.strip()).split("/", 1)[0]
    if not address:
        raise ValueError(f"empty gateway address in {url!r}")
    host_end = address.rfind("]")  # an IPv6 literal's colons are not a port
    if ":" not in address[host_end + 1:]:
        address = f"{address}:{DEFAULT_GATEWAY_PORT}"
    return address


def gateway_addresses(value: str) -> list[str]:
    """Every address in a space- or comma-separated list of gateway URLs, in order."""
    return [gateway_address(part) for part in re.split(r"[\s,]+", value) if part]


def _parts(value: str) -> list[str]:
    return [part for part in re.split(r"[\s,]+", value) if part]


def names_rest_gateways(value: str) -> bool:
    """Whether a gateway list holds http(s):// URLs: Shifter's REST gateways."""
    return any(_HTTP.match(part) for part in _parts(value))


def rest_urls(value: str) -> list[str]:
    """REST base URLs ("http://host:port") from a list of URLs or host:port addresses
    (a bare address is taken as http://)."""
    urls = []
    for part in _parts(value):
        url = part if _HTTP.match(part) else "http://" + _SCHEME.sub("", part)
        scheme, _, rest = url.partition("://")
        host = rest.split("/", 1)[0]
        if not host:
            raise ValueError(f"empty gateway address in {part!r}")
        urls.append(f"{scheme.lower()}://{host}")
    return urls
