"""The configurations the administrator's guide shows are ones the services accept as written."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from imagegw.domain.config import parse_config

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def json_blocks() -> list[str]:
    return re.findall(r"```json\n(.*?)```", GUIDE.read_text(), re.S)


def test_every_configuration_in_the_guide_loads_without_warnings() -> None:
    blocks = json_blocks()
    whole = [json.loads(block) for block in blocks if block.startswith("{")]
    assert len(whole) >= 2, "the worked examples show whole configurations"
    fragments = [block for block in blocks if not block.startswith("{")]
    base: dict[str, Any] = whole[0]
    configurations = whole + [{**base, "Platforms": json.loads("{" + fragment + "}")}
                              for fragment in fragments]
    for data in configurations:
        config = parse_config(data, data_dir="/var/lib/imagegw")
        assert config.platforms, data
        assert config.warnings == (), config.warnings


def test_remote_example_keeps_the_ssh_key_out_of_home() -> None:
    """The units hide /home (ProtectHome=yes): Shifter's sample key path would be unreadable."""
    fragments = [json.loads("{" + block + "}") for block in json_blocks() if not block.startswith("{")]
    keys = [platform["ssh"]["key"] for fragment in fragments for platform in fragment.values()
            if "ssh" in platform]
    assert keys and not any(key.startswith("/home/") for key in keys)
