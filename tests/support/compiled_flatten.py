"""Runs the compiled flatten (pipeline/native_flat.py) beside the Python one, so every
test of the exact merge checks both: the same tar bytes, or the same refusal.

When the extension is not built the checks are skipped here; test_native_flat.py's
`test_the_extension_is_built_in_ci` fails in CI then."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from typing import Any

from imagegw.domain.errors import ContentRejected
from imagegw.pipeline import compact
from imagegw.pipeline.flatten import LayerIndex

try:
    from imagegw.pipeline import native_flat
except ImportError:
    native_flat = None  # type: ignore[assignment]

__all__ = ["BUILT", "compiled_tar", "assert_same_merge", "assert_same_tar"]

BUILT = native_flat is not None


def compiled_tar(indexes: Sequence[LayerIndex | bytes], layers: Sequence[bytes]) -> bytes:
    """The compiled merge and writer over the indexes (compact or not) and layer tars."""
    assert native_flat is not None
    tree = native_flat.merge([index if isinstance(index, bytes) else compact.encode(index)
                              for index in indexes])
    with tempfile.TemporaryFile() as out:
        native_flat.write_tar(tree, lambda number: io.BytesIO(layers[number]), out)
        out.seek(0)
        return out.read()


def assert_same_merge(indexes: Sequence[LayerIndex], error: ContentRejected | None) -> None:
    """The compiled merge refuses the indexes exactly as merge_layers did (`error`), or
    accepts them as it did (None)."""
    if native_flat is None:
        return
    try:
        native_flat.merge([compact.encode(index) for index in indexes])
    except ContentRejected as compiled:
        assert error is not None, f"only the compiled merge refuses: {compiled}"
        assert (compiled.message, compiled.hint) == (error.message, error.hint)
        return
    assert error is None, f"the compiled merge accepts what merge_layers refuses: {error}"


def assert_same_tar(indexes: Sequence[LayerIndex], layers: Sequence[bytes],
                    expected: bytes) -> None:
    """The compiled path writes exactly `expected` (write_flat_tar's bytes)."""
    if native_flat is not None:
        assert compiled_tar(indexes, layers) == expected


def one_pass_outcome(layers: Sequence[bytes], *, max_data_bytes: int = 1 << 40,
                     compiled: bool) -> tuple:
    """What the one-pass flatten (`streaming.stream_flat_tar`, or the compiled
    `native_onepass.stream_flat_tar`) makes of the layer tars: ("tree", the tar's bytes),
    ("fallback", the reason) or ("refused", message, hint)."""
    from imagegw.pipeline import streaming
    from imagegw.pipeline.members import MemberPolicy

    names = [f"layer{number}" for number in range(len(layers))]
    policy = MemberPolicy()
    one_pass: Any = streaming
    if compiled:
        from imagegw.pipeline import native_onepass
        one_pass = native_onepass
    with tempfile.TemporaryFile() as out:
        try:
            try:
                one_pass.stream_flat_tar(
                    names, lambda number: io.BytesIO(layers[number]), out, policy=policy,
                    max_data_bytes=max_data_bytes).verify()
            except one_pass.SpeculationFailed as failed:
                if compiled:  # the compact indexes made so far, for the two-pass flatten
                    assert all(compact.layer_of(index) == names[number]
                               for number, index in failed.indexes.items())
                return ("fallback", failed.reason)
        except ContentRejected as refused:
            return ("refused", refused.message, refused.hint)
        out.flush()
        out.seek(0)
        return ("tree", out.read())


def assert_same_one_pass(layers: Sequence[bytes], *, max_data_bytes: int = 1 << 40) -> tuple:
    """The compiled one-pass flatten writes exactly the Python one's bytes and reaches the
    same verdict (skipped when the extensions are not built); the Python outcome."""
    expected = one_pass_outcome(layers, max_data_bytes=max_data_bytes, compiled=False)
    if native_flat is not None:
        assert one_pass_outcome(layers, max_data_bytes=max_data_bytes, compiled=True) == expected
    return expected
