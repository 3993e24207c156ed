"""kdexp-ui in a real browser: a fresh store with a finished kdexp run set, opened in Debian's headless chromium.

The MLflow UI is a React app, so the page is read after its JavaScript ran (DevTools protocol, see
headless_chromium.py). KDEXP_UI_SCREENSHOTS=docs writes the README's two screenshots there; otherwise they go
to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.headless_chromium import Chromium, chromium_path

pytestmark = [
    pytest.mark.e2e, pytest.mark.slow,
    pytest.mark.skipif(chromium_path() is None,
                       reason="chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)"),
]
EPOCHS = 3
TINY = ["data=synthetic", "data.num_samples=200", "data.num_test=64", "data.image_size=8", "teacher=cnn_small",
        "student=cnn_tiny", f"trainer.max_epochs={EPOCHS}", f"teacher.max_epochs={EPOCHS}",
        "eval.latency_repeats=1", "eval.latency_batch=8"]
# The UI's own switches, preset in localStorage before its scripts run: keep the assistant panel closed (it
# opens itself on a first visit from localhost) and show accuracy columns in the runs table.
UI_STATE_KEY = 'MLflowLocalStorage-1.1-ExperimentPage-["{exp}"]-ReactComponentState'
COLUMNS = ["metrics.`val/acc`", "metrics.`test_top1`", "metrics.`student/test_top1`"]
CHART_METRICS = ["train/loss", "val/acc"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # One server worker starts in a few seconds instead of four competing for two cores; no telemetry.
    return {**env, "KDEXP_OFFLINE": "1", "MLFLOW_WORKERS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true"}


def _wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, "kdexp-ui exited early"
        time.sleep(0.5)
    raise TimeoutError(f"kdexp-ui did not answer /health on port {port} within {timeout:.0f} s")


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def _compact(path: Path) -> None:
    """64-colour palette PNG for the README copies (a quarter of the size; the UI has few colours)."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def _metric_page(port: int, exp: str, run_id: str) -> str:
    q = lambda value: urllib.parse.quote(json.dumps(value), safe="")  # the UI's own URL encoding
    return (f"http://127.0.0.1:{port}/#/metric?runs={q([run_id])}&metric={q(CHART_METRICS[0])}"
            f"&experiments={q([exp])}&plot_metric_keys={q(CHART_METRICS)}&plot_layout={q({})}&x_axis=step"
            f"&y_axis_scale=linear&line_smoothness=1&show_point=true&deselected_curves={q([])}"
            f"&last_linear_y_axis_range={q([])}")


def test_ui_shows_the_run_set_and_a_students_metric_chart(tmp_path):
    from mlflow.tracking import MlflowClient

    bin_dir = Path(sys.executable).parent
    trained = subprocess.run([str(bin_dir / "kdexp-train"), *TINY], check=False, cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdexp").experiment_id
    runs = {r.data.tags["kdexp.role"]: r for r in client.search_runs([exp])}
    assert set(runs) == {"teacher", "baseline", "student"}
    student = runs["student"].info.run_id
    history = {key: [m.value for m in sorted(client.get_metric_history(student, key), key=lambda m: m.step)]
               for key in CHART_METRICS}
    assert all(len(values) == EPOCHS for values in history.values())

    port = _free_port()
    server = subprocess.Popen([str(bin_dir / "kdexp-ui"), "--port", str(port)], cwd=tmp_path, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shots = Path(os.environ.get("KDEXP_UI_SCREENSHOTS") or tmp_path)
    try:
        _wait_healthy(server, port)
        ui_state = {"orderByKey": "attributes.start_time", "orderByAsc": True, "selectedColumns": COLUMNS}
        preset = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false",
                  UI_STATE_KEY.format(exp=exp): json.dumps(ui_state)}
        with Chromium(1300, 420) as page:
            page.before_each_page("".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});"
                                          for k, v in preset.items()))
            page.open(f"http://127.0.0.1:{port}/#/experiments/{exp}/runs")
            names = [r.info.run_name for r in runs.values()]
            page.wait_for(" && ".join(f"document.body.innerText.includes({json.dumps(n)})" for n in names), 60)
            text = page.text()
            assert "3 matching runs" in text
            page.screenshot(shots / "ui-runs.png")

            page.call("Emulation.setDeviceMetricsOverride", width=1300, height=560, deviceScaleFactor=1, mobile=False)
            page.open(_metric_page(port, exp, student))
            traces = "document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length"
            page.wait_for(f"{traces} >= {len(CHART_METRICS)}", 60)
            page.evaluate("window.dispatchEvent(new Event('resize'))")  # lay the chart out at the final width
            time.sleep(1.0)
            plotted = page.evaluate("Array.from(document.querySelector('.js-plotly-plot').data)"
                                    ".map(d => ({name: d.name, x: Array.from(d.x), y: Array.from(d.y)}))")
            page.screenshot(shots / "ui-student-metrics.png")
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)

    # The chart draws exactly the student's logged curves, one point per epoch.
    student_name = runs["student"].info.run_name
    assert {d["name"] for d in plotted} == {student_name}
    curves = {tuple(round(v, 6) for v in d["y"]) for d in plotted}
    assert curves == {tuple(round(v, 6) for v in values) for values in history.values()}
    assert all(d["x"] == list(range(EPOCHS)) for d in plotted)
    for name in ("ui-runs.png", "ui-student-metrics.png"):
        width, height = _png_size(shots / name)
        assert width == 1300 and height in (420, 560)
        if os.environ.get("KDEXP_UI_SCREENSHOTS"):
            _compact(shots / name)
