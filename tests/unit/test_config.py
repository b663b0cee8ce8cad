"""Shifter's imagemanager.json is accepted as it is; mistakes name the key."""

import json
from pathlib import Path

import pytest

from imagegw.domain.config import (
    QUEUE_BACKLOG_BYTES,
    default_config,
    load_config,
    parse_config,
    parse_duration,
)
from imagegw.domain.errors import ConfigError, UnknownSystem

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"


@pytest.mark.parametrize("name", ["local_mode_local_worker", "remote_mode_local_worker",
                                  "local_gateway_remote_worker"])
def test_shifter_sample_configs_load_unchanged(name):
    config = load_config(SEEDS / f"{name}.json")
    assert config.warnings == ()
    assert config.default_image_location == "registry-1.docker.io"
    assert config.pull_update_timeout == 300
    assert config.image_expiration_timeout == 90 * 86400
    assert config.mongodb_uri == "mongodb://localhost/" and config.mongodb_name == "Shifter"
    assert config.broker == "redis://localhost/"
    assert config.cache_dir == "/images/cache/" and config.expand_dir == "/images/expand/"
    assert config.locations["registry-1.docker.io"].url == "https://registry-1.docker.io"
    platform = config.platform("mycluster")
    assert platform.munge_socket == "/var/run/munge/munge.socket.2"
    assert platform.admins == ("root",)


def test_remote_sample_config_has_ssh_target():
    platform = load_config(SEEDS / "remote_mode_local_worker.json").platform("mycluster")
    assert platform.access_type == "remote"
    assert platform.ssh is not None
    assert platform.ssh.hosts == ("mycluster01",)
    assert platform.ssh.username == "shifter"
    assert platform.ssh.key == "/home/shifter/.ssh/ssh.key"
    assert platform.ssh.image_dir == "/images"


def test_local_sample_config_has_image_dir():
    platform = load_config(SEEDS / "local_mode_local_worker.json").platform("mycluster")
    assert platform.access_type == "local" and platform.image_dir == "/images"


def test_unknown_keys_are_warnings_naming_the_key():
    config = parse_config({"Platforms": {"c": {"local": {"imageDir": "/x"}, "colour": "red"}},
                           "Frobnicate": 1})
    assert "Frobnicate: unknown key, ignored" in config.warnings
    assert "Platforms.c.colour: unknown key, ignored" in config.warnings


@pytest.mark.parametrize("data, key", [
    ({"PullUpdateTimeout": "soon"}, "PullUpdateTimeout"),
    ({"Platforms": {"c": {"accesstype": "local"}}}, "Platforms.c.local.imageDir"),
    ({"Platforms": {"c": {"accesstype": "remote", "local": {"imageDir": "/x"}}}},
     "Platforms.c.ssh"),
    ({"Platforms": {"c": {"accesstype": "cloud"}}}, "Platforms.c.accesstype"),
    ({"Platforms": {"c": {"admins": "root", "local": {"imageDir": 5}}}},
     "Platforms.c.local.imageDir"),
    ({"Locations": {"l": {"url": "ftp://x"}}}, "Locations.l.url"),
    ({"MongoDBURI": 42}, "MongoDBURI"),
    ({"ConverterOptions": {"blockSize": 1000}}, "ConverterOptions.blockSize"),
    ({"ConverterOptions": {"jobs": -1}}, "ConverterOptions.jobs"),
    ({"ConverterOptions": {"queueBacklog": -5}}, "ConverterOptions.queueBacklog"),
    ({"ConverterOptions": {"queueBacklog": 10**9}}, "ConverterOptions.queueBacklog"),
    ({"ConverterOptions": {"gzipEngine": "igzip"}}, "ConverterOptions.gzipEngine"),
    ({"ConverterOptions": {"gzipEngine": 1}}, "ConverterOptions.gzipEngine"),
    ({"ConverterOptions": {"writerAllocator": "tcmalloc"}}, "ConverterOptions.writerAllocator"),
    ({"ConverterOptions": {"writerAllocator": True}}, "ConverterOptions.writerAllocator"),
])
def test_wrong_types_and_values_are_errors_naming_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value).startswith(key)


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "DefaultImageFormat": "squashfs",\n}\n')
    with pytest.raises(ConfigError, match="line 3"):
        load_config(path)


def test_duration_accepts_shifter_form_and_seconds():
    assert parse_duration("90:00:00:00", "k") == 90 * 86400
    assert parse_duration("1:02:03", "k") == 3723
    assert parse_duration(300, "k") == 300


def test_unknown_system_names_the_known_systems(tmp_path):
    config = default_config(str(tmp_path))
    with pytest.raises(UnknownSystem) as info:
        config.platform("nosuch")
    assert "known systems: default" in str(info.value)


def test_default_config_writes_under_the_data_directory(tmp_path):
    config = default_config(str(tmp_path))
    assert config.platform("default").image_dir == str(tmp_path / "images")
    assert config.cache_dir == str(tmp_path / "cache")
    assert config.mongodb_uri is None and config.broker is None


def test_data_directory_fills_cache_and_expand_only_when_unset(tmp_path):
    data = json.loads((SEEDS / "local_mode_local_worker.json").read_text())
    config = parse_config(data, data_dir=str(tmp_path))
    assert config.cache_dir == "/images/cache/"
    del data["CacheDirectory"]
    assert parse_config(data, data_dir=str(tmp_path)).cache_dir == str(tmp_path / "cache")


def test_compressor_queue_defaults_to_a_fixed_amount_of_data_and_takes_the_sites_count():
    default = parse_config({"ConverterOptions": {"blockSize": 131072}}).converter
    assert default.queue_backlog == 0
    assert default.blocks_queued(2) == QUEUE_BACKLOG_BYTES // 131072
    # Large blocks: never fewer than tar2sqfs's own 10 per compressor thread.
    assert parse_config({"ConverterOptions": {"blockSize": 1 << 20}}).converter.blocks_queued(8) == 80
    chosen = parse_config({"ConverterOptions": {"queueBacklog": 40}}).converter
    assert chosen.blocks_queued(2) == 40


def test_writer_allocator_defaults_to_auto_and_takes_the_sites_choice():
    assert parse_config({}).converter.writer_allocator == "auto"
    for allocator in ("auto", "jemalloc", "glibc"):
        options = parse_config({"ConverterOptions": {"writerAllocator": allocator}}).converter
        assert options.writer_allocator == allocator


def test_gzip_engine_defaults_to_auto_and_takes_the_sites_choice():
    assert parse_config({}).converter.gzip_engine == "auto"
    assert parse_config({"ConverterOptions": {"level": 6}}).converter.gzip_engine == "auto"
    for engine in ("auto", "libdeflate", "zlib"):
        assert parse_config({"ConverterOptions": {"gzipEngine": engine}}).converter.gzip_engine == engine
