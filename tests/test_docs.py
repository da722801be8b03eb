"""Every command README.md and docs/*.md show (``python train.py|find_lr.py|explain.py ...`` and
``python -m sweeplab.report ...``) composes with Hydra's compose API and passes the checks its entry
point starts with, so a renamed option or group fails here instead of a reader. Composition only:
nothing is trained or loaded.

How a command is read from the text:
- it runs from ``python <entry point>`` to the end of its line or of its inline code span; a line
  that ends in ``\\`` goes on with the next one; a shell comment (``# ...``) ends it;
- placeholders are substituted: ``<more>`` -> 80 (a number of epochs), any other ``<...>`` (a run id,
  a folder, a name) -> ``placeholder``, a shell substitution ``$(...)`` -> ``optimizer.lr=1e-2,9.33e-3``
  (the one the README shows prints find_lr's suggested values), and a bare ``...`` (more of the same)
  is left out;
- ``-m``: every job of the grid is composed (sweep.grid, as the sweep callback checks them);
  ``--help`` and ``--cfg job`` compose the config as given; ``--config-dir /tmp/run/config
  --config-name config`` composes a run's saved config, written here as a run writes it
  (training.saved_config_text), with conf/ on the search path as the entry point has it.
Then a train.py or find_lr.py job gets check_run / check_lr_finder, an explain.py one check_explain.
"""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

import sweeplab  # noqa: F401  (resolvers)
from sweeplab.checks import check_explain, check_lr_finder, check_run
from sweeplab.job import grid
from sweeplab.training import saved_config_text

from support import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENTRY = re.compile(r"python (train\.py|find_lr\.py|explain\.py|-m sweeplab\.report)(?![\w/.])")
CONFIG = {"train.py": "train", "find_lr.py": "find_lr", "explain.py": "explain", "-m sweeplab.report": "report"}
CHECK = {"train": check_run, "find_lr": check_lr_finder, "explain": check_explain}
SAVED_CONFIG_DIR = "/tmp/run/config"  # README's folder of a downloaded run config


def shown_commands() -> dict[tuple[str, str], str]:
    """``{(entry point, what follows it): "file:line" where it is first shown}``."""
    found: dict[tuple[str, str], str] = {}
    for path in DOCS:
        text = path.read_text()
        for match in ENTRY.finditer(text):
            rest, words = text[match.end() :], ""
            while True:  # to the end of the line or the code span, across lines that end in "\"
                stop = re.search(r"[`\n]", rest)
                part = rest[: stop.start()] if stop else rest
                if stop and stop.group() == "\n" and part.rstrip().endswith("\\"):
                    words, rest = words + part.rstrip()[:-1] + " ", rest[stop.end() :]
                    continue
                words += part
                break
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault((match.group(1), " ".join(words.split())), f"{path.relative_to(ROOT)}:{line}")
    return found


COMMANDS = shown_commands()
_composed: set = set()  # (config, overrides) of the jobs composed so far: several commands share jobs


def arguments(words: str) -> list[str]:
    """The command line's arguments, placeholders substituted (see the module's docstring)."""
    words = re.sub(r"\$\([^)]*\)", "optimizer.lr=1e-2,9.33e-3", words)
    words = words.replace("<more>", "80")
    words = re.sub(r"<[^<>]*>", "placeholder", words)
    return [w for w in shlex.split(words, comments=True) if w != "..."]


def jobs(args: list[str]) -> tuple[list[list[str]], dict]:
    """The overrides of each job the command would run, and its Hydra options (--config-dir, ...)."""
    options, overrides, multirun = {}, [], False
    words = iter(args)
    for word in words:
        if word in ("-m", "--multirun"):
            multirun = True
        elif word in ("--help", "-h"):
            options["help"] = True
        elif word in ("--cfg", "-c", "--config-dir", "-cd", "--config-name", "-cn"):
            options[word.lstrip("-")] = next(words)
        elif word.startswith("-"):
            raise AssertionError(f"a Hydra option this test does not know: {word}")
        else:
            overrides.append(word)
    if not multirun:
        return [overrides], options
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):  # glob() lists a group's options
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        return grid(parser.parse_overrides(overrides)), options


def test_the_docs_show_commands_of_every_entry_point():
    """The extraction finds what the README shows: a guard against this test checking nothing."""
    entries = {entry for entry, _ in COMMANDS}
    assert entries == set(CONFIG) and len(COMMANDS) >= 40
    assert ("train.py", "-m optimizer.lr=1e-2,9.33e-3 # a sweep: one job, one MLflow run per value") in COMMANDS
    long = next(words for (entry, words) in COMMANDS if words.startswith("data=image_folder data.path=<folder>"))
    assert arguments(long)[-1] == "target_acc=0.98"  # three lines joined


@pytest.mark.parametrize("entry,words", list(COMMANDS), ids=list(COMMANDS.values()))
def test_a_command_shown_in_the_docs_composes(entry, words, tmp_path):
    config_name, (job_overrides, options) = CONFIG[entry], jobs(arguments(words))
    config_dir = ROOT / "conf"
    if "config-dir" in options:
        assert options == {"config-dir": SAVED_CONFIG_DIR, "config-name": "config"}, options
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            composed = compose("train")
        config_dir, config_name = tmp_path / "run" / "config", "config"
        config_dir.mkdir(parents=True)
        (config_dir / "config.yaml").write_text(saved_config_text(composed, origin_run="0123456789abcdef"))
        job_overrides = [[*overrides, f"hydra.searchpath=[file://{ROOT / 'conf'}]"] for overrides in job_overrides]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        for overrides in job_overrides:
            if "config-dir" not in options and (config_name, tuple(overrides)) in _composed:
                continue
            cfg = compose(config_name, overrides=overrides)
            if config_name in CHECK or "config-dir" in options:
                CHECK.get(config_name, check_run)(cfg)
            _composed.add((config_name, tuple(overrides)))
