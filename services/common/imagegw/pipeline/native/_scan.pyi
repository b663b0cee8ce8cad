# The compiled layer scanner (scan.c); call it through imagegw.pipeline.native_scan.
from typing import Any

def scan(stream: Any, layer: bytes, hooks: Any, /) -> bytes: ...
