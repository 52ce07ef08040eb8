"""The command line: ``interpbench sweep|train|report|status ...`` and the scripts in ``runners/``.

``sweep``, ``train`` and ``status`` take hydra overrides (``zoo=all metric=pixel_removal ...``),
composed from the config in ``interpbench/conf`` with the registries' names and default arguments;
``report`` takes a path and options (``interpbench report --help``).
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from omegaconf import DictConfig

from interpbench.config import ConfigError, check_key_path, set_key_path
from interpbench.data import DATASETS
from interpbench.explainers import EXPLAINERS
from interpbench.metrics import METRICS
from interpbench.report import build as report_build
from interpbench.storage import plain
from interpbench.sweep import run_sweep, sweep_status, train_only, verify_status

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
COMMANDS = ("sweep", "train", "report", "status")


def register_configs() -> None:
    """Put the registries' names and default arguments into hydra's config store.

    ``data=<name>`` selects a dataset (its arguments under ``data.*``); ``explainers.<name>.*``
    and ``metrics.<name>.*`` hold each method's arguments, so a new file in ``data/``,
    ``explainers/`` or ``metrics/`` needs no YAML.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name in DATASETS.list():
        store.store(group="data", name=name, node={"name": name, **plain(DATASETS.defaults(name))})
    store.store(name="registry_defaults", node={
        "explainers": {name: plain(EXPLAINERS.defaults(name)) for name in EXPLAINERS.list()},
        "metrics": {name: plain(METRICS.defaults(name)) for name in METRICS.list()},
    })


def group_options() -> Dict[str, List[str]]:
    """The options of each config group: datasets from the registry, the rest from YAML files."""
    options = {"data": DATASETS.list()}
    for group in ("profile", "launcher"):
        options[group] = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
    return options


def group_override_problem(arguments: Sequence[str]) -> Optional[str]:
    """The one-line problem with a ``data=``, ``profile=`` or ``launcher=`` override that names an
    unknown option, or ``None``.

    A multirun's comma-separated choices (``-m data=cifar10,cifar100``) are checked one by one.
    """
    options = group_options()
    for argument in arguments:
        key, separator, value = argument.partition("=")
        group = key.lstrip("+~")
        if not separator or group not in options:
            continue
        for choice in value.split(",") if "," in value else [value]:
            if choice not in options[group]:
                return f"{group}={choice}: unknown {group}; valid choices: {', '.join(options[group])}"
    return None


