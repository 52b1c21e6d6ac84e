"""Regenerate the screenshots of docs/dashboards.md from a real study.

Runs ``tuner run studies/digits.toml`` (150 trials) into a temporary SQLite file, starts
``tuner dashboard`` on it, and takes headless-Chromium screenshots of every view of
dashboards/study.toml (one PNG per panel), of the study list, of a whole study page and of
optuna-dashboard showing the views stored with the study.

    .venv/bin/python docs/img/screenshots.py            # needs Debian's chromium
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PANEL_SIZES = {"summary": (1200, 760), "learning_curves": (1100, 640), "lr_schedule": (1100, 700),
               "group_best": (1200, 480), "scaling_rules": (900, 540), "effective_lr": (900, 540),
               "reference_gap": (900, 460), "importances": (900, 520), "history": (1100, 460)}


def tuner(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, TZ="UTC", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "tuner", *args], env=env, check=True,
                          capture_output=True, text=True, **kw)


def shoot(url: str, out: Path, width: int, height: int, profile: Path) -> None:
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking",
                    "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars",
                    "--force-device-scale-factor=1", f"--window-size={width},{height}",
                    "--virtual-time-budget=15000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"{out.relative_to(REPO)}: {out.stat().st_size / 1e3:.0f} kB")


def main() -> None:
    if CHROMIUM is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    from tuner.dashboard import load_dashboard, render_dashboard
    from tuner.dashboard.html import DRAW_SCRIPT, _head, panel_html, plotly_js
    from tuner.storage import open_storage
    from tuner.study import load_study

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        url = f"sqlite:///{tmp / 'digits.db'}"
        tuner("run", str(REPO / "studies" / "digits.toml"), "-n", "150", "--storage", url, "-q")
        storage = open_storage(url)
        study, sf = load_study("digits", storage)
        panels = render_dashboard(load_dashboard("study"), study, sf, storage)
        (tmp / "plotly.min.js").write_text(plotly_js(), encoding="utf-8")
        for p in panels:
            width, height = PANEL_SIZES.get(p.type, (1000, 520))
            page = (_head(p.title, "plotly.min.js").replace("<style>", "<style>body{background:#fff}"
                    "main{padding:0}.panel{border:0;padding:4px 8px}")
                    + f'<body><main><div class="grid">{panel_html(p, height=height - 20)}</div></main>'
                    f"{DRAW_SCRIPT}</body></html>")
            html_path = tmp / f"{p.type}.html"
            html_path.write_text(page, encoding="utf-8")
            shoot(html_path.as_uri(), HERE / f"{p.type}.png", width, height, tmp / "chrome")
        server = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--storage", url,
                                   "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env=dict(os.environ, TZ="UTC"))
        try:
            line = server.stdout.readline()
            base = re.search(r"http://[\d.]+:\d+", line).group(0)
            time.sleep(0.5)
            shoot(f"{base}/", HERE / "study-list.png", 1200, 260, tmp / "chrome")
            shoot(f"{base}/tuner/studies/digits", HERE / "study-page.png", 1300, 1500, tmp / "chrome")
            shoot(f"{base}/dashboard/studies/1", HERE / "optuna-dashboard.png", 1300, 2500, tmp / "chrome")
            shoot(f"{base}/dashboard/studies/1/note", HERE / "optuna-dashboard-note.png", 1200, 900,
                  tmp / "chrome")
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
