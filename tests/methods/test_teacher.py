"""The RD-NAS teacher: teacher specs, the z-scored ensemble, and its cache across steps and resumes."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from track1.ranking import proxies

from track1.methods import teacher as teacher_mod
from track1.methods.teacher import TeacherCacheError
from track1.pipeline.config import ConfigError
from track1.ranking.proxy_runs import gaussian_batch
from track1.methods.teacher import Teacher
from track1.ranking.ensemble import combine, parse_teacher, reference_codes, reference_stats, teacher_label
from track1.space import SearchSpace

from conftest import tiny_config


def CACHE(tmp_path):
    """The teacher cache directory train gives a run of tiny_config."""
    return tmp_path / "tiny" / "teacher"

ENSEMBLE = ["train.ranking.teacher=snip,synflow", "proxies.input=gaussian", "proxies.batch_size=4",
            "proxies.reference_size=4"]


def test_parse_teacher():
    assert parse_teacher("flops") == {"flops": 1.0}
    assert parse_teacher("snip, synflow") == parse_teacher(["snip", "synflow"]) == {"snip": 1.0, "synflow": 1.0}
    assert parse_teacher({"snip": 2, "zen": 0.5}) == {"snip": 2.0, "zen": 0.5}
    assert teacher_label(parse_teacher("snip,synflow")) == "snip+synflow"
    # The config's -o overrides reach it as YAML: a mapping, a list or a string.
    from track1.pipeline.config import load_config
    for override, expected in [("{snip: 2, zen: 1}", {"snip": 2.0, "zen": 1.0}), ("[snip, zen]", {"snip": 1.0, "zen": 1.0})]:
        cfg = load_config(None, [f"train.ranking.teacher={override}"])
        assert parse_teacher(cfg["train"]["ranking"]["teacher"]) == expected
    assert teacher_label({"snip": 2.0, "zen": 0.5}) == "snip2+zen0.5"
    for bad, match in [("snip,nope", "unknown proxy 'nope'"), ("snip,snip", "named twice"),
                       ({"snip": 0}, "positive"), ({"snip": True}, "positive"), ([], "no proxy"),
                       (3, "expected a proxy name")]:
        with pytest.raises(ConfigError, match=match):
            parse_teacher(bad)


def test_ensemble_is_the_weighted_mean_of_reference_z_scores():
    weights = {"snip": 1.0, "zen": 3.0}
    ref = {"snip": [1.0, math.e, math.e ** 2], "zen": [0.0, 2.0, -math.inf]}
    stats = reference_stats(weights, ref)
    # snip on the log scale: 0, 1, 2 (mean 1, std sqrt(2/3)); zen as is, finite values only.
    assert stats["snip"] == pytest.approx((1.0, math.sqrt(2 / 3)), rel=1e-12)
    assert stats["zen"] == pytest.approx((1.0, 1.0), rel=1e-12)
    value = combine(weights, stats, {"snip": math.e ** 2, "zen": 3.0})
    assert value == pytest.approx((1 / math.sqrt(2 / 3) + 3 * 2.0) / 4, rel=1e-12)
    assert combine(weights, stats, {"snip": 0.0, "zen": 3.0}) == -math.inf  # log of a zero score
    with pytest.raises(ValueError, match="constant"):
        reference_stats({"snip": 1.0}, {"snip": [2.0, 2.0]})


def test_single_cheap_teacher_is_the_raw_score_and_writes_nothing(tmp_path):
    cfg = tiny_config(tmp_path, "train.ranking.teacher=params")
    space = SearchSpace.from_config(cfg)
    t = Teacher(cfg, space, CACHE(tmp_path))
    w = space.widths(space.smallest())
    assert t(w) == space.params(w) and t.path is None and t.computed == 0
    assert not (tmp_path / "tiny" / "teacher").exists()


REAL_COMPUTE = proxies.compute


def _counting(monkeypatch):
    calls = []
    real = REAL_COMPUTE

    def compute(name, widths, *a, **k):
        calls.append((name, widths))
        return real(name, widths, *a, **k)

    monkeypatch.setattr(proxies, "compute", compute)
    return calls


def test_ensemble_teacher_scores_each_network_once_across_resumes(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, *ENSEMBLE)
    space = SearchSpace.from_config(cfg)
    rng = np.random.default_rng(1)
    nets = [space.widths(space.sample(rng)) for _ in range(2)]
    calls = _counting(monkeypatch)
    t = Teacher(cfg, space, CACHE(tmp_path))
    values = [t(w) for w in nets] + [t(nets[0])]
    assert values[2] == values[0]
    # Expected from proxies.compute directly: members z-scored over the 4 reference codes.
    ref = [space.widths(c) for c in reference_codes(cfg, space).values()]
    batch = gaussian_batch(4, 32, 10, 0)
    raw = {n: [proxies.compute(n, w, space, batch) for w in ref + nets] for n in ("snip", "synflow")}
    stats = reference_stats(t.weights, {n: v[:4] for n, v in raw.items()})
    for i, v in enumerate(values[:2]):
        assert v == combine(t.weights, stats, {n: raw[n][4 + i] for n in raw})
    distinct = len(set(ref + nets))
    assert len(calls) == 2 * distinct * 2 and t.computed == 2 * distinct  # (ours + the check above)
    lines = t.path.read_text().splitlines()
    assert json.loads(lines[0]) == {"settings": t.settings} and len(lines) == 1 + 2 * distinct
    # A resumed run reads every score back and computes nothing.
    monkeypatch.setattr(proxies, "compute", lambda *a, **k: pytest.fail("recomputed a cached score"))
    again = Teacher(cfg, space, CACHE(tmp_path))
    assert [again(w) for w in nets] == values[:2] and again.computed == 0
    # A torn last line (killed mid-write) is dropped and only that score is computed again.
    t.path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:15])
    calls = _counting(monkeypatch)
    torn = Teacher(cfg, space, CACHE(tmp_path))
    assert [torn(w) for w in nets] == values[:2] and len(calls) == 1
    assert len(t.path.read_text().splitlines()) == len(lines)


def test_another_teachers_cache_is_not_read_and_a_mislabelled_one_is_refused(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, *ENSEMBLE)
    space = SearchSpace.from_config(cfg)
    w = space.widths(space.smallest())
    first = Teacher(cfg, space, CACHE(tmp_path))
    first(w)
    other = Teacher(tiny_config(tmp_path, *ENSEMBLE, "proxies.seed=1"), space, CACHE(tmp_path))
    assert other.path != first.path and other.path.parent == first.path.parent
    calls = _counting(monkeypatch)
    other(w)
    assert len(calls) == 2 * 5                       # 2 members x (4 reference codes + smallest)
    text = first.path.read_text()
    header = json.loads(text.splitlines()[0])
    header["settings"]["proxies"]["seed"] = 7
    first.path.write_text(json.dumps(header) + "\n" + text.split("\n", 1)[1])
    with pytest.raises(TeacherCacheError, match="teacher cache for"):
        Teacher(cfg, space, CACHE(tmp_path))


def test_proxies_command_ensemble_equals_the_teacher(tmp_path, capsys):
    from track1.pipeline.cli import main
    from track1.ranking.submission import demo_arch_list, write_arch_list
    listed = tmp_path / "list.json"
    codes = demo_arch_list(3, 5)
    write_arch_list(listed, codes)
    cfg = tiny_config(tmp_path, *ENSEMBLE)
    overrides = [a for o in [*ENSEMBLE[1:], f"run.output_dir={tmp_path}", "run.name=tiny",
                             "space.width_mult=0.125"] for a in ("-o", o)]
    assert main(["proxies", "--proxy", "snip,synflow", "--arch-list", str(listed), *overrides]) == 0
    folder = tmp_path / "tiny" / "proxies"
    out = json.loads((folder / "list@snip+synflow.json").read_text())
    meta = json.loads((folder / "list@snip+synflow.meta.json").read_text())
    assert meta["reference"]["size"] == 4 and meta["input"] == {"snip": "gaussian", "synflow": "none"}
    space = SearchSpace.from_config(cfg)
    t = Teacher(cfg, space, CACHE(tmp_path))
    assert {k: v["acc"] for k, v in out.items()} == {k: t(space.widths(c)) for k, c in codes.items()}


def test_ensemble_teacher_run_resumed_ends_with_the_same_weights(tmp_path):
    from track1.pipeline.train import train
    rd = [*ENSEMBLE, "train.ranking.enabled=true", "train.ranking.threshold=20", "train.epochs=1"]
    full = train(tiny_config(tmp_path / "a", *rd, "train.max_steps=4"), progress=False)
    train(tiny_config(tmp_path / "b", *rd, "train.max_steps=2"), progress=False)
    resumed = train(tiny_config(tmp_path / "b", *rd, "train.max_steps=4"), resume=True, progress=False)
    a = teacher_mod.paddle.load(str(full / "model.pdparams"))
    b = teacher_mod.paddle.load(str(resumed / "model.pdparams"))
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    # Every network scored once, over both runs: the reference sample was read back, not recomputed.
    (cache,) = (tmp_path / "b" / "tiny" / "teacher").glob("*.jsonl")
    keys = [(r["proxy"], r["widths"]) for r in map(json.loads, cache.read_text().splitlines()[1:])]
    assert len(keys) == len(set(keys)) > 2 * 4


def test_meco_opt_teacher_averages_its_ten_seeds_and_caches_their_cost(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "train.ranking.teacher=meco_opt")
    space = SearchSpace.from_config(cfg)
    t = Teacher(cfg, space, CACHE(tmp_path))
    assert capsys.readouterr().err.startswith("warning: meco_opt at 32 px: ")   # the default's 32 px
    w = space.widths(space.smallest())
    assert t(w) == proxies.compute("meco_opt", w, space, None, seed=0, repeats=10)
    assert t.settings["proxies"]["repeats"] == 10 and t.seconds > 0
    (rec,) = map(json.loads, t.path.read_text().splitlines()[1:])
    assert rec["proxy"] == "meco_opt" and rec["seconds"] == pytest.approx(t.seconds, abs=1e-4)
    again = Teacher(cfg, space, CACHE(tmp_path))
    assert again(w) == t(w) and again.computed == 0 and again.cache_seconds == rec["seconds"]


def test_the_cache_key_of_a_teacher_without_meco_is_unchanged(tmp_path):
    # proxies.repeats 0 (each proxy's own seeds) keys a snip teacher as repeats 1 always did, so the
    # caches of runs before per-proxy seeds are still found.
    cfg = tiny_config(tmp_path, "train.ranking.teacher=snip,synflow")
    assert cfg["proxies"]["repeats"] == 0
    settings = teacher_mod.teacher_settings(cfg, parse_teacher("snip,synflow"))
    assert settings["proxies"] == {"batch_size": 64, "resolution": 32, "seed": 0, "repeats": 1, "input": "data"}
    mixed = teacher_mod.teacher_settings(cfg, parse_teacher("snip,meco_opt"))
    assert mixed["proxies"]["repeats"] == {"snip": 1, "meco_opt": 10}
