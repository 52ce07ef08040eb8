from pathlib import Path

import pytest

from interpbench.data import DATASETS
from interpbench.explainers import EXPLAINERS
from interpbench.metrics import METRICS
from interpbench.registry import DuplicateNameError, Registry, UnknownNameError
from interpbench.zoo import MODELS


def make_registry():
    things = Registry("thing")

    @things.register("alpha", colour="red")
    def alpha(size: int = 1):
        return ("alpha", size)

    @things.register()
    def beta():
        return "beta"

    return things


def test_register_create_list_and_info():
    things = make_registry()
    assert things.list() == ["alpha", "beta"]
    assert things.list("a*") == ["alpha"]
    assert things.create("alpha", size=3) == ("alpha", 3)
    assert things.create("beta") == "beta"
    assert things.info("alpha") == {"colour": "red"}
    assert things.defaults("alpha") == {"size": 1}
    assert "alpha" in things and "gamma" not in things and len(things) == 2


def test_duplicate_name_fails_at_once():
    things = make_registry()
    with pytest.raises(DuplicateNameError, match="'alpha' is already registered"):
        things.register("alpha")(lambda: None)


def test_unknown_name_lists_close_matches_and_choices_on_one_line():
    things = make_registry()
    with pytest.raises(UnknownNameError) as error:
        things.create("alpah")
    message = str(error.value)
    assert "\n" not in message
    assert message == "unknown thing 'alpah'. Did you mean alpha? Valid things: alpha, beta"


def test_unknown_argument_is_a_one_line_error():
    things = make_registry()
    with pytest.raises(TypeError, match=r"thing 'alpha' takes no argument 'colour'; valid arguments: size"):
        things.create("alpha", colour="blue")


@pytest.mark.parametrize("registry, expected", [
    (MODELS, {"fa_cnn", "fa_cnn_linear", "vanilla_cnn", "resnet18", "resnet50", "bcos_cnn", "bcos_resnet18",
              "bcosified_resnet18", "coda_net", "ca_stream_resnet18", "kmeans_resnet18_b4",
              "kmeans_resnet18_b234"}),
    (EXPLAINERS, {"native", "gradcam", "random"}),
    (METRICS, {"pixel_removal"}),
    (DATASETS, {"synthetic", "cifar10", "cifar100", "imagefolder"}),
])
def test_registries_hold_the_families(registry, expected):
    assert expected <= set(registry.list())


@pytest.mark.parametrize("name", MODELS.list())
def test_every_model_declares_family_recipe_and_a_registered_parent(name):
    import yaml

    info = MODELS.info(name)
    conf = Path(__file__).resolve().parents[1] / "interpbench" / "conf" / "profile"
    for profile in ("cpu.yaml", "paper.yaml"):
        assert info["recipe"] in yaml.safe_load((conf / profile).read_text())["recipes"]
    assert info["family"]
    if "parent" in info:  # a derived model starts from a model trained from scratch
        assert "parent" not in MODELS.info(info["parent"])
