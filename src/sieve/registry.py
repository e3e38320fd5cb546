"""Model registry: versioned trained artefacts with manifests, promote and rollback.

Layout under the registry root:

    <root>/<version>/model/        the saved model (its own save/load format)
    <root>/<version>/manifest.json what it was trained on and how well it did
    <root>/CURRENT                 the serving version (one line)
    <root>/history.jsonl           every promotion and rollback, appended

Every file is written to a temporary name and renamed into place, so a reader
(a serving process polling for a new version) never sees half a file, and a
crash leaves the previous state intact.

Version names are checked wherever one comes in (`VERSION_PATTERN`: letters,
digits, `.`, `_`, `-`, starting with a letter or digit), so a name can never
leave the registry folder (`../../x`). A manifest that cannot be read is
reported by `scan()` (version and reason) and skipped by `list()`, with a
warning in the log: one damaged folder does not hide every other version.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sieve.models.base import Recommender

CURRENT = "CURRENT"
HISTORY = "history.jsonl"
#: A version name: what `sieve train` makes (hex digests, `YYYYmmdd-HHMMSS`) and
#: any other plain name; never a path.
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Names of files the registry and the service keep in its folder.
RESERVED = frozenset({CURRENT, HISTORY, "RETRAIN"})
_STATUSES = ("candidate", "promoted", "rejected", "retired")

log = logging.getLogger(__name__)


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says why."""


