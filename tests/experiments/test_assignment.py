"""Salted-hash assignment: determinism, balance, layers, holdouts, shadows, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from sieve.config import ConfigError
from sieve.experiments.assignment import (
    Assigner,
    Experiment,
    Layer,
    Variant,
    hash_uniform,
    hash_uniforms,
)

IDS = [f"user{k}" for k in range(100_000)]


def _exp(name: str = "e", layer: str = "L", salt: str = "s", **kw: object) -> Experiment:
    variants = kw.pop("variants", (Variant("A", 0.5), Variant("B", 0.5)))
    return Experiment(name=name, layer=layer, variants=variants, salt=salt, **kw)  # type: ignore[arg-type]


def test_hash_is_deterministic_uniform_and_salt_dependent() -> None:
    assert hash_uniform("s", "u1") == hash_uniform("s", "u1")
    assert hash_uniform("s", "u1") != hash_uniform("t", "u1")
    u = hash_uniforms("s", IDS[:20_000])
    assert u.min() >= 0.0 and u.max() < 1.0
    assert scipy.stats.kstest(u, "uniform").pvalue > 0.01


def test_assignment_deterministic_and_balanced() -> None:
    exp = _exp(variants=(Variant("A", 0.2), Variant("B", 0.3), Variant("C", 0.5)))
    assigner = Assigner([Layer("L", "layer-salt")], [exp])
    batch = assigner.assign_many("L", IDS)
    again = assigner.assign_many("L", IDS)
    assert np.array_equal(batch.variant, again.variant)
    counts = batch.counts()
    for name, share in exp.shares.items():
        # binomial sd at n=100k is ≤ 0.16 points: 1 point is > 6 sd
        assert abs(counts[name] / len(IDS) - share) < 0.01, counts
    # the scalar path agrees with the vectorised one
    for uid in IDS[:200]:
        a = assigner.assign_layer("L", uid)
        k = IDS.index(uid)
        assert a.variant == batch.variant[k]
        assert exp.assign(uid) is not None and exp.assign(uid).name == a.variant  # type: ignore[union-attr]


def test_layers_are_independent() -> None:
    e1 = _exp("e1", "L1", "s1", variants=(Variant("A", 0.5), Variant("B", 0.5)))
    e2 = _exp("e2", "L2", "s2", variants=tuple(Variant(n, 1 / 3) for n in "XYZ"))
    assigner = Assigner([Layer("L1", "l1"), Layer("L2", "l2")], [e1, e2])
    v1 = assigner.assign_many("L1", IDS).variant.astype(str)
    v2 = assigner.assign_many("L2", IDS).variant.astype(str)
    table = np.array([[np.sum((v1 == a) & (v2 == b)) for b in "XYZ"] for a in "AB"])
    chi2, p, _, _ = scipy.stats.chi2_contingency(table)
    assert p > 0.01, (table, chi2)
    # and a user's arm in L1 is the same whatever happens in L2
    assert assigner.assign("user7")["L1"].variant == v1[7]


def test_experiments_in_one_layer_are_exclusive_and_get_their_traffic() -> None:
    a = _exp("a", salt="sa", traffic=0.3)
    b = _exp("b", salt="sb", traffic=0.5)
    assigner = Assigner([Layer("L", "ls", holdout_share=0.1)], [a, b])
    batch = assigner.assign_many("L", IDS)
    share = {name: float(np.mean(batch.experiment == name)) for name in ("a", "b")} | {
        "holdout": float(np.mean(batch.reason == "layer_holdout"))
    }
    assert share == pytest.approx({"a": 0.3, "b": 0.5, "holdout": 0.1}, abs=0.01)
    assert np.mean(batch.reason == "unallocated") == pytest.approx(0.1, abs=0.01)
    # within each experiment the arms split 50/50 (the two hashes are independent)
    for name in ("a", "b"):
        inside = batch.variant[batch.experiment == name].astype(str)
        assert np.mean(inside == "A") == pytest.approx(0.5, abs=0.01)


def test_layer_holdout_is_excluded_from_every_experiment() -> None:
    layer = Layer("L", "ls", holdout_share=0.2)
    assigner = Assigner(
        [layer], [_exp("a", salt="sa", traffic=0.4), _exp("b", salt="sb", traffic=0.4)]
    )
    batch = assigner.assign_many("L", IDS)
    held = batch.reason == "layer_holdout"
    assert held.mean() == pytest.approx(0.2, abs=0.01)
    assert all(v is None for v in batch.variant[held])
    assert all(e is None for e in batch.experiment[held])
    uid = IDS[int(np.flatnonzero(held)[0])]
    a = assigner.assign_layer("L", uid)
    assert a.holdout and not a.in_experiment and a.variant is None and a.config is None


def test_experiment_holdout_and_status() -> None:
    exp = _exp(holdout_share=0.25)
    batch = Assigner([Layer("L", "ls")], [exp]).assign_many("L", IDS)
    assert np.mean(batch.reason == "experiment_holdout") == pytest.approx(0.25, abs=0.01)
    assigned = batch.variant[batch.reason == "assigned"].astype(str)
    assert np.mean(assigned == "A") == pytest.approx(0.5, abs=0.01)
    paused = Assigner([Layer("L", "ls")], [_exp(status="paused")])
    a = paused.assign_layer("L", "u1")
    assert a.reason == "not_running" and a.variant is None and a.experiment == "e"


def test_shadow_variants_are_returned_never_served() -> None:
    exp = _exp(
        variants=(
            Variant("control", 0.5, model_version="m1"),
            Variant("new", 0.5, config={"k": 20}, model_version="m2"),
            Variant("candidate", 0.0, model_version="m3", shadow=True),
        )
    )
    assigner = Assigner([Layer("L", "ls")], [exp])
    batch = assigner.assign_many("L", IDS[:10_000])
    assert set(batch.counts()) == {"control", "new"}
    a = assigner.assign_layer("L", "someone")
    assert a.shadows == ("candidate",)
    assert a.variant in ("control", "new")
    served = exp.variant(a.variant)  # type: ignore[arg-type]
    assert a.model_version == served.model_version and a.config == served.config


def test_session_unit() -> None:
    exp = _exp(unit="session")
    assigner = Assigner([Layer("L", "ls")], [exp])
    arms = {assigner.assign_layer("L", "u1", f"s{k}").variant for k in range(50)}
    assert arms == {"A", "B"}  # sessions of one user are randomised separately
    with pytest.raises(ValueError, match="session"):
        assigner.assign_layer("L", "u1")


def test_aa_experiment_is_just_a_config() -> None:
    aa = Experiment.aa("aa", "L", "aa-salt")
    assert [v.name for v in aa.variants] == ["A1", "A2"]
    assert aa.shares == {"A1": 0.5, "A2": 0.5}
    assert all(v.config is None and v.model_version is None for v in aa.variants)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variants": (Variant("A", 0.5), Variant("B", 0.4))}, "sum to 1.*A=0.5, B=0.4"),
        ({"variants": (Variant("A", 0.5), Variant("A", 0.5))}, "unique.*'A'"),
        ({"variants": ()}, "at least one variant"),
        ({"holdout_share": 1.0}, "holdout_share"),
        ({"traffic": 0.0}, "traffic"),
    ],
)
def test_invalid_experiments_have_clear_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _exp(**kwargs)


def test_invalid_variants_and_sets() -> None:
    with pytest.raises(ConfigError, match="shadow"):
        Variant("s", 0.1, shadow=True)
    with pytest.raises(ConfigError, match="share > 0"):
        Variant("a", 0.0)
    with pytest.raises(ConfigError, match="over-allocated"):
        Assigner(
            [Layer("L", "ls")],
            [_exp("a", salt="sa", traffic=0.6), _exp("b", salt="sb", traffic=0.6)],
        )
    with pytest.raises(ConfigError, match="salt"):
        Assigner([Layer("L", "same")], [_exp(salt="same")])
    with pytest.raises(ConfigError, match="unknown layer"):
        Assigner([Layer("L", "ls")], [_exp(layer="M")])


def test_round_trip_dict_json_toml() -> None:
    exp = _exp(
        variants=(
            Variant("A", 0.5, model_version="v1"),
            Variant("B", 0.5, config={"diversity": 0.3, "k": 10}),
            Variant("S", 0.0, shadow=True),
        ),
        holdout_share=0.1,
        unit="session",
        traffic=0.9,
    )
    assert Experiment.from_dict(exp.to_dict()) == exp
    assert Experiment.from_json(exp.to_json()) == exp
    assert Experiment.from_toml(exp.to_toml()) == exp
    assigner = Assigner([Layer("L", "ls", 0.05)], [exp])
    back = Assigner.from_json(assigner.to_json())
    assert back.to_dict() == assigner.to_dict()
    assert json.loads(assigner.to_json())["experiments"][0]["variants"][1]["config"] == {
        "diversity": 0.3,
        "k": 10,
    }
    a = back.assign_layer("L", "u1", "s1")
    assert a.to_dict()["layer"] == "L"
    with pytest.raises(ConfigError, match="unknown key"):
        Experiment.from_dict({**exp.to_dict(), "colour": "red"})
