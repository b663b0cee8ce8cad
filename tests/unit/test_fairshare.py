"""Issue 18: the per-caller counter every gateway edge charges (no server needed)."""

from __future__ import annotations

import threading

import pytest

from imagegw.domain.config import parse_config
from imagegw.domain.errors import ConfigError, ResourceExhausted
from imagegw.gateway.api.edge import peer_host
from imagegw.gateway.app import share_limits
from imagegw.gateway.core.fairshare import Admission, FairShare, Kind, ShareLimits, caller_key

LIMITS = ShareLimits(max_streams_per_caller=3, max_calls_per_caller=2, max_streams_total=5,
                     max_calls_total=10)


def test_a_caller_gets_its_streams_then_an_error_naming_the_setting():
    share = FairShare(LIMITS)
    charges = [share.admit("uid:1000", Kind.STREAM) for _ in range(3)]
    with pytest.raises(ResourceExhausted, match=r"Limits\.maxStreamsPerCaller \(3\)") as caught:
        share.admit("uid:1000", Kind.STREAM)
    assert "uid 1000: 3 streams open already" in str(caught.value)
    assert share.open("uid:1000", Kind.STREAM) == 3
    charges[0].release()
    share.admit("uid:1000", Kind.STREAM)  # one given back, one more allowed


def test_other_callers_are_not_refused_by_one_callers_streams():
    share = FairShare(LIMITS)
    for _ in range(3):
        share.admit("peer:127.0.0.2", Kind.STREAM)
    share.admit("peer:127.0.0.3", Kind.STREAM)
    share.admit("uid:7", Kind.CALL)  # calls have their own budget


def test_the_total_caps_everyone_together_with_its_own_setting():
    share = FairShare(LIMITS)
    for index in range(5):
        share.admit(f"peer:10.0.0.{index}", Kind.STREAM)
    with pytest.raises(ResourceExhausted, match=r"Limits\.maxStreamsTotal \(5\)"):
        share.admit("peer:10.0.0.99", Kind.STREAM)
    assert share.total(Kind.STREAM) == 5


def test_calls_have_their_own_per_caller_setting():
    share = FairShare(LIMITS)
    share.admit("uid:1", Kind.CALL)
    share.admit("uid:1", Kind.CALL)
    with pytest.raises(ResourceExhausted, match=r"Limits\.maxCallsPerCaller \(2\)"):
        share.admit("uid:1", Kind.CALL)


def test_a_charge_is_given_back_once_however_often_it_is_released():
    share = FairShare(LIMITS)
    with share.admit("uid:1", Kind.STREAM) as charge:
        share.admit("uid:1", Kind.STREAM)
    charge.release()
    charge.release()
    assert share.open("uid:1", Kind.STREAM) == 1
    assert share.total(Kind.STREAM) == 1


def test_anonymous_callers_are_counted_by_peer_host_and_users_by_uid():
    assert caller_key(None, "127.0.0.2") == "peer:127.0.0.2"
    assert caller_key(-1, "::1") == "peer:::1"
    assert caller_key(0, "127.0.0.2") == "uid:0"
    assert caller_key(1000, "127.0.0.2") == "uid:1000"


def test_an_admission_charges_the_first_caller_it_learns_and_releases_once():
    share = FairShare(LIMITS)
    admission = Admission(share, Kind.STREAM, "127.0.0.5")
    admission.charge(1000)
    admission.charge(None)  # later charges of the same call do nothing
    assert share.open("uid:1000", Kind.STREAM) == 1
    assert share.open("peer:127.0.0.5", Kind.STREAM) == 0
    admission.release()
    admission.release()
    assert share.total(Kind.STREAM) == 0


def test_concurrent_admissions_never_overshoot_the_cap():
    share = FairShare(ShareLimits(max_streams_per_caller=50, max_streams_total=1000))
    admitted: list[object] = []
    refused: list[ResourceExhausted] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        barrier.wait()
        for _ in range(20):
            try:
                admitted.append(share.admit("peer:127.0.0.1", Kind.STREAM))
            except ResourceExhausted as exc:
                refused.append(exc)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 50 and len(refused) == 8 * 20 - 50
    assert share.open("peer:127.0.0.1", Kind.STREAM) == 50


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError, match="max_calls_total"):
        FairShare(ShareLimits(max_calls_total=0))


@pytest.mark.parametrize(("peer", "host"), [
    ("ipv4:127.0.0.2:51234", "127.0.0.2"),
    ("ipv6:[::1]:51234", "::1"),
    ("ipv6:[2001:db8::7]:443", "2001:db8::7"),
    ("unix:/run/imagegw.sock", "unix"),
    ("", "unknown"),
])
def test_peer_host_drops_the_port_so_every_connection_of_a_host_counts_once(peer, host):
    assert peer_host(peer) == host


def test_the_limits_are_read_from_the_configuration_and_zero_is_refused_by_name():
    config = parse_config({"Limits": {"maxStreamsPerCaller": 4, "maxCallsPerCaller": 5,
                                      "maxStreamsTotal": 40, "maxCallsTotal": 50,
                                      "gatewayThreads": 3}})
    assert share_limits(config) == ShareLimits(4, 5, 40, 50)
    assert config.limits.gateway_threads == 3
    assert not config.warnings
    assert share_limits(parse_config({})) == ShareLimits()
    with pytest.raises(ConfigError, match="Limits.maxStreamsPerCaller: must be at least 1"):
        parse_config({"Limits": {"maxStreamsPerCaller": 0}})
