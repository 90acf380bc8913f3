"""End to end in headless Chromium: load the page, generate, scrub, the teaching views, open every tab; screenshots
in tests/artifacts/."""
import os
import re
from pathlib import Path

import pytest

from conftest import EXAMPLE_TITLE

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")


@pytest.fixture(scope="module")
def page(app_server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(app_server)
        page.requests = requests
        yield page
        browser.close()


def plot_title(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} .js-plotly-plot .gtitle").first.text_content() or ""


def test_walkthrough(page, app_server):
    from playwright.sync_api import expect

    # page load shows the precomputed run
    # a loaded machine can take long to start the page's scripts: the first wait is generous
    expect(page.locator("#showing")).to_contain_text(EXAMPLE_TITLE, timeout=120_000)
    expect(page.locator("#final-image img")).to_be_visible()
    page.locator("#token-grid .js-plotly-plot .main-svg").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "01-loaded.png"), full_page=True)

    # the teaching panel follows the example (a schedule run: no rounds, no odds to show)
    expect(page.locator("#round-story")).to_contain_text("no speculative rounds")
    expect(page.locator("#why-text")).to_contain_text("verified no drafted tokens")

    # the example also set the inputs it was made with
    expect(page.locator("#seed input")).to_have_value("5")
    # a speculative generation with a seed unique to this test, with a fixed γ (the example's 2)
    page.locator("#mode").get_by_text("speculative (draft proposes, target verifies)").click()
    page.get_by_text("Advanced settings").click()
    page.locator("#gamma-auto input").uncheck()
    page.get_by_text("Advanced settings").click()
    seed = page.locator("#seed input")
    seed.fill("11")
    page.locator("#generate").click()
    expect(page.locator("#showing")).to_contain_text("seed 11", timeout=90_000)
    expect(page.locator("#showing")).to_contain_text("speculative")
    expect(page.locator("#final-image img")).to_have_attribute("src", re.compile(r"image\.png"))
    assert int(page.locator("#target-calls input").input_value()) >= 1
    expect(page.locator("#speedup textarea, #speedup input").first).to_have_value(re.compile(r"^\d+\.\d\d×$"))
    expect(page.locator("#summary")).to_contain_text("seed 11")
    page.locator("#timeline .js-plotly-plot .main-svg").first.wait_for()
    assert page.locator("#timeline .js-plotly-plot .bars .point").count() >= 10   # one bar per call, plus target only
    assert page.locator("#token-grid .js-plotly-plot .hm").count() >= 1 or \
        page.locator("#token-grid .js-plotly-plot image").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "02-generated.png"), full_page=True)

    # the teaching views of the same click: round story, why-chart, cost what-if
    expect(page.locator("#round-story")).to_contain_text("Round 1 of")
    expect(page.locator("#round-story")).to_contain_text("one verify call")
    page.locator("#why-chart .js-plotly-plot .main-svg").first.wait_for()
    expect(page.locator("#why-chart")).to_contain_text("Why exact speculation stalls")
    expect(page.locator("#why-text")).to_contain_text("target calls")
    page.locator("#cost-whatif .js-plotly-plot .main-svg").first.wait_for()
    expect(page.locator("#cost-whatif")).to_contain_text("measured")
    expect(page.locator("#whatif-text")).to_contain_text("γ planner's own cost model")
    rounds = page.get_by_label("number input for Round")
    rounds.fill("2")
    rounds.press("Enter")
    expect(page.locator("#round-story")).to_contain_text("Round 2 of", timeout=60_000)
    expect(page.locator("#timeline")).to_contain_text("round 2")   # the round shaded on the timeline
    page.locator("#whatif-regime").get_by_text("GPU, batch 1 (launch-bound)").click()
    expect(page.locator("#cost-whatif")).to_contain_text("fixed cost per call 20×", timeout=60_000)
    page.locator("#timeline").screenshot(path=str(ARTIFACTS / "08-round-on-timeline.png"))
    page.locator("#round-story").screenshot(path=str(ARTIFACTS / "09-round-story.png"))
    page.locator("#why-chart").screenshot(path=str(ARTIFACTS / "10-why-chart.png"))
    page.locator("#cost-whatif").screenshot(path=str(ARTIFACTS / "11-cost-whatif.png"))
    # figures for slides: a zip of PNG/SVG/PDF
    page.locator("#export-run").click()
    expect(page.locator("#export-figures a").first).to_have_attribute("href", re.compile(r"sdvar-figures\.zip"),
                                                                      timeout=120_000)
    page.screenshot(path=str(ARTIFACTS / "12-teaching.png"), full_page=True)

    # scrub to scale 3
    number = page.get_by_label("number input for Scale (scrub through the generation)")
    number.fill("3")
    number.press("Enter")
    expect(page.locator("#scale-summary")).to_contain_text("Scale 3 · 3×3")
    expect(page.locator("#token-grid .gtitle, #token-grid .annotation-text").first).to_be_attached()
    assert "3 · 3×3" in page.locator("#token-grid").inner_text()
    page.locator("#token-grid").screenshot(path=str(ARTIFACTS / "03-scale3.png"))
    # play steps through every scale and ends on the last one
    page.locator("#play").click()
    expect(page.locator("#scale-summary")).to_contain_text("Scale 10 · 16×16", timeout=30_000)

    # masks tab
    page.get_by_role("tab", name="Masks").click()
    page.locator("#mask-heatmap .js-plotly-plot .main-svg").first.wait_for()
    expect(page.locator("#mask-heatmap")).to_contain_text("sd_mask 1")
    page.locator("#mask-rule").get_by_text("4 · block, including current").click()
    expect(page.locator("#mask-heatmap")).to_contain_text("sd_mask 4")
    expect(page.locator("#mask-counts")).to_contain_text("all")
    page.locator("#keys-plot .js-plotly-plot .main-svg").first.wait_for()
    expect(page.locator("#keys-plot")).to_contain_text("under rule 4")
    page.locator("#pick-scale").get_by_label("number input for query scale").fill("3")
    page.locator("#pick-scale").get_by_label("number input for query scale").press("Enter")
    expect(page.locator("#keys-plot")).to_contain_text("Token (scale 3, row 2, col 2)")   # clamped to 3×3
    page.locator("#pick-scale").get_by_label("number input for query scale").fill("1")  # the 1×1 grid: no error
    page.locator("#pick-scale").get_by_label("number input for query scale").press("Enter")
    expect(page.locator("#keys-plot")).to_contain_text("Token (scale 1, row 0, col 0)")
    expect(page.get_by_text(re.compile("Slider minimum|Error"))).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "04-masks.png"), full_page=True)
    # six masks, one seed: the pattern and its effect in one view
    page.locator("#gallery-run").click()
    expect(page.locator("#gallery-text")).to_contain_text("hand-off at scale 5", timeout=90_000)
    page.locator("#mask-gallery .js-plotly-plot .main-svg").first.wait_for()
    expect(page.locator("#mask-gallery")).to_contain_text("Six masks, one seed")
    page.locator("#mask-gallery").screenshot(path=str(ARTIFACTS / "13-mask-gallery.png"))

    # shapes tab: the speculative run's target verify call fed scales 1–2 (1 + 4 = 5 positions)
    page.get_by_role("tab", name="Shapes").click()
    table = page.locator("#shape-table")
    expect(table).to_contain_text("cfg_logits")
    expect(table).to_contain_text("(2, 5, 64)")
    page.screenshot(path=str(ARTIFACTS / "05-shapes.png"), full_page=True)

    # compare tab: a small sweep
    page.get_by_role("tab", name="Compare").click()
    # the pair's precomputed frontier against plain models is there before any sweep
    page.locator("#plain-frontier-plot .js-plotly-plot .main-svg").first.wait_for()
    expect(page.locator("#plain-frontier-plot")).to_contain_text("plain-models curve")
    expect(page.locator("#plain-frontier-text")).to_contain_text("Plain-models curve")
    page.locator("#plain-frontier-plot").screenshot(path=str(ARTIFACTS / "15-plain-frontier.png"))
    page.locator("#sweep-seeds textarea, #sweep-seeds input").first.fill("0")
    for box in ("2", "6", "8"):
        page.locator("#sweep-entries").get_by_label(box, exact=True).uncheck()
    page.locator("#sweep-masks").get_by_label("1", exact=True).uncheck()
    page.locator("#sweep-run").click()
    expect(page.locator("#sweep-status")).to_contain_text("3 of 3 runs done", timeout=120_000)
    page.locator("#sweep-plot .js-plotly-plot .main-svg").first.wait_for()
    expect(page.locator("#sweep-table")).to_contain_text("D→T, sd_mask 3")
    # the speed–quality frontier of the same sweep, with its anchors
    page.locator("#pareto-plot .js-plotly-plot .main-svg").first.wait_for()
    expect(page.locator("#pareto-plot")).to_contain_text("Speed–quality frontier")
    expect(page.locator("#pareto-plot")).to_contain_text("draft only")
    expect(page.locator("#frontier-text")).to_contain_text("On the front")
    page.locator("#pareto-plot").screenshot(path=str(ARTIFACTS / "14-frontier.png"))
    page.screenshot(path=str(ARTIFACTS / "06-compare.png"), full_page=True)

    # only the app's own server was contacted
    hosts = {re.match(r"^[a-z]+://([^/]+)", u).group(1) for u in page.requests if "://" in u and not u.startswith("data:")}
    assert hosts <= {app_server.split("/")[2]}, hosts


