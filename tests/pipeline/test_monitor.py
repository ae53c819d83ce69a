import json

import numpy as np
import paddle
import pytest

from track1.pipeline import checkpoint
from track1.pipeline.config import config_hash, run_dir
from track1.ranking.metrics import load_scores, rank_metrics
from track1.ranking.submission import SubmissionError, demo_arch_list
from track1.pipeline.train import train
from track1.space import SearchSpace

from conftest import tiny_config

MONITOR = ["monitor.every_epochs=1", "monitor.calib_images=32", "monitor.val_images=64"]


def _state(path):
    """Every array a checkpoint holds: weights, BN statistics and optimizer accumulators."""
    out = {f"model/{k}": np.asarray(v) for k, v in paddle.load(str(path / "model.pdparams")).items()}
    for k, v in checkpoint.load_state(path)["optimizer"].items():
        if hasattr(v, "shape"):
            out[f"opt/{k}"] = np.asarray(v)
    return out


def _truth_file(tmp_path, cfg, n=6):
    """A stand-in truth file: made-up accuracies for n demo codes (only its shape matters here)."""
    codes = demo_arch_list(n, 7, SearchSpace.from_config(cfg))
    accs = np.linspace(0.5, 0.9, n)[::-1]
    path = tmp_path / "truth.json"
    path.write_text(json.dumps({k: {"acc": float(a), "arch": c}
                                for (k, c), a in zip(codes.items(), accs)}))
    return path


# per_code scoring re-calibrates the supernet's own BN statistics (tree mode keeps its own), which
# a checkpoint taken mid-epoch 2 would show; the end of the run shows everything else.
@pytest.mark.parametrize("stop, mode", [(12, "per_code"), (0, "tree")])
def test_rank_check_with_truth_changes_no_weight(tmp_path, stop, mode):
    run = [f"train.max_steps={stop}", f"score.mode={mode}"]
    plain = train(tiny_config(tmp_path / "plain", *run), progress=False)
    truth = _truth_file(tmp_path, tiny_config(tmp_path))
    cfg = tiny_config(tmp_path / "mon", *MONITOR, f"monitor.truth={truth}", *run)
    assert config_hash(cfg) == config_hash(tiny_config(tmp_path / "plain", *run))
    monitored = train(cfg, progress=False)
    assert (run_dir(cfg) / "monitor" / "truth@epoch_001.json").exists()
    a, b = _state(plain), _state(monitored)
    assert a.keys() == b.keys() and any(k.startswith("opt/") for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_rank_check_logs_the_metrics_of_the_scores_it_writes(tmp_path, capsys):
    truth = _truth_file(tmp_path, tiny_config(tmp_path))
    cfg = tiny_config(tmp_path / "mon", *MONITOR, f"monitor.truth={truth}")
    train(cfg, progress=False)

    # One check per epoch, over the truth's codes; the logged tau is the one of the written scores.
    files = sorted((run_dir(cfg) / "monitor").glob("truth@epoch_*.json"))
    assert [f.name for f in files] == ["truth@epoch_001.json", "truth@epoch_002.json"]
    pred = load_scores(files[-1])
    assert sorted(pred) == sorted(load_scores(truth))
    expected = rank_metrics(pred, load_scores(truth), ks=(5,))
    out = capsys.readouterr()
    line = next(l for l in (out.out + out.err).splitlines() if l.startswith("epoch 2: rank check"))
    assert "monitoring only: not a loss, no gradient" in line
    assert f"kendall {expected['kendall']:.4f}" in line
    assert "kendall_prev" in line  # the second check compares with the first


def test_rank_check_without_truth_scores_demo_codes_and_resumes_the_comparison(tmp_path, capsys):
    cfg = tiny_config(tmp_path, *MONITOR, "monitor.num_codes=4", "train.max_steps=12")
    train(cfg, progress=False)  # epoch 1 (8 steps) checked, stopped mid-epoch 2
    first = run_dir(cfg) / "monitor" / "demo4@epoch_001.json"
    assert len(load_scores(first)) == 4
    last = train(tiny_config(tmp_path, *MONITOR, "monitor.num_codes=4"), resume=True, progress=False)
    assert last.name == "epoch_002"
    assert (run_dir(cfg) / "monitor" / "demo4@epoch_002.json").exists()
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("epoch 2: rank check on 4 codes"))
    assert "kendall_prev" in line and " kendall " not in line  # compared with epoch 1's file; no truth


def test_bad_truth_file_stops_before_training(tmp_path):
    bad = tmp_path / "truth.json"
    bad.write_text(json.dumps({"arch1": {"acc": 0.5, "arch": "not-a-code"}}))
    cfg = tiny_config(tmp_path, *MONITOR, f"monitor.truth={bad}")
    with pytest.raises(SubmissionError, match="truth.json"):
        train(cfg, progress=False)
    assert checkpoint.latest(run_dir(cfg)) is None


def test_a_list_outside_the_official_sub_space_stops_before_training(tmp_path):
    from track1.space import Arch, parse
    from track1.ranking.submission import write_arch_list
    codes = demo_arch_list(3, 7)
    a = parse(codes["arch2"])
    codes["arch2"] = Arch(1, a.depths, 1 if a.stem_ratio != 1 else 2, a.blocks).code  # stem untied
    listed = tmp_path / "mixed.json"
    write_arch_list(listed, codes)
    cfg = tiny_config(tmp_path, *MONITOR, f"monitor.arch_list={listed}")
    with pytest.raises(SubmissionError, match="mixed.json: 1 code outside the official sub-space.*arch2"):
        train(cfg, progress=False)
    assert checkpoint.latest(run_dir(cfg)) is None
