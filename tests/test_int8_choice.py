"""Which int8 variant of the image path is kept (`onnx_int8.choose`), driven by given measurements so
that every branch runs on any CPU: the real graphs' cosines depend on the CPU's instruction set."""
from __future__ import annotations

from pathlib import Path

from xmodal.indexer.models.onnx_int8 import REDUCE_RANGE, S8, U8U8, VARIANTS, Drift, cached_path, choose, variant_of

LIMITS = dict(min_median=0.98, min_worst=0.85)


def measured(cosines: dict):
    """A measure function giving `cosines[name]` and recording which variants it was asked for."""
    asked = []

    def measure(variant):
        asked.append(variant.name)
        return cosines[variant.name]

    return measure, asked


def test_the_first_variant_that_stays_close_is_kept_and_no_other_is_made():
    measure, asked = measured({"s8": (0.992, 0.933), "u8u8": (0.993, 0.930)})
    kept, tried = choose(VARIANTS, measure, **LIMITS)
    assert kept == S8 and asked == ["s8"] and tried == [Drift(S8, 0.992, 0.933)]


def test_a_variant_that_drifts_gives_way_to_the_next_that_stays_close():
    # the plain graph on an AVX2 CPU without VNNI: saturating products
    measure, asked = measured({"s8": (0.910, 0.627), "u8u8": (0.993, 0.930)})
    kept, tried = choose(VARIANTS, measure, **LIMITS)
    assert kept == U8U8 and asked == ["s8", "u8u8"]
    assert [(d.variant, d.median, d.worst) for d in tried] == [(S8, 0.910, 0.627), (U8U8, 0.993, 0.930)]


def test_both_limits_count_and_a_limit_reached_exactly_passes():
    measure, _ = measured({"s8": (0.995, 0.80), "s8-reduce-range": (0.97, 0.95), "u8u8": (0.98, 0.85)})
    kept, tried = choose((S8, REDUCE_RANGE, U8U8), measure, **LIMITS)
    assert kept == U8U8 and [d.variant for d in tried] == [S8, REDUCE_RANGE, U8U8]


def test_when_every_variant_drifts_none_is_kept_and_every_measurement_is_reported():
    measure, asked = measured({"s8": (0.910, 0.627), "u8u8": (0.95, 0.70)})
    kept, tried = choose(VARIANTS, measure, **LIMITS)
    assert kept is None and asked == ["s8", "u8u8"]
    assert [str(d) for d in tried] == ["s8: median 0.910, worst 0.627", "u8u8: median 0.950, worst 0.700"]


def test_each_variant_has_its_own_cached_graph():
    f = Path("/cache/lite-image-0123.onnx")
    paths = {v: cached_path(f, v) for v in (S8, U8U8, REDUCE_RANGE)}
    assert len(set(paths.values())) == 3 and all(p.parent == f.parent for p in paths.values())
    assert {v.name: variant_of(p) for v, p in paths.items()} == {v.name: v.name for v in paths}
    assert variant_of(f) is None
