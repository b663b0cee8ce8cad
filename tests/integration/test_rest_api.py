"""Shifter's REST API at the real gateway, driven by `curl` as Shifter's C client does
(`authentication:<MUNGE credential>` header, URL-escaped type and tag, pulls re-POSTed
every 0.5 s until the status leaves the pulling words), with a real munged and real
registries. Published meta files are read back by Shifter's parser rules."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from imagegw.client import GatewayClient
from tests.integration.trust_site import SYSTEM, UIDS, push_small_image, trust_config
from tests.support import layers as L
from tests.support.certs import ScratchCA
from tests.support.images import default_config, push_image
from tests.support.munge import make_credential
from tests.support.registry import (
    RegistryServer,
    free_port,
)
from tests.support.services import IMAGEGW, SHIFTERIMG, ServiceProcess, start_service
from tests.support.shifter_meta import read_image_data

#: Shifter's C client polls while the status is one of these.
POLLING = {"MISSING", "INIT", "PENDING", "PULLING", "EXAMINATION", "CONVERSION", "TRANSFER"}
AWKWARD = {
    "Env": ["PATH=/usr/bin:/bin", "WIN=C:\\temp\\", "TABS=a\tb", "QUOTE=it's \"so\""],
    "Entrypoint": ["/bin/sh -c 'echo hi'"],
    "Cmd": ["C:\\dir\\", " padded  ", "tab\there"],
    "WorkingDir": "/work dir\\",
}


@dataclass
class Site:
    service: ServiceProcess
    rest: str
    socket: str
    workdir: Path

    def images(self, system: str = SYSTEM) -> Path:
        return self.workdir / "images" / system


@dataclass
class Answer:
    status_line: str
    headers: list[str]
    body: bytes

    @property
    def code(self) -> int:
        return int(self.status_line.split()[1])

    def json(self) -> Any:
        return json.loads(self.body)


def _push_config_image(url: str, repository: str, runtime: dict) -> None:
    layer = L.layer(L.file(f"etc/{repository.replace('/', '-')}", b"x"))
    push_image(url, repository, "1", [layer], default_config([layer], runtime=runtime))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer,
         basic_registry: RegistryServer, munge_socket: str) -> Iterator[Site]:
    _push_config_image(registry.url, "rest/app", AWKWARD)
    _push_config_image(registry.url, "rest/private", AWKWARD)
    _push_config_image(registry.url, "rest/newline", {"Env": ["A=1", "B=two\nlines"]})
    push_small_image(registry.url, "rest/expire", "1", "expire")
    push_small_image(registry.url, "rest/mine", "1", "mine")
    push_small_image(basic_registry.url, "secret/app", "1", "secret", auth=("alice", "wonderland"))
    push_small_image(basic_registry.url, "secret/later", "1", "later", auth=("alice", "wonderland"))
    workdir = tmp_path_factory.mktemp("rest")
    rest = f"127.0.0.1:{free_port()}"
    config = trust_config(workdir, munge_socket, registry_url=registry.url,
                          private_url=basic_registry.url, RestListen=rest)
    empty = dict(config["Platforms"][SYSTEM], local={"imageDir": str(workdir / "images" / "e")})
    config["Platforms"]["empty"] = empty
    service = start_service("serve", config, workdir)
    yield Site(service, f"http://{rest}", munge_socket, workdir)
    service.stop()


def curl(site: Site, method: str, path: str, *, user: str | None = "root",
         body: str | None = None, payload: bytes = b"", credential: str | None = None
         ) -> Answer:
    """One request as Shifter's C client makes it (user None: no header, as scripts)."""
    command = ["curl", "-sS", "-i", "--max-time", "60", "-X", method]
    if credential is None and user is not None:
        credential = make_credential(site.socket, as_user=None if user == "root" else user,
                                     payload=payload)
    if credential is not None:
        command += ["-H", f"authentication:{credential}"]
    if method == "POST":
        command += ["-H", "Content-type: application/json", "--data-binary", body or ""]
    done = subprocess.run([*command, site.rest + path], capture_output=True, timeout=90,
                          check=True)
    head, _, content = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return Answer(lines[0], lines[1:], content)


