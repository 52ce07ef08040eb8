"""The Python API (interpbench.api): the README's two examples run and give what the lower-level path
gives, keyword options compose the command line's config, and a failing sweep raises one line."""
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import interpbench
from interpbench.api import (
    Scores,
    SweepError,
    compose_sweep_config,
    explain,
    hydra_value,
    options_to_overrides,
    run,
    score,
)
from interpbench.explainers import EXPLAINERS
from interpbench.metrics import METRICS
from interpbench.metrics.base import Metric
from interpbench.registry import UnknownNameError
from interpbench.zoo import create_model

ROOT = Path(__file__).resolve().parents[1]


def readme_examples() -> List[str]:
    """The ```python blocks of the README's "Python API" section (up to the next heading), in order."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert "### Python API" in lines, "README.md has no '### Python API' section"
    blocks: List[str] = []
    code: Optional[List[str]] = None  # the lines of the python block being read
    fenced = False
    for line in lines[lines.index("### Python API") + 1:]:
        if line.startswith("```"):
            if code is not None:
                blocks.append("\n".join(code) + "\n")
            code = [] if not fenced and line.strip() == "```python" else None
            fenced = not fenced
        elif code is not None:
            code.append(line)
        elif not fenced and re.match(r"#{1,3} ", line):
            break
    return blocks


def run_example(index: int) -> Dict[str, Any]:
    namespace: Dict[str, Any] = {"__name__": "__readme__"}
    code = compile(readme_examples()[index], f"README.md (Python API, example {index + 1})", "exec")
    exec(code, namespace)  # noqa: S102 (the README's own example)
    return namespace


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """``tmp_path`` as the work directory, the temporary folder and the current folder."""
    monkeypatch.setenv("INTERPBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_has_both_examples():
    examples = readme_examples()
    assert len(examples) == 2
    assert "interpbench.score(" in examples[0] and "interpbench.run(" in examples[1]
    assert all(name in interpbench.__all__ for name in ("score", "explain", "Scores", "run", "SweepError"))
    assert interpbench.score is score and interpbench.run is run


def test_the_readme_score_equals_the_explainer_and_metric_called_directly(home, capsys):
    namespace = run_example(0)
    result, model, data = namespace["result"], namespace["model"], namespace["data"]
    assert isinstance(result, Scores)
    assert result.scores.shape == (16,) and math.isfinite(result.mean)
    assert capsys.readouterr().out.startswith(f"pixel_removal {result.mean} torch.Size([16]) torch.Size([11])")
    assert model.training  # given back in the mode it came in

    model.eval()
    x = data.test.images.float() / 255
    with torch.no_grad():
        target = model(x).argmax(1)
    saliency = EXPLAINERS.create("gradcam")(model, x, target)
    expected = METRICS.create("pixel_removal", steps=10)(model, x, data.test.labels, saliency, target=target)
    assert torch.equal(result.target, target)
    assert torch.equal(result.saliency, saliency)
    assert torch.equal(result.scores, expected["score"])
    assert result.mean == float(expected["score"].nanmean())
    assert torch.equal(result.curve, expected["curve"].nanmean(0))
    assert result.curve_x == METRICS.create("pixel_removal").curve_x and len(result.curve_x) == 11
    assert (result.explainer, result.metric, result.higher_is_better) == ("gradcam", "pixel_removal", True)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("fa_cnn", num_classes=10, depth=3, channels=10)


def test_score_takes_uint8_or_float_images_and_passes_the_arguments_through(home):
    model = tiny_model()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(6) % 10
    from_uint8 = score(model, images, labels, "random", "pixel_removal", explainer_args={"seed": 3}, steps=4)
    from_float = score(model, images.float() / 255, labels.tolist(), "random", "pixel_removal",
                       explainer_args={"seed": 3}, steps=4)
    assert torch.equal(from_uint8.scores, from_float.scores) and len(from_uint8.curve) == 5
    assert (from_uint8.explainer, from_uint8.metric) == ("random(seed=3)", "pixel_removal(steps=4)")
    maps = explain(model, images, "random", seed=3)
    assert torch.equal(maps, from_uint8.saliency)
    given = score(model, images, labels, None, "pixel_removal", saliency=maps, steps=4)
    assert torch.equal(given.scores, from_uint8.scores) and given.explainer == "given"
    by_label = score(model, images, labels, "random", "average_drop", target="label")
    assert torch.equal(by_label.target, labels) and by_label.curve is None and by_label.curve_x is None


@pytest.mark.parametrize("call, error, message", [
    (lambda m, x, y: score(m, x, y, "gradcm"), UnknownNameError,
     "unknown explainer 'gradcm'. Did you mean gradcam"),
    (lambda m, x, y: score(m, x, y, "gradcam", "pixel_remove"), UnknownNameError,
     "unknown metric 'pixel_remove'. Did you mean pixel_removal?"),
    (lambda m, x, y: score(m, x, y, "gradcam", stepz=3), TypeError,
     "metric 'pixel_removal' takes no argument 'stepz'; valid arguments: order, steps, baseline"),
    (lambda m, x, y: score(m, x * 2.0, y), ValueError, "float images must lie in [0, 1]; got values from"),
    (lambda m, x, y: score(m, x, y[:3]), ValueError, "labels has 3 entries for 4 images"),
    (lambda m, x, y: score(m, x, y, metric="pointing_game"), ValueError,
     "metric 'pointing_game' needs ground-truth masks: pass masks=[N, H, W]"),
    (lambda m, x, y: score(m, x, y, target="true"), ValueError,
     "unknown target 'true'; valid targets: predicted, label or class indices"),
])
def test_score_errors_are_one_line(home, call, error, message):
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    with pytest.raises(error) as raised:
        call(tiny_model(), x, y)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_keyword_options_compose_the_command_lines_config(home):
    options = {"zoo": ["fa_cnn", "resnet18"], "metric": "pixel_removal", "store": "/tmp/x",
               "data": {"name": "synthetic", "num_train": 300}, "profile": {"eval": {"num_images": 16}},
               "model_args": {"fa_cnn": {"depth": 3, "channels": 10}}, "progress": False, "seeds": [0, 1],
               "launcher": "debug", "device": None}
    overrides = options_to_overrides(options)
    assert overrides == [
        "data=synthetic", "launcher=debug", "zoo=['fa_cnn','resnet18']", "metric='pixel_removal'", "store='/tmp/x'",
        "data.num_train=300", "profile.eval.num_images=16", "+model_args.fa_cnn.depth=3",
        "+model_args.fa_cnn.channels=10", "progress=false", "seeds=[0,1]", "device=null"]
    typed = ["zoo=[fa_cnn,resnet18]", "metric=pixel_removal", "store=/tmp/x", "data=synthetic", "data.num_train=300",
             "profile.eval.num_images=16", "+model_args.fa_cnn={depth: 3, channels: 10}", "progress=false",
             "seeds=[0,1]", "launcher=debug", "device=null"]
    assert OmegaConf.to_container(compose_sweep_config(overrides)) == \
        OmegaConf.to_container(compose_sweep_config(typed))


@pytest.mark.parametrize("value", ["a,b", "it's", "C:\\dir\\", "x ${y} = z", 1e-05, -2, True, None,
                                   [1, "b", [2.5]], {"k": "v", "n": 1}])
def test_hydra_values_parse_back_to_the_value(value):
    parsed = OverridesParser.create().parse_override(f"key={hydra_value(value)}").value()
    if isinstance(value, str) and "${" in value:  # kept a literal: the config resolves '\${' to '${'
        assert parsed == value.replace("${", "\\${")
    else:
        assert parsed == value


@pytest.mark.parametrize("arguments, options, message", [
    ((), {"zoo": ["fa_cnnn"]}, "zoo=fa_cnnn: unknown model 'fa_cnnn'. Did you mean fa_cnn"),
    ((), {"data": "cifar11"}, "data=cifar11: unknown data; valid choices: "),
    (("metrics.pixel_removal.stepz=3",), {}, "unknown key metrics.pixel_removal.stepz; valid keys: baseline, order"),
    ((), {"metrics": {"pixel_removal": {"stepz": 3}}},
     "unknown key metrics.pixel_removal.stepz; valid keys: baseline, order"),
    ((), {"profile": {"eval": {"num_images": -5}}}, "profile.eval.num_images must be >= 1, got -5"),
    (("zoo=[fa_cnn",), {}, "zoo=[fa_cnn: no viable alternative at input '[fa_cnn'"),
])
def test_a_bad_sweep_raises_one_line_with_the_exit_status_and_writes_nothing(home, arguments, options, message):
    with pytest.raises(SweepError) as raised:
        run(*arguments, store=str(home / "store"), results_dir=str(home / "results"), **options)
    text = str(raised.value)
    assert text.startswith(f"sweep exited with status 2: {message}") and "\n" not in text
    assert raised.value.status == 2
    assert not (home / "store").exists() and not (home / "results").exists()


@pytest.mark.slow
def test_the_readme_sweep_returns_the_leaderboard_of_its_stored_cells(home, capsys, monkeypatch):
    namespace = run_example(1)
    board, folder = namespace["board"], Path(namespace["folder"])
    assert folder.parent == home
    assert list(zip(board.model, board.explainer)) == [
        ("fa_cnn", "gradcam"), ("fa_cnn", "random"), ("vanilla_cnn", "gradcam"), ("vanilla_cnn", "random")]
    written = pd.read_csv(folder / "results" / "synthetic" / "leaderboard.csv")
    assert board.columns.tolist() == written.columns.tolist() == [
        "model", "explainer", "seeds", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "pixel_removal",
        "pixel_removal_ci_low", "pixel_removal_ci_high", "pixel_removal_rank", "pixel_removal_sig_rank",
        "pixel_removal_tied_best", "pixel_removal_p_vs_best", "mean_rank", "mean_sig_rank", "interval"]
    pd.testing.assert_frame_equal(board, written, check_dtype=False, rtol=1e-12)
    cells = {(c["model"], c["explainer"]): c for c in
             (json.loads(p.read_text()) for p in (folder / "store" / "cells").glob("*.json"))}
    assert len(cells) == 4
    for row in board.itertuples():
        cell = cells[(row.model, row.explainer)]
        assert row.pixel_removal == cell["score"] and row.accuracy == cell["test_accuracy"]
        assert cell["num_images"] == 20 and len(cell["per_image"]) == 20
        assert cell["cell"]["train"]["data"]["num_train"] == 300
        assert cell["cell"]["train"]["model_args"] == {"depth": 3, "channels": 10}
    printed = capsys.readouterr().out.strip().splitlines()  # the command's leaderboard's top, then the report
    assert any(line.startswith("leaderboard synthetic: top 4 of 4 rows") for line in printed)
    assert f"report: {folder / 'results' / 'synthetic' / 'report.html'}" in printed

    # A failing cell: the others are kept (nothing is trained or computed again), the error names status 1.
    class AlwaysFails(Metric):
        name = "always_fails"
        higher_is_better = True

        def compute(self, batch):
            raise RuntimeError("boom: this metric always fails")

    monkeypatch.setitem(METRICS._builders, "always_fails", AlwaysFails)
    monkeypatch.setitem(METRICS._info, "always_fails", {})  # its config section comes from the registry
    with pytest.raises(SweepError) as raised:
        run(zoo="fa_cnn", explainer="random", metric=["pixel_removal", "always_fails"],
            data={"num_train": 300, "num_test": 100}, profile={"eval": {"num_images": 20}},
            model_args={"fa_cnn": {"depth": 3, "channels": 10}},
            store=f"{folder}/store", results_dir=f"{folder}/results", launcher="debug", progress=False)
    assert str(raised.value) == ("sweep exited with status 1: 1 of 2 cells failed or are missing; "
                                 "rerun the same command to retry them")
    assert raised.value.status == 1
    out = capsys.readouterr()
    assert "0 to train" in out.out and "1 to compute" in out.out and "boom: this metric always fails" in out.err
