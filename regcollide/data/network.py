"""Bounded reachability probes: offline, a download on request fails in seconds instead of hanging."""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

PROBE_SECONDS = 3.0


def reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """One TCP connect to ``url``'s host, bounded in time (DNS included, hence the thread)."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])


def hub_offline() -> bool:
    """True when the user asked the Hugging Face libraries to stay offline (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")


def hub_reachable() -> bool:
    """The Hugging Face hub endpoint (``HF_ENDPOINT`` or the library default) answers a TCP connect."""
    from huggingface_hub import constants

    return reachable(constants.ENDPOINT)
