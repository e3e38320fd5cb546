"""Model registry: versioned trained artefacts with manifests, promote and rollback.

Layout under the registry root:

    <root>/<version>/model/        the saved model (its own save/load format)
    <root>/<version>/manifest.json what it was trained on and how well it did
    <root>/CURRENT                 the serving version (one line)
    <root>/history.jsonl           every promotion and rollback, appended

Every file is written to a temporary name and renamed into place, so a reader
(a serving process polling for a new version) never sees half a file, and a
crash leaves the previous state intact.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sieve.models.base import Recommender

CURRENT = "CURRENT"
HISTORY = "history.jsonl"


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
    def from_json(cls, text: str) -> Manifest:
        return cls(**json.loads(text))


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
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

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
        _check_version(version)
        target = self.root / version
        if target.exists():
            raise RegistryError(f"version {version!r} is already registered")
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
        return version or None

    def manifest(self, version: str) -> Manifest:
        path = self.root / version / "manifest.json"
        if not path.exists():
            known = ", ".join(m.version for m in self.list()) or "none"
            raise RegistryError(f"unknown model version {version!r}; registered: {known}")
        return Manifest.from_json(path.read_text())

    def list(self) -> builtins.list[Manifest]:
        """Every registered version, oldest first."""
        found = [
            Manifest.from_json((p / "manifest.json").read_text())
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").exists()
        ]
        return sorted(found, key=lambda m: (m.created_at, m.version))

    def history(self) -> builtins.list[dict[str, Any]]:
        path = self.root / HISTORY
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

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


def _check_version(version: str) -> None:
    if not version or "/" in version or version.startswith(".") or version == CURRENT:
        raise RegistryError(f"invalid version name {version!r}")