def test_bad_input_shows_error(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Generate & inspect").click()
    page.locator("#mode").get_by_text("schedule (hand-off at entry_num)").click()
    page.get_by_text("Advanced settings").click()
    page.locator("#gen-schedule textarea, #gen-schedule input").first.fill("DDX")
    page.locator("#generate").click()
    expect(page.get_by_text(re.compile("schedule must be 10 letters")).first).to_be_visible(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "07-error.png"), full_page=True)
    # the server is still alive: a valid schedule works afterwards
    page.locator("#gen-schedule textarea, #gen-schedule input").first.fill("DDDTTTTTTT")
    page.locator("#generate").click()
    expect(page.locator("#showing")).to_contain_text("schedule", timeout=90_000)

    # typed HTML comes back as text in the message, never as an element
    box = page.locator("#class-name input")
    box.fill("<img src=x onerror=window.pwned=1>")
    box.press("Enter")
    page.locator("#generate").click()
    message = page.get_by_text(re.compile("class_name must be one of")).first
    expect(message).to_be_visible(timeout=30_000)
    assert "<img src=x" in message.inner_text()
    assert page.locator('img[src="x"]').count() == 0 and page.evaluate("window.pwned") is None
    page.screenshot(path=str(ARTIFACTS / "08-escaped.png"), full_page=True)


