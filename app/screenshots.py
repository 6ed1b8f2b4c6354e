"""Screenshots of every view for the README: starts the app, drives it in headless Chromium, saves PNGs.

    python app/screenshots.py --output app/screenshots          (needs Debian's chromium and playwright)
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from hieratok.explorer.server import AppServer
from hieratok.explorer.components import example_images


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--assets", default=str(Path(__file__).resolve().parents[1] / "assets"))
    ap.add_argument("--output", default=str(Path(__file__).with_name("screenshots")))
    args = ap.parse_args(argv)
    from playwright.sync_api import expect, sync_playwright
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    examples = example_images(Path(args.assets))  # photographs first (astronaut, chelsea, coffee, rocket, ...)
    server = AppServer(Path(args.assets), out / "app.log")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)
            page.goto(server.url, wait_until="networkidle")

            def upload(i, path):
                page.locator("div[role=tabpanel]:visible input[type=file]").nth(i).set_input_files(str(path))

            upload(0, examples[0])
            page.get_by_role("checkbox", name="Side by side with the other tokenizer").check()
            page.get_by_role("button", name="Reconstruct").click()
            expect(page.get_by_text("compression", exact=False).first).to_be_visible()
            page.wait_for_timeout(2500)  # images and the plot arrive after the text
            page.screenshot(path=str(out / "reconstruct.png"), full_page=True)

            page.get_by_role("tab", name="Attention").click()
            upload(0, examples[1])
            page.get_by_role("button", name="Show attention").click()
            expect(page.get_by_text("Mass:", exact=False)).to_be_visible()
            page.wait_for_timeout(2500)
            page.screenshot(path=str(out / "attention.png"), full_page=True)

            page.get_by_role("tab", name="Interpolate").click()
            upload(0, examples[2])
            upload(1, examples[3])
            page.get_by_role("button", name="Interpolate").click()
            expect(page.get_by_text("t=1.00", exact=False).first).to_be_attached()
            page.wait_for_timeout(2500)
            page.screenshot(path=str(out / "interpolate.png"), full_page=True)

            page.get_by_role("tab", name="Generate").click()
            page.get_by_role("button", name="Generate").click()
            expect(page.get_by_text("samples of", exact=False)).to_be_visible()
            page.wait_for_timeout(2500)
            page.screenshot(path=str(out / "generate.png"), full_page=True)

            page.get_by_role("tab", name="Latent space").click()
            upload(0, examples[3])
            page.get_by_role("button", name="Show").click()
            expect(page.get_by_text("lands among", exact=False)).to_be_visible()
            page.wait_for_timeout(1500)  # let plotly finish drawing
            page.screenshot(path=str(out / "latent_space.png"), full_page=True)

            page.get_by_role("tab", name="Experiment").click()
            expect(page.get_by_text("Controlled experiment", exact=False).first).to_be_visible()
            page.wait_for_timeout(2500)
            page.screenshot(path=str(out / "experiment.png"), full_page=True)
            browser.close()
    finally:
        server.stop()
    (out / "app.log").unlink(missing_ok=True)
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
