"""Drop-to-prediction latency in a real browser: `python app.py` on 127.0.0.1, Debian's chromium driven by
Playwright sets a photo on the page's file input, the way a visitor's drop does. This is what a visitor waits for;
the in-process model time is only part of it.

The clock is the page's own (performance.now): it starts when the file input fires its change event and stops at
the first animation frame after each view is in place: the label and timing line, the pictures of the prediction
(loaded, not just requested), and, where the page has it, the whole "Inside the ViT" view. A MutationObserver
notices each view; the benchmark never polls the page's layout, which on two cores would take CPU from the server
being measured. Every drop is a new visitor: a fresh tab, left to settle for a second after it loads, closed after.
Between rounds of drops, this process times a bare fp32 torchvision forward on the photo, the yardstick of the
browser targets (BENCHMARKS.md), which the benchmark prints beside its figures.

    python benchmarks/browser_latency.py                                  # the 12 MP photo, about 2 minutes
    python benchmarks/browser_latency.py --app-dir ../old-checkout --app-dir .   # two versions, in turns
    python benchmarks/browser_latency.py --requests 3 --timeline          # where one drop's time goes
    python benchmarks/browser_latency.py --requests 3 --trace drop.json   # the browser's CPU during a drop
    python benchmarks/browser_latency.py --floor      # also pages without the model pass (page_floor.py), 5 minutes
"""

import argparse
import collections
import json
import shutil
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

from common import (
    BROWSER_TARGETS,
    ROOT,
    WORK_DIR,
    against,
    bare_forward_ms,
    generated_head_checkpoint,
    p95,
    print_machine,
    print_table,
    save_results,
)

import torch

import serving
from devices import available_cpus
from tests.standins import CHROMIUM, CHROMIUM_FLAGS, app_server, twelve_megapixel_jpeg
from train_vit import at_least

BARE_PAGE = "bare"  # page_floor.py's page whose drop is Gradio's own cost

PICTURES = ["#patches", "#attention", "#rollout"]  # the prediction's pictures, those the page has
SETTLE_S = 1.0  # a visitor drops a photo seconds after the page appears, not while it is still rendering
TRACE_CATEGORIES = ["toplevel", "devtools.timeline", "disabled-by-default-devtools.timeline"]
# Top-level tasks, each thread's CPU counted once: raster and image-decode tasks (TaskGraphRunner::RunTask) run
# inside ThreadPool_RunTask in this chromium
TASKS = ("ThreadControllerImpl::RunTask", "ThreadPool_RunTask")

WATCH = r"""(pictures) => {
  const marks = window.foodvisionMarks = {};
  const input = document.querySelector('#photo input[type=file]');
  input.addEventListener('change', () => { marks.drop = performance.now(); }, {once: true, capture: true});
  const atNextFrame = (name) => {
    marks[name] = null;
    requestAnimationFrame(() => { marks[name] = performance.now(); });
  };
  const loaded = (selector) => {
    const picture = document.querySelector(selector + ' img');
    return picture !== null && picture.complete && picture.naturalWidth > 0;
  };
  const check = () => {
    if (!('label' in marks) && document.querySelector('#timing').textContent.includes('ms')) atNextFrame('label');
    if (!('pictures' in marks) && pictures.every(loaded)) atNextFrame('pictures');
    const walk = document.querySelector('#walk');
    if (walk && !('inside' in marks) && walk.textContent.includes('z_0') && loaded('#heads')) atNextFrame('inside');
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                      attributes: true, attributeFilter: ['src']});
  document.addEventListener('load', check, true);  // a picture finishing loading is no DOM mutation
  marks.requests = [];  // for --timeline: [path, start, first byte, end] of every request the page makes
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const path = new URL(entry.name).pathname.replace(/^.*gradio_api\//, '').slice(0, 40);
      marks.requests.push([path, entry.startTime, entry.responseStart, entry.responseEnd]);
    }
  }).observe({type: 'resource'});
}"""
VIEWS = {"label": "label and timing line", "pictures": "the prediction's pictures", "inside": 'whole "Inside the ViT"'}


