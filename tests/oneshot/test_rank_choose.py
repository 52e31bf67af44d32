"""Which architectures a rank study evaluates: spec parsing, reproducible samples, stratification
over the ground-truth range, files, and NB201 de-isomorphism."""
import pytest

import supernets
from oneshot.rank.choose import choose_archs, deiso_archs, deiso_truth, parse_spec
from oneshot.rank.ground_truth import GroundTruth


@pytest.fixture(scope="module")
def space():
    return supernets.get("nb201")


def _truth(space, indices, value=lambda i: float(i)):
    return GroundTruth(values={space.format(space.from_index(i)): value(i) for i in indices},
                       source="crafted", column="acc", kind="table", counts={})


@pytest.mark.parametrize("spec", ["some", "sample", "sample:x", "sample:1", "all:3", "file:"])
def test_bad_specs_are_named(spec):
    with pytest.raises(ValueError, match="--archs"):
        parse_spec(spec)


def test_samples_are_distinct_reproducible_and_drawn_from_the_ground_truth(space):
    truth = _truth(space, range(0, 15625, 50))
    first = choose_archs(space, "sample:40", truth, seed=3)
    assert len({space.format(a) for a in first}) == 40
    assert all(space.format(a) in truth.values for a in first)
    assert first == choose_archs(space, "sample:40", truth, seed=3)
    assert first != choose_archs(space, "sample:40", truth, seed=4)
    with pytest.raises(ValueError, match="only 313 architectures"):
        choose_archs(space, "sample:400", truth)
    assert len(choose_archs(space, "all", None)) == 15625


def test_stratified_covers_the_tails_a_uniform_sample_misses(space):
    # 990 archs at 90%, ten spread over 10..55%: equal-width bins reach the low tail
    values = {i: 90.0 for i in range(990)} | {990 + k: 10.0 + 5 * k for k in range(10)}
    truth = _truth(space, values, values.get)
    chosen = choose_archs(space, "stratified:10", truth, seed=0)
    got = sorted(truth.values[space.format(a)] for a in chosen)
    assert len(chosen) == 10 and len({space.format(a) for a in chosen}) == 10
    # bins of width 8: [10,18) [18,26) ... each low bin holds one or two tail archs, the top bin 990
    tail_bins = {int((v - 10.0) / 8.0) for v in got if v < 90}
    assert got[-1] == 90.0 and tail_bins == {0, 1, 2, 3, 4, 5}  # one from each non-empty low bin
    uniform = choose_archs(space, "sample:10", truth, seed=0)
    assert sum(truth.values[space.format(a)] < 90 for a in uniform) < 6
    with pytest.raises(ValueError, match="give --ground-truth"):
        choose_archs(space, "stratified:10", None)


def test_file_lists_strings_or_a_csv(space, tmp_path):
    archs = [space.from_index(i) for i in (7, 70, 700)]
    listing = tmp_path / "archs.txt"
    listing.write_text("# chosen by hand\n" + "\n".join(space.format(a) for a in archs) + "\n")
    assert choose_archs(space, f"file:{listing}") == archs
    table = tmp_path / "archs.csv"
    table.write_text("arch,score\n" + "".join(f"{space.format(a)},1\n" for a in archs))
    assert choose_archs(space, f"file:{table}") == archs
    listing.write_text("|nor_conv_3x3~0|+|bogus|\n")
    with pytest.raises(ValueError, match="entry 1"):
        choose_archs(space, f"file:{listing}")


def test_deiso_keeps_one_member_per_class_at_the_class_mean(space):
    all_archs = list(space.enumerate())
    representatives = deiso_archs(space, all_archs)
    assert len(representatives) == 6466
    truth = _truth(space, range(15625))
    collapsed = deiso_truth(space, truth)
    assert len(collapsed.values) == 6466
    classes = {}
    for i, arch in enumerate(all_archs):
        classes.setdefault(space.isomorphism_key(arch), []).append(i)
    members = max(classes.values(), key=len)  # the largest class
    key = space.format(space.from_index(min(members)))
    assert collapsed.values[key] == pytest.approx(sum(members) / len(members))
    assert collapsed.counts[key] == len(members) > 1
    with pytest.raises(ValueError, match="no isomorphism classes"):
        deiso_archs(supernets.get("darts"), [])
