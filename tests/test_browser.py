"""The page in a real browser (Debian's chromium driven by Playwright): a photo dropped on the
image input gets its top-3 prediction, timing, patch grid and attention map. The screenshot is
saved to test-artifacts/browser.png for a person to look at."""

import base64
import shutil

import pytest
import torch
from gradio_client import Client, handle_file

from figures import draw_attention_distance
from standins import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    REPO,
    app_server,
    fresh_clone,
    probabilities_of,
    twelve_megapixel_jpeg,
    write_food_dataset,
)

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


def loaded(page, selector: str) -> None:
    page.wait_for_function(
        "selector => { const image = document.querySelector(selector + ' img'); "
        "return image && image.complete && image.naturalWidth > 0; }",
        arg=selector,
        timeout=60_000,
    )


LABEL_AND_PICTURE = """selector => {
    const label = document.querySelector(selector + ' [data-testid="block-label"]').getBoundingClientRect();
    const image = document.querySelector(selector + ' img');
    const box = image.getBoundingClientRect();
    const scale = getComputedStyle(image).objectFit === "contain"
        ? Math.min(box.width / image.naturalWidth, box.height / image.naturalHeight) : box.height / image.naturalHeight;
    const shown = image.naturalHeight * scale;
    return {labelBottom: label.bottom, pictureTop: box.top + (box.height - shown) / 2, pictureHeight: shown};
}"""


def axes_top_below_the_label(page) -> None:
    """Figure 7 (right) is a plot under the label Gradio lays over a picture's top: its axes must start below it,
    or the label hides the highest dots and the top of the axis."""
    top = draw_attention_distance(torch.full((12, 12), 100.0)).subplotpars.top
    shown = page.evaluate(LABEL_AND_PICTURE, "#distance")
    axes_top = shown["pictureTop"] + (1 - top) * shown["pictureHeight"]
    assert shown["labelBottom"] <= axes_top, (
        f"the label ends {shown['labelBottom'] - axes_top:.1f} px below the axes' top"
    )


def test_drop_a_photo_and_see_the_prediction_and_inside_the_vit(served):
    from playwright.sync_api import expect, sync_playwright

    photo = twelve_megapixel_jpeg()  # a phone photo's size: the upload and decode cost a visitor meets
    url, _ = served
    label = Client(url, verbose=False).predict(handle_file(photo), api_name="/predict")[0]
    expected = probabilities_of(label)
    top_class = max(expected, key=expected.get)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1300})
            page.goto(url)
            # the stand-in backbone is not the published file, and the page says so
            expect(page.locator("#status")).to_contain_text("not the published IMAGENET1K_V1 weights")
            expect(page.locator("#status")).to_contain_text("Running on CPU")
            drop_zone = '#photo button[aria-label="Drop an image file here to upload"]'
            page.wait_for_selector(drop_zone)
            page.evaluate(DROP_FILE, [drop_zone, photo.name, base64.b64encode(photo.read_bytes()).decode()])

            expect(page.locator("#timing")).to_contain_text("ms", timeout=60_000)
            # the Label's heading names the top class alone (its list below names all three)
            expect(page.locator('#prediction [data-testid="label-output-value"]')).to_have_text(top_class)
            for name in expected:
                expect(page.locator("#prediction")).to_contain_text(name)
            for output in ("#patches", "#attention", "#rollout"):
                loaded(page, output)
            width = "selector => document.querySelector(selector + ' img').naturalWidth"
            assert page.evaluate(width, "#attention") == page.evaluate(width, "#rollout") == 224
            assert page.evaluate(width, "#patches") > 224  # the 224 px input, spread out by the gaps

            # Inside the ViT: the Eq. 1-4 walk, the heads of the last layer, the distances, Figure 7
            expect(page.locator("#walk")).to_contain_text("197x768", timeout=30_000)
            expect(page.locator("#walk")).to_contain_text("196x768")
            for output in ("#heads", "#distance", "#filters", "#position-similarity"):
                loaded(page, output)
            axes_top_below_the_label(page)
            similarity = page.locator("#position-similarity img")
            natural, shown = page.evaluate(width, "#position-similarity"), similarity.bounding_box()["width"]
            cell = (14 + 1) * 3  # app.SIMILARITY_SCALE pixels per cell of the 14x14 grid and its gap
            row, column = 3, 5
            centre = {"x": (column * cell + 21) * shown / natural, "y": (row * cell + 21) * shown / natural}
            similarity.click(position=centre)
            loaded(page, "#chosen")
            assert page.evaluate(width, "#chosen") == 224
            # the layer slider redraws the heads of the layer it is released on
            heads = "() => document.querySelector('#heads img').src"
            page.locator("#layer input[type=range]").fill("1")
            page.wait_for_function(f"() => ({heads})().includes('heads-layer-1')", timeout=30_000)
            loaded(page, "#heads")
            expect(page.locator(".toast-body")).to_have_count(0)  # no error was shown
            page.get_by_text("What model is serving").click()
            expect(page.locator("#model-info")).to_contain_text("85,800,963 in all, of which 2,307 in the trained head")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=ARTIFACTS / "browser.png", full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})  # a phone
            page.screenshot(path=ARTIFACTS / "browser-phone.png", full_page=True)
            axes_top_below_the_label(page)
        finally:
            browser.close()