@pytest.fixture
def slow_stream(monkeypatch):
    """Each finalized scale takes 0.7 s more (in the engine's worker): the random pair is too fast to watch."""
    import time

    from sdvar_core import click

    real = click.generate

    def slow(*args, on_scale=None, **kwargs):
        def wrapped(ev):
            time.sleep(0.7)
            on_scale(ev)
        return real(*args, on_scale=wrapped, **kwargs)
    monkeypatch.setattr(click, "generate", slow)


def test_token_grid_changes_while_a_run_streams_and_stop_ends_it(page, slow_stream):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Generate & inspect").click()
    page.locator("#mode").get_by_text("target only").click()
    box = page.locator("#class-name input")   # an earlier test may have left a bad class typed in
    box.fill("circle")
    box.press("Enter")
    page.locator("#seed input").fill("21")
    page.locator("#generate").click()
    showing = page.locator("#showing")
    grid = page.locator("#token-grid")
    expect(showing).to_contain_text(re.compile(r"Running: .*seed 21 — target alone, scale [2-4]/10"), timeout=60_000)
    first = re.search(r"(\d+)×\1 = \d+ tokens", grid.inner_text())
    expect(showing).to_contain_text(re.compile(r"Running: .*seed 21 — target alone, scale [6-8]/10"), timeout=30_000)
    expect(grid).to_contain_text(re.compile(r"the (6|8|10)×\1 = \d+ tokens"))   # the grid changed mid-run
    assert first is None or first.group(1) in ("1", "2", "3", "4", "5"), first
    page.screenshot(path=str(ARTIFACTS / "15-streaming.png"), full_page=True)
    expect(page.locator("#summary")).to_contain_text("draft only took", timeout=60_000)   # comparisons done
    expect(showing).to_have_text(re.compile(r"^\s*Showing: your run — target, \w+, seed 21\s*$"))

    # Stop ends a streaming click within one scale
    page.locator("#seed input").fill("22")
    page.locator("#generate").click()
    expect(showing).to_contain_text(re.compile(r"seed 22 — target alone, scale [23]/10"), timeout=60_000)
    page.locator("#generate-stop").click()
    expect(showing).to_contain_text(re.compile(r"Stopped: your run — target, \w+, seed 22"), timeout=30_000)
    stopped_at = int(re.search(r"Scale (\d+)", page.locator("#scale-summary").inner_text()).group(1))
    assert 2 <= stopped_at <= 4, stopped_at      # within one scale of the press (plus one in flight)