def image_path(system: str, tag: str, kind: str = "docker") -> str:
    return f"{quote(system, safe='')}/{quote(kind, safe='')}/{quote(tag, safe='')}/"


def pull_until_done(site: Site, tag: str, *, user: str = "daemon", body: str = "",
                    payload: bytes = b"", timeout: float = 120.0) -> dict:
    """POST the pull, then re-POST every 0.5 s while the status is a pulling word."""
    deadline = time.monotonic() + timeout
    while True:
        answer = curl(site, "POST", "/api/pull/" + image_path(SYSTEM, tag), user=user,
                      body=body, payload=payload)
        assert answer.code == 200, answer
        image = answer.json()
        if image["status"] not in POLLING:
            return image
        assert time.monotonic() < deadline, image
        time.sleep(0.5)


def test_every_answer_has_shifters_exact_headers(site: Site) -> None:
    for answer in (curl(site, "GET", "/", user=None),
                   curl(site, "GET", "/api/list/empty/", user="bin"),
                   curl(site, "GET", "/api/lookup/" + image_path(SYSTEM, "nothing:1"))):
        assert answer.status_line in ("HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found")
        assert "Content-Type: application/json" in answer.headers
        assert f"Content-Length: {len(answer.body)}" in answer.headers
        assert not any(h.lower().startswith("transfer-encoding") for h in answer.headers)
    assert curl(site, "GET", "/api/list/empty/", user="bin").body == b'{"list": []}'


def test_public_pull_polled_to_ready_is_what_lookup_list_and_the_runtime_see(site: Site
                                                                            ) -> None:
    image = pull_until_done(site, "testreg/rest/app:1")
    assert image["status"] == "READY" and image["tag"][-1].endswith("rest/app:1")
    assert image["ENV"] == AWKWARD["Env"] and image["ENTRY"] == AWKWARD["Entrypoint"]
    assert image["WORKDIR"] == AWKWARD["WorkingDir"] and image["userACL"] == []
    looked_up = curl(site, "GET", "/api/lookup/" + image_path(SYSTEM, "testreg/rest/app:1"))
    assert looked_up.code == 200 and looked_up.json()["id"] == image["id"]
    assert b'"last_pull": ' in looked_up.body
    last_pull = looked_up.body.split(b'"last_pull": ')[1].split(b",")[0]
    assert b"." in last_pull and abs(float(last_pull) - time.time()) < 600
    listed = curl(site, "GET", f"/api/list/{SYSTEM}/", user="bin").json()["list"]
    assert image["id"] in [entry["id"] for entry in listed]
    # The runtime opens <id>.squashfs and parses <id>.meta: every field reads back exactly.
    assert (site.images() / f"{image['id']}.squashfs").exists()
    data = read_image_data((site.images() / f"{image['id']}.meta").read_bytes())
    assert data.format == "squashfs" and data.env == AWKWARD["Env"]
    assert data.entry == AWKWARD["Entrypoint"] and data.cmd == AWKWARD["Cmd"]
    assert data.workdir == AWKWARD["WorkingDir"] and data.uids == [] and data.gids == []


def test_private_pull_gives_the_acl_a_name_whose_files_the_runtime_opens(site: Site) -> None:
    tag = "testreg/rest/private:1"
    image = pull_until_done(site, tag, body=json.dumps(
        {"allowed_uids": str(UIDS["nobody"]), "allowed_gids": "100"}))
    assert image["status"] == "READY"
    assert image["userACL"] == [UIDS["daemon"], UIDS["nobody"]] and image["groupACL"] == [100]
    name = curl(site, "GET", "/api/lookup/" + image_path(SYSTEM, tag), user="nobody").json()["id"]
    assert name == image["id"] and "-" in name
    data = read_image_data((site.images() / f"{name}.meta").read_bytes())
    assert data.uids == [UIDS["daemon"], UIDS["nobody"]] and data.gids == [100]
    assert data.env == AWKWARD["Env"] and data.cmd == AWKWARD["Cmd"]
    assert (site.images() / f"{name}.squashfs").exists()
    # The gRPC SDK answers the same name; others do not find the image at all.
    with GatewayClient([site.service.address], credential_provider=lambda: make_credential(
            site.socket, as_user="nobody")) as client:
        assert client.lookup(SYSTEM, tag).name == name
    for user in ("bin", None):
        missing = curl(site, "GET", "/api/lookup/" + image_path(SYSTEM, tag), user=user)
        assert missing.code == 404 and missing.json()["status"] == 404


