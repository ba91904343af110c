"""The benchmark's recorded figures: benchmarks/README.md's table is rendered from them, and a
figure more than 10% worse than the recorded one is printed as a REGRESSION."""

import importlib.util
import json
from types import ModuleType

from tests.conftest import ROOT

START, END = "<!-- figures.json: start -->", "<!-- figures.json: end -->"


def benchmarks() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "run_benchmarks", ROOT / "benchmarks" / "run_benchmarks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readmes_benchmark_table_is_the_recorded_figures() -> None:
    module = benchmarks()
    recorded = json.loads(module.FIGURES.read_text())
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    shown = readme[readme.index(START) + len(START) : readme.index(END)].strip("\n") + "\n"
    assert shown == module.render_table(recorded)
    assert recorded["code"] and recorded["command"]


def test_a_figure_more_than_ten_percent_worse_is_a_regression() -> None:
    module = benchmarks()
    last = {"code": "abc1234", "figures": {"a": {"value": 10.0}, "b": {"value": 10.0}}}
    lines = module.compare_figures(
        {"a": {"value": 11.5}, "b": {"value": 10.9}, "c": {"value": 1.0}}, last
    )
    assert lines[0].startswith("REGRESSION a: 11.50 against 10.00 recorded at abc1234 (+15%)")
    assert lines[1].startswith("ok") and "b: 10.90" in lines[1]
    assert lines[2].startswith("new") and "c: 1.00" in lines[2]


def test_a_record_keeps_each_recorded_figure_the_new_run_does_not_beat() -> None:
    module = benchmarks()
    last = {
        "code": "old1234",
        "figures": {
            "a": {"what": "a", "value": 10.0},
            "b": {"what": "b", "value": 10.0, "code": "older12"},
        },
    }
    run = {"a": {"what": "a now", "value": 9.504}, "b": {"what": "b now", "value": 10.4}}
    run["c"] = {"what": "c", "value": 1.0}
    recorded = module.recorded_figures(run, last, "new5678")
    assert recorded["code"] == "new5678" and recorded["command"]
    assert recorded["figures"]["a"] == {"what": "a now", "value": 9.5, "code": "new5678"}
    assert recorded["figures"]["b"] == {"what": "b", "value": 10.0, "code": "older12"}
    assert recorded["figures"]["c"]["value"] == 1.0
    lines = module.compare_figures({"b": {"value": 11.5}}, recorded)
    assert lines == ["REGRESSION b: 11.50 against 10.00 recorded at older12 (+15%)"]
    assert "| b | 10.00 | older12 |" in module.render_table(recorded)
