"""Every experiments/ config parses, and the published settings hold the reference values."""
import glob
import os
from pathlib import Path

import pytest
import yaml

from oneshot.commands import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_parses_with_every_key_known(path, capsys):
    name = os.path.basename(path)
    if name.startswith("rank_"):  # a study: its search and retrain configs, with its arguments
        from oneshot.commands.rank_study import _resolve, load_study

        study = load_study(Path(path))
        argv = ["search", "--config", _resolve(study["search"]["config"], Path(path)),
                *map(str, study["search"].get("args", [])), "--print_config"]
        assert os.path.isfile(_resolve(study["ground_truth"]["config"], Path(path)))
    else:
        argv = ["search", "--config", path, "--print_config"]
    if name.startswith("retrain_"):  # retraining needs an architecture of the config's space
        argv[0] = "retrain"
        argv += ["--arch", "DARTS_V2" if "darts" in name else
                 "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


def _load(name):
    with open(os.path.join(ROOT, "experiments", name)) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("name, unrolled", [("darts_v1_cifar10.yaml", False), ("darts_v2_cifar10.yaml", True)])
def test_darts_cifar10_search_is_the_published_setting(name, unrolled):
    """quark0/darts train_search.py defaults (reference section (a))."""
    config = _load(name)
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert config["trainer"]["max_epochs"] == 50 and config["seed_everything"] == 2
    assert model["space"] == "darts" and model["unrolled"] is unrolled and model["arch_step_first"] is True
    assert model["space_options"] == {"C": 16, "layers": 8, "steps": 4, "multiplier": 4, "stem_multiplier": 3}
    assert (model["learning_rate"], model["learning_rate_min"], model["momentum"]) == (0.025, 0.001, 0.9)
    assert (model["weight_decay"], model["grad_clip"], model["nesterov"]) == (3e-4, 5.0, False)
    assert (model["arch_learning_rate"], model["arch_betas"], model["arch_weight_decay"]) == (3e-4, [0.5, 0.999], 1e-3)
    assert (data["batch_size"], data["train_portion"]) == (64, 0.5)
    assert config["data"]["class_path"].endswith("CIFAR10DataModule")


@pytest.mark.parametrize("name, unrolled", [("nb201_darts_v1_cifar10.yaml", False),
                                            ("nb201_darts_v2_cifar10.yaml", True)])
def test_nb201_darts_is_the_benchmark_papers_setting(name, unrolled):
    """AutoDL-Projects DARTS.config and DARTS-V{1,2}.sh (reference section (e))."""
    config = _load(name)
    model = config["model"]["init_args"]
    assert config["trainer"]["max_epochs"] == 50 and config["data"]["init_args"]["batch_size"] == 64
    assert model["space"] == "nb201" and model["space_options"]["C"] == 16 and model["space_options"]["N"] == 5
    assert model["unrolled"] is unrolled and model["arch_step_first"] is unrolled  # V1: weights first
    assert (model["weight_decay"], model["nesterov"], model["learning_rate_min"]) == (5e-4, True, 0.001)
    assert model["lr_schedule_interval"] == "step"  # xautodl anneals the cosine every step
    assert config["data"]["init_args"]["normalization"] == "nb201"
