"""A real browser (headless Debian Chromium through Playwright) uses every view of the live app once."""
import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the browser test (.ci/run installs it)")
    pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-test.txt")

TIMEOUT = 60_000  # ms: the first request of each view loads its model


@pytest.fixture(scope="module")
def page(app_server):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(TIMEOUT)
        sync_api.expect.set_options(timeout=TIMEOUT)
        page.goto(app_server.url, wait_until="networkidle")
        yield page
        browser.close()


def upload(page, photo, index=0):
    page.locator("div[role=tabpanel]:visible input[type=file]").nth(index).set_input_files(photo)


def test_reconstruct_shows_five_scales(page, photo):
    upload(page, photo)
    page.get_by_role("button", name="Reconstruct").click()
    # the 128-px photographs model is the default; each scale's PSNR is visible text
    for s, px in ((1, 8), (2, 16), (4, 32), (8, 64), (16, 128)):
        sync_api.expect(page.get_by_role("cell", name=f"{px}x{px} px", exact=True)).to_be_visible()
    sync_api.expect(page.get_by_text("compression 12.0x", exact=False)).to_be_visible()


def test_no_control_offers_a_value_the_model_rejects(page, photo):
    """The Attention sliders stop at the decoder's last layer and head: the largest values work."""
    page.get_by_role("tab", name="Attention").click()
    upload(page, photo)
    for label in ("Layer", "Head"):
        number = page.get_by_label(f"number input for {label}", exact=True).first
        maximum = number.get_attribute("max")
        number.fill(maximum)
        number.press("Enter")
    page.get_by_role("button", name="Show attention").click()
    sync_api.expect(page.get_by_text("Mass:", exact=False)).to_be_visible()


def test_every_other_tab_runs_once(page, photo):
    page.get_by_role("tab", name="Attention").click()
    upload(page, photo)
    page.get_by_role("button", name="Show attention").click()
    sync_api.expect(page.get_by_text("Mass:", exact=False)).to_be_visible()

    page.get_by_role("tab", name="Interpolate").click()
    upload(page, photo, 0)
    upload(page, photo, 1)
    page.get_by_role("button", name="Interpolate").click()
    sync_api.expect(page.get_by_text("t=1.00", exact=False).first).to_be_attached()

    page.get_by_role("tab", name="Generate").click()
    page.get_by_role("button", name="Generate").click()
    sync_api.expect(page.get_by_text("samples of", exact=False)).to_be_visible()

    page.get_by_role("tab", name="Latent space").click()
    page.get_by_role("button", name="Show").click()
    sync_api.expect(page.get_by_text("Latent density", exact=False)).to_be_visible()
