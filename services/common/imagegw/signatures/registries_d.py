"""containers-registries.d(5): where the signatures of an image are stored.

`load_registries_dir(path)` reads every `*.yaml` file of the directory (a scope named
twice is an error, as in containers/image); `SignatureStorage.for_image` gives the
lookaside base URL for reading and whether sigstore attachments are used, from the
most specific `docker` scope, then `default-docker`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .dockerref import DockerRef, policy_identity, policy_namespaces
from .policy import PolicyFormatError

_NAMESPACE_KEYS = ("lookaside", "lookaside-staging", "sigstore", "sigstore-staging",
                   "use-sigstore-attachments")


@dataclass(frozen=True)
class Namespace:
    lookaside: str = ""
    use_sigstore_attachments: bool | None = None


@dataclass(frozen=True)
class SignatureStorage:
    path: str = ""
    docker: dict[str, Namespace] = field(default_factory=dict)
    default: Namespace | None = None

    def _candidates(self, image: DockerRef) -> list[Namespace]:
        found = [self.docker[s] for s in (policy_identity(image), *policy_namespaces(image))
                 if s in self.docker]
        return found + ([self.default] if self.default is not None else [])

    def lookaside_for(self, image: DockerRef) -> str:
        """The base URL signatures are read from ("" when none is configured)."""
        for namespace in self._candidates(image):
            if namespace.lookaside:
                return namespace.lookaside
        return ""

    def sigstore_attachments_for(self, image: DockerRef) -> bool:
        for namespace in self._candidates(image):
            if namespace.use_sigstore_attachments is not None:
                return namespace.use_sigstore_attachments
        return False


def load_registries_dir(path: str | Path) -> SignatureStorage:
    directory = Path(path)
    if not directory.is_dir():
        raise PolicyFormatError(f"SignatureRegistriesDir {directory}: not a directory")
    docker: dict[str, Namespace] = {}
    default: Namespace | None = None
    default_file = ""
    for file in sorted(directory.glob("*.yaml")):
        data = _read_yaml(file)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise PolicyFormatError(f"{file}: expected a mapping at the top")
        for key in data:
            if key not in ("docker", "default-docker"):
                raise PolicyFormatError(f"{file}: unknown key {key!r} "
                                        "(docker, default-docker)")
        if data.get("default-docker") is not None:
            if default is not None:
                raise PolicyFormatError(f"{file}: default-docker is also set in {default_file}")
            default = _namespace(file, "default-docker", data["default-docker"])
            default_file = str(file)
        scopes = data.get("docker") or {}
        if not isinstance(scopes, dict):
            raise PolicyFormatError(f"{file}: docker: expected a mapping of scopes")
        for scope, value in scopes.items():
            if scope in docker:
                raise PolicyFormatError(f"{file}: docker.{scope}: configured in two files")
            docker[str(scope)] = _namespace(file, f"docker.{scope}", value)
    return SignatureStorage(str(directory), docker, default)


def _read_yaml(file: Path) -> Any:
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyFormatError(f"cannot read {file}: {exc.strerror}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PolicyFormatError(f"{file}: not valid YAML: {exc}") from exc


def _namespace(file: Path, where: str, value: Any) -> Namespace:
    if value is None:
        return Namespace()
    if not isinstance(value, dict):
        raise PolicyFormatError(f"{file}: {where}: expected a mapping")
    for key in value:
        if key not in _NAMESPACE_KEYS:
            raise PolicyFormatError(f"{file}: {where}.{key}: unknown key "
                                    f"(one of {', '.join(_NAMESPACE_KEYS)})")
    lookaside = value.get("lookaside") or value.get("sigstore") or ""
    if not isinstance(lookaside, str):
        raise PolicyFormatError(f"{file}: {where}.lookaside: expected a URL")
    if lookaside and not lookaside.startswith(("file://", "http://", "https://")):
        raise PolicyFormatError(f"{file}: {where}.lookaside: {lookaside!r} is not a file://, "
                                "http:// or https:// URL")
    attachments = value.get("use-sigstore-attachments")
    if attachments is not None and not isinstance(attachments, bool):
        raise PolicyFormatError(f"{file}: {where}.use-sigstore-attachments: expected true "
                                "or false")
    return Namespace(lookaside.rstrip("/"), attachments)
