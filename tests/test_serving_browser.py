"""The page of ``tsdfm serve`` in a real headless Chromium (Debian's chromium + chromedriver).

Loads ``/`` from a server on a tiny model (fitted for a second to a paragraph, with a small BPE
tokenizer), submits a prompt, waits for
the final text, checks that intermediate states were shown and that the final text begins with
the prompt, and saves the screenshot the README shows (docs/serve.png). Runs in CI (.ci/run
installs the packages); on a machine without them it is skipped, unless CI=true.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
selenium = pytest.importorskip("selenium")
from serving_helpers import ThreadServer  # noqa: E402

from tsdfm.data.tokenizer import Tokenizer  # noqa: E402
from tsdfm.generator import Generator  # noqa: E402
from tsdfm.models import DenoiserConfig, build_student  # noqa: E402
from tsdfm.models.denoiser import Denoiser  # noqa: E402
from tsdfm.serving.app import create_app  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
PROMPT = "The river"
TEXT = (
    "The river runs through the old town and past the mill. The town was founded on the river "
    "bank in the twelfth century. A bridge of stone crosses the river near the church. "
)


def _fit(model, tok, steps: int = 150) -> None:
    """A few masked-denoising steps on TEXT (about a second), so the page shows words, not the
    byte soup of random weights: the screenshot is for people to look at."""
    import torch

    from tsdfm.flow import cross_entropy, make_scheduler, sample_path, sample_time

    ids = torch.tensor(tok.encode(TEXT * 4))
    length, gen = model.config.max_len, torch.Generator().manual_seed(0)
    windows = ids.unfold(0, length, 7)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = make_scheduler("polynomial", 1.0)
    for _ in range(steps):
        x1 = windows[torch.randint(len(windows), (16,), generator=gen)]
        t = sample_time(16, gen)
        xt = sample_path(x1, t, sched, "mask", tok.mask_id, tok.num_classes, gen)
        loss = cross_entropy(model(xt, t), x1, weights=(xt == tok.mask_id).float())
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    import torch

    tok = Tokenizer.train_bpe([TEXT] * 20, vocab_size=300)
    torch.manual_seed(0)
    cfg = DenoiserConfig(
        vocab_size=tok.vocab_size, num_classes=tok.num_classes, max_len=32, dim=64,
        n_layers=2, n_heads=2,
    )  # fmt: skip
    teacher = Denoiser(cfg)
    _fit(teacher, tok)
    root = tmp_path_factory.mktemp("browser-model")
    build_student(teacher.eval()).save_pretrained(root / "student-demo" / "model", tokenizer=tok)
    return root / "student-demo"


def _driver():
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install chromium and chromium-driver (see .ci/run)")
        pytest.skip("Debian's chromium / chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage", "--window-size=1100,1000",
        f"--user-data-dir={tempfile.mkdtemp(prefix='tsdfm-chromium-')}",
    ):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


def test_page_shows_the_steps_and_the_final_text(student_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    g = Generator.from_pretrained(student_dir, device="cpu")
    with ThreadServer(create_app(g)) as server:
        driver = _driver()
        try:
            driver.get(server.url + "/")
            WebDriverWait(driver, 20).until(
                lambda d: "student-demo" in d.find_element(By.ID, "model-name").text
            )
            box = driver.find_element(By.ID, "text")
            box.clear()
            box.send_keys(PROMPT)
            driver.execute_script("document.getElementById('seed').value = '3';")
            driver.find_element(By.ID, "go").click()
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "final").text)
            final = driver.find_element(By.ID, "final").text
            log = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#steps-log li")]
            status = driver.find_element(By.ID, "status").text
            new_tokens = len(driver.find_elements(By.CSS_SELECTOR, "#sequence .tok.new"))
            fixed_tokens = len(driver.find_elements(By.CSS_SELECTOR, "#sequence .tok.fixed"))
            docs = ROOT / "docs"
            docs.mkdir(exist_ok=True)
            driver.save_screenshot(str(docs / "serve.png"))
        finally:
            driver.quit()
    assert final.startswith(PROMPT), final
    # the start, then one entry per step (8 by default): the intermediate states were shown
    assert len(log) == 8 + 1 and "step 0/8" in log[0] and "step 8/8" in log[-1]
    assert any("masked" in li and " 0 masked" not in li for li in log[1:-1])
    assert " ms " in log[1] and status.startswith("done: 8 steps")
    assert fixed_tokens and new_tokens  # the prompt is marked as given, the last step's tokens new
    assert (ROOT / "docs" / "serve.png").stat().st_size > 10_000
