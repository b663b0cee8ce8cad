"""Pushing an artifact with the `oras` package, inside our timeouts and error tree.

`push_artifact` uploads files (chunked, so a large squashfs is never read into memory)
plus a config blob and a manifest with annotations. Three changes to oras' defaults:
every request has our timeout; oras' retry loop (sleeps of up to minutes on connection
errors) is bypassed, since a shared-conversion push is best effort; and credentials
come only from our configuration, never from ~/.docker/config.json.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import Any

import jsonschema
import oras.auth
import oras.provider
import requests

from imagegw.domain.config import Limits, Location
from imagegw.domain.errors import RegistryAuthFailed, RegistryUnavailable
from imagegw.domain.model import RegistryCredentials

log = logging.getLogger(__name__)

#: The layer annotation oras reads as the file's name.
TITLE_ANNOTATION = "org.opencontainers.image.title"
#: Upload chunk for blobs (PATCH requests), bounding the memory one push uses.
UPLOAD_CHUNK = 16 * 1024 * 1024


class _TimeoutSession(requests.Session):
    """A requests session that applies one timeout to every request and ignores the environment."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout
        self.trust_env = False  # no proxies or .netrc credentials picked up implicitly
        self.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, *args, **kwargs)


class _ConfiguredAuth:
    """Mixin: credentials only from our configuration (oras would read ~/.docker)."""

    def load_configs(self, *args: Any, **kwargs: Any) -> None:
        return None


class _TokenAuth(_ConfiguredAuth, oras.auth.TokenAuth):
    def authenticate_request(self, original: requests.Response, headers: dict[str, str],
                             refresh: bool = False) -> tuple[dict[str, str], bool]:
        # A 401 while holding a token means the token lacks this request's scope (a pull
        # token from the first HEAD, then a POST that needs push); oras would resend the
        # same token, so always ask the realm for the scope the new challenge names.
        return super().authenticate_request(original, headers, refresh=True)


class _BasicAuth(_ConfiguredAuth, oras.auth.BasicAuth):
    pass


class _Registry(oras.provider.Registry):
    """oras' registry client without its retry-and-sleep loop."""

    def do_request(self, *args: Any, **kwargs: Any) -> requests.Response:
        return oras.provider.Registry.do_request.__wrapped__(self, *args, **kwargs)


def _registry(location: Location, credentials: RegistryCredentials | None,
              limits: Limits) -> tuple[_Registry, str]:
    """An oras client for `location` and the registry's host[:port]."""
    insecure = location.url.startswith("http://")
    host = location.url.split("://", 1)[1].rstrip("/")
    tls_verify: bool | str = location.sslcacert or True
    registry = _Registry(hostname=host, insecure=insecure, tls_verify=tls_verify)
    session = _TimeoutSession(limits.http_timeout)
    registry.session = session
    scheme = _challenge_scheme(session, location.url, tls_verify)
    auth: oras.auth.AuthBackend = _BasicAuth() if scheme == "basic" else _TokenAuth()
    auth.session = session
    auth.prefix = "http" if insecure else "https"
    auth._tls_verify = tls_verify
    if credentials is not None:
        auth.set_basic_auth(credentials.username, credentials.password)
    registry.auth = auth
    return registry, host


def _challenge_scheme(session: requests.Session, url: str, tls_verify: bool | str) -> str:
    """"basic", "bearer" or "" from the registry's answer to GET /v2/."""
    try:
        response = session.get(f"{url}/v2/", verify=tls_verify)
    except requests.RequestException as exc:
        raise RegistryUnavailable(f"registry {url} cannot be reached: {exc}") from exc
    header = response.headers.get("WWW-Authenticate", "")
    response.close()
    return header.strip().split(" ", 1)[0].lower()


@dataclass(frozen=True)
class ArtifactFile:
    """A layer to push: the file, its media type and the name it carries (its title)."""

    path: Path
    media_type: str
    title: str


def push_artifact(
    location: Location,
    repository: str,
    tag: str,
    files: Sequence[ArtifactFile],
    config: tuple[Path, str],
    annotations: Mapping[str, str],
    *,
    credentials: RegistryCredentials | None,
    limits: Limits,
) -> str:
    """Pushes `files` as the layers of `repository:tag`; the files are only read.

    Returns the manifest digest. Raises RegistryUnavailable or RegistryAuthFailed.
    """
    registry, host = _registry(location, credentials, limits)
    target = f"{host}/{repository}:{tag}"
    titles = {str(item.path): {TITLE_ANNOTATION: item.title} for item in files}
    try:
        with tempfile.TemporaryDirectory(prefix="imagegw-push-") as workdir:
            annotation_file = Path(workdir) / "annotations.json"
            annotation_file.write_text(json.dumps(titles))
            response = registry.push(
                target,
                files=[f"{item.path}:{item.media_type}" for item in files],
                manifest_config=f"{config[0]}:{config[1]}",
                annotation_file=str(annotation_file),
                manifest_annotations=dict(annotations),
                disable_path_validation=True,
                do_chunked=True,
                chunk_size=UPLOAD_CHUNK,
                quiet=True,
            )
    except (requests.RequestException, OSError) as exc:
        raise RegistryUnavailable(f"pushing {target} failed: {exc}") from exc
    except (ValueError, jsonschema.ValidationError) as exc:
        message = f"registry {host} refused the push of {repository}:{tag}: {exc}"
        if any(word in str(exc).lower() for word in ("authentication", "unauthorized", "forbidden")):
            raise RegistryAuthFailed(message, hint="check SharedConversions.authFile") from exc
        raise RegistryUnavailable(message) from exc
    finally:
        registry.session.close()
    digest = response.headers.get("Docker-Content-Digest", "")
    log.info("pushed %s (%s)", target, digest or "no digest returned")
    return digest
