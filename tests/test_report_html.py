"""report.html and report.md: hostile strings come out as text, nothing is fetched, the first screen answers."""

import re
from html.parser import HTMLParser

import pytest

from analysis import analyze, render_reports
from tests.support.synthetic import RunModel, StepModel, build_run, plan_dict

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
EVIL_VARIANT = "<img src=x onerror=alert(2)>$x^$"  # also a broken matplotlib mathtext string


class Tags(HTMLParser):
    """Every start tag with its attributes, as a browser's parser sees them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags = []
        self.text = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _steps(speed):
    return [StepModel(c, 0.004 * (1 + c / 16) / speed, 0.02, output_tokens=40, jitter=0.2, warmup_s=0.5,
                      duration_s=3.0, errors=1 if c == 8 else 0, error_message=f"HTTP 500: {SCRIPT} {IMG}",
                      power_w=300.0 + 5 * c, clock_reasons=0x40 if c == 32 else 0)
            for c in (1, 8, 32)]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    variants = {"fp16": _steps(1.0), "awq": _steps(1.5), EVIL_VARIANT: _steps(1.1)}
    plan = plan_dict(["fp16", "awq", "gptq"], baseline="fp16")
    plan["variants"][2]["name"] = EVIL_VARIANT  # the manifest holds what a newer or edited plan may hold
    plan["name"] = SCRIPT
    plan["scenario"]["dataset"] = IMG
    servers = {
        "fp16": {"argv": ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", SCRIPT, IMG],
                 "env": {"NOTE": IMG}, "url": "http://127.0.0.1:8000",
                 "variant": {"weights": "fp16", "kv_cache_dtype": "auto"}, "served": {"verdict": "ok"}},
        EVIL_VARIANT: {"argv": ["serve", SCRIPT], "url": IMG, "variant": {"weights": "gptq", "kv_cache_dtype": "auto"},
                       "served": {"verdict": "mismatch", "reasons": [f"weights {IMG}", SCRIPT]}},
    }
    run = build_run(root / "run", RunModel(steps=variants, plan=plan, servers=servers))
    m = run.read_manifest()
    m["warnings"].append(f"a warning with {SCRIPT}")
    m["host"]["hostname"] = IMG
    m["scenario"] = {"kind": SCRIPT}
    (run.path / "crosscheck" / "awq").mkdir(parents=True)
    (run.path / "crosscheck" / "awq" / "c1.json").write_text(f'{{"output_throughput": 1, "note": "{IMG}"')
    m["crosscheck"] = {
        EVIL_VARIANT: {"argv": ["vllm", "bench", "serve", "--model", SCRIPT], "started": 1.0, "ended": 2.0,
                       "levels": [{"concurrency": 8, "num_prompts": 32, "file": None, "status": "failed",
                                   "error": f"{SCRIPT} {IMG}"}]},
        "awq": {"argv": ["vllm", "bench", "serve"], "levels": [
            {"concurrency": 1, "num_prompts": 12, "file": "crosscheck/awq/c1.json", "status": "ok", "error": None}]},
    }
    run.write_manifest(m)
    analyze(run.path)
    written = render_reports(run.path)
    return run.path, written


def test_hostile_strings_are_escaped_in_html(hostile_run):
    path, _ = hostile_run
    html = (path / "report.html").read_text()
    assert SCRIPT not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    p = Tags()
    p.feed(html)
    names = [t for t, _ in p.tags]
    assert "script" not in names and "link" not in names and "iframe" not in names and "object" not in names
    for tag, attrs in p.tags:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
    text = "".join(p.text)
    # the hostile strings are there, as text
    assert SCRIPT in text and "onerror=alert(1)" in text and EVIL_VARIANT in text


def test_nothing_is_fetched(hostile_run):
    path, _ = hostile_run
    html = (path / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", html, re.I)
    assert "Content-Security-Policy" in html


def test_first_screen_has_backend_verdict_and_key_charts(hostile_run):
    path, written = hostile_run
    html = (path / "report.html").read_text()
    assert "emulator — modelled, not measured on a GPU" in html
    order = [html.index(x) for x in ('id="verdict"', 'alt="throughput against', 'alt="speedup against',
                                     'id="latency"', 'id="roofline"', 'id="energy"', 'id="agreement"',
                                     'id="crosscheck"', 'id="steps"', 'id="errors"', 'id="environment"')]
    assert order == sorted(order)
    for name in ("throughput", "speedup", "latency", "goodput", "roofline", "server_series", "energy"):
        png = path / "charts" / f"{name}.png"
        assert png.exists() and png.stat().st_size > 5000, name
    # the mismatched variant is called out, its command shown (escaped) with the environment
    assert "ran at 16-bit size: not INT4" in html
    assert "vllm.entrypoints.openai.api_server" in html


def test_energy_and_crosscheck_sections_show_hostile_strings_as_text(hostile_run):
    path, _ = hostile_run
    html = (path / "report.html").read_text()
    p = Tags()
    p.feed(html[html.index('id="energy"'):html.index('id="steps"')])
    text = "".join(p.text)
    assert EVIL_VARIANT in text  # the variant name, in the energy and cross-check tables
    assert f"vllm bench serve failed: {SCRIPT} {IMG}" in text
    assert "crosscheck/awq/c1.json: not a vllm bench serve result" in text
    assert "hw_thermal_slowdown" in text  # the throttled step is named
    md = (path / "report.md").read_text()
    assert "## Energy" in md and "## ridgeline vs vllm bench serve" in md


def test_markdown_report_escapes_and_links_the_charts(hostile_run):
    path, _ = hostile_run
    md = (path / "report.md").read_text()
    assert SCRIPT not in md and "<img" not in md
    assert "&lt;script&gt;" in md
    assert "![speedup](charts/speedup.png)" in md
    assert "| variant |" in md and "## Crossover" in md
    # a pipe in a string cannot break a table row
    from analysis.report_md import md as esc

    assert "|" not in esc("a|b") and esc("`x`") == "\\`x\\`"


def test_both_reports_show_the_same_crossover_and_speedup_cells(tmp_path):
    """The crossover and speedup tables are built once: the same words and numbers in report.html and report.md."""
    steps = {"fp16": [StepModel(c, 0.005, 0.005, output_tokens=40, warmup_s=0.5, duration_s=3.0) for c in (1, 8)],
             "awq": [StepModel(c, 0.005 / 1.6, 0.005 / 1.6, output_tokens=40, warmup_s=0.5, duration_s=3.0)
                     for c in (1, 8)]}
    r = build_run(tmp_path / "run", RunModel(steps=steps, plan=plan_dict(["fp16", "awq"], baseline="fp16",
                                                                          thresholds=[1.2])))
    analyze(r.path)
    render_reports(r.path)
    md = (r.path / "report.md").read_text()
    p = Tags()
    p.feed((r.path / "report.html").read_text())
    html_text = "".join(p.text)
    # awq stays about 1.6x faster at both levels: it never falls below 1.2x, in the same word in both
    row = next(line for line in md.splitlines() if line.startswith("| awq |") and "never" in line)
    assert row.split("|")[2].strip() == "never"
    assert "never" in html_text and "–" not in row
    speed = next(line for line in md.splitlines() if line.startswith("| awq |") and "x (" in line)
    for cell in [c.strip() for c in speed.split("|")[2:-1]]:
        assert cell in html_text
