"""What a benchmark's results record about where they were measured."""

from __future__ import annotations

import importlib.metadata
import multiprocessing
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent.parent


def use_checkout() -> None:
    """Measure the rtc_recorder of this checkout (installed or not): its root goes on
    ``sys.path``, which spawned children inherit."""
    if (CHECKOUT / "rtc_recorder" / "__init__.py").exists() and str(CHECKOUT) not in sys.path:
        sys.path.insert(1, str(CHECKOUT))


def checkout() -> dict[str, Any] | None:
    """The git commit of this checkout, and whether rtc_recorder differs from it."""

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", "-C", str(CHECKOUT), *arguments],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "rtcRecorderModified": bool(git("status", "--porcelain", "--", "rtc_recorder")),
        }
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Python, platform, CPU, package versions and the checkout measured, for the results."""

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    model = None
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), None
            )
    except OSError:
        pass
    return {
        "checkout": checkout(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": model,
        "cpuCount": multiprocessing.cpu_count(),
        "packages": {name: version(name) for name in ("aiortc", "av", "rtc-recorder", "aiohttp")},
    }
