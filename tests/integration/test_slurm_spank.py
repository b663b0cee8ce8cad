"""The imagegw SPANK plugin in a real single-node Slurm, against a real gateway and registry.

srun/sbatch run as a user runs them; the tests check what the job sees (SHIFTER_* in its
environment) and what the user sees when the gateway refuses (the gateway's message).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import gateway_service_pb2_grpc, image_pb2
from tests.support.images import PushedImage, push_image
from tests.support.layers import executables
from tests.support.registry import RegistryServer
from tests.support.services import ServiceProcess, embedded_config, refused_address, start_service
from tests.support.slurm import SlurmCluster, build_spank_plugin, running_slurm

REPOSITORY = "team/spank"
PULL_TIMEOUT = 60.0


def _image_id(image: PushedImage) -> str:
    return image.config_digest.removeprefix("sha256:")


@dataclass
class Site:
    slurm: SlurmCluster
    gateway: ServiceProcess
    pulled: PushedImage
    unpulled: PushedImage
    plugin_args: dict[str, str]
    prolog_env: Path


@pytest.fixture(scope="module")
def site(
    registry: RegistryServer,
    munge_socket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    plugin = build_spank_plugin()
    workdir = tmp_path_factory.mktemp("slurm-spank")
    pulled = push_image(registry.url, REPOSITORY, "1", [executables({"bin/one": b"1\n"})])
    unpulled = push_image(registry.url, REPOSITORY, "2", [executables({"bin/two": b"2\n"})])
    config = embedded_config(workdir, registry_url=registry.url)
    config["Platforms"]["default"]["mungeSocketPath"] = munge_socket
    gateway = start_service("serve", config, workdir / "gateway")
    try:
        with gateway.channel() as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            request = pb.PullImageRequest(system="default", reference=f"testreg/{REPOSITORY}:1")
            final = list(stub.PullImage(request, timeout=PULL_TIMEOUT))[-1]
        assert final.image.state == image_pb2.IMAGE_STATE_READY, final
        args = {"gateway": gateway.address, "system": "default", "timeout": "10", "pull": "0",
                "munge_socket": munge_socket}
        prolog_env = workdir / "prolog.env"
        prolog = workdir / "prolog.sh"
        prolog.write_text(f"#!/bin/sh\nenv > {prolog_env}\n")
        prolog.chmod(0o755)
        with running_slurm(workdir / "slurm", plugin, args, munge_socket=munge_socket,
                           prolog=prolog) as slurm:
            yield Site(slurm, gateway, pulled, unpulled, args, prolog_env)
    finally:
        gateway.stop()


@pytest.fixture
def slurm(site: Site) -> Iterator[SlurmCluster]:
    """The cluster with the site's plugin arguments restored after each test."""
    yield site.slurm
    site.slurm.set_plugin_args(site.plugin_args)


