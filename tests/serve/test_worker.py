"""Background retraining: due() reasons, promotion when not worse, rejection
(with the reason recorded) when worse; the serving model is never replaced by
a worse one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from sieve.data.records import Event
from sieve.registry import ModelRegistry
from sieve.settings import Settings
from sieve.storage import open_store
from sieve.training.worker import TRIGGER, Retrainer, RetrainPolicy

#: A deliberately weak candidate: only the newest items, no ranker.
WEAK = """
[sources]
ann = 0
item_to_item = 0
content = 0
ease = 0
popular = 0
trending = 0
fresh = 30
min_candidates = 0

[ranker]
enabled = false
"""


@pytest.fixture
def copy(trained: Any, tmp_path: Path) -> tuple[str, Path]:
    db = tmp_path / "w.db"
    shutil.copy(trained.db, db)
    models = tmp_path / "models"
    shutil.copytree(trained.model_dir, models)
    return f"sqlite:///{db}", models


@pytest.mark.slow
def test_worse_candidate_is_rejected_and_better_one_promoted(
    trained: Any, copy: tuple[str, Path], tmp_path: Path
) -> None:
    url, models = copy
    weak = tmp_path / "weak.toml"
    weak.write_text(WEAK)
    serving = ModelRegistry(models).current()
    policy = RetrainPolicy(max_users=150)
    bad = Retrainer(Settings(store_url=url, model_dir=models, funnel_config=weak), policy)
    decision = bad.run_once("test")
    assert not decision.promoted and decision.serving == serving
    assert decision.serving_score is not None and decision.candidate_score < decision.serving_score
    reg = ModelRegistry(models)
    assert reg.current() == serving
    manifest = reg.manifest(decision.candidate)
    assert manifest.status == "rejected" and "kept" in manifest.notes[-1]

    # the same configuration as the serving model, trained on the same data
    # without the holdout, is not worse within a 5% tolerance: promoted
    good = Retrainer(
        Settings(store_url=url, model_dir=models, funnel_config=trained.funnel_config),
        RetrainPolicy(max_users=150, tolerance=0.05),
    )
    decision = good.run_once("test")
    assert decision.promoted, decision.why
    assert reg.current() == decision.candidate


def test_due_reasons(trained: Any, copy: tuple[str, Path]) -> None:
    url, models = copy
    settings = Settings(store_url=url, model_dir=models)
    retrainer = Retrainer(settings, RetrainPolicy(every_seconds=None, after_events=3))
    assert retrainer.due() is None
    with open_store(url) as store:
        item = str(trained.raw.items["item_id"].iloc[0])
        store.append_events(
            [Event(id=f"new{k}", user_id="u001", item_id=item, type="click") for k in range(3)]
        )
    assert "3 new events" in (retrainer.due() or "")
    (models / TRIGGER).write_text("popularity drift")
    assert retrainer.due() == "trigger: popularity drift"
    scheduled = Retrainer(settings, RetrainPolicy(every_seconds=0.0, after_events=None))
    (models / TRIGGER).unlink()
    assert (scheduled.due() or "").startswith("schedule")


@pytest.mark.slow
def test_worker_once_from_the_command_line(trained: Any, copy: tuple[str, Path]) -> None:
    from typer.testing import CliRunner

    from sieve.cli import app

    url, models = copy
    result = CliRunner().invoke(
        app,
        [
            "worker",
            "--once",
            "--store",
            url,
            "--model-dir",
            str(models),
            "--funnel-config",
            str(trained.funnel_config),
            "--tolerance",
            "0.05",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "promoted" in result.output or "rejected" in result.output
    assert len(ModelRegistry(models).list()) == 2


def test_one_worker_trains_at_a_time_and_a_standby_takes_over(copy: tuple[str, Path]) -> None:
    from typer.testing import CliRunner

    from sieve.cli import app
    from sieve.training.lease import LEASE_NAME, LeaseHeld

    url, models = copy
    settings = Settings(store_url=url, model_dir=models)
    never = RetrainPolicy(every_seconds=None, after_events=None)
    said: list[str] = []
    active = Retrainer(settings, never)
    standby = Retrainer(settings, never, say=said.append, sleep=lambda _: None)
    try:
        assert active.lease.acquire()
        with pytest.raises(LeaseHeld, match="another worker holds the retraining lease"):
            standby.run_once("test")
        cli = CliRunner().invoke(
            app, ["worker", "--once", "--store", url, "--model-dir", str(models)]
        )
        assert cli.exit_code == 1 and "another worker holds" in " ".join(cli.output.split())
        standby.run_forever(poll_seconds=1.0, max_polls=3)  # waits, says so once
        assert len(said) == 1 and "waiting" in said[0] and active.lease.holder in said[0]
        assert len(ModelRegistry(models).list()) == 1  # nobody trained
        active.close()  # the active worker stops: its lease is free
        standby.run_forever(poll_seconds=1.0, max_polls=1)
        assert said[-1] == "took the retraining lease: this worker is the active one"
        assert standby.lease.store.lease(LEASE_NAME) is None  # given back when it stopped
        with pytest.raises(ValueError, match="keeps no lease"):
            standby.run_forever(poll_seconds=120.0, max_polls=1)
    finally:
        active.close()
        standby.close()


@pytest.mark.slow
def test_a_candidate_whose_lease_was_lost_is_not_promoted(
    trained: Any, copy: tuple[str, Path]
) -> None:
    url, models = copy
    settings = Settings(store_url=url, model_dir=models, funnel_config=trained.funnel_config)
    serving = ModelRegistry(models).current()
    retrainer = Retrainer(settings, RetrainPolicy(max_users=100, tolerance=1.0))
    try:
        decision = retrainer._train_and_judge("test", lambda: False)  # lost while training
    finally:
        retrainer.close()
    assert not decision.promoted and "lease was lost" in decision.why
    registry = ModelRegistry(models)
    assert registry.current() == serving
    assert registry.manifest(decision.candidate).status == "rejected"
