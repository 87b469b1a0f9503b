"""benchmarks/serve_load.py: a quick bounded run writes the JSON and markdown it promises."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


@pytest.mark.slow
def test_quick_load_run(tmp_path):
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--quick", "--clients", "1", "4", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "serve_load-quick.json").read_text())
    assert [p["clients"] for p in on_disk["phases"]] == [1, 4]
    for p in res["phases"]:
        assert p["failed"] == 0 and p["completed"] > 0 and p["p99_s"] >= p["p50_s"] > 0
        assert p["rss_mib_peak"] >= p["rss_mib_start"] > 0
    assert res["sampler"]["b32"]["samples_per_s"] > 0
    assert "| 4 |" in (tmp_path / "serve_load-quick.md").read_text()
    with pytest.raises(SystemExit):
        mod.main(["--quick", "--clients", "65"])