def _environment(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def test_srun_with_image_gives_the_tasks_the_image_id(site: Site, slurm: SlurmCluster) -> None:
    request = f"docker:testreg/{REPOSITORY}:1"
    ran = slurm.run(["srun", f"--image={request}", "env"])
    assert ran.returncode == 0, ran.stderr + slurm.logs()
    env = _environment(ran.stdout)
    assert env["SHIFTER_IMAGE"] == _image_id(site.pulled)
    assert env["SHIFTER_IMAGETYPE"] == "id"
    assert env["SHIFTER_IMAGEREQUEST"] == request


def test_bare_image_name_means_a_docker_image(site: Site, slurm: SlurmCluster) -> None:
    ran = slurm.run(["srun", f"--image=testreg/{REPOSITORY}:1", "printenv", "SHIFTER_IMAGE"])
    assert (ran.returncode, ran.stdout) == (0, _image_id(site.pulled) + "\n"), ran.stderr


def test_image_can_be_requested_by_id(site: Site, slurm: SlurmCluster) -> None:
    image_id = _image_id(site.pulled)
    ran = slurm.run(["srun", f"--image=id:{image_id}", "printenv", "SHIFTER_IMAGE"])
    assert (ran.returncode, ran.stdout) == (0, image_id + "\n"), ran.stderr


def test_srun_with_unknown_image_fails_with_the_gateways_message(slurm: SlurmCluster) -> None:
    ran = slurm.run(["srun", f"--image=docker:testreg/{REPOSITORY}:never-pulled", "echo", "ran"])
    assert ran.returncode != 0
    assert "ran" not in ran.stdout
    assert re.search(rf"imagegw: NOT_FOUND: .*testreg/{REPOSITORY}:never-pulled", ran.stderr), (
        ran.stderr
    )


def test_srun_with_unreachable_gateway_fails_naming_it(slurm: SlurmCluster) -> None:
    closed = refused_address()
    slurm.set_plugin_args({"gateway": closed, "system": "default", "timeout": "5"})
    ran = slurm.run(["srun", f"--image=testreg/{REPOSITORY}:1", "echo", "ran"])
    assert ran.returncode != 0
    assert "ran" not in ran.stdout
    assert f"imagegw: UNAVAILABLE: no gateway could be reached: {closed}" in ran.stderr


def test_srun_without_image_never_calls_the_gateway(slurm: SlurmCluster) -> None:
    slurm.set_plugin_args({"gateway": refused_address(), "system": "default"})
    ran = slurm.run(["srun", "env"])
    assert ran.returncode == 0, ran.stderr
    assert "SHIFTER_IMAGE" not in _environment(ran.stdout)


def test_plugin_with_pull_enabled_pulls_a_missing_image_first(
    site: Site, slurm: SlurmCluster
) -> None:
    slurm.set_plugin_args({**site.plugin_args, "pull": "1"})
    ran = slurm.run(["srun", f"--image=testreg/{REPOSITORY}:2", "printenv", "SHIFTER_IMAGE"])
    assert (ran.returncode, ran.stdout) == (0, _image_id(site.unpulled) + "\n"), ran.stderr


def test_sbatch_with_image_exports_the_id_to_the_batch_job(
    site: Site, slurm: SlurmCluster
) -> None:
    output = slurm.root / "sbatch-env.out"
    submitted = slurm.run(["sbatch", "--parsable", f"--image=testreg/{REPOSITORY}:1",
                           f"--output={output}", "--wrap", "env"])
    assert submitted.returncode == 0, submitted.stderr
    slurm.wait_for_job(submitted.stdout.strip().split(";")[0])
    env = _environment(output.read_text())
    assert env["SHIFTER_IMAGE"] == _image_id(site.pulled)
    assert env["SHIFTER_IMAGETYPE"] == "id"


def test_job_prolog_sees_the_image_id_in_the_job_control_environment(
    site: Site, slurm: SlurmCluster
) -> None:
    site.prolog_env.unlink(missing_ok=True)
    ran = slurm.run(["srun", f"--image=testreg/{REPOSITORY}:1", "true"])
    assert ran.returncode == 0, ran.stderr
    env = _environment(site.prolog_env.read_text())
    assert env["SPANK_SHIFTER_IMAGE"] == _image_id(site.pulled)
    assert env["SPANK_SHIFTER_IMAGETYPE"] == "id"


def test_sbatch_with_unknown_image_is_refused_at_submission(slurm: SlurmCluster) -> None:
    submitted = slurm.run(["sbatch", f"--image=testreg/{REPOSITORY}:never-pulled",
                           "--wrap", "true"])
    assert submitted.returncode != 0
    assert "Submitted batch job" not in submitted.stdout
    assert "imagegw: NOT_FOUND: " in submitted.stderr


def test_salloc_with_image_gives_the_allocation_shell_the_image_id(
    site: Site, slurm: SlurmCluster
) -> None:
    ran = slurm.run(["salloc", f"--image=testreg/{REPOSITORY}:1", "printenv", "SHIFTER_IMAGE"])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == _image_id(site.pulled) + "\n"


def test_srun_inside_a_batch_job_uses_the_id_without_calling_the_gateway(
    site: Site, slurm: SlurmCluster
) -> None:
    go = slurm.root / "go"
    output = slurm.root / "inner-srun.out"
    script = slurm.root / "inner.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"while [ ! -e {go} ]; do sleep 0.1; done\n"
        "srun printenv SHIFTER_IMAGE\n"
    )
    submitted = slurm.run(["sbatch", "--parsable", f"--image=testreg/{REPOSITORY}:1",
                           f"--output={output}", str(script)])
    assert submitted.returncode == 0, submitted.stderr
    # From here on the gateway is unreachable for everything the job runs.
    slurm.set_plugin_args({"gateway": refused_address(), "system": "default"})
    go.touch()
    slurm.wait_for_job(submitted.stdout.strip().split(";")[0])
    assert output.read_text() == _image_id(site.pulled) + "\n"


def test_bad_plugstack_argument_fails_only_image_jobs_naming_the_argument(
    slurm: SlurmCluster,
) -> None:
    slurm.set_plugin_args({"gateway": "127.0.0.1:1", "timeuot": "5"})
    with_image = slurm.run(["srun", f"--image=testreg/{REPOSITORY}:1", "true"])
    assert with_image.returncode != 0
    assert "imagegw: bad plugstack.conf argument: timeuot=5: unknown argument" in (
        with_image.stderr
    )
    without_image = slurm.run(["srun", "echo", "ran"])
    assert (without_image.returncode, without_image.stdout) == (0, "ran\n"), without_image.stderr
