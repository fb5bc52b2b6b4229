"""Config loading (typed dataclasses, YAML, overrides) and the CLI command table."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from gensys import cli
from gensys.config import ConfigError, config_help, dump_yaml, load_config, to_dict


@dataclass
class Opt:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class Cfg:
    name: str = "tiny"
    layers: int = 2
    use_bias: bool = True
    langs: list[str] = field(default_factory=lambda: ["en", "de"])
    opt: Opt = field(default_factory=Opt)
    ckpt: str | None = None


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "layers: 4\nopt:\n  lr: 0.01\n")
    cfg = load_config(Cfg, p, ["opt.schedule=constant", "langs=[en, fr]", "ckpt=runs/x", "opt.lr=3"])
    assert load_config(Cfg, None, ["opt.lr=7e-4"]).opt.lr == 7e-4  # YAML 1.1 reads 7e-4 as a string
    assert cfg.layers == 4 and cfg.opt.lr == 3.0 and isinstance(cfg.opt.lr, float)
    assert cfg.opt.schedule == "constant" and cfg.langs == ["en", "fr"] and cfg.ckpt == "runs/x"
    assert cfg.opt.betas == (0.9, 0.95)
    assert load_config(Cfg) == Cfg()
    # round trip through YAML text
    again = load_config(Cfg, write(tmp_path, dump_yaml(cfg)))
    assert again == cfg and to_dict(again)["opt"]["schedule"] == "constant"


@pytest.mark.parametrize(
    "text, overrides, needle",
    [
        ("layrs: 3\n", [], "unknown key 'layrs' (did you mean 'layers'?)"),
        ("opt:\n  lrr: 0.1\n", [], "unknown key 'opt.lrr'"),
        ("", ["opt.nope=1"], "unknown key 'opt.nope'"),
        ("layers: two\n", [], "'layers' expects an integer"),
        ("use_bias: 3\n", [], "'use_bias' expects true/false"),
        ("opt:\n  schedule: linear\n", [], "'opt.schedule' must be one of"),
        ("opt: 3\n", [], "'opt' is a section"),
        ("langs: en\n", [], "'langs' expects a list"),
        ("- a\n- b\n", [], "expected a mapping"),
        ("a: [\n", [], "not valid YAML"),
        ("", ["layers"], "must look like key.sub=value"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, write(tmp_path, text), overrides)
    assert needle in str(e.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(Cfg, tmp_path / "nope.yaml")


def test_config_help_lists_leaf_keys_with_defaults():
    lines = config_help(Cfg)
    assert "opt.lr: float = 0.001" in lines and any(line.startswith("langs:") for line in lines)


def test_cli_help_lists_systems_and_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in list(cli.SYSTEMS) + list(cli.COMMANDS):
        assert name in out
    assert cli.main(["translate", "--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("prepare", "train", "eval", "predict"):
        assert verb in out


def test_cli_unknown_and_unbuilt_commands_exit_2(capsys):
    assert cli.main(["nosuch"]) == 2
    assert "unknown command 'nosuch'" in capsys.readouterr().err
    assert cli.main(["translate", "fly"]) == 2
    assert "unknown verb 'fly'" in capsys.readouterr().err
    unbuilt = [
        (f"{s} {v}", c) for s, verbs in cli.SYSTEMS.items() for v, c in verbs.items() if c.target is None
    ]
    unbuilt += [(n, c) for n, c in cli.COMMANDS.items() if c.target is None]
    for name, _ in unbuilt:
        assert cli.main(name.split()) == 2
        err = capsys.readouterr().err.strip()
        assert "not built yet" in err and len(err.splitlines()) == 1


def test_every_built_command_imports():
    """Each "module:function" target in the table resolves (a typo here would only fail at run time)."""
    for cmd in list(cli.COMMANDS.values()) + [c for v in cli.SYSTEMS.values() for c in v.values()]:
        if cmd.target is not None:
            assert callable(cmd.load()), cmd.target


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "gensys", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "compose" in r.stdout


@dataclass
class Outer:
    opt: Opt = field(default_factory=lambda: Opt(lr=0.5, schedule="constant"))


def test_partial_section_keeps_the_fields_own_defaults(tmp_path):
    """Overriding one key of a section must not reset the others to the section class's defaults."""
    cfg = load_config(Outer, None, ["opt.betas=[0.8, 0.9]"])
    assert cfg.opt == Opt(lr=0.5, betas=(0.8, 0.9), schedule="constant")
    cfg = load_config(Outer, write(tmp_path, "opt:\n  lr: 0.1\n"))
    assert cfg.opt == Opt(lr=0.1, schedule="constant")