def drop(
    browser, name: str, url: str, photo: Path, timeline: bool = False, trace: Path | None = None
) -> dict[str, float]:
    """One visitor of the page `name` at `url`: a fresh tab, the photo set on its file input; ms from the drop to
    each view shown. With `timeline`, also prints the page's requests (ms from the drop: start, first byte, end) and
    its timing line; with `trace`, records the drop with Chrome's tracing into that file and prints the browser's
    CPU until the label shows."""
    page = browser.new_page(viewport={"width": 1280, "height": 1300})
    try:
        page.goto(url)
        page.wait_for_selector("#photo input[type=file]", state="attached")
        time.sleep(SETTLE_S)
        pictures = [selector for selector in PICTURES if page.locator(selector).count()]
        views = ["label"] + (["pictures"] if pictures else []) + (["inside"] if page.locator("#walk").count() else [])
        page.evaluate(WATCH, pictures)
        if trace:
            browser.start_tracing(page=page, path=trace, categories=TRACE_CATEGORIES)
        try:
            page.locator("#photo input[type=file]").set_input_files(str(photo))
            waiting = " && ".join(f"typeof window.foodvisionMarks.{view} === 'number'" for view in views)
            page.wait_for_function(f"() => {waiting}", timeout=60_000, polling=100)
        finally:
            if trace:
                browser.stop_tracing()
        marks = page.evaluate("window.foodvisionMarks")
        if trace:
            print_browser_cpu(trace, name, marks["label"] - marks["drop"])
        if timeline:
            print(f"{name}: {page.locator('#timing').inner_text()}")
            for path, *times in sorted(marks["requests"], key=lambda request: request[1]):
                print(f"  {path:40} " + " ".join(f"{time - marks['drop']:6.0f}" for time in times))
            print("  " + ", ".join(f"{view} {marks[view] - marks['drop']:.0f}" for view in views))
        return {view: marks[view] - marks["drop"] for view in views}
    finally:
        page.close()


