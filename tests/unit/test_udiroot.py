"""How shifterimg finds its gateway and system: udiRoot.conf, the environment, options."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegw.client.credentials import DEFAULT_MUNGE_SOCKET, munge_credential_provider
from imagegw.client.settings import resolve_settings
from imagegw.client.udiroot import gateway_address, gateway_addresses, parse_udiroot, read_udiroot

CONF = """\
# Shifter runtime configuration
udiMount=/var/udiMount
imageGateway=http://gw1.example.org:7777 https://gw2.example.org:7000,http://gw3.example.org
system = perlmutter   # the cluster
siteFs=/home:/home;/scratch:/scratch
not a setting
"""


def test_udiroot_reads_keys_values_and_skips_comments_and_junk() -> None:
    values = parse_udiroot(CONF)
    assert values["system"] == "perlmutter"
    assert values["udiMount"] == "/var/udiMount"
    assert values["siteFs"] == "/home:/home;/scratch:/scratch"
    assert "not a setting" not in values and not any(k.startswith("#") for k in values)


def test_udiroot_keeps_a_hash_that_is_part_of_a_value() -> None:
    assert parse_udiroot("opt=a#b\n")["opt"] == "a#b"


def test_udiroot_last_repeated_key_wins() -> None:
    assert parse_udiroot("system=a\nsystem=b\n")["system"] == "b"


def test_missing_udiroot_file_reads_as_empty(tmp_path: Path) -> None:
    assert read_udiroot(tmp_path / "absent.conf") == {}


@pytest.mark.parametrize(("url", "address"), [
    ("http://gw.example.org:7777", "gw.example.org:7777"),
    ("https://gw.example.org:7000/", "gw.example.org:7000"),
    ("gw.example.org", "gw.example.org:7777"),
    ("http://[::1]", "[::1]:7777"),
    ("[::1]:8000", "[::1]:8000"),
])
def test_gateway_urls_become_grpc_targets(url: str, address: str) -> None:
    assert gateway_address(url) == address


def test_gateway_list_splits_on_spaces_and_commas_in_order() -> None:
    assert gateway_addresses(parse_udiroot(CONF)["imageGateway"]) == [
        "gw1.example.org:7777", "gw2.example.org:7000", "gw3.example.org:7777"]


def _conf(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "udiRoot.conf"
    path.write_text(CONF)
    return {"UDIROOT_CONF": str(path)}


def _never(path: str) -> bool:
    return False


def test_settings_come_from_udiroot_when_nothing_else_is_given(tmp_path: Path) -> None:
    settings = resolve_settings(gateways=None, system=None, munge_socket=None,
                                environ=_conf(tmp_path), exists=_never)
    assert settings.system == "perlmutter"
    # Shifter's udiRoot.conf names REST gateways by URL: shifterimg talks REST to them.
    assert settings.rest
    assert settings.addresses == (
        "http://gw1.example.org:7777", "https://gw2.example.org:7000", "http://gw3.example.org")
    assert settings.munge_socket is None


def test_environment_overrides_udiroot(tmp_path: Path) -> None:
    environ = _conf(tmp_path) | {"IMAGEGW_GATEWAY": "http://env-gw:1234",
                                 "IMAGEGW_SYSTEM": "dev", "MUNGE_SOCKET": "/tmp/m.sock"}
    settings = resolve_settings(gateways=None, system=None, munge_socket=None,
                                environ=environ, exists=_never)
    assert (settings.addresses, settings.system) == (("http://env-gw:1234",), "dev")
    assert settings.munge_socket == "/tmp/m.sock"


def test_options_override_environment(tmp_path: Path) -> None:
    environ = _conf(tmp_path) | {"IMAGEGW_GATEWAY": "env-gw:1", "IMAGEGW_SYSTEM": "dev"}
    settings = resolve_settings(gateways=["a:1,b:2", "c:3"], system="cli",
                                munge_socket="/run/x.sock", environ=environ, exists=_never)
    assert settings.addresses == ("a:1", "b:2", "c:3")
    assert (settings.system, settings.munge_socket) == ("cli", "/run/x.sock")


def test_defaults_without_configuration(tmp_path: Path) -> None:
    environ = {"UDIROOT_CONF": str(tmp_path / "absent.conf")}
    settings = resolve_settings(gateways=None, system=None, munge_socket=None,
                                environ=environ, exists=_never)
    assert (settings.addresses, settings.system) == (("127.0.0.1:7777",), "default")


def test_standard_munge_socket_is_used_when_it_exists(tmp_path: Path) -> None:
    environ = {"UDIROOT_CONF": str(tmp_path / "absent.conf")}
    settings = resolve_settings(gateways=None, system=None, munge_socket=None,
                                environ=environ, exists=lambda path: path == DEFAULT_MUNGE_SOCKET)
    assert settings.munge_socket == DEFAULT_MUNGE_SOCKET


def test_without_a_munge_command_calls_are_anonymous(tmp_path: Path) -> None:
    provide = munge_credential_provider(str(tmp_path / "sock"), command=str(tmp_path / "nomunge"))
    assert provide() is None


def test_without_a_munge_daemon_calls_are_anonymous(tmp_path: Path) -> None:
    provide = munge_credential_provider(str(tmp_path / "no-daemon.sock"))
    assert provide() is None


def test_host_port_addresses_mean_grpc_and_rest_turns_them_into_urls(tmp_path: Path) -> None:
    environ = {"UDIROOT_CONF": str(tmp_path / "absent.conf"), "IMAGEGW_GATEWAY": "gw:7777"}
    grpc_settings = resolve_settings(gateways=None, system=None, munge_socket=None,
                                     environ=environ, exists=_never)
    assert (grpc_settings.rest, grpc_settings.addresses) == (False, ("gw:7777",))
    rest_settings = resolve_settings(gateways=["gw:8000", "HTTPS://gw2/"], system=None,
                                     munge_socket=None, environ=environ, exists=_never,
                                     rest=True)
    assert (rest_settings.rest, rest_settings.addresses) == (
        True, ("http://gw:8000", "https://gw2"))