def test_a_value_the_meta_file_cannot_carry_fails_the_pull_naming_it(site: Site) -> None:
    before = set(os.listdir(site.images()))
    image = pull_until_done(site, "testreg/rest/newline:1")
    assert image["status"] == "FAILURE"
    assert "Env entry 2" in image["status_message"]
    assert "newline" in image["status_message"]
    assert set(os.listdir(site.images())) == before
    # Re-sent at once (as the C client does), the failure is answered, not retried.
    again = curl(site, "POST", "/api/pull/" + image_path(SYSTEM, "testreg/rest/newline:1"),
                 user="daemon", body="")
    assert again.json()["status"] == "FAILURE"
    queue = curl(site, "GET", f"/api/queue/{SYSTEM}/", user="daemon").json()["list"]
    assert {"status": "FAILURE", "image": image["tag"][0]} in queue


def test_expire_and_autoexpire_are_for_admins(site: Site) -> None:
    tag = "testreg/rest/expire:1"
    name = pull_until_done(site, tag)["id"]
    refused = curl(site, "GET", "/api/expire/" + image_path(SYSTEM, tag), user="daemon")
    assert refused.code == 403 and "admins" in refused.json()["message"]
    expired = curl(site, "GET", "/api/expire/" + image_path(SYSTEM, tag), user="root")
    assert expired.code == 200 and expired.json()["status"] is True
    assert expired.json()["expired"] == [name]
    assert not (site.images() / f"{name}.meta").exists()
    assert curl(site, "GET", "/api/lookup/" + image_path(SYSTEM, tag)).code == 404
    assert curl(site, "GET", f"/api/autoexpire/{SYSTEM}/", user="bin").code == 403
    auto = curl(site, "GET", f"/api/autoexpire/{SYSTEM}/", user="root")
    assert auto.code == 200 and auto.json() == {"status": []}


