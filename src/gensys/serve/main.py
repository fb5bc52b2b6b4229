"""`gensys serve`: load the configured systems and serve them with uvicorn.

gensys serve                                        # configs/serve/default.yaml if present, else defaults
gensys serve --config configs/serve/default.yaml port=9000 models.caption=""   # caption switched off
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gensys.serve.config import ServeConfig, load_serve_config, repo_root
from gensys.serve.logs import setup_logging
from gensys.serve.systems import Registry

DEFAULT_CONFIG = "configs/serve/default.yaml"


def default_config_path() -> Path | None:
    """configs/serve/default.yaml of the working directory or of the source checkout, if there is one."""
    for base in (Path.cwd(), repo_root()):
        if (base / DEFAULT_CONFIG).is_file():
            return base / DEFAULT_CONFIG
    return None


def parser(prog: str = "gensys serve", description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=description or __doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help=f"serve config YAML (default: {DEFAULT_CONFIG} if present)")
    p.add_argument("--host", default=None, help="override host")
    p.add_argument("--port", type=int, default=None, help="override port")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the serve config")
    return p


def config_from_args(a: argparse.Namespace) -> ServeConfig:
    path = a.config or default_config_path()
    overrides = list(a.overrides)
    if a.host is not None:
        overrides.append(f"host={a.host}")
    if a.port is not None:
        overrides.append(f"port={a.port}")
    return load_serve_config(path, overrides)


def summary(cfg: ServeConfig, registry: Registry) -> str:
    """What is served where (printed at start)."""
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
    url = f"http://{host}:{cfg.port}"
    lines = [f"gensys serving on {url}  (API docs: {url}/docs)"]
    for name, s in registry.systems.items():
        if s.mounted:
            lines.append(f"  [x] {name:<10} {url}/{name}   ({s.ckpt}, loaded in {s.load_s:.1f}s)")
        else:
            lines.append(f"  [ ] {name:<10} {s.error}")
    return "\n".join(lines)


def run(cfg: ServeConfig, registry: Registry) -> None:
    """Serve until interrupted."""
    import uvicorn

    from gensys.serve.app import create_app

    app = create_app(cfg, registry, own_registry=True)
    # log_config=None: uvicorn keeps our JSON handlers instead of installing its own
    uvicorn.run(
        app, host=cfg.host, port=cfg.port, log_config=None, access_log=False, timeout_graceful_shutdown=5
    )


def serve_main(argv: list[str]) -> int:
    """Entry point of `gensys serve`."""
    a = parser().parse_args(argv)
    cfg = config_from_args(a)
    setup_logging(cfg.log_level, cfg.log_format)
    registry = Registry.load(cfg)
    print(summary(cfg, registry), file=sys.stderr, flush=True)
    run(cfg, registry)
    return 0


__all__ = ["serve_main", "summary", "run"]