@dataclass
class Manifest:
    """What a version is: the model, the data snapshot, its config and metrics.

    - `data`: the training snapshot (e.g. event count, last event sequence number);
    - `metrics`: offline metrics measured before registration (name → value);
    - `status`: "candidate", "promoted", "rejected" or "retired";
    - `notes`: why it was promoted or rejected.
    """

    version: str
    model: str
    created_at: float
    data: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "candidate"
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, version: str | None = None) -> Manifest:
        """Parse and check a manifest; `version`: the folder it was read from,
        which its `version` field must name. Raises `RegistryError` saying what
        is wrong."""
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise RegistryError(f"not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise RegistryError(f"expected a JSON object, found {type(raw).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in ("version", "model", "created_at") if n not in raw)
        extra = sorted(set(raw) - names)
        if missing or extra:
            raise RegistryError(f"missing field(s) {missing}, unknown field(s) {extra}")
        _check_types(raw)
        if version is not None and raw["version"] != version:
            raise RegistryError(f"names version {raw['version']!r}, not its folder {version!r}")
        return cls(**raw)


def _check_types(raw: dict[str, Any]) -> None:
    """The field types a manifest's readers rely on (sorting, formatting)."""

    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    checks = [
        (
            "version",
            isinstance(raw["version"], str) and bool(VERSION_PATTERN.match(raw["version"])),
        ),
        ("model", isinstance(raw["model"], str)),
        ("created_at", number(raw["created_at"])),
        ("data", isinstance(raw.get("data", {}), dict)),
        ("config", isinstance(raw.get("config", {}), dict)),
        (
            "metrics",
            isinstance(raw.get("metrics", {}), dict)
            and all(number(v) for v in raw.get("metrics", {}).values()),
        ),
        ("status", raw.get("status", "candidate") in _STATUSES),
        (
            "notes",
            isinstance(raw.get("notes", []), list)
            and all(isinstance(n, str) for n in raw.get("notes", [])),
        ),
    ]
    bad = [name for name, ok in checks if not ok]
    if bad:
        raise RegistryError(f"field(s) {bad} of the wrong type or value")


@dataclass(frozen=True)
class ManifestProblem:
    """A registered version whose manifest cannot be read, and why."""

    version: str
    reason: str

    def __str__(self) -> str:
        return f"version {self.version!r}: {self.reason}"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelRegistry:
    """Versions of trained models in a folder; see the module docstring."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)  # created by the first `register`, never by a read

    # ------------------------------------------------------------ writing
    def register(
        self,
        model: Recommender[Any, Any],
        *,
        version: str | None = None,
        data: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> Manifest:
        """Save a trained model as a new candidate version (not yet serving)."""
        version = version or getattr(model, "version", None) or time.strftime("%Y%m%d-%H%M%S")
        check_version(version)
        target = self.root / version
        if target.exists():
            raise RegistryError(f"version {version!r} is already registered")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{version}."))
        try:
            model.save(staging / "model")
            manifest = Manifest(
                version=version,
                model=model.name,
                created_at=time.time(),
                data=dict(data or {}),
                config=dataclasses.asdict(model.config),
                metrics=dict(metrics or {}),
            )
            (staging / "manifest.json").write_text(manifest.to_json())
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return manifest

    def promote(self, version: str, note: str = "") -> Manifest:
        """Make `version` the serving one."""
        manifest = self.manifest(version)
        previous = self.current()
        manifest.status = "promoted"
        if note:
            manifest.notes.append(note)
        self._write_manifest(manifest)
        _atomic_write(self.root / CURRENT, version + "\n")
        self._log("promote", version, previous, note)
        return manifest

    def reject(self, version: str, reason: str) -> Manifest:
        """Record that a candidate was not promoted, and why."""
        manifest = self.manifest(version)
        manifest.status = "rejected"
        manifest.notes.append(reason)
        self._write_manifest(manifest)
        self._log("reject", version, self.current(), reason)
        return manifest

    def rollback(self) -> Manifest:
        """Serve the version that was serving before the current one."""
        current = self.current()
        if current is None:
            raise RegistryError("nothing is serving yet: no version to roll back from")
        stack = self._served_stack()
        if len(stack) < 2:
            raise RegistryError(f"no earlier served version to roll back to from {current!r}")
        target = stack[-2]
        retired = self.manifest(current)
        retired.status = "retired"
        retired.notes.append(f"rolled back to {target}")
        self._write_manifest(retired)
        manifest = self.manifest(target)
        manifest.status = "promoted"
        self._write_manifest(manifest)
        _atomic_write(self.root / CURRENT, target + "\n")
        self._log("rollback", target, current, f"rolled back from {current}")
        return manifest

    def _served_stack(self) -> builtins.list[str]:
        """Versions served in turn: a promotion pushes, a rollback pops, so a
        second rollback goes further back instead of returning to the retired one."""
        stack: builtins.list[str] = []
        for entry in self.history():
            if entry["action"] == "promote":
                if not stack or stack[-1] != entry["version"]:
                    stack.append(entry["version"])
            elif entry["action"] == "rollback" and stack:
                stack.pop()
        return stack

    # ------------------------------------------------------------ reading
    def current(self) -> str | None:
        """The serving version, or None before the first promotion."""
        path = self.root / CURRENT
        if not path.exists():
            return None
        version = path.read_text().strip()
        if version:
            check_version(version, f"{path} names")
        return version or None

    def manifest(self, version: str) -> Manifest:
        """The manifest of `version`; `RegistryError` for a bad name, an unknown
        version or a manifest that cannot be read."""
        check_version(version)
        path = self.root / version / "manifest.json"
        if not path.exists():
            known = ", ".join(m.version for m in self.list()) or "none"
            raise RegistryError(f"unknown model version {version!r}; registered: {known}")
        return self._read(version, path)

    @staticmethod
    def _read(version: str, path: Path) -> Manifest:
        try:
            return Manifest.from_json(path.read_text(), version)
        except (OSError, UnicodeError) as e:
            raise RegistryError(f"manifest of version {version!r} unreadable: {e}") from None
        except RegistryError as e:
            raise RegistryError(f"manifest of version {version!r} is corrupt: {e}") from None

    def scan(self) -> tuple[builtins.list[Manifest], builtins.list[ManifestProblem]]:
        """Every registered version, oldest first, and the versions whose manifest
        cannot be read (each with the reason)."""
        found: builtins.list[Manifest] = []
        problems: builtins.list[ManifestProblem] = []
        if not self.root.is_dir():
            return found, problems
        for p in sorted(self.root.iterdir()):
            if not p.is_dir() or p.name.startswith(".") or not (p / "manifest.json").exists():
                continue
            if not VERSION_PATTERN.match(p.name) or p.name in RESERVED:
                problems.append(ManifestProblem(p.name, "not a valid version name"))
                continue
            try:
                found.append(self._read(p.name, p / "manifest.json"))
            except RegistryError as e:
                problems.append(ManifestProblem(p.name, str(e)))
        return sorted(found, key=lambda m: (m.created_at, m.version)), problems

    def list(self) -> builtins.list[Manifest]:
        """Every readable registered version, oldest first; a corrupt manifest is
        logged (version and reason) and left out (`scan` returns them)."""
        found, problems = self.scan()
        for problem in problems:
            log.warning("model registry %s: skipped %s", self.root, problem)
        return found

    def history(self) -> builtins.list[dict[str, Any]]:
        """Promotions and rollbacks, oldest first; unreadable lines are logged and skipped."""
        path = self.root / HISTORY
        if not path.exists():
            return []
        entries: builtins.list[dict[str, Any]] = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict) or not isinstance(entry.get("version"), str):
                log.warning(
                    "model registry %s: %s line %d unreadable, skipped", path, HISTORY, number
                )
                continue
            entries.append(entry)
        return entries

    def model_path(self, version: str) -> Path:
        self.manifest(version)  # raises for unknown versions
        return self.root / version / "model"

    def load(self, version: str | None = None) -> Recommender[Any, Any]:
        """Load a version (default: the serving one)."""
        version = version or self.current()
        if version is None:
            raise RegistryError("no model is serving yet: train and promote one first")
        return Recommender.load(self.model_path(version))

    # ------------------------------------------------------------ helpers
    def _write_manifest(self, manifest: Manifest) -> None:
        _atomic_write(self.root / manifest.version / "manifest.json", manifest.to_json())

    def _log(self, action: str, version: str, previous: str | None, note: str) -> None:
        entry = {
            "time": time.time(),
            "action": action,
            "version": version,
            "previous": previous,
            "note": note,
        }
        with open(self.root / HISTORY, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def check_version(version: str, what: str = "") -> str:
    """`version` if it is a valid version name, else `RegistryError` saying why."""
    if not isinstance(version, str) or not VERSION_PATTERN.match(version) or version in RESERVED:
        raise RegistryError(
            f"{what + ' ' if what else ''}invalid version name {version!r}: use 1-128 letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
            + (
                f" (not {sorted(RESERVED)})"
                if isinstance(version, str) and version in RESERVED
                else ""
            )
        )
    return version


__all__ = [
    "VERSION_PATTERN",
    "Manifest",
    "ManifestProblem",
    "ModelRegistry",
    "RegistryError",
    "check_version",
]