def test_your_picture(page, tmp_path):
    """Upload a PNG: its pyramid; continue from scale 4: the result beside the input and the run's views;
    paint a band and in-paint it: acceptance inside the region."""
    from playwright.sync_api import expect
    from PIL import Image

    from sdvar_core import data

    Image.fromarray(data.make_images([3], 11, size=96)[0]).save(tmp_path / "star.png")
    expect(page.locator("#showing")).to_contain_text(re.compile("Showing:|Stopped:"), timeout=120_000)   # page up
    page.get_by_role("tab", name="Your picture").click()
    page.locator("#own-image input[type=file]").set_input_files(str(tmp_path / "star.png"))
    # the upload shows a pyramid by itself once the editor has sent the new picture, which on a loaded machine
    # can take a while; the button asks for it again with the editor's current value
    for _ in range(12):
        page.wait_for_timeout(5_000)
        if "96×96 → resized to 64×64" in page.locator("#picture-md").inner_text():
            break
        page.locator("#pyramid-btn").click()
    expect(page.locator("#picture-md")).to_contain_text("96×96 → resized to 64×64", timeout=30_000)
    page.locator("#pyramid .js-plotly-plot .main-svg").first.wait_for()
    assert "Your picture through the pair's scales" in plot_title(page, "pyramid")
    expect(page.locator("#prefix-scales input[type=number]")).to_have_value("4")
    page.locator("#picture-run").click()
    expect(page.locator("#picture-summary")).to_contain_text("first 4 of 10 scales", timeout=90_000)
    expect(page.locator("#picture-result img")).to_be_visible()
    expect(page.locator("#picture-input img")).to_be_visible()
    page.locator("#picture-acceptance .js-plotly-plot .main-svg").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "15-picture-continue.png"), full_page=True)

    editor = page.locator("#own-image")
    editor.scroll_into_view_if_needed()
    box = page.locator("#own-image canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for dy in (-15, 0, 15):   # a band across the picture's middle, with the editor's brush
        page.mouse.move(cx - 60, cy + dy)
        page.mouse.down()
        page.mouse.move(cx + 60, cy + dy, steps=12)
        page.mouse.up()
    page.wait_for_timeout(1500)   # the editor sends its layer after the stroke
    page.locator("#picture-task").get_by_text("in-paint the painted region").click()
    page.locator("#picture-run").click()
    expect(page.locator("#picture-summary")).to_contain_text("outside the painted region", timeout=90_000)
    expect(page.locator("#picture-scale-md")).to_contain_text("from your picture")
    page.screenshot(path=str(ARTIFACTS / "16-picture-inpaint.png"), full_page=True)
    # an example replaces the picture, and its pyramid follows
    page.locator("#picture-example input").fill("ring")
    page.locator("#picture-example input").press("Enter")
    expect(page.locator("#picture-md")).to_contain_text("64×64 → used as is", timeout=60_000)
