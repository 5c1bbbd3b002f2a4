"""The page in a real browser (Debian's chromium driven by Playwright): a photo dropped on the
image input gets its top-3 prediction, timing, patch grid and attention map. The screenshot is
saved to test-artifacts/browser.png for a person to look at."""

import base64
import shutil
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from app import EXAMPLES
from test_app import FULL_SIZE_PIZZA, REPO, app_server, probabilities_of

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is not installed (apt-get install -y chromium)"
)

DROP_FILE = """async ([selector, name, base64]) => {
    const bytes = Uint8Array.from(atob(base64), character => character.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
    const target = document.querySelector(selector);
    for (const type of ["dragenter", "dragover", "drop"]) {
        target.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }
}"""


def test_drop_a_photo_and_see_prediction_timing_and_patches(trained_head_checkpoint, torch_home):
    from playwright.sync_api import expect, sync_playwright

    photo = FULL_SIZE_PIZZA if FULL_SIZE_PIZZA.is_file() else Path(EXAMPLES[0])
    with app_server(REPO, "--checkpoint", str(trained_head_checkpoint), env={"TORCH_HOME": str(torch_home)}) as (url, _):
        expected = probabilities_of(Client(url, verbose=False).predict(handle_file(photo), api_name="/predict")[0])
        top_class = max(expected, key=expected.get)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1300})
                page.goto(url)
                drop_zone = '#photo button[aria-label="Drop an image file here to upload"]'
                page.wait_for_selector(drop_zone)
                page.evaluate(DROP_FILE, [drop_zone, photo.name, base64.b64encode(photo.read_bytes()).decode()])

                expect(page.locator("#timing")).to_contain_text("ms", timeout=60_000)
                # the Label's heading names the top class alone (its list below names all three)
                expect(page.locator('#prediction [data-testid="label-output-value"]')).to_have_text(top_class)
                for name in expected:
                    expect(page.locator("#prediction")).to_contain_text(name)
                for output in ("#patches", "#attention"):
                    page.wait_for_function(
                        "selector => { const image = document.querySelector(selector + ' img'); "
                        "return image && image.complete && image.naturalWidth > 0; }",
                        arg=output,
                    )
                patches_width = page.evaluate("document.querySelector('#patches img').naturalWidth")
                attention_width = page.evaluate("document.querySelector('#attention img').naturalWidth")
                assert attention_width == 224 and patches_width > 224  # the 224 px input, spread out by the gaps
                expect(page.locator(".toast-body")).to_have_count(0)  # no error was shown
                page.get_by_text("What model is serving").click()
                expect(page.locator("#model-info")).to_contain_text("85,800,963 in all, of which 2,307 in the trained head")
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=ARTIFACTS / "browser.png", full_page=True)
            finally:
                browser.close()
