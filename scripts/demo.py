"""The main job, offline, on the embedded default: a local registry with a sample image,
`imagegw serve`, and `shifterimg pull` through it. Run by scripts/demo."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testbed import layers as L  # noqa: E402
from testbed.images import default_config, push_image  # noqa: E402
from testbed.registry import start_registry  # noqa: E402
from testbed.services import SHIFTERIMG, embedded_config, start_service  # noqa: E402


def sample_layers() -> list[bytes]:
    base = L.layer(
        L.dir("bin"), L.file("bin/hello", b"#!/bin/sh\necho \"hello from $GREETING\"\n", 0o755),
        L.dir("etc"), L.file("etc/os-release", b"NAME=demo\n"), L.file("etc/motd", b"old motd\n"),
        L.dir("opt"), L.dir("opt/app"), L.file("opt/app/data.txt", b"v1\n"),
    )
    update = L.layer(
        L.whiteout("etc/motd"), L.file("opt/app/data.txt", b"v2\n"),
        L.hardlink("opt/app/data-link.txt", "opt/app/data.txt"), L.symlink("usr", "."),
        compression="zstd",
    )
    return [base, update]


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="imagegw-demo-"))
    print(f"demo: working in {work}")
    registry = start_registry(work / "registry")
    gateway = None
    try:
        layers = sample_layers()
        config = default_config(layers)
        config["config"] = {"Env": ["PATH=/bin", "GREETING=the image gateway"],
                            "Entrypoint": ["/bin/hello"], "WorkingDir": "/opt/app"}
        pushed = push_image(registry.url, "demo/hello", "1.0", layers, config)
        print(f"demo: pushed demo/hello:1.0 ({pushed.manifest_digest}) to {registry.url}")
        gateway_config = embedded_config(work, registry_url=registry.url)
        gateway_config["Locations"]["local"] = gateway_config["Locations"].pop("testreg")
        gateway = start_service("serve", gateway_config, work)
        print(f"demo: imagegw serve listening on {gateway.address}")
        cli = [SHIFTERIMG, "--gateway", gateway.address, "--system", "default"]
        run(*cli, "pull", "local/demo/hello:1.0")
        run(*cli, "lookup", "local/demo/hello:1.0")
        run(*cli, "images")
        image_dir = work / "images" / "default"
        for path in sorted(image_dir.iterdir()):
            print(f"demo: {path} ({path.stat().st_size} bytes)")
            if path.suffix == ".meta":
                print(path.read_text(), end="")
        squashfs = next(image_dir.glob("*.squashfs"))
        run("unsquashfs", "-lls", str(squashfs))
        print(json.dumps({"image": str(squashfs), "ok": True}))
        return 0
    finally:
        if gateway is not None:
            gateway.stop()
        registry.stop()


if __name__ == "__main__":
    sys.exit(main())
