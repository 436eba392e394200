"""Config loading: the example config, and errors that name the wrong key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import fedmed as fm
from fedmed.config import DEFAULT_CONFIG, load_config

SUM = {"map": "fedmed.ops.private.sum", "reduce": "fedmed.ops.public.sum"}


@pytest.mark.parametrize("path", ["example/config.yaml", "example/config-exact.yaml"])
def test_example_configs_offer_exactly_the_default_operations(path):
    example = yaml.safe_load(Path(path).read_text())
    default = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert example["methods"] == default["methods"]
    config = load_config(path)
    assert "add" in config.elementwise and "sum" in config.aggregates


def test_example_config_is_privacy_aware_and_the_exact_one_is_not():
    names = [type(p.policy).__name__ for p in load_config("example/config.yaml").privacy]
    assert names == ["CacheLimit", "ComplexityCap", "Anonymity", "Dominance"]
    assert load_config("example/config-exact.yaml").privacy == ()


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"privacy": []}, "'methods' must be a non-empty mapping"),
        ({"methods": {"add": "fedmed.ops.binary.addd"}}, "methods.add: module 'fedmed.ops.binary' has no attribute 'addd'"),
        ({"methods": {"add": "no_such_module.add"}}, "methods.add: cannot import module 'no_such_module'"),
        ({"methods": {"sum": {"map": "fedmed.ops.private.sum"}}}, "methods.sum: expected an import path"),
        ({"methods": {"sum": {**SUM, "reduce": 3}}}, "methods.sum.reduce: expected an import path"),
        ({"methods": {"sum": SUM}, "privacy": {"policy": "x"}}, "'privacy' must be a list"),
        ({"methods": {"sum": SUM}, "privacy": [{"params": {}}]}, r"privacy\[0\]: expected \{policy"),
        ({"methods": {"sum": SUM}, "privacy": [{"policy": "fedmed.privacy.Policy", "params": {"k": 3}}]}, r"privacy\[0\].params"),
        ({"methods": {"sum": SUM}, "extra": 1}, r"unknown top-level key\(s\) \['extra'\]"),
        ({"methods": {"not valid": "fedmed.ops.binary.add"}}, "must be a Python identifier"),
    ],
)
def test_bad_configs_name_the_wrong_key(raw, message):
    with pytest.raises(fm.ConfigError, match=message):
        load_config(raw)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(fm.ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [unclosed\n")
    with pytest.raises(fm.ConfigError, match="not valid YAML"):
        load_config(bad)


def test_client_offers_only_configured_operations():
    config = {"methods": {"sum": SUM, "add": "fedmed.ops.binary.add"}}
    data = fm.FedData([fm.Local([1, 2], config=config)], config=config)
    assert (data + 1).sum().compute() == 5
    with pytest.raises(fm.FedMedError, match="max needs the aggregate 'max', which the config <dict> does not offer"):
        data.max()  # pandas' name, planned from an aggregate this config leaves out
    with pytest.raises(AttributeError, match="no column or method .maximum.; did you mean: max"):
        data.maximum()
    with pytest.raises(fm.OperationNotAllowed, match="does not offer 'mul'"):
        data * 2


def test_a_server_can_swap_in_its_own_implementation():
    config = {"methods": {"sum": {"map": "builtins.len", "reduce": "fedmed.ops.public.sum"}}}
    server = fm.Server(config)
    server["a"] = [10, 20, 30]
    assert fm.FedData([fm.Simulation(server, "a")], config=config).sum().compute() == 3


PERSONS = {"methods": {"sum": SUM}, "persons": {"labs*": "patient", "cohort": "id", "site ?": "pid", "[x]*": "key"}}


def test_persons_map_fragment_globs_to_person_columns_in_the_order_written():
    config = load_config({**PERSONS, "persons": {"labs 2024": "visit", **PERSONS["persons"]}})
    assert list(config.persons) == ["labs 2024", "labs*", "cohort", "site ?", "[x]*"]
    assert config.person_column("labs 2024") == "visit"  # the first glob that matches wins
    assert config.person_column("labs 2023") == config.person_column("labs") == "patient"
    assert config.person_column("cohort") == "id" and config.person_column("cohort 2") is None
    assert config.person_column("site 7") == "pid" and config.person_column("site 10") is None
    assert config.person_column("[x] icu") == "key" and config.person_column("x icu") is None  # [ is literal
    assert load_config({"methods": {"sum": SUM}}).persons == {} and load_config(PERSONS).without_privacy().persons


def test_persons_given_later_come_first():
    config = load_config(PERSONS).with_persons({"cohort": "nhs_number", "labs b": "mrn"})
    assert list(config.persons)[:2] == ["cohort", "labs b"]
    assert config.person_column("cohort") == "nhs_number" and config.person_column("labs b") == "mrn"
    assert config.person_column("labs a") == "patient"
    with pytest.raises(fm.ConfigError, match=r"--person: persons\['x'\]: expected the name of the column"):
        config.with_persons({"x": ""}, origin="--person")


@pytest.mark.parametrize(
    "persons, message",
    [
        (["patient"], "persons: expected a mapping of fragment-name globs to person columns"),
        ("patient", "persons: expected a mapping"),
        ({"labs*": 3}, r"persons\['labs\*'\]: expected the name of the column that identifies a person, got 3"),
        ({"labs*": ""}, r"persons\['labs\*'\]: expected the name of the column"),
        ({"labs*": ["a", "b"]}, r"persons\['labs\*'\]: expected the name of the column"),
        ({1: "id"}, "persons: 1 is not a fragment name or glob"),
        ({"": "id"}, "persons: '' is not a fragment name or glob"),
    ],
)
def test_bad_persons_name_the_wrong_entry(persons, message):
    with pytest.raises(fm.ConfigError, match=message):
        load_config({"methods": {"sum": SUM}, "persons": persons})


def test_persons_from_yaml(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text('methods:\n  add: fedmed.ops.binary.add\npersons:\n  "labs*": patient\n  cohort: id\n')
    assert load_config(path).persons == {"labs*": "patient", "cohort": "id"}
