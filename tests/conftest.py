"""Test-wide guards: no outbound network from the test process (loopback stays open), offline HF, one thread."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)

_connect = socket.socket.connect


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise OSError(f"labkit tests run offline: outbound connection to {address!r} blocked")
    return _connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def _block_network():
    """Refuse non-loopback connections in this process (the test command also runs under `unshare -n`)."""
    socket.socket.connect = _guarded_connect
    yield
    socket.socket.connect = _connect


def pytest_collection_modifyitems(config, items):
    """Deselect the ``families`` tests unless the -m expression names them (``make test-families``)."""
    if "families" in (config.getoption("markexpr") or ""):
        return
    families = [item for item in items if item.get_closest_marker("families")]
    if families:
        config.hook.pytest_deselected(items=families)
        items[:] = [item for item in items if not item.get_closest_marker("families")]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
