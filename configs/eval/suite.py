r"""Settings applied to every task of a suite run (`launch.evaluate --suite ...`).

    python -m launch.evaluate --checkpoint WORKDIR --suite geobench --data-root DIR \
        [--mode knn|linear_probe|finetune] [--config.dataset.partition=0.10x_train] \
        [--config.knn.k=10] [--config.tasks="('m-eurosat", "m-so2sat')"]

A field left unset (None) keeps each task's own value (configs/eval/<task>.py); a set field
overrides it in every task that has the field (dataset.partition only touches GeoBench v1
tasks). `tasks` restricts the run to some of the suite's tasks. Bootstrap intervals use
n_bootstrap resamples of the test predictions.
"""

from ml_collections import config_dict

placeholder = config_dict.placeholder


def get_config(arg=None):
    if arg not in (None, ""):
        raise ValueError(f"configs/eval/suite.py takes no arg, got {arg!r}")
    cfg = config_dict.ConfigDict({
        "tasks": placeholder(tuple),
        "run_on_test": True,
        "n_bootstrap": 1000,
        "bootstrap_seed": 42,
        "patch_size": placeholder(int),
        "representation": placeholder(str),
        "embedding_batch_size": placeholder(int),
        "use_months": placeholder(bool),
        "dataset": {"partition": placeholder(str), "norm": placeholder(str),
                    "ignore_nodata": placeholder(bool), "timesteps": placeholder(int)},
        "knn": {"k": placeholder(int), "tau": placeholder(float)},
        "probe": {"recipe": placeholder(str), "cs": placeholder(tuple),
                  "alphas": placeholder(tuple), "max_iter": placeholder(int),
                  "lrs": placeholder(tuple), "epochs": placeholder(int),
                  "batch_size": placeholder(int)},
        "finetune": {"lr": placeholder(float), "epochs": placeholder(int),
                     "batch_size": placeholder(int)},
    })
    cfg.lock()
    return cfg
