"""Pictures of what ``medsight serve`` stored in Orthanc, as Orthanc's own web explorer shows it (docs/serve.md).

    python scripts/orthanc_view.py --storage runs/bench/serve/orthanc --out docs/images

``--storage``: an Orthanc storage folder that holds medsight's results, e.g. the one ``bench/serve_load.py`` leaves
(``--out X`` -> ``X/orthanc``). Orthanc (the Debian package) is started on that storage on free loopback ports,
and headless Chromium (the Debian package ``chromium``) renders the explorer's page of the first study with a
medsight SEG and of that SEG's series: ``orthanc_study.png`` and ``orthanc_seg.png``. Orthanc is stopped at the
end. Needs ``orthanc`` and ``chromium`` on PATH.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def screenshot(url: str, out: Path, size: str = "1280,800") -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                        f"--window-size={size}", "--virtual-time-budget=8000", "--hide-scrollbars",
                        f"--screenshot={out}", url], check=True, capture_output=True, timeout=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, required=True, help="an Orthanc storage folder with medsight results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    from tests.serve.conftest import free_port
    from tests.serve.services import Orthanc

    if not args.storage.is_dir():
        raise SystemExit(f"{args.storage}: no such Orthanc storage folder")
    args.out.mkdir(parents=True, exist_ok=True)
    pacs = Orthanc(args.storage, free_port())
    try:
        segs = pacs.find("Series", {"Modality": "SEG"})
        if not segs:
            raise SystemExit(f"{args.storage}: Orthanc holds no SEG series")
        series = pacs.http.get(f"/series/{segs[0]}").json()
        study = series["ParentStudy"]
        base = f"{pacs.url}/app/explorer.html"
        screenshot(f"{base}#study?uuid={study}", args.out / "orthanc_study.png")
        screenshot(f"{base}#series?uuid={segs[0]}", args.out / "orthanc_seg.png")
        print(f"wrote {args.out / 'orthanc_study.png'} and {args.out / 'orthanc_seg.png'}")
    finally:
        pacs.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