def test_import_of_a_file_on_the_gateway_host(site: Site, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    image = tmp_path / "tool.squashfs"
    subprocess.run(["mksquashfs", str(root), str(image), "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    body = json.dumps({"filepath": str(image), "format": "squashfs"})
    path = "/api/doimport/" + image_path(SYSTEM, "tools:1.0")
    # daemon (ImportUsers) may import, but only a file of its own.
    assert curl(site, "POST", path, user="daemon", body=body).code == 403
    os.chown(image, UIDS["daemon"], -1)
    assert curl(site, "POST", path, user="bin", body=body).code == 403
    answer = curl(site, "POST", path, user="daemon", body=body)
    assert answer.code == 200, answer
    imported = answer.json()
    assert imported["status"] == "READY" and imported["tag"] == ["import/tools:1.0"]
    assert (site.images() / f"{imported['id']}.squashfs").read_bytes() == image.read_bytes()
    found = curl(site, "GET", "/api/lookup/" + image_path(SYSTEM, "import/tools:1.0"), user="bin")
    assert found.json()["id"] == imported["id"]
    missing = curl(site, "POST", path, user="daemon",
                   body=json.dumps({"filepath": str(tmp_path / "none"), "format": "squashfs"}))
    assert missing.code == 400 and "cannot open" in missing.json()["message"]


def test_registry_logins_travel_in_the_munge_payload(site: Site) -> None:
    tag = "private/secret/app:1"
    login = {"authorized_locations": {"private": "alice:wonderland"}}
    image = pull_until_done(site, tag, user="daemon", payload=json.dumps(login).encode())
    assert image["status"] == "READY"
    wrong = {"authorized_locations": {"private": "alice:nope"}}
    refused = curl(site, "POST", "/api/pull/" + image_path(SYSTEM, tag), user="bin", body="",
                   payload=json.dumps(wrong).encode())
    assert refused.code == 403 and "refused the credentials" in refused.json()["message"]
    bad = curl(site, "POST", "/api/pull/" + image_path(SYSTEM, tag), user="bin", body="",
               payload=b"not json")
    assert bad.code == 400 and "authorized_locations" in bad.json()["message"]


def test_a_login_right_after_a_failed_pull_is_tried_at_once(site: Site) -> None:
    tag = "private/secret/later:1"
    failed = pull_until_done(site, tag, user="bin")
    assert failed["status"] == "FAILURE" and "127.0.0.1" in failed["status_message"]
    login = {"authorized_locations": {"private": "alice:wonderland"}}
    assert pull_until_done(site, tag, user="bin",
                           payload=json.dumps(login).encode())["status"] == "READY"


@pytest.mark.parametrize(("method", "path", "user", "body", "code", "words"), [
    ("GET", "/api/list/nosuch/", "bin", None, 404, "unknown system"),
    ("GET", "/api/lookup/default/docker/no%2Fsuch%3A1/", "bin", None, 404, "pull it"),
    ("POST", "/api/pull/default/docker/testreg%2Fx%3A1/", None, "", 401, "MUNGE credential"),
    ("POST", "/api/pull/default/docker/testreg%2Fx%3A1/", "bin", "{", 400, "not JSON"),
    ("POST", "/api/pull/default/docker/testreg%2Fx%3A1/", "bin", '{"allowed_uids": "a"}', 400,
     "uid/gid number"),
    ("POST", "/api/pull/default/docker/Bad%20Ref/", "bin", "", 400, "Bad Ref"),
    ("POST", "/api/pull/default/oci/x/", "bin", "", 400, "unsupported image type"),
    ("GET", "/api/pull/default/docker/x/", "bin", None, 405, "POST"),
    ("PUT", "/api/expire/default/docker/x/", "root", None, 405, "GET"),
    ("GET", "/api/lookup/default/docker/x", "bin", None, 404, "routes end in '/'"),
])
def test_bad_requests_get_a_status_and_a_message_to_act_on(site: Site, method, path, user,
                                                           body, code, words) -> None:
    answer = curl(site, method, path, user=user, body=body)
    assert answer.code == code and "Content-Type: application/json" in answer.headers
    error = answer.json()
    assert error["status"] == code and words in error["message"], error


def test_bad_credentials_are_refused_like_the_grpc_path(site: Site) -> None:
    credential = make_credential(site.socket, as_user="bin")
    path = f"/api/list/{SYSTEM}/"
    assert curl(site, "GET", path, credential=credential).code == 200
    replayed = curl(site, "GET", path, credential=credential)
    assert replayed.code == 401 and "replayed" in replayed.json()["message"]
    garbage = curl(site, "GET", path, credential="MUNGE:nonsense:")
    assert garbage.code == 401 and "MUNGE" in garbage.json()["message"]


def shifterimg(site: Site, *args: str, udiroot: Path | None = None
               ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGW_")}
    env.update(MUNGE_SOCKET=site.socket, IMAGEGW_SYSTEM=SYSTEM, TZ="UTC",
               UDIROOT_CONF=str(udiroot or site.workdir / "absent.conf"))
    return subprocess.run([SHIFTERIMG, *args], capture_output=True, text=True, env=env,
                          timeout=180, check=False)


def test_our_shifterimg_prints_and_exits_the_same_over_rest_and_grpc(site: Site) -> None:
    udiroot = site.workdir / "udiRoot.conf"
    udiroot.write_text(f"system={SYSTEM}\nimageGateway={site.rest}\n")
    grpc_args = ("-g", site.service.address)
    for command in (("pull", "testreg/rest/app:1"), ("lookup", "testreg/rest/app:1"),
                    ("lookup", "testreg/rest/none:1"), ("pull", "testreg/rest/newline:1"),
                    ("lookup", "id:0123"), ("images",)):
        over_grpc = shifterimg(site, *grpc_args, *command)
        over_rest = shifterimg(site, *command, udiroot=udiroot)  # http:// in udiRoot.conf
        flagged = shifterimg(site, "--rest", "-g", site.rest.removeprefix("http://"), *command)
        assert over_rest.returncode == over_grpc.returncode == flagged.returncode, command
        assert over_grpc.returncode == (1 if "none" in command[-1] or "newline" in command[-1]
                                        or "id:" in command[-1] else 0), over_grpc.stderr
        if command == ("images",):
            ready = {line for line in over_grpc.stdout.splitlines() if " READY " in line}
            assert any("testreg/rest/app:1" in line for line in ready), over_grpc.stdout
            assert set(over_rest.stdout.splitlines()) == ready == set(flagged.stdout.splitlines())
            continue
        assert over_rest.stdout == over_grpc.stdout == flagged.stdout, command
        # A pull's progress lines are what each saw while polling; their last line and
        # every other command's messages are the same.
        assert (_last_line(over_rest.stderr) == _last_line(over_grpc.stderr)
                == _last_line(flagged.stderr)), command
        if command[0] != "pull":
            assert over_rest.stderr == over_grpc.stderr == flagged.stderr, command


def test_shifterimg_lookup_of_a_private_image_prints_the_name_of_its_files(site: Site
                                                                           ) -> None:
    pulled = shifterimg(site, "-g", site.service.address, "pull", "--user", "65534",
                        "testreg/rest/mine:1")
    assert pulled.returncode == 0, pulled.stderr
    for gateway in (site.service.address, site.rest):
        found = shifterimg(site, "-g", gateway, "lookup", "testreg/rest/mine:1")
        name = found.stdout.strip()
        assert found.returncode == 0 and "-" in name, found.stderr
        assert pulled.stdout == f"Image ready: {name}\n"
        assert (site.images() / f"{name}.squashfs").exists()
        assert read_image_data((site.images() / f"{name}.meta").read_bytes()).uids == [0, 65534]


def _last_line(text: str) -> str:
    """The last line, without a progress line's leading time stamp."""
    last = (text.strip().splitlines() or [""])[-1]
    return last.split(" ", 1)[1] if last[:4].isdigit() else last


def test_rest_over_tls_with_the_gateways_certificate(tmp_path: Path, registry: RegistryServer,
                                                      munge_socket: str) -> None:
    ca = ScratchCA(tmp_path / "ca")
    issued = ca.issue("gateway")
    rest = f"127.0.0.1:{free_port()}"
    config = trust_config(tmp_path, munge_socket, registry_url=registry.url, RestListen=rest,
                          TLSCertificate=str(issued.certificate), TLSKey=str(issued.key))
    service = start_service("serve", config, tmp_path, expect_healthy=False)
    try:
        site = Site(service, f"https://{rest}", munge_socket, tmp_path)
        command = ["curl", "-sS", "--cacert", str(ca.certificate), "-o", "/dev/null",
                   "-w", "%{http_code}", f"https://{rest}/api/list/{SYSTEM}/"]
        assert subprocess.run(command, capture_output=True, text=True, timeout=60,
                              check=False).stdout == "200"
        plain = subprocess.run(["curl", "-sS", f"http://{rest}/"], capture_output=True,
                               timeout=60, check=False)
        assert plain.returncode != 0 or b'"routes"' not in plain.stdout
        found = shifterimg(site, "--ca-cert", str(ca.certificate), "-g", site.rest,
                           "lookup", "testreg/none:1")
        assert found.returncode == 1 and "is not on system" in found.stderr
    finally:
        service.stop()


def test_rest_beyond_loopback_without_tls_is_refused_at_start(tmp_path: Path,
                                                              registry: RegistryServer,
                                                              munge_socket: str) -> None:
    config_path = tmp_path / "gateway.json"
    config_path.write_text(json.dumps(trust_config(tmp_path, munge_socket,
                                                   registry_url=registry.url)))
    done = subprocess.run([IMAGEGW, "serve", "--config", str(config_path), "--listen",
                           "127.0.0.1:0", "--rest-listen", "0.0.0.0:0"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "RestListen 0.0.0.0:0" in done.stderr and "TLSCertificate" in done.stderr
