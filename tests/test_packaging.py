"""The wheel: it carries the page (and the room manifest's schema), and a server installed
from it serves the page."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import aiohttp

from .server_support import ROOT, server_process


async def test_the_wheel_ships_the_page_and_serves_it(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(dist)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("rtc_recorder-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for page_file in ("index.html", "app.js", "style.css"):
            assert f"rtc_recorder/static/{page_file}" in names, sorted(names)
        assert "rtc_recorder/manifest.schema.json" in names  # rooms' manifests' schema
        assert not any(name.startswith(("tests/", "benchmarks/", "static/")) for name in names)
        installed = tmp_path / "site"
        archive.extractall(installed)

    # Run from the unpacked wheel, far from the checkout, so its static/ cannot be found.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with (
        server_process(None, cwd=elsewhere, pythonpath=installed) as (process, base),
        aiohttp.ClientSession(base) as http,
    ):
        async with http.get("/") as response:
            assert response.status == 200
            assert "<button" in await response.text()
        async with http.get("/static/app.js") as response:
            assert response.status == 200
            assert len(await response.read()) > 1000
        module = subprocess.run(
            [sys.executable, "-c", "import rtc_recorder; print(rtc_recorder.__file__)"],
            cwd=elsewhere,
            env={**os.environ, "PYTHONPATH": str(installed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert Path(module).is_relative_to(installed), module
        process.terminate()
        assert await asyncio.to_thread(process.wait, 30) == 0
    assert (elsewhere / "recordings").is_dir()  # the default folder, relative to where it runs
