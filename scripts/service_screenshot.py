"""The README's picture of the search page: `dqe-cir serve`'s app on a demo setup, driven by headless
Chromium (pick a reference by id, type the modification, search), saved as a PNG.

    python scripts/service_screenshot.py --workdir runs/demo-quick --size small --out docs/images/service.png

--workdir is a `dqe-cir demo [--quick] --workdir DIR` folder: DIR/bundle, DIR/qdrant (alias synthetic-val)
and DIR/synth-{size}-0 (the catalog root). Local-mode Qdrant: nothing else may hold the folder meanwhile.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.service.routes import create_app  # noqa: E402
from app.service.settings import config_from_env  # noqa: E402
from tests.browser import chromium_driver, live_server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="runs/demo")
    ap.add_argument("--size", default="demo", choices=["small", "demo", "large"])
    ap.add_argument("--item", default="val-000018")
    ap.add_argument("--text", default="replace the purple circle with a blue star")
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "service.png"))
    args = ap.parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    work = Path(args.workdir)
    config = config_from_env(bundle=str(work / "bundle"), qdrant_path=str(work / "qdrant"), collection="synthetic-val",
                             catalog_root=str(work / f"synth-{args.size}-0"))
    with live_server(create_app(config)) as url:
        driver = chromium_driver(1400, 860)
        try:
            driver.get(url + "/")
            wait = WebDriverWait(driver, 30)
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#samples button img")))
            driver.find_element(By.ID, "item-id").send_keys(args.item + "\n")
            wait.until(ec.visibility_of_element_located((By.ID, "ref-img")))
            driver.find_element(By.ID, "text").send_keys(args.text + "\n")
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results li .bar")))
            driver.execute_script("document.activeElement.blur(); "
                                  "return Promise.all([...document.images].map(i => i.decode().catch(() => 0)))")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
