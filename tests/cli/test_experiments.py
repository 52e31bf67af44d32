"""Every experiments/ config parses, and the published settings hold the reference values."""
import glob
import os
from pathlib import Path

import pytest
import yaml

from oneshot.commands import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "experiments", "*.yaml"))
                 if not os.path.basename(p).startswith("collapse_"))  # studies of `oneshot study`
STUDIES = sorted(glob.glob(os.path.join(ROOT, "experiments", "collapse_*.yaml")))


def _study_searches():
    from oneshot.commands.study import load_study

    for path in STUDIES:
        study = load_study(Path(path))
        for name, args in study["algorithms"].items():
            yield pytest.param([*map(str, args), *map(str, study["common"])], id=f"{os.path.basename(path)}:{name}")


@pytest.mark.parametrize("argv", list(_study_searches()))
def test_every_search_of_a_study_parses(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", *argv, "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


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
                 "r32-d22222-k3333.3333.3333.3333.3333-e3333.3333.3333.3333.3333" if "ofa" in name else "2,1,0,1,2,0,2,0,2,0,2,3,0,0,0,0,3,2,3,3"
                 if "spos" in name else "ENAS_MICRO" if "enas_micro" in name else
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
    assert model["lr_schedule_interval"] == "epoch"  # xautodl: the cosine reads the integer epoch
    assert config["data"]["init_args"]["normalization"] == "nb201"


NB201_SEARCHES = [name for name in map(os.path.basename, CONFIGS)
                  if not name.startswith(("rank_", "retrain_"))
                  and _load(name)["model"]["init_args"].get("space") == "nb201"]


def test_the_nb201_searches_are_found():
    assert {"rsps_nb201_cifar10.yaml", "nb201_darts_v1_cifar10.yaml", "nb201_darts_v2_cifar10.yaml",
            "gdas_nb201_cifar10.yaml", "rsps_nb201_digits_cpu.yaml"} <= set(NB201_SEARCHES)


@pytest.mark.parametrize("name", NB201_SEARCHES)
def test_nb201_search_anneals_the_cosine_per_epoch(name):
    """xautodl CosineAnnealingLR.get_lr (xautodl/procedures/optimizers.py) reads only the integer
    epoch past warm-up (warmup 0 in every NB201 algos config): the lr is constant within an epoch."""
    model = _load(name)["model"]["init_args"]
    assert model.get("lr_schedule_interval", "epoch") == "epoch"


def test_rsps_cifar10_is_the_benchmark_papers_setting():
    """RANDOM-NAS.sh + RANDOM.config; search_find_best scores each of --select_num 100 uniform cells
    on the next batch of valid_loader, built with test_batch_size 512."""
    config = _load("rsps_nb201_cifar10.yaml")
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert config["trainer"]["max_epochs"] == 250 and model["space"] == "nb201"
    assert model["space_options"]["C"] == 16 and model["space_options"]["N"] == 5
    assert (model["learning_rate"], model["learning_rate_min"], model["momentum"]) == (0.025, 0.001, 0.9)
    assert (model["weight_decay"], model["nesterov"], model["grad_clip"]) == (5e-4, True, 5.0)
    assert (data["batch_size"], data["eval_batch_size"], data["normalization"]) == (64, 512, "nb201")
    assert (model["selection_samples"], model["selection_batches"]) == (100, 1)
    assert model["selection_shared_batches"] is False  # each candidate on the next batch


def test_rsps_digits_selects_on_the_next_batches():
    """The CPU config keeps the reference's next-batch protocol on a small validation half."""
    config = _load("rsps_nb201_digits_cpu.yaml")
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert (model["selection_samples"], model["selection_batches"]) == (100, 1)
    assert model["selection_shared_batches"] is False
    assert data["eval_batch_size"] < 512  # deviates: 719 validation images


def test_imagenet_retrain_comments_quote_the_argparse_defaults():
    """quark0/darts@f276dd3 train_imagenet.py: --epochs 250, --init_channels 48 (the paper's)."""
    with open(os.path.join(ROOT, "experiments", "retrain_darts_imagenet.yaml")) as f:
        text = f.read()
    config = yaml.safe_load(text)
    assert config["trainer"]["max_epochs"] == 250 and config["model"]["network_options"]["C"] == 48
    assert "--epochs 250" in text and "--init_channels 48" in text
    assert "default --epochs is 1000" not in text and "default --init_channels is 50" not in text


def test_spos_imagenet_is_the_released_setting():
    """megvii-model/SinglePathOneShot train.py, search.py and tester.py defaults (reference section 2)."""
    config = _load("spos_imagenet.yaml")
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert config["trainer"]["max_steps"] == 150000 and data["batch_size"] == 1024
    assert (model["learning_rate"], model["momentum"], model["weight_decay"]) == (0.5, 0.9, 4e-5)
    assert (model["label_smoothing"], model["grad_clip"], model["sampler"]) == (0.1, 0.0, "flops_bins")
    assert model["flops_bins"] == [290e6, 360e6, 10e6] and model["bin_tries"] == 500
    evolution = model["selection_options"]
    assert model["selection"] == "evolution" and evolution["constraints"] == ["flops<=330e6"]
    assert (evolution["population"], evolution["generations"], evolution["parents"]) == (50, 20, 10)
    assert (evolution["mutants"], evolution["crossovers"], evolution["mutation_prob"]) == (25, 25, 0.1)
    assert (evolution["bn_mode"], evolution["bn_batches"], evolution["bn_batch_size"]) == ("reset", 200, 128)
    assert evolution["val_images"] == 8000 and round(1281167 * (1 - data["train_portion"])) == 50000
    retrain = _load("retrain_spos_imagenet.yaml")
    assert retrain["trainer"]["max_steps"] == 300000 and retrain["model"]["lr_schedule"] == "linear"
    assert retrain["model"]["decay_vectors"] is False and retrain["model"]["learning_rate"] == 0.5


def test_enas_configs_are_the_released_scripts():
    """melodyguan/enas scripts/cifar10_{micro,macro}_search.sh and xautodl's ENAS.sh / ENAS.config."""
    micro, macro, nb201 = (_load(f"enas_{name}.yaml") for name in ("micro_cifar10", "macro_cifar10", "nb201_cifar10"))
    m = micro["model"]["init_args"]
    assert micro["trainer"]["max_epochs"] == 150 and micro["data"]["init_args"]["batch_size"] == 160
    assert (m["tanh_constant"], m["op_tanh_reduce"], m["controller_lr"]) == (1.10, 2.5, 0.0035)
    assert (m["train_steps"], m["num_aggregate"], m["reward_bn"], m["auxiliary_weight"]) == (30, 10, "train", 0.4)
    assert m["cosine_restarts"] == [10, 2] and m["grad_clip_per_tensor"] is True
    a = macro["model"]["init_args"]
    assert macro["trainer"]["max_epochs"] == 310 and macro["data"]["init_args"]["batch_size"] == 128
    assert (a["tanh_constant"], a["skip_target"], a["skip_weight"], a["controller_lr"]) == (1.5, 0.4, 0.8, 0.001)
    assert (a["train_steps"], a["num_aggregate"], a["reward_bn"]) == (50, 20, "eval")
    n = nb201["model"]["init_args"]
    assert (n["lstm_size"], n["lstm_layers"], n["tanh_constant"], n["temperature"]) == (32, 2, 2.5, 5.0)
    assert (n["controller_betas"], n["controller_eps"], n["cosine_t_max"]) == ([0.0, 0.999], 0.001, 10)
    for name in ("micro", "macro"):  # the paper's preset changes only the controller's values
        paper = _load(f"enas_{name}_cifar10_paper.yaml")["model"]["init_args"]
        assert (paper["tanh_constant"], paper["temperature"], paper["controller_lr"]) == (2.5, 5.0, 3.5e-4)


def test_ofa_imagenet_is_the_released_script():
    """mit-han-lab/once-for-all train_ofa_net.py shared args and the per-phase table."""
    from oneshot.algorithms.ofa import PHASES, REFERENCE_SCHEDULE

    config = _load("ofa_mbv3_imagenet.yaml")
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert model["space_options"]["resolutions"] == [128, 224, 4] and model["space_options"]["dropout"] == 0.1
    assert (model["kd_ratio"], model["label_smoothing"], model["momentum"], model["nesterov"]) == (1.0, 0.1, 0.9, True)
    assert (model["weight_decay"], model["warmup_lr"], model["validation_resolutions"]) == (3e-5, -1.0, [160, 224])
    assert (model["bn_images"], model["bn_batch_size"], data["batch_size"]) == (2000, 200, 64)
    assert round((1 - data["train_portion"]) * 1_281_167) == 10_000  # args.valid_size
    table = {phase: (s["trainer.max_epochs"], s["model.init_args.learning_rate"], s["model.init_args.warmup_epochs"])
             for phase, s in REFERENCE_SCHEDULE.items()}
    assert table["kernel"] == (125, 3e-2, 5) and table["depth1"] == (25, 2.5e-3, 0)
    assert table["depth2"] == table["expand2"] == (125, 7.5e-3, 5) and table["expand1"] == (25, 2.5e-3, 0)
    assert [PHASES[p].subnets_per_step for p in ("kernel", "depth1", "depth2", "expand1", "expand2")] == [1, 2, 2, 4, 4]
    assert [PHASES[p].reorder_band for p in ("expand1", "expand2")] == [0, 1]  # expand_ratio_stage
    options = model["selection_options"]
    assert (options["population"], options["generations"], options["parent_ratio"], options["mutation_ratio"]) == \
        (100, 500, 0.25, 0.5)


@pytest.mark.parametrize("name, model_class, values", [
    ("sdarts_rs_cifar10.yaml", "SDartsSearch", {"perturbation": "random", "epsilon": 0.3, "epsilon_start": 0.03,
                                                "excluded_candidates": ["none"], "unrolled": False}),
    ("sdarts_adv_cifar10.yaml", "SDartsSearch", {"perturbation": "adversarial", "attack_steps": 7,
                                                 "random_start": True, "excluded_candidates": ["none"]}),
    ("darts_minus_cifar10.yaml", "DartsMinusSearch", {"skip_beta": 1.0, "decay": "linear", "decay_max_epoch": 50,
                                                      "unrolled": False}),
    ("fairdarts_cifar10.yaml", "FairDartsSearch", {"zero_one_weight": 10.0, "threshold": 0.85,
                                                   "learning_rate": 0.005, "arch_learning_rate": 3e-3,
                                                   "arch_betas": [0.9, 0.999], "alpha_init_std": 0.0}),
    ("snas_cifar10.yaml", "SnasSearch", {"tau_start": 1.0, "tau_min": 0.03, "anneal_epochs": 150,
                                         "resource_lambda": 1.5e-3, "edge_drop_path": 0.3,
                                         "edge_drop_path_schedule": "constant", "arch_optimizer": "sgd"}),
    ("rdarts_dp_cifar10.yaml", "DartsSearch", {"edge_drop_path": 0.2, "edge_drop_path_schedule": "linear",
                                               "unrolled": True}),
    ("rdarts_l2_cifar10.yaml", "DartsSearch", {"weight_decay": 9e-4, "unrolled": True}),
    ("pdarts_cifar10.yaml", "PDartsSearch", {"stage_layers": [5, 11, 17], "dropout_rates": [0.1, 0.4, 0.7],
                                             "arch_warmup_epochs": 10, "arch_learning_rate": 6e-4,
                                             "learning_rate_min": 0.0, "max_skips": 2}),
    ("drnas_nb201_cifar10.yaml", "DrnasSearch", {"reg_type": "l2", "reg_scale": 1e-3, "arch_learning_rate": 3e-4,
                                                 "learning_rate": 0.025}),
    ("drnas_cifar10.yaml", "DrnasSearch", {"stage": 0, "stage_partial_channels": [6, 4], "keep_candidates": 4,
                                           "arch_warmup_epochs": 10, "cosine_t_max": 50, "learning_rate": 0.1,
                                           "learning_rate_min": 0.0, "arch_learning_rate": 6e-4,
                                           "space_options": {"C": 36, "layers": 20}}),
])
def test_variant_configs_hold_the_published_values(name, model_class, values):
    config = _load(name)
    assert config["model"]["class_path"].endswith(model_class)
    model = config["model"]["init_args"]
    assert {k: model[k] for k in values} == values
