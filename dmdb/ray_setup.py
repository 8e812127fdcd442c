"""Ray, started on loopback or joined at an address: what training and fitting share.

A local cluster listens on 127.0.0.1 only, with no dashboard, so tests and
benchmarks never open a port to another machine.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

from dmdb.errors import UsageError

__all__ = ["check_address", "require_ray", "start_ray"]


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("Ray is not installed; install it with: pip install 'dmdb[ray]'") \
            from None
    return ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds, naming the address, if HOST:PORT does not answer."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--address takes auto or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UsageError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); "
                         "check the address, or leave --address out to start a local one") \
            from None


def start_ray(address: str | None, num_cpus: int | None = None) -> tuple[Any, bool, float]:
    """Connect to (or start) Ray; return (ray, whether we started it, seconds taken).

    Without an address a local cluster starts on 127.0.0.1 only, with no dashboard,
    and its workers see the driver's ``sys.path`` (so plug-in trainers import there).
    """
    if address is None:
        # Ray resolves 127.0.0.1 to the machine's outward address unless told that this
        # is a single-node cluster; a local cluster must talk over loopback only.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = require_ray()
    t0 = time.perf_counter()
    if address not in (None, "auto"):
        check_address(address)
    if ray.is_initialized():
        return ray, False, 0.0
    try:
        if address is None:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False  # already imported: same setting
            pythonpath = os.pathsep.join(p for p in sys.path if p)
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
            return ray, True, time.perf_counter() - t0
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise UsageError(f"cannot connect to Ray at {address}: {str(e).splitlines()[0]}") \
            from None
    return ray, False, time.perf_counter() - t0
