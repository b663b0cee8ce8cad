"""Metrics recording (imagegw.metrics) and its configuration: what a scrape shows after a
build job, a failed job, a queue read, and how a bad or busy listen address is reported."""

from __future__ import annotations

import socket

import pytest
import urllib3

from imagegw import metrics
from imagegw.domain.config import parse_config
from imagegw.domain.errors import ConfigError, ConversionFailed
from imagegw.domain.model import BuildJob, BuildResult, ImageMetadata, Progress, Stage

STAGES = (Stage.RESOLVING, Stage.DOWNLOADING, Stage.CONVERTING, Stage.PUBLISHING)


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def result(size: int, *, reused: bool = False) -> BuildResult:
    return BuildResult(image_id="ab" * 32, manifest_digest="sha256:" + "cd" * 32,
                       format="squashfs", metadata=ImageMetadata(), image_file="x.squashfs",
                       meta_file="x.meta", size_bytes=size, reused=reused)


def test_metrics_listen_keys_are_off_by_default_and_validated():
    assert parse_config({}).metrics_listen is None
    config = parse_config({"MetricsListen": "127.0.0.1:9464", "WorkerMetricsListen": "[::1]:0"})
    assert config.metrics_listen == "127.0.0.1:9464"
    assert config.worker_metrics_listen == "[::1]:0"
    assert not config.warnings
    with pytest.raises(ConfigError, match="^WorkerMetricsListen: expected HOST:PORT"):
        parse_config({"WorkerMetricsListen": "9464"})
    with pytest.raises(ConfigError, match="^MetricsListen: expected HOST:PORT"):
        parse_config({"MetricsListen": "127.0.0.1:99999"})


def test_a_built_image_records_every_stage_the_published_bytes_and_the_outcome():
    def build(job: BuildJob, report) -> BuildResult:
        for stage in STAGES:
            report(Progress(stage))
            report(Progress(stage, bytes_done=1))
        return result(4096)

    before_stages = {s: sample("imagegw_pull_stage_duration_seconds_count", stage=s.name.lower())
                     for s in STAGES}
    before_built = sample("imagegw_pulls_total", outcome="built")
    before_bytes = sample("imagegw_published_bytes_total", system="unitsys")
    seen: list[Progress] = []

    metrics.instrument_build(build)(BuildJob("j1", "unitsys", "a:1"), seen.append)

    assert len(seen) == 2 * len(STAGES)  # progress still reaches the job's watchers
    for stage in STAGES:
        count = sample("imagegw_pull_stage_duration_seconds_count", stage=stage.name.lower())
        assert count == before_stages[stage] + 1, stage
    assert sample("imagegw_pulls_total", outcome="built") == before_built + 1
    assert sample("imagegw_published_bytes_total", system="unitsys") == before_bytes + 4096
    assert sample("imagegw_worker_jobs_in_flight") == 0


def test_a_reused_image_publishes_no_bytes():
    before = sample("imagegw_published_bytes_total", system="reusesys")
    reused = sample("imagegw_pulls_total", outcome="reused")
    metrics.instrument_build(lambda job, report: result(999, reused=True))(
        BuildJob("j2", "reusesys", "a:1"), lambda progress: None)
    assert sample("imagegw_published_bytes_total", system="reusesys") == before
    assert sample("imagegw_pulls_total", outcome="reused") == reused + 1


def test_a_failed_build_counts_as_failed_and_leaves_no_job_in_flight():
    def build(job: BuildJob, report) -> BuildResult:
        report(Progress(Stage.CONVERTING))
        raise ConversionFailed("tar2sqfs failed")

    failed = sample("imagegw_pulls_total", outcome="failed")
    converting = sample("imagegw_pull_stage_duration_seconds_count", stage="converting")
    with pytest.raises(ConversionFailed):
        metrics.instrument_build(build)(BuildJob("j3", "s", "a:1"), lambda progress: None)
    assert sample("imagegw_pulls_total", outcome="failed") == failed + 1
    assert sample("imagegw_pull_stage_duration_seconds_count", stage="converting") == converting + 1
    assert sample("imagegw_worker_jobs_in_flight") == 0


def test_layer_cache_counts_hits_and_misses_and_downloaded_bytes():
    hits, misses = (sample("imagegw_layer_cache_requests_total", result=r) for r in ("hit", "miss"))
    downloaded = sample("imagegw_downloaded_bytes_total")
    metrics.layer_cache(hit=True, size=100)
    metrics.layer_cache(hit=False, size=250)
    assert sample("imagegw_layer_cache_requests_total", result="hit") == hits + 1
    assert sample("imagegw_layer_cache_requests_total", result="miss") == misses + 1
    assert sample("imagegw_downloaded_bytes_total") == downloaded + 250


def test_queue_depth_is_read_at_scrape_time_and_a_broken_queue_does_not_break_the_scrape():
    rows = [(object(), None, 0), (object(), None, 1), (object(), "gw-0", 1)]
    metrics.watch_queue(lambda: rows)
    try:
        assert sample("imagegw_queue_jobs", state="waiting") == 2
        assert sample("imagegw_queue_jobs", state="claimed") == 1

        def broken():
            raise ConnectionError("redis is down")

        metrics.watch_queue(broken)
        assert metrics.REGISTRY.get_sample_value("imagegw_queue_jobs", {"state": "waiting"}) is None
        assert sample("imagegw_worker_jobs_in_flight") == 0  # the rest is still there
    finally:
        metrics.watch_queue(None)


def test_endpoint_on_port_zero_serves_the_registry_and_reports_its_port():
    endpoint = metrics.serve("127.0.0.1:0", "MetricsListen")
    assert endpoint is not None
    try:
        host, port = endpoint.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        response = urllib3.request("GET", endpoint.url, timeout=5, retries=False)
        assert response.status == 200
        assert b"# TYPE imagegw_grpc_requests_total counter" in response.data
    finally:
        endpoint.close()


def test_unset_listen_address_starts_no_endpoint():
    assert metrics.serve(None, "MetricsListen") is None


def test_a_busy_port_is_a_config_error_naming_the_key():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(ConfigError, match=f"^WorkerMetricsListen: cannot listen on {address}"):
            metrics.serve(address, "WorkerMetricsListen")