def check_group_overrides(arguments: Sequence[str]) -> None:
    """Reject ``data=``, ``profile=`` or ``launcher=`` with an unknown option in one line (exit 2)."""
    problem = group_override_problem(arguments)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def override_key_problem(arguments: Sequence[str]) -> Optional[str]:
    """The one-line problem with the keys that hydra overrides in ``arguments``, or ``None``.

    Hydra's config is in struct mode: overriding a key it does not have
    (``metrics.pixel_removal.stepz=3``) stops the composition with a multi-line error. Here each
    override's key is looked up in the config composed with the same group choices (every
    combination of a multirun's ``data=a,b``) first: ``unknown key metrics.pixel_removal.stepz;
    valid keys: baseline, order, steps``. Keys added with ``+`` are free here (``+model_args.<model>``)
    and checked with the rest of the config when the sweep is planned; ``hydra.*`` and anything
    hydra's own parser rejects are left to hydra. Needs :func:`register_configs` first.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    def refuse(message: str) -> None:  # argparse would print the usage and exit; hydra will
        raise ValueError(message)

    parser = get_args_parser()
    parser.error = refuse  # type: ignore[method-assign]
    try:
        parsed = parser.parse_args(list(arguments))
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
    except (ValueError, HydraException):  # hydra says what is wrong with the command line
        return None
    if (parsed.config_name or parsed.config_path or parsed.config_dir or parsed.help or parsed.hydra_help
            or parsed.info or parsed.shell_completion or GlobalHydra.instance().is_initialized()):
        return None
    groups = group_options()
    choices: Dict[str, List[str]] = {}
    keys = []
    for override in overrides:
        key = override.key_or_group
        if override.package is not None or key == "hydra" or key.startswith(("hydra.", "hydra/")) or "/" in key:
            continue
        if key in groups:
            if not (override.is_add() or override.is_force_add() or override.is_delete()):
                choices[key] = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                                else [str(override.value())])
            continue
        keys.append(override)
    if not keys:
        return None
    for combination in itertools.product(*choices.values()):
        try:
            with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
                base = compose("config", overrides=[f"{g}={c}" for g, c in zip(choices, combination)])
            values = OmegaConf.to_container(base, resolve=False)
        except (ValueError, HydraException, OmegaConfBaseException):  # hydra reports its own composition errors
            return None
        for override in keys:
            key, value = override.key_or_group, None if override.is_sweep_override() else override.value()
            try:
                if not override.is_force_add():  # ++ sets a key whether or not it is there
                    check_key_path(values, key, adding=override.is_add())
            except ConfigError as error:
                return str(error)
            set_key_path(values, key, value, delete=override.is_delete())
    return None


def hydra_entry(task: Callable[[DictConfig], int], arguments: Optional[Sequence[str]] = None,
                program: Optional[str] = None) -> None:
    """Run ``task`` on the config hydra composes from ``arguments`` (default: the command line);
    exit with its status. A bad group option or an unknown key is one line on stderr (exit 2)
    before hydra composes; the task checks the values (:func:`interpbench.config.validate`)."""
    import hydra

    if arguments is not None:
        sys.argv = [program or sys.argv[0], *arguments]
    check_group_overrides(sys.argv[1:])
    register_configs()
    problem = override_key_problem(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
    def _main(cfg: DictConfig) -> None:
        status = task(cfg)
        if status:
            sys.exit(status)

    _main()


def sweep_main(arguments: Optional[Sequence[str]] = None) -> None:
    """``interpbench sweep <overrides>`` runs the sweep; with ``--status`` it reports on it; ``--plan``
    prints the preflight table (each job's estimated time and memory) and stops; ``--force`` runs jobs
    the preflight would refuse."""
    arguments = list(sys.argv[1:] if arguments is None else arguments)
    for flag in ("--plan", "--force"):
        if flag in arguments:
            arguments = [a for a in arguments if a != flag] + [f"preflight={flag[2:]}"]
    if "--status" in arguments:
        arguments.remove("--status")
        hydra_entry(sweep_status, arguments)
    else:
        hydra_entry(run_sweep, arguments)


def train_main(arguments: Optional[Sequence[str]] = None) -> None:
    """``interpbench train zoo=fa_cnn [data=... profile=... seeds=[0,1]]``: train only (the sweep's
    config and arguments)."""
    hydra_entry(train_only, list(sys.argv[1:] if arguments is None else arguments))


def status_main(arguments: Optional[Sequence[str]] = None) -> None:
    """``interpbench status <the sweep's overrides>``: each cell done, running, failed or missing;
    ``status --verify [store=PATH]``: check the whole store, quarantine what is corrupt."""
    arguments = [a for a in (sys.argv[1:] if arguments is None else arguments) if a != "--status"]
    task = verify_status if "--verify" in arguments else sweep_status
    hydra_entry(task, [a for a in arguments if a != "--verify"])


def report_main(arguments: Optional[Sequence[str]] = None) -> None:
    sys.exit(report_build.main(arguments))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``interpbench <command> ...``: one of sweep, train, report, status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: interpbench {{{','.join(COMMANDS)}}} [arguments]\n"
              "  sweep   <overrides>   train what is missing, compute the missing cells, write the leaderboard\n"
              "  train   <overrides>   train (or find) the sweep's models only\n"
              "  report  <path>        rebuild reports from stored cell results (report --help)\n"
              "  status  <overrides>   each cell of the sweep: done, running, failed or missing\n"
              "  status --verify [store=PATH]  check every stored artifact, quarantine corrupt ones")
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    program = f"interpbench {command}"
    sys.argv = [program, *rest]
    {"sweep": sweep_main, "train": train_main, "report": report_main, "status": status_main}[command](rest)
