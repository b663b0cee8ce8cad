"""Fair share of the gateway between callers (issue 18): how many streams and calls
each caller, and everyone together, may have open at once.

A caller is named by the edge that admits the call (`caller_key`): the MUNGE uid when
the call carried a credential, else the peer's host, so one anonymous client cannot
spend every anonymous user's budget. Every edge (gRPC, REST) charges the same
`FairShare`; a charge is released once when its call ends. No grpc, no asyncio here:
a lock and counters, safe from any thread or event loop.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from enum import Enum

from imagegw.domain.errors import ResourceExhausted

__all__ = ["Admission", "Charge", "FairShare", "Kind", "ShareLimits", "caller_key"]


class Kind(Enum):
    """What a charge pays for: an open stream (a watched pull, an import) or a call."""

    STREAM = "stream"
    CALL = "call"


@dataclass(frozen=True)
class ShareLimits:
    """The caps, named by their `Limits` keys in messages."""

    max_streams_per_caller: int = 32
    max_calls_per_caller: int = 32
    max_streams_total: int = 1024
    max_calls_total: int = 256


_SETTINGS = {
    (Kind.STREAM, "caller"): "Limits.maxStreamsPerCaller",
    (Kind.CALL, "caller"): "Limits.maxCallsPerCaller",
    (Kind.STREAM, "total"): "Limits.maxStreamsTotal",
    (Kind.CALL, "total"): "Limits.maxCallsTotal",
}


def caller_key(uid: int | None, peer_host: str) -> str:
    """The name a caller is counted under: `uid:N` for a verified user, else `peer:HOST`."""
    if uid is not None and uid >= 0:
        return f"uid:{uid}"
    return f"peer:{peer_host or 'unknown'}"


class Charge:
    """One admitted call or stream; `release()` (or leaving the `with`) gives it back, once."""

    def __init__(self, share: FairShare, caller: str, kind: Kind) -> None:
        self.caller = caller
        self.kind = kind
        self._share: FairShare | None = share

    def release(self) -> None:
        share, self._share = self._share, None
        if share is not None:
            share._release(self.caller, self.kind)

    def __enter__(self) -> Charge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class FairShare:
    """Counts open streams and calls per caller and in total; refuses one too many."""

    def __init__(self, limits: ShareLimits) -> None:
        for name, value in vars(limits).items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.limits = limits
        self._lock = threading.Lock()
        self._by_caller: dict[Kind, Counter[str]] = {kind: Counter() for kind in Kind}
        self._total: Counter[Kind] = Counter()

    def _caps(self, kind: Kind) -> tuple[int, int]:
        if kind is Kind.STREAM:
            return self.limits.max_streams_per_caller, self.limits.max_streams_total
        return self.limits.max_calls_per_caller, self.limits.max_calls_total

    def admit(self, caller: str, kind: Kind) -> Charge:
        """A charge for one more `kind` of `caller`; ResourceExhausted (naming the
        setting) when the caller, or everyone together, already has the most allowed."""
        per_caller, total = self._caps(kind)
        with self._lock:
            mine = self._by_caller[kind][caller]
            if mine >= per_caller:
                raise ResourceExhausted(
                    f"{_who(caller)}: {mine} {kind.value}s open already, the most "
                    f"{_SETTINGS[kind, 'caller']} ({per_caller}) allows",
                    hint=_hint(kind))
            if self._total[kind] >= total:
                raise ResourceExhausted(
                    f"the gateway already has {self._total[kind]} {kind.value}s open, the "
                    f"most {_SETTINGS[kind, 'total']} ({total}) allows",
                    hint="try again shortly")
            self._by_caller[kind][caller] += 1
            self._total[kind] += 1
        return Charge(self, caller, kind)

    def _release(self, caller: str, kind: Kind) -> None:
        with self._lock:
            counts = self._by_caller[kind]
            counts[caller] -= 1
            if counts[caller] <= 0:
                del counts[caller]
            self._total[kind] -= 1

    def open(self, caller: str, kind: Kind) -> int:
        """How many `kind`s `caller` has open now."""
        with self._lock:
            return self._by_caller[kind][caller]

    def total(self, kind: Kind) -> int:
        with self._lock:
            return self._total[kind]


class Admission:
    """The fair-share charge of one call or stream, made once its caller is known:
    `charge(None)` at once for a call without a credential (counted by `peer_host`),
    `charge(uid)` once a credential is verified. Later charges do nothing; `release()`
    ends it (when the call ends)."""

    def __init__(self, share: FairShare, kind: Kind, peer_host: str) -> None:
        self.share = share
        self.kind = kind
        self.peer_host = peer_host
        self._charge: Charge | None = None

    @property
    def charged(self) -> bool:
        return self._charge is not None

    def charge(self, uid: int | None) -> None:
        if self._charge is None:
            self._charge = self.share.admit(caller_key(uid, self.peer_host), self.kind)

    def release(self) -> None:
        if self._charge is not None:
            self._charge.release()


def _who(caller: str) -> str:
    kind, _, name = caller.partition(":")
    return f"uid {name}" if kind == "uid" else f"callers from {name} (by address)"


def _hint(kind: Kind) -> str:
    if kind is Kind.STREAM:
        return ("close pulls you no longer watch (or pull with --no-wait and look the image "
                "up later)")
    return "wait for your calls in flight to answer before sending more"
