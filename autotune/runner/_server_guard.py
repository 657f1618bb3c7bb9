"""Imported first by the warm trial server (autotune.runner._pool), and nowhere else: the server dies
with the process that started it, as a trial does (PR_SET_PDEATHSIG on Linux). Without it a server
still importing torch when its search is killed would outlive the search until its imports end."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

if sys.platform.startswith("linux") and os.environ.get("AUTOTUNE_POOL_PARENT"):
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if str(os.getppid()) != os.environ["AUTOTUNE_POOL_PARENT"]:  # the parent died before the signal was armed
        os._exit(1)
