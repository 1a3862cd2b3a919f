"""Run directories: every backtest, tune or compare run writes its own folder, never another's.

`reports/<kind>-<mode>-<start>_<end>-<hash>/` where the hash is a short digest of the parameters
and the symbols, so a run with other settings lands elsewhere and the same settings land in the
same folder (a re-run replaces its own files only). Each folder holds `params.toml` and a small
`meta.json` (command line, tierlab version, symbols, range, provenance, the files written), next to
whatever the run adds (report.html, orders.parquet, decisions.parquet...). `reports/latest` points
at the newest run, `reports/<kind>-latest` at the newest of its kind (symlinks; one-line `.txt`
files where the platform has none).

    run = RunDir.create("backtest", mode="default", start="2024-10-21", end="2024-12-06",
                        params=params, symbols=params.universe)
    ...write files into run.path...
    run.finish(files=["report.html", "orders.parquet"], extra={"trades": 12})
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LATEST = "latest"


def tierlab_version() -> str:
    """The installed tierlab version (pyproject's), or 'unknown' outside an install."""
    try:
        from importlib.metadata import version

        return version("tierlab")
    except Exception:  # not installed (a bare checkout): say so rather than guess
        return "unknown"


def params_mapping(params: Any) -> dict[str, Any]:
    """A plain dict of a parameter object (pydantic model, dataclass or mapping)."""
    if params is None:
        return {}
    if isinstance(params, Mapping):
        return dict(params)
    if hasattr(params, "model_dump"):
        return params.model_dump()
    import dataclasses

    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return dataclasses.asdict(params)
    return dict(vars(params))


def settings_hash(params: Any, symbols: Iterable[str] = (), extra: Mapping[str, Any] | None = None) -> str:
    """8 hex digits of the parameters, the symbols and any extra settings (stable across runs)."""
    blob = json.dumps({"params": params_mapping(params), "symbols": list(symbols), "extra": dict(extra or {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _day(d: Any) -> str:
    return "" if d is None else str(getattr(d, "date", lambda: d)())[:10]


def run_name(kind: str, mode: str | None, start: Any, end: Any, digest: str) -> str:
    """`<kind>-<mode>-<start>_<end>-<hash>` (parts that are None are left out)."""
    parts = [kind] + ([mode] if mode else [])
    if start is not None or end is not None:
        parts.append(f"{_day(start)}_{_day(end)}")
    return "-".join([*parts, digest])


def command_line(argv: Iterable[str] | None = None) -> str:
    """The command as typed (`python -m research.backtest --mode relaxed`), quoted for a shell.

    `argv` is [module, *args] when a CLI's main() is called in-process; default: this process's.
    """
    if argv is not None:
        args = list(argv)
        head = ["python", "-m", args[0]] if args and "/" not in args[0] else args[:1]
        return shlex.join([*head, *args[1:]])
    args = list(sys.argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["python", "-m", spec.name.removesuffix(".__main__")] if spec is not None and spec.name else args[:1]
    return shlex.join([*head, *args[1:]])


@dataclass
class RunDir:
    """One run's folder under `root` and what goes into its meta.json."""

    path: Path
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, kind: str, *, mode: str | None = None, start: Any = None, end: Any = None,
               params: Any = None, symbols: Iterable[str] = (), root: str | os.PathLike[str] = "reports",
               extra: Mapping[str, Any] | None = None, argv: Iterable[str] | None = None) -> RunDir:
        """Make (or reuse, for identical settings) the run's folder and write its params.toml."""
        symbols = list(symbols)
        digest = settings_hash(params, symbols, extra)
        path = Path(root) / run_name(kind, mode, start, end, digest)
        path.mkdir(parents=True, exist_ok=True)
        if hasattr(params, "to_toml"):
            params.to_toml(path / "params.toml")
        elif params is not None:
            import tomli_w

            (path / "params.toml").write_text(tomli_w.dumps({"params": _plain(params_mapping(params))}))
        meta = {
            "kind": kind, "mode": mode, "start": _day(start) or None, "end": _day(end) or None,
            "symbols": symbols, "settings_hash": digest, "command": command_line(argv),
            "tierlab_version": tierlab_version(), "python": sys.version.split()[0],
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **dict(extra or {}),
        }
        return cls(path=path, kind=kind, meta=meta)

    def finish(self, files: Iterable[str] = (), extra: Mapping[str, Any] | None = None) -> Path:
        """Write meta.json (with the files written) and point `latest` at this run; returns meta.json."""
        self.meta["files"] = sorted({*files, "params.toml", "meta.json"})
        self.meta.update(extra or {})
        out = self.path / "meta.json"
        out.write_text(json.dumps(_plain(self.meta), indent=2, sort_keys=True, default=str) + "\n")
        point_latest(self.path)
        point_latest(self.path, f"{self.kind}-{LATEST}")  # e.g. tune-latest/best_params.toml after any backtest
        return out


def point_latest(run: Path, name: str = LATEST) -> None:
    """Atomically repoint `<root>/<name>` at `run` (relative symlink; <name>.txt without symlinks)."""
    root = run.parent
    link = root / name
    tmp = root / f".{name}.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(run.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        (root / f"{name}.txt").write_text(run.name + "\n")


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "model_dump"):
        return _plain(v.model_dump())
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        return v.item()
    return v
