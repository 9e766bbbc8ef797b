"""Plugin time from the end of a brush stroke to the live frame leaving, in real Krita (issue 10).

Starts the real backend on tiny models and real Krita under Xvfb with the installed plugin (the end-to-end
harness in tests/e2e), then paints real mouse strokes (xdotool) with Krita's brush tool on a 512x512 document
(the baseline) and on a 2048x2048 one, with Live on. The plugin measures each stroke itself: from the pointer
release (its input watch sees it) to the job handed to the network thread (`stroke_to_send_ms`), and apart
from that the plugin's own work once Krita has finished rendering the stroke (`plugin_median_ms`: capture,
compare, build; the wait for Krita runs in the event loop and does not block the canvas). Prints JSON lines:
one per document size, then the ratio of the large document to the baseline, measured in the same run.

    PYTHONPATH=. .venv/bin/python bench/stroke_to_send.py [--strokes 12] [--sizes 512,2048]

Needs krita, Xvfb and xdotool (apt-get install krita xvfb xdotool). Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.e2e.backend_process import BackendProcess, build_models
from tests.e2e.krita_session import KritaSession
from tests.e2e.painter import Painter, painter_tools_available

PRE = "c = controller\n"
VERBOSE = False  # --verbose: every stroke's phases


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(session: KritaSession, painter: Painter, size: int, strokes: int) -> dict[str, object]:
    painter.new_document(size, size)
    zoom = min(1.0, 600 / size)  # the whole document on screen
    painter.setup_canvas_view(zoom=zoom)
    painter.select_brush_tool()
    painter.set_brush(size=max(4.0, size / 100), color=(30, 30, 200))
    session.run(PRE + "panel.live.setChecked(True)")
    session.wait_until("c.stats['results'] >= 1 and not c.tracker.busy", 120, setup=PRE)
    # Turning live on sends the canvas as it is, with no stroke to time: only strokes count.
    session.run(PRE + "c.stats['stroke_to_send_ms'].clear()\nc.stats['send_phases_ms'].clear()")
    for index in range(strokes):
        y = size * (0.1 + 0.8 * index / max(1, strokes - 1))
        before = session.run(PRE + "result = c.stats['results']")
        painter.stroke([(size * 0.1, y), (size * 0.5, y + size * 0.03), (size * 0.9, y)])
        session.wait_until(f"c.stats['results'] > {before} and not c.tracker.busy", 120, setup=PRE)
    latencies = session.run(PRE + "result = list(c.stats['stroke_to_send_ms'])\npanel.live.setChecked(False)")
    phases = session.run(PRE + "result = list(c.stats['send_phases_ms'])")
    session.run("for d in Krita.instance().documents(): d.setModified(False)")
    return {
        "name": f"stroke_to_send/{size}x{size}",
        "median_ms": round(statistics.median(latencies), 2),
        # The plugin's own work (capture, compare, build, hand over) apart from Krita finishing the stroke.
        "plugin_median_ms": round(statistics.median(p["plugin_total"] for p in phases), 2),
        "p90_ms": round(percentile(latencies, 0.9), 2),
        "min_ms": round(min(latencies), 2),
        "runs": len(latencies),
        "phases_ms": phases if VERBOSE else None,
        "phases_median_ms": {
            name: round(statistics.median(p[name] for p in phases if name in p), 2) for name in phases[0]
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--strokes", type=int, default=12)
    parser.add_argument("--sizes", default="512,2048", help="document sides; the first is the baseline")
    parser.add_argument("--verbose", action="store_true", help="print every stroke's phases")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    missing = painter_tools_available()
    if missing:
        print(json.dumps({"name": "_skipped", "why": missing}))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        models, config = build_models(work / "tiny")
        backend = BackendProcess(models, config, work / "backend.log")
        backend.start()
        session = KritaSession(work / "krita")
        started = time.monotonic()
        try:
            session.start()
            session.run(
                f"docker.show()\npanel.address.setText('127.0.0.1:{backend.port}')\npanel.connect_button.click()"
            )
            session.wait_until("panel.status.property('state') == 'ok'", 60)
            painter = Painter(session)
            lines = [measure(session, painter, size, args.strokes) for size in sizes]
        finally:
            session.stop()
            backend.stop()
    for line in lines:
        print(json.dumps(line))
    baseline = lines[0]
    for line in lines[1:]:
        ratio = float(line["median_ms"]) / max(1e-6, float(baseline["median_ms"]))  # type: ignore[arg-type]
        print(
            json.dumps(
                {"name": f"{line['name']}/ratio", "baseline": baseline["name"], "ratio": round(ratio, 2)}
            )
        )
    print(json.dumps({"name": "_done", "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
