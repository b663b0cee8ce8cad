"""The README's first command runs the main job offline: scripts/demo must work."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_pulls_the_sample_image_through_the_gateway():
    done = subprocess.run([str(ROOT / "scripts" / "demo")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Image ready: " in done.stdout
    assert "status: READY" in done.stderr, "shifterimg reports progress on stderr"
    assert "squashfs-root/opt/app/data-link.txt" in done.stdout
    assert "squashfs-root/etc/motd" not in done.stdout, "the whiteout hid the old file"
    assert "ENTRY: ['/bin/hello']" in done.stdout
