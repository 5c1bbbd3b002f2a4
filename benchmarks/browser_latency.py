"""Drop-to-prediction latency in a real browser: `python app.py` on 127.0.0.1, Debian's chromium driven by
Playwright sets a photo on the page's file input, and the clock stops when the prediction's timing line shows
(the label appears with it). This is what a visitor waits for; the in-process model time is only part of it.

    python benchmarks/browser_latency.py                                  # the 12 MP photo, about 2 minutes
    python benchmarks/browser_latency.py --app-dir ../old-checkout --app-dir .   # two versions, in turns
"""

import argparse
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

from common import ROOT, WORK_DIR, generated_head_checkpoint, print_machine, print_table, save_results

from standins import app_server, twelve_megapixel_jpeg

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


INSIDE_SHOWN = (
    "() => { const walk = document.querySelector('#walk'); const heads = document.querySelector('#heads img'); "
    "return walk && walk.innerText.includes('z_0') && heads && heads.complete && heads.naturalWidth > 0; }"
)


def drop(page, photo: Path, inside: bool) -> tuple[float, float | None]:
    """One photo set on the page's file input: ms until the timing line (written with the label) shows, and,
    where the page has it, until the "Inside the ViT" views (the Eq. 1-4 walk and the head maps) show."""
    page.reload()  # a fresh page, as a new visitor's: no earlier photo, timing or views
    page.wait_for_selector("#photo input[type=file]", state="attached")
    started = time.perf_counter()
    page.locator("#photo input[type=file]").set_input_files(str(photo))
    page.wait_for_function("document.querySelector('#timing').innerText.includes('ms')", timeout=60_000, polling=5)
    label_ms = (time.perf_counter() - started) * 1000
    if not inside:
        return label_ms, None
    page.wait_for_function(INSIDE_SHOWN, timeout=60_000, polling=5)
    return label_ms, (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=15, help="timed drops per app (after 2 warm-up drops)")
    parser.add_argument("--photo", type=Path, help="default: a generated 12 MP JPEG (standins.twelve_megapixel_jpeg)")
    parser.add_argument("--app-dir", type=Path, action="append", help="the folder whose app.py is served (repeatable)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    photo = args.photo or twelve_megapixel_jpeg()
    app_dirs = args.app_dir or [ROOT]
    print_machine()
    checkpoint = generated_head_checkpoint(WORK_DIR)
    times = {str(app_dir): [] for app_dir in app_dirs}
    inside_times = {str(app_dir): [] for app_dir in app_dirs}
    with ExitStack() as stack, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        pages = {}
        for app_dir in app_dirs:
            url, _ = stack.enter_context(app_server(app_dir, "--checkpoint", str(checkpoint)))
            page = browser.new_page(viewport={"width": 1280, "height": 1300})
            page.goto(url)
            page.wait_for_selector("#photo input[type=file]", state="attached")
            pages[str(app_dir)] = page
        has_inside = {app_dir: page.locator("#walk").count() > 0 for app_dir, page in pages.items()}
        for round_ in range(args.requests + 2):  # two warm-up rounds: lazily initialised parts, browser caches
            for app_dir, page in pages.items():
                label_ms, inside_ms = drop(page, photo, has_inside[app_dir])
                if round_ >= 2:
                    times[app_dir].append(label_ms)
                    if inside_ms is not None:
                        inside_times[app_dir].append(inside_ms)
        browser.close()
    with_photo = f"{photo.name}, {photo.stat().st_size / 1e6:.1f} MB"
    print(f"{args.requests} drops per app ({with_photo}), apps in turns; one browser, one page per app")
    rows = [
        [app_dir, len(t), statistics.median(t), statistics.quantiles(t, n=20)[-1], min(t)]
        for app_dir, t in times.items()
    ]
    print("Drop to prediction (label and timing shown):")
    print_table(["app", "drops", "p50 ms", "p95 ms", "min ms"], rows)
    inside_rows = [[app_dir, len(t), statistics.median(t), max(t)] for app_dir, t in inside_times.items() if t]
    if inside_rows:
        print('Drop to the whole "Inside the ViT" view (Eq. 1-4 walk and head maps shown):')
        print_table(["app", "drops", "p50 ms", "max ms"], inside_rows)
    save_results("browser_latency", {"photo": str(photo), "drop_to_label_ms": times, "drop_to_inside_ms": inside_times})


if __name__ == "__main__":
    main()
