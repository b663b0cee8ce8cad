"""Image references parse as Docker parses them, with Shifter's location rule."""

import pytest

from imagegw.domain.config import parse_config
from imagegw.domain.errors import InvalidReference
from imagegw.domain.reference import parse_reference

CONFIG = parse_config({
    "Locations": {"myloc": {"url": "http://127.0.0.1:5000"},
                  "registry-1.docker.io": {"remotetype": "dockerv2"}},
    "Platforms": {"c": {"local": {"imageDir": "/x"}}},
})
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, canonical, url", [
    ("ubuntu", "registry-1.docker.io/library/ubuntu:latest", "https://registry-1.docker.io"),
    ("ubuntu:24.04", "registry-1.docker.io/library/ubuntu:24.04", "https://registry-1.docker.io"),
    ("library/ubuntu", "registry-1.docker.io/library/ubuntu:latest",
     "https://registry-1.docker.io"),
    ("docker.io/team/app", "registry-1.docker.io/team/app:latest", "https://registry-1.docker.io"),
    ("myregistry.example.org:5000/team/app:1.2", "myregistry.example.org:5000/team/app:1.2",
     "https://myregistry.example.org:5000"),
    (f"repo@{DIGEST}", f"registry-1.docker.io/library/repo@{DIGEST}",
     "https://registry-1.docker.io"),
    (f"repo:tag@{DIGEST}", f"registry-1.docker.io/library/repo:tag@{DIGEST}",
     "https://registry-1.docker.io"),
    ("myloc/team/app:1", "myloc/team/app:1", "http://127.0.0.1:5000"),
    ("localhost/app", "localhost/app:latest", "https://localhost"),
    ("docker:ubuntu:24.04", "registry-1.docker.io/library/ubuntu:24.04",
     "https://registry-1.docker.io"),
])
def test_references_parse_like_docker(text, canonical, url):
    ref = parse_reference(text, CONFIG)
    assert str(ref) == canonical
    assert ref.registry_url == url


def test_digest_wins_over_tag_for_the_manifest_request():
    assert parse_reference(f"repo:tag@{DIGEST}", CONFIG).manifest_ref == DIGEST
    assert parse_reference("repo:tag", CONFIG).manifest_ref == "tag"


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("Ubuntu", "invalid repository name component 'Ubuntu'"),
    ("ubuntu:-bad", "invalid tag"),
    ("ubuntu@sha256:1234", "invalid digest"),
    ("a b", "whitespace"),
    ("ubuntu\n", "ubuntu"),  # stripped: still fine
    ("x" * 600, "longer than"),
    ("team//app", "invalid repository name component ''"),
    ("host:99999/app", "invalid registry port 99999"),
    ("host:0/app", "invalid registry port 0"),
    ("[::1]:0/app", "invalid registry port 0"),
    ("host:65536/app:1", "invalid registry port 65536"),
])
def test_bad_references_get_a_clear_error(text, fragment):
    if text == "ubuntu\n":
        assert str(parse_reference(text, CONFIG)).endswith("ubuntu:latest")
        return
    with pytest.raises(InvalidReference, match=fragment):
        parse_reference(text, CONFIG)


def test_a_location_written_by_its_address_is_reached_through_the_location():
    ref = parse_reference("127.0.0.1:5000/team/app:1", CONFIG)
    assert ref.registry_url == "http://127.0.0.1:5000"
    assert parse_reference("host:65535/app", CONFIG).registry_url == "https://host:65535"
