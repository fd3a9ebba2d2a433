"""bench_ray.py's analysis: fixed and per-image cost from the two archive sizes, the overhead a
long run tends to, and the archive size from which the overhead goal holds."""

from __future__ import annotations

import importlib
import sys

import pytest
from conftest import ROOT


def _bench_ray():
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module("bench_ray")


def _run(images: int, fixed: float, per_image: float, start_up: float) -> dict:
    own = fixed + images * per_image
    return {"images": images, "own_seconds": own, "wall_seconds": own + start_up}


def _round(ray_fixed: float, ray_per: float, base_fixed: float, base_per: float) -> dict:
    return {
        "loda_score": _run(96, base_fixed, base_per, 1.0),
        "ray_small": _run(96, ray_fixed, ray_per, 6.0),
        "loda_score_large": _run(384, base_fixed, base_per, 1.0),
        "ray_large": _run(384, ray_fixed, ray_per, 6.0),
    }


def test_fixed_and_per_image_costs_come_back_from_two_sizes():
    bench = _bench_ray()
    out = bench.fixed_and_marginal([_round(5.0, 0.13, 0.5, 0.12)], goal=0.15)
    assert out["ray_fixed_seconds"] == pytest.approx(5.0)
    assert out["loda_score_fixed_seconds"] == pytest.approx(0.5)
    assert out["ray_seconds_per_image"] == pytest.approx(0.13)
    assert out["ray_overhead_marginal"] == pytest.approx(1 - 0.12 / 0.13)
    # 1 - (0.5 + 0.12 N) / (5 + 0.13 N) = 0.15  <=>  N = 3.75 / 0.0095
    assert out["break_even_images"] == pytest.approx(3.75 / 0.0095)
    # the start-up (6 s vs 1 s) only moves the fixed costs of the wall-clock fit
    assert out["ray_fixed_seconds_wall"] == pytest.approx(11.0)
    assert out["ray_overhead_marginal_wall"] == pytest.approx(out["ray_overhead_marginal"])
    n = out["break_even_images"]
    overhead = 1 - (0.5 + 0.12 * n) / (5.0 + 0.13 * n)
    assert overhead == pytest.approx(0.15)


def test_break_even_is_none_when_the_per_image_cost_alone_misses_the_goal():
    bench = _bench_ray()
    out = bench.fixed_and_marginal([_round(5.0, 0.20, 0.5, 0.12)], goal=0.15)
    assert out["ray_overhead_marginal"] == pytest.approx(0.4)
    assert out["break_even_images"] is None
    # no fixed cost to spread: the goal holds from the first image
    assert bench.break_even((0.0, 0.13), (0.5, 0.12), 0.15) == 0.0


def test_medians_over_rounds():
    bench = _bench_ray()
    rounds = [
        _round(4.0, 0.13, 0.5, 0.12),
        _round(5.0, 0.13, 0.5, 0.12),
        _round(9.0, 0.2, 0.5, 0.12),
    ]
    out = bench.fixed_and_marginal(rounds, goal=0.15)
    assert out["ray_fixed_seconds"] == pytest.approx(5.0)
    assert out["break_even_images"] == pytest.approx(3.75 / 0.0095)


def test_memory_comes_from_the_untimed_pass():
    bench = _bench_ray()
    rounds = [_round(5.0, 0.13, 0.5, 0.12)]
    for r in rounds[0].values():
        r["images_per_s"] = r["images"] / r["own_seconds"]
        r["images_per_s_wall"] = r["images"] / r["wall_seconds"]
    memory = {
        name: {"peak_pss_sum_mb": pss, "peak_rss_sum_mb": 2 * pss}
        for name, pss in (
            ("loda_score", 500.0),
            ("ray_small", 1600.0),
            ("loda_score_large", 510.0),
            ("ray_large", 1680.0),
        )
    }
    out = bench.summarise(rounds, memory)
    assert out["memory"] is memory
    assert out["memory_ratio_large_vs_small_pss"] == pytest.approx(1.05)
    assert out["memory_ratio_large_vs_small_rss"] == pytest.approx(1.05)
