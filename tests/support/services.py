"""The gateway and worker as their own processes: testbed.services (shared with bench/
and scripts/demo.py), under the name the tests import it by."""

from testbed.services import (
    IMAGEGW,
    ROOT,
    SHIFTERIMG,
    ServiceProcess,
    embedded_config,
    refused_address,
    restart,
    start_service,
    wait_healthy,
)

__all__ = [
    "ROOT", "IMAGEGW", "SHIFTERIMG", "refused_address", "embedded_config", "ServiceProcess",
    "start_service", "restart", "wait_healthy",
]