def test_a_new_photo_clears_the_last_answer_at_once_runs_the_model_once_and_the_slider_follows_keys(served, tmp_path):
    """gr.Image's change event fires twice when a photo replaces another, which ran the model twice; a new photo
    waiting in the queue sat beside the previous one's answer, and a bad upload left "Inside the ViT" showing the
    previous photo. The layer slider followed only a released drag, not its keys."""
    from playwright.sync_api import expect, sync_playwright

    examples = sorted((REPO / "examples").glob("*.jp*g"))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(examples[0].read_bytes()[:2000])
    url, _ = served
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1300})
            requests = []  # the events the page sends to the queue, each a model pass or a drawing
            page.on("request", lambda request: requests.append(request.url) if "queue/join" in request.url else None)
            page.goto(url)
            upload = page.locator("#photo input[type=file]")
            walk, no_answer = page.locator("#walk"), "() => !document.querySelector('#walk').innerText.trim()"
            upload.set_input_files(examples[0])
            expect(walk).to_contain_text("197x768", timeout=60_000)
            requests.clear()

            upload.set_input_files(examples[1])
            page.wait_for_function(no_answer, polling="raf", timeout=30_000)  # before this photo's answer comes
            expect(page.locator("#timing")).to_contain_text("pictures", timeout=60_000)
            expect(walk).to_contain_text("197x768", timeout=30_000)
            page.wait_for_timeout(2_000)  # room for a second, duplicate request
            assert len(requests) == 2, requests  # the prediction, then Inside the ViT's drawing

            upload.set_input_files(truncated)
            expect(page.locator(".toast-body")).to_contain_text("damaged or truncated", timeout=30_000)
            page.wait_for_function(no_answer, timeout=10_000)
            expect(page.locator("#heads img, #rollout img")).to_have_count(0)
            expect(page.locator("#timing")).to_have_text("")

            page.locator(".gallery-item").nth(2).click()  # an example sets the photo without an input event
            expect(walk).to_contain_text("197x768", timeout=60_000)
            page.locator("#layer input[type=range]").focus()
            page.keyboard.press("ArrowLeft")
            page.wait_for_function("() => document.querySelector('#heads img')?.src.includes('heads-layer-11')")

            # A photo chosen while the last one's request is pending is answered after it, not dropped
            client = Client(url, verbose=False)
            tops = [top_class_of(client.predict(handle_file(photo), api_name="/predict")[0]) for photo in examples]
            pairs = [(a, b) for a in range(len(tops)) for b in range(len(tops)) if tops[a] != tops[b]]
            if not pairs:
                pytest.skip(f"the stand-in head names every example {tops[0]}: two answers cannot be told apart")
            first, second = pairs[0]
            page.locator(".gallery-item").nth(first).click()
            page.wait_for_timeout(100)  # within the first photo's request
            page.locator(".gallery-item").nth(second).click()
            label = page.locator('#prediction [data-testid="label-output-value"]')
            expect(label).to_have_text(tops[second], timeout=60_000)
            page.wait_for_timeout(2_000)
            expect(label).to_have_text(tops[second])
        finally:
            browser.close()


def top_class_of(label) -> str:
    probabilities = probabilities_of(label)
    return max(probabilities, key=probabilities.get)


# app.py with serving's load 10 s slower
SLOW_LOAD_APP = """import sys, time
import app
served_by = app.load
def slow_load(*args, **kwargs):
    time.sleep(10)
    return served_by(*args, **kwargs)
app.load = slow_load
app.main(sys.argv[1:])
"""


def test_the_first_start_notice_turns_into_the_app_by_itself(tmp_path, torch_home):
    """A visitor who opens the address during the first start's training sees the notice, then the app, with no
    reload of their own: the notice page waits for the app to answer in its place. The model's load is slowed by 10 s
    here, as the real weights on a slow Space may take (BENCHMARKS.md, cold start), so the page is closed for a while
    before the app answers."""
    from playwright.sync_api import expect, sync_playwright

    clone = fresh_clone(tmp_path / "clone")
    write_food_dataset(clone / "data" / "pizza_steak_sushi", 4, 2)
    (clone / "slow_load_app.py").write_text(SLOW_LOAD_APP)
    environment = {"TORCH_HOME": str(torch_home), "FOODVISION_CHECKPOINT": "", "HF_HUB_OFFLINE": "1"}
    server = app_server(clone, env=environment, script="slow_load_app.py")
    with server as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            shown = []
            page.on("framenavigated", lambda frame: shown.append(frame.url))
            page.goto(url)
            expect(page.locator("#status")).to_contain_text("Starting: training the head")
            expect(page.locator("#status")).to_contain_text("Running on CPU", timeout=240_000)
            expect(page.get_by_text("Real photos")).to_be_visible()
            assert shown == [url, url]  # the notice, then the app: never chromium's "This site can't be reached"
        finally:
            browser.close()


# app.py whose first start's training fails a few seconds in, as torch does when memory runs out
FAILING_TRAINING_APP = """import sys, time
import app
def fails():
    time.sleep(4)
    raise RuntimeError("DefaultCPUAllocator: not enough memory")
app.train_default_head = fails
app.main(sys.argv[1:])
"""


def test_a_first_start_whose_training_fails_says_so_then_shows_why(tmp_path, torch_home):
    """The notice says the training failed instead of "Ready", then turns into the app, whose status gives the
    fault and how to run the training on its own."""
    from playwright.sync_api import expect, sync_playwright

    clone = fresh_clone(tmp_path / "clone")
    (clone / "failing_training_app.py").write_text(FAILING_TRAINING_APP)
    environment = {"TORCH_HOME": str(torch_home), "FOODVISION_CHECKPOINT": "", "HF_HUB_OFFLINE": "1"}
    with app_server(clone, env=environment, script="failing_training_app.py") as (url, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page.locator("#status")).to_contain_text("Starting: training the head")
            expect(page.locator("#status")).to_contain_text("Training failed", timeout=30_000)
            expect(page.locator("#status")).to_contain_text(
                "Training the first head failed: RuntimeError: DefaultCPUAllocator: not enough memory", timeout=60_000
            )
            expect(page.locator("#status")).to_contain_text("python train_head.py")
        finally:
            browser.close()
