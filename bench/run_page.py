"""How long the dashboard takes to render a 5,000-branch fan-out's run page (target: < 1 s).

    python -m bench.run_page [--width 5000] [--repeat 20]

Starts a fresh PostgreSQL database, a Redis queue prefix, two workers and `exo-celery serve`, triggers
the fan-out (split -> upper x N -> unite), and times GET of the run page, its live fragment (what the
page polls every 0.3 s) and the per-node JSON, while the run is active and once it is finished.
With Playwright and Debian's chromium (`EXO_TEST_CHROMIUM`, default /usr/bin/chromium) it also loads
the run page in headless chromium and reports the browser's navigation timing: server response (TTFB),
DOMContentLoaded and load. Prints the figures; asserts nothing (speed targets live here, not in tests).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
import uuid
from pathlib import Path

import httpx

from tests.conftest import _drop_queues
from tests.server.conftest import ADMIN_KEY, GRAPHS, start_server
from tests.support import REDIS_URL, Stack, create_database, drop_database, uid


def timed(client: httpx.Client, path: str, repeat: int) -> tuple[float, float, int]:
    """(median ms, max ms, bytes) of `repeat` GETs."""
    times, size = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
        size = len(response.content)
    return statistics.median(times), max(times), size


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
NAVIGATION = """() => {
  const n = performance.getEntriesByType("navigation")[0];
  return [n.responseStart - n.requestStart, n.domContentLoadedEventEnd, n.loadEventEnd];
}"""


def browser_times(base: str, path: str, repeat: int) -> tuple[list[float], list[float], list[float]] | None:
    """(TTFB ms, DOMContentLoaded ms, load ms) of `repeat` loads of `path` in headless chromium, or None."""
    import os

    chromium = os.environ.get("EXO_TEST_CHROMIUM", "/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not Path(chromium).exists():
        return None
    ttfb, dcl, load = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context()
            digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
            context.add_cookies([{"name": "exo_session", "value": digest, "url": base}])
            tab = context.new_page()
            for _ in range(repeat):
                tab.goto(base + path, wait_until="load")
                a, b, c = tab.evaluate(NAVIGATION)
                ttfb.append(a)
                dcl.append(b)
                load.append(c)
        finally:
            browser.close()
    return ttfb, dcl, load


def print_browser(base: str, path: str, repeat: int) -> None:
    found = browser_times(base, path, repeat)
    if found is None:
        print("  chromium        (playwright or chromium not installed: skipped)")
        return
    for label, values in zip(("chromium TTFB", "chromium DCL", "chromium load"), found, strict=True):
        print(f"  {label:15s} median {statistics.median(values):7.1f} ms  max {max(values):7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    url = create_database()
    prefix = uid("bench")
    home = Path("/tmp") / f"exo-bench-page-{uuid.uuid4().hex[:8]}"
    stack = Stack("bench-page", home, url, REDIS_URL, extra={"EXO_QUEUE_PREFIX": prefix})
    ns = "benchpage"
    try:
        stack.start_worker(ns, concurrency=2)
        _, base = start_server(stack, {"EXO_API_KEY": ADMIN_KEY})
        client = httpx.Client(base_url=base, headers={"x-api-key": ADMIN_KEY}, timeout=60)
        client.cookies.set("exo_session", hashlib.sha256(ADMIN_KEY.encode()).hexdigest())
        assert client.put(f"/v0/namespace/{ns}/graph/fanout", json=GRAPHS["fanout"]).status_code == 201
        items = "[" + ",".join(f'"i{i}"' for i in range(args.width)) + "]"
        started = time.perf_counter()
        run_id = client.post(f"/v0/namespace/{ns}/graph/fanout/trigger", json={"inputs": {"items": items}}).json()[
            "run_id"
        ]
        paths = {
            "run page": f"/ui/{ns}/run/{run_id}",
            "live fragment": f"/ui/{ns}/run/{run_id}/live",
            "per-node JSON": f"/v0/namespace/{ns}/run/{run_id}/nodes",
        }
        # while active: wait until about half the branches are done
        while True:
            nodes = client.get(paths["per-node JSON"]).json()
            done = nodes["nodes"].get("up", {}).get("counts", {}).get("SUCCESS", 0)
            if done >= args.width // 2 or nodes["status"] not in ("PENDING", "RUNNING"):
                break
            time.sleep(0.2)
        print(f"fan-out width {args.width}, while RUNNING ({done:,} branches done):")
        for label, path in paths.items():
            med, worst, size = timed(client, path, args.repeat)
            print(f"  {label:15s} median {med:7.1f} ms  max {worst:7.1f} ms  ({size:,} bytes)")
        print_browser(base, paths["run page"], min(args.repeat, 10))
        while client.get(f"/v0/namespace/{ns}/run/{run_id}/wait", params={"timeout": 30}).json()["terminal"] is False:
            pass
        total = time.perf_counter() - started
        states = client.get(f"/v0/namespace/{ns}/run/{run_id}").json()["counts"]
        print(f"finished in {total:.1f} s with {states}; after the run:")
        paths["/metrics scrape"] = "/metrics"
        for label, path in paths.items():
            med, worst, size = timed(client, path, args.repeat)
            print(f"  {label:15s} median {med:7.1f} ms  max {worst:7.1f} ms  ({size:,} bytes)")
        print_browser(base, paths["run page"], args.repeat)
    finally:
        stack.stop_all()
        drop_database(url)
        _drop_queues(prefix)


if __name__ == "__main__":
    main()
