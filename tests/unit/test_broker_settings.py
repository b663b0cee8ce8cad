"""Broker URLs naming Redis Sentinels, and the lease, heartbeat and sweep settings."""

from __future__ import annotations

import pytest

from imagegw.directory import parse_sentinel_url, redis_from_url
from imagegw.domain.config import parse_config
from imagegw.domain.errors import ConfigError


def test_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    assert parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,[::1]:26380,"
                              "sentinel3/imagegw/2") == (
        [("10.0.0.1", 26379), ("::1", 26380), ("sentinel3", 26379)], "imagegw", 2, "s3cret")


@pytest.mark.parametrize("url", ["redis+sentinel://127.0.0.1:26379",
                                 "redis+sentinel:///imagegw",
                                 "redis+sentinel://127.0.0.1:26379/imagegw/x"])
def test_a_sentinel_url_without_hosts_or_master_is_refused_with_an_example(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        redis_from_url(url)
    assert "Broker" in str(caught.value) and "redis+sentinel://host:26379" in str(caught.value)


def test_lease_heartbeat_and_sweep_are_settings_with_defaults() -> None:
    defaults = parse_config({})
    assert (defaults.job_lease_seconds, defaults.worker_ttl_seconds,
            defaults.file_check_interval) == (30.0, 15.0, 600.0)
    site = parse_config({"JobLeaseSeconds": 8, "WorkerTimeToLive": 4.5, "FileCheckInterval": 0})
    assert (site.job_lease_seconds, site.worker_ttl_seconds, site.file_check_interval) == (
        8.0, 4.5, 0.0)


@pytest.mark.parametrize(("key", "value"), [("JobLeaseSeconds", 0), ("WorkerTimeToLive", 7200),
                                            ("FileCheckInterval", -1)])
def test_out_of_range_settings_name_their_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({key: value})
    assert key in str(caught.value)
