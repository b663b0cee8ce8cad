"""Registry logins: check a user's credentials against the registry, keep them
sealed in the `CredentialVault`, and hand them out for that user's pulls only.

Credentials are keyed by (uid, registry endpoint "host:port"), so a login under a
Locations key and a pull by registry host (or the other way round) meet.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from imagegw.domain.config import DOCKER_HUB_HOSTS, Config
from imagegw.domain.errors import InvalidRequest, RegistryAuthFailed, Unauthenticated
from imagegw.domain.model import RegistryCredentials
from imagegw.domain.reference import parse_reference
from imagegw.gateway.core.access import Caller
from imagegw.gateway.core.vault import CredentialVault
from imagegw.registry.client import RegistryClient
from imagegw.registry.policy import guard_for_url
from imagegw.registry.transport import origin

__all__ = ["Logins", "check_username", "registry_endpoint"]

log = logging.getLogger(__name__)

#: Token registries scope tokens to a repository; any name gets a token for /v2/.
CHECK_REPOSITORY = "library/imagegw-login-check"
MAX_FIELD = 1024


def registry_endpoint(url: str) -> str:
    """"host:port" of a registry base URL: the key credentials are kept under."""
    _scheme, host, port = origin(url)
    return f"{host}:{port}"


def check_username(username: str) -> None:
    """Refuses a registry user name Basic auth cannot carry: a ':' would move the rest of
    the name into the password (the registry reads another user), and control characters
    (newlines included) would reach logs and replies raw."""
    if ":" in username or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in username):
        raise InvalidRequest(
            f"registry user name {username!r} "
            "contains ':' or a control character",
            hint="registries take user names without ':', newlines or control characters")


class Logins:
    def __init__(self, config: Config, vault: CredentialVault) -> None:
        self.config = config
        self.vault = vault

    def registry_url(self, registry: str) -> str:
        """The base URL of a Locations key or a registry host."""
        registry = registry.strip().removesuffix("/")
        if not registry:
            raise InvalidRequest("registry is required", hint="a Locations key or a host:port")
        if registry in self.config.locations:
            return self.config.locations[registry].url
        if registry in DOCKER_HUB_HOSTS:
            return "https://registry-1.docker.io"
        for location in self.config.locations.values():
            if registry_endpoint(location.url) in (registry, f"{registry}:443"):
                return location.url
        if "/" in registry or any(c.isspace() for c in registry):
            raise InvalidRequest(f"invalid registry {registry!r}",
                                 hint="a Locations key or a host[:port]")
        try:
            port = urlsplit(f"https://{registry}").port
        except ValueError:
            port = 0
        if port is not None and not 1 <= port <= 65535:
            raise InvalidRequest(f"invalid registry {registry!r}: the port must be 1 to 65535",
                                 hint="a Locations key or a host[:port]")
        return f"https://{registry}"

    def login(self, caller: Caller, registry: str, username: str, password: str) -> str:
        """Checks the credentials with the registry and keeps them; returns a message."""
        if caller.anonymous:
            raise Unauthenticated("login needs a MUNGE credential: stored registry credentials "
                                  "belong to a user", hint="run shifterimg login where munge works")
        if not username or not password:
            raise InvalidRequest("username and password are required")
        if len(username) > MAX_FIELD or len(password) > MAX_FIELD:
            raise InvalidRequest(f"username and password are limited to {MAX_FIELD} characters")
        check_username(username)
        url = self.registry_url(registry)
        endpoint = registry_endpoint(url)
        credentials = RegistryCredentials(username, password)
        location = next((loc for loc in self.config.locations.values() if loc.url == url), None)
        guard = guard_for_url(self.config, url)  # the registries pulls may use, no others
        client = RegistryClient(url, CHECK_REPOSITORY, credentials=credentials,
                                limits=self.config.limits,
                                ca_bundle=location.sslcacert if location else None,
                                address_check=guard)
        with client:
            try:
                client.check_access()
            except RegistryAuthFailed as exc:
                raise RegistryAuthFailed(
                    f"{endpoint} refused the credentials of registry user {username}",
                    hint="check the user name and password (or token) and log in again",
                ) from exc
        self.vault.put(caller.uid, endpoint, credentials)
        log.info("stored registry credentials of uid %d for %s", caller.uid, endpoint)
        return f"credentials accepted by {endpoint}"

    def adopt(self, caller: Caller, reference: str, offered: dict[str, tuple[str, str]]
              ) -> bool:
        """Logs in with the credentials a request carried ({location or registry:
        (username, password)}) for the registry of `reference`, unless the same ones are
        stored already: Shifter's clients send them with every request. True when new
        credentials were stored."""
        if caller.anonymous or not offered or reference.startswith("import/"):
            return False
        endpoint = registry_endpoint(parse_reference(reference, self.config).registry_url)
        for registry, (username, password) in offered.items():
            if registry == "default" and registry not in self.config.locations:
                registry = self.config.default_image_location  # `shifterimg login` alone
            if registry_endpoint(self.registry_url(registry)) != endpoint:
                continue
            if self.vault.get(caller.uid, endpoint) == RegistryCredentials(username, password):
                return False
            self.login(caller, registry, username, password)
            return True
        return False

    def logout(self, caller: Caller, registry: str) -> bool:
        if caller.anonymous:
            raise Unauthenticated("logout needs a MUNGE credential")
        return self.vault.remove(caller.uid, registry_endpoint(self.registry_url(registry)))

    def credentials_for(self, uid: int, reference: str) -> RegistryCredentials | None:
        """The dispatcher's callback: the puller's own credentials for the reference's
        registry, or None (anonymous registry access)."""
        if uid < 0 or reference.startswith("import/"):
            return None
        url = parse_reference(reference, self.config).registry_url
        return self.vault.get(uid, registry_endpoint(url))
