"""Which machine (and which boot of it) wrote a process record, so that "is that process still
running?" is only asked where the answer means something.

Run folders record the process that trains them (``running.json``; the reproduction workflow's
``status.json``) to refuse a second writer. A pid is only meaningful on the machine that issued
it and since its last boot, and a host name does not identify that: freshly provisioned machines
(cloud VMs, containers, this project's working sessions) often share one (``vm``), and a run
folder carried to one of them (``reproduce pack``) would find some other process under the old
pid. Records therefore carry the Linux boot id beside the host name.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """This machine's current boot id (Linux; None where there is none)."""
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def process_record() -> dict[str, Any]:
    """``{"pid", "host", "boot"}`` of this process."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot": boot_id()}


def on_this_machine(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` (with ``host`` and, when written by this version, ``boot``) was written
    on this machine since its last boot, so that its pid can be checked here."""
    if record.get("host") != socket.gethostname():
        return False
    boot = record.get("boot")
    return boot is None or boot == boot_id()


def alive_here(record: Mapping[str, Any]) -> bool:
    """Whether the process of ``record`` runs now on this machine (and is not this process)."""
    try:
        pid = int(record.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if pid <= 0 or pid == os.getpid() or not on_this_machine(record):
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
