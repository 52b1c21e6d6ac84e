"""End to end in real headless Chromium (Debian's ``chromium``): `tuner dashboard` on a study
that has run, and the `tuner report` file, loaded as a person would; the assertions read the DOM
after the pages' scripts ran (``--dump-dom`` with a virtual-time budget, which also waits for
the fetches of optuna-dashboard's single-page app), and screenshots are saved as test artifacts
under ``test-artifacts/dashboard/`` (gitignored).

Without chromium these tests are skipped with the reason, except under CI=true, where that is a
failure (.ci/run installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from test_dashboard import STUDY_NAME, STUDY_PANELS, shared_study
from test_dashboard_server import Dashboard

from conftest import IN_CI, REPO, run_tuner

pytestmark = pytest.mark.browser

ARTIFACTS = REPO / "test-artifacts" / "dashboard"
FIGURES = [p for p in STUDY_PANELS if p != "summary"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "chromium is not installed (apt-get install chromium chromium-driver)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


def browse(url: str, profile: Path, *, screenshot: Path | None = None, size: str = "1400,2000",
           budget_ms: int = 20000) -> str:
    """The DOM of ``url`` after its scripts ran (and a screenshot, if asked)."""
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", "--hide-scrollbars",
            f"--window-size={size}", f"--virtual-time-budget={budget_ms}"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, text=True,
                              timeout=180)
        assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    return dom.stdout


def browse_until(url: str, profile: Path, ok, **kw) -> str:
    """``browse`` again (once) if the page had not finished: SPAs can be slow on a busy CI box."""
    dom = browse(url, profile, **kw)
    if not ok(dom):
        dom = browse(url, profile, budget_ms=45000, **kw)
    return dom


def rendered(dom: str, div_id: str) -> bool:
    """plotly.js drew the figure into the element ``div_id`` (it adds ``js-plotly-plot`` and an SVG)."""
    m = re.search(rf'<div[^>]*class="[^"]*js-plotly-plot[^"]*"[^>]*id="{re.escape(div_id)}"|'
                  rf'<div[^>]*id="{re.escape(div_id)}"[^>]*class="[^"]*js-plotly-plot', dom)
    return bool(m) and 'class="main-svg"' in dom[m.end():m.end() + 3000]


@pytest.fixture(scope="module")
def study_url(tmp_path_factory):
    chromium()
    return shared_study(tmp_path_factory)[0]


def test_dashboard_in_chromium(study_url, tmp_path):
    plain = optuna.load_study(study_name=STUDY_NAME, storage=study_url)
    best = plain.best_trial
    best_text = f"{best.value:.4f}"
    profile = tmp_path / "chrome"
    with Dashboard(study_url) as dash:
        # the study list, with the best value
        dom = browse(f"{dash.base}/", profile, screenshot=ARTIFACTS / "study-list.png", size="1300,400")
        row = re.search(rf'<tr data-study="{STUDY_NAME}">(.*?)</tr>', dom, re.S)
        assert row and f'<td class="num best">{best_text}</td>' in row.group(1)

        # our domain views of the study, drawn by plotly.js
        dom = browse_until(f"{dash.base}/tuner/studies/{STUDY_NAME}", profile,
                           lambda d: all(rendered(d, f"plot-tuner-{p}") for p in FIGURES),
                           screenshot=ARTIFACTS / "study-views.png", size="1400,4200")
        assert f'id="best-value">{best_text}<' in dom
        for p in FIGURES:
            assert rendered(dom, f"plot-tuner-{p}"), p
        assert f"Best trial #{best.number}" in dom and "tuner summary" in dom

        # optuna-dashboard's study page shows the views stored with the study
        study_id = json.loads(dash.text("/api/studies"))["study_summaries"][0]["study_id"]
        dom = browse_until(f"{dash.base}/dashboard/studies/{study_id}", profile,
                           lambda d: all(rendered(d, f"user-defined-plot:tuner-{p}") for p in FIGURES),
                           screenshot=ARTIFACTS / "optuna-dashboard-study.png", size="1400,3200")
        assert f"{STUDY_NAME} (id={study_id})" in dom
        for p in FIGURES:
            assert rendered(dom, f"user-defined-plot:tuner-{p}"), p
        assert f"best trial #{best.number}: {best_text}" in dom

        # ... and the summary as the study's note
        dom = browse_until(f"{dash.base}/dashboard/studies/{study_id}/note", profile,
                           lambda d: "tuner summary" in d,
                           screenshot=ARTIFACTS / "optuna-dashboard-note.png", size="1300,1400")
        assert "tuner summary" in dom and f"Best trial #{best.number}" in dom and best_text in dom


def test_report_in_chromium(study_url, tmp_path):
    out = tmp_path / "report.html"
    proc = run_tuner("report", STUDY_NAME, "-o", out, "--storage", study_url)
    assert proc.returncode == 0, proc.stderr
    best = optuna.load_study(study_name=STUDY_NAME, storage=study_url).best_trial
    dom = browse_until(out.as_uri(), tmp_path / "chrome",
                       lambda d: all(rendered(d, f"plot-tuner-{p}") for p in FIGURES),
                       screenshot=ARTIFACTS / "report.png", size="1400,4200")
    for p in FIGURES:
        assert rendered(dom, f"plot-tuner-{p}"), p
    assert f'id="best-value">{best.value:.4f}<' in dom and f"Best trial #{best.number}" in dom
    assert f'data-study="{STUDY_NAME}"' in dom
