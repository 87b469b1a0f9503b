"""studies/navigated_sampler.py: the compass's tilt at sampling time (K = 1 is the plain sampler)."""

from __future__ import annotations

import pytest
import torch

from tsdfm.flow import make_scheduler, sample, sample_source
from tsdfm.models import Denoiser, DenoiserConfig
from tsdfm.shaping import Compass, Navigator

V, L = 12, 10


class CountEnergy(Compass):
    """``E(v) = -(number of positions holding token 3)``: a known, strong preference."""

    name = "count"

    def energy(self, views):
        return -(views == 3).double().sum(1)


def tiny_teacher(source: str) -> Denoiser:
    torch.manual_seed(0)
    cfg = DenoiserConfig(
        vocab_size=V + 1,
        num_classes=V,
        max_len=L,
        dim=16,
        n_layers=1,
        n_heads=2,
        source=source,
        time_cond=True,
    )
    return Denoiser(cfg).eval()


def test_k1_is_the_plain_sampler_draw_for_draw(load_script):
    ns = load_script("navigated_sampler")
    for source in ("mask", "uniform"):
        teacher = tiny_teacher(source)
        c = teacher.config
        x0 = sample_source(
            (6, L), c.source, c.mask_id, c.num_classes, torch.Generator().manual_seed(1)
        )
        plain = sample(
            teacher, x0, 5, make_scheduler(c.scheduler, c.exponent), c.source, c.mask_id,
            torch.Generator().manual_seed(2), cache=False, head_at_jumps=False,
        ).ids  # fmt: skip
        nav = Navigator(CountEnergy(), 1, source=c.source, mask_id=c.mask_id)
        ours = ns.navigated_sample(teacher, x0, 5, torch.Generator().manual_seed(2), nav)
        blind = ns.navigated_sample(teacher, x0, 5, torch.Generator().manual_seed(2))
        assert torch.equal(ours, plain) and torch.equal(blind, plain), source


def test_navigation_tilts_the_samples_toward_low_energy(load_script):
    """K = 4 by a compass that counts token 3: the navigated samples hold clearly more 3s than
    blind ones from the same teacher (a sampler that ignored the navigator would fail this),
    and the recorded energy gap is positive."""
    ns = load_script("navigated_sampler")
    teacher = tiny_teacher("mask")
    c = teacher.config
    x0 = sample_source(
        (64, L), c.source, c.mask_id, c.num_classes, torch.Generator().manual_seed(1)
    )
    blind = ns.navigated_sample(teacher, x0, 4, torch.Generator().manual_seed(2))
    nav = Navigator(CountEnergy(), 4, source=c.source, mask_id=c.mask_id)
    shaped = ns.navigated_sample(teacher, x0, 4, torch.Generator().manual_seed(2), nav)
    assert (shaped != c.mask_id).all() and (blind != c.mask_id).all()
    assert (shaped == 3).float().mean() > (blind == 3).float().mean() + 0.05
    stats = nav.stats()
    assert stats["gap"] > 0 and stats["calls"] == 4
    assert {f"gap_m{k}" for k in range(1, 5)} == {k for k in stats if k.startswith("gap_m")}
    ns.navigated_sample(teacher, x0, 4, torch.Generator().manual_seed(3), nav)  # a second batch
    assert {f"gap_m{k}" for k in range(1, 5)} == {k for k in nav.stats() if k.startswith("gap_m")}


def test_decorrelate_keeps_each_position_law_and_breaks_the_joint(load_script):
    """Draws that are constant sequences (all positions agree: a maximal correlation) of tokens
    0..M-1: after decorrelate each position still takes each token with probability 1/M, but two
    positions agree only with probability 1/M, as independent draws would."""
    ns = load_script("navigated_sampler")
    m, b, length = 4, 4000, 6
    draws = torch.arange(m).view(1, m, 1).expand(b, m, length)
    out = ns.decorrelate(draws, torch.Generator().manual_seed(0))
    freq = torch.stack([(out == v).float().mean(0) for v in range(m)])  # [M, L]
    assert torch.allclose(freq, torch.full_like(freq, 1 / m), atol=0.03)
    agree = (out[:, 0] == out[:, 1]).float().mean()
    assert abs(agree - 1 / m) < 0.03  # the joint draws agreed always


def test_product_mode_runs_and_m1_is_the_joint(load_script):
    ns = load_script("navigated_sampler")
    teacher = tiny_teacher("mask")
    c = teacher.config
    x0 = sample_source((8, L), c.source, c.mask_id, c.num_classes, torch.Generator().manual_seed(1))
    nav = Navigator(CountEnergy(), 3, source=c.source, mask_id=c.mask_id)
    joint = ns.navigated_sample(teacher, x0, 4, torch.Generator().manual_seed(2), nav)
    m1 = ns.navigated_sample(teacher, x0, 4, torch.Generator().manual_seed(2), nav, product=1)
    prod = ns.navigated_sample(teacher, x0, 4, torch.Generator().manual_seed(2), nav, product=5)
    assert torch.equal(joint, m1)
    assert prod.shape == joint.shape and (prod != c.mask_id).all()


def test_bad_input_is_one_line_and_exit_2(load_script, tmp_path, capsys):
    """A missing teacher and a malformed --compass: exit 2, one error line naming the problem,
    no output folder created."""
    ns = load_script("navigated_sampler")
    cases = (
        (["--teacher", str(tmp_path / "nowhere")], "nowhere"),
        (["--teacher", str(tmp_path), "--compass", "c010"], "expected NAME=DIR"),
    )
    for argv, names in cases:
        with pytest.raises(SystemExit) as exc:
            ns.main([*argv, "--out", str(tmp_path / "o")])
        assert exc.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "error" in last and names in last, last
    assert not (tmp_path / "o").exists()
