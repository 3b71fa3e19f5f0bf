"""How heavy and how quick the admin page is, in headless Chromium: bytes transferred and time to first paint.

Starts `osnova-server serve` on a loopback port (state in a temp dir), signs in through
`osnova-server admin-url`, then loads /admin/ RUNS times with the browser cache off and reads the
Performance API: the navigation's and every resource's `transferSize`, and the `first-paint` and
`first-contentful-paint` entries. Prints one JSON object.

    .venv/bin/python bench/admin_page.py [RUNS]
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
)
SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(runs: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="osnova-bench-admin-"))
    port = free_port()
    config = root / "server.toml"
    config.write_text(
        f'[server]\nbind_address = "127.0.0.1:{port}"\nstate_dir = "{root / "state"}"\n'
        f'[auth]\njwt_secret = "{SECRET}"\n[logging]\nlevel = "warning"\n'
    )
    cli = [sys.executable, "-m", "osnova_server", "--config", str(config)]
    server = subprocess.Popen([*cli, "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    profile = tempfile.mkdtemp(prefix="osnova-bench-chromium-")
    driver = None
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        link = subprocess.run([*cli, "admin-url"], capture_output=True, text=True, check=True).stdout.strip()
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
        driver.set_window_size(1280, 800)
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        driver.get(link)
        samples: list[dict[str, Any]] = []
        for _ in range(runs):
            driver.get(f"{url}/admin/")
            for _ in range(200):
                if driver.execute_script("return document.getElementById('live-state').textContent") == "Live":
                    break
                time.sleep(0.02)
            samples.append(driver.execute_script("""
                const nav = performance.getEntriesByType('navigation')[0];
                const resources = performance.getEntriesByType('resource')
                    .filter(r => !r.name.startsWith('ws'))
                    .map(r => ({name: new URL(r.name).pathname, transfer: r.transferSize, body: r.encodedBodySize}));
                const paint = Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]));
                return {document: nav.transferSize, document_body: nav.encodedBodySize, resources, paint,
                        dom_content_loaded: nav.domContentLoadedEventEnd, load: nav.loadEventEnd};
            """))
        last = samples[-1]
        total = [s["document"] + sum(r["transfer"] for r in s["resources"]) for s in samples]
        print(json.dumps({
            "runs": runs,
            "files": [{"name": "/admin/", "transfer": last["document"], "body": last["document_body"]},
                      *last["resources"]],
            "total_transfer_bytes": {"median": statistics.median(total), "min": min(total), "max": max(total)},
            "first_paint_ms": {"median": round(statistics.median(s["paint"]["first-paint"] for s in samples), 1),
                               "min": round(min(s["paint"]["first-paint"] for s in samples), 1),
                               "max": round(max(s["paint"]["first-paint"] for s in samples), 1)},
            "first_contentful_paint_ms": round(
                statistics.median(s["paint"]["first-contentful-paint"] for s in samples), 1),
            "load_event_ms": round(statistics.median(s["load"] for s in samples), 1),
            "chromium": driver.capabilities.get("browserVersion"),
            "cpus": os.cpu_count(),
        }, indent=2))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
