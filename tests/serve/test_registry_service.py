"""The service past a corrupt model manifest (issue 9): the models dashboard and
`POST /experiments` used to answer 500 when one `manifest.json` was damaged."""

from __future__ import annotations

import shutil
from pathlib import Path

from .conftest import MakeClient, Trained


def test_service_lists_models_and_creates_experiments_past_a_corrupt_manifest(
    trained: Trained, tmp_path: Path, make_client: MakeClient
) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained.model_dir, models)  # the shared one stays intact
    shutil.copy(trained.db, tmp_path / "served.db")
    broken = models / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{torn")
    client = make_client(store_url=f"sqlite:///{tmp_path / 'served.db'}", model_dir=models)
    r = client.get("/dashboard/api/models")
    assert r.status_code == 200, r.text
    assert [v["version"] for v in r.json()["versions"]] == [trained.version]
    spec = {
        "name": "exp1",
        "variants": [
            {"name": "a", "share": 0.5, "model_version": trained.version},
            {"name": "b", "share": 0.5, "model_version": "broken"},
        ],
    }
    r = client.post("/experiments", json=spec)
    assert r.status_code in (400, 409, 422), r.text  # a clear refusal, never a 500
    assert "broken" in r.text
    spec["variants"][1]["model_version"] = trained.version  # type: ignore[index]
    r = client.post("/experiments", json=spec)
    assert r.status_code == 201, r.text