def print_browser_cpu(trace: Path, name: str, label_ms: float) -> None:
    """From a Chrome trace of one drop: the CPU time of the browser's threads, summed by thread name over its
    processes, in the top-level tasks that start between the file input's change event and the label's frame (the
    window in which the server computes the prediction, sharing the machine). Tasks are counted whole."""
    events = json.loads(trace.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    changes = [
        e["ts"]
        for e in events
        if e.get("name") == "EventDispatch" and e.get("args", {}).get("data", {}).get("type") == "change"
    ]
    if not changes:
        print(f"  {name}, {trace}: no change event of the file input in the trace")
        return
    start, cpu_ms, untimed = min(changes), collections.Counter(), 0
    for e in events:  # tdur is CPU time, in microseconds
        if e.get("ph") == "X" and e["name"] in TASKS and 0 <= e["ts"] - start <= label_ms * 1e3:
            if "tdur" in e:
                cpu_ms[threads.get((e["pid"], e["tid"]), str(e["tid"]))] += e["tdur"] / 1e3
            else:
                untimed += 1
    print(f"  {name}: browser CPU from the drop to the label ({label_ms:.0f} ms): {sum(cpu_ms.values()):.0f} ms")
    for thread, ms in cpu_ms.most_common(6):
        print(f"    {thread:32} {ms:6.1f} ms")
    if untimed:
        print(f"    ({untimed} tasks without a CPU time left out)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests", type=at_least(2), default=15, help="timed drops per app, at least 2 (after 2 warm-up drops)"
    )
    parser.add_argument("--photo", type=Path, help="default: a generated 12 MP JPEG (standins.twelve_megapixel_jpeg)")
    parser.add_argument("--app-dir", type=Path, action="append", help="the folder whose app.py is served (repeatable)")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also serve pages without the model pass (page_floor.py): this one, with and without the photo's "
        "decode, and a bare Gradio page",
    )
    parser.add_argument("--timeline", action="store_true", help="print each app's last drop, request by request")
    parser.add_argument(
        "--trace", type=Path, help="after the timed drops, one more per app, recorded with Chrome's tracing (FILE.<n>)"
    )
    args = parser.parse_args()
    if shutil.which(CHROMIUM) is None:
        parser.error(f"{CHROMIUM} is not installed; install Debian's chromium: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    photo = args.photo or twelve_megapixel_jpeg()
    # each served page: its name in the results, the folder it runs in, the script, extra environment
    apps = [str(app_dir) for app_dir in args.app_dir or [ROOT]]
    pages = [(name, Path(name), "app.py", {}) for name in apps]
    bare_page = None
    if args.floor:
        from page_floor import FLOORS

        floor = str(Path(__file__).resolve().parent / "page_floor.py")
        pages += [(name, ROOT, floor, {"FOODVISION_FLOOR": kind}) for kind, name in FLOORS.items()]
        bare_page = FLOORS[BARE_PAGE]
    names = [name for name, *_ in pages]
    if len(set(names)) < len(names):
        parser.error(f"each page is served once: {', '.join(names)}")
    print_machine()
    torch.set_num_threads(available_cpus())
    checkpoint = generated_head_checkpoint(WORK_DIR)
    times = {name: {} for name in names}
    foodvision, forward_ms = serving.load(str(checkpoint), "cpu", measure_engines=False), []
    pixels = foodvision.preprocess(str(photo))[None]
    with ExitStack() as stack, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        urls = {
            name: stack.enter_context(
                app_server(Path(app_dir), "--checkpoint", str(checkpoint), env=env, script=script)
            )[0]
            for name, app_dir, script, env in pages
        }
        for round_ in range(args.requests + 2):  # two warm-up rounds: lazily initialised parts, browser caches
            for name, url in urls.items():
                shown = drop(browser, name, url, photo, args.timeline and round_ == args.requests + 1)
                if round_ >= 2:
                    for view, ms in shown.items():
                        times[name].setdefault(view, []).append(ms)
            time.sleep(SETTLE_S)  # the browser's and the server's work after the last drop is not the forward's
            forward = bare_forward_ms(foodvision, pixels)
            if round_ >= 2:
                forward_ms.append(forward)
        if args.trace:  # untimed: tracing costs the browser CPU of its own
            for number, (name, url) in enumerate(urls.items()):
                drop(browser, name, url, photo, trace=args.trace.with_name(f"{args.trace.name}.{number}"))
        browser.close()
    print(
        f"{args.requests} drops per app ({photo.name}, {photo.stat().st_size / 1e6:.1f} MB), apps in turns, a new tab "
        "for every drop; ms from the drop to the first frame with each view"
    )
    rows = [
        [name, VIEWS[view], len(t), statistics.median(t), p95(t), min(t)]
        for name, views in times.items()
        for view, t in views.items()
    ]
    print_table(["app", "shown", "drops", "p50 ms", "p95 ms", "min ms"], rows)
    forward = statistics.median(forward_ms)
    print(f"bare fp32 forward (torchvision) in this process, between the rounds: {forward:.1f} ms p50")
    print_targets({name: times[name] for name in apps}, forward, times.get(bare_page))
    save_results("browser_latency", {"photo": str(photo), "drop_to_view_ms": times, "bare_forward_ms": forward_ms})


def print_targets(times: dict, forward: float, bare_page: dict | None) -> None:
    """Each app's figures against BROWSER_TARGETS (p50s; "Inside the ViT" at p95 too), the bare page's where served."""
    label, against_forward, inside = BROWSER_TARGETS
    rows = []
    for name, views in times.items():
        app_label = statistics.median(views["label"])
        rows.append([name, label, against(app_label, BROWSER_TARGETS[label], " ms")])
        if bare_page is not None:
            beyond = (app_label - statistics.median(bare_page["label"])) / forward
            rows.append([name, against_forward, against(beyond, BROWSER_TARGETS[against_forward])])
        if "inside" in views:
            for quantile, figure in (("p50", statistics.median(views["inside"])), ("p95", p95(views["inside"]))):
                rows.append([name, f"{inside}, {quantile}", against(figure, BROWSER_TARGETS[inside], " ms")])
    print_table(["app", "target", "measured"], rows)
    if bare_page is None:
        print("(the label less the bare page's needs the bare page: run with --floor)")


if __name__ == "__main__":
    main()
