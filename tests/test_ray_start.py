"""services/ray_start.py: how every entry point starts or joins Ray, read from ``init_plan`` (the pure decision
``start_or_join`` acts on). Starting a real local Ray with token auth is covered by tests/test_ray_auth.py and
every Ray test's entry point; joining a real cluster by the k8s and cluster tests' configs."""
from __future__ import annotations

import logging

import pytest

from services import ray_start


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("RAY_ADDRESS", ray_start.JOB_CONFIG_ENV, "REIDLOOP_CRASH_AT", "REIDLOOP_CRASH_TRACE",
                "REIDLOOP_STOP_AT", ray_start.VERBOSE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")


# Unless --verbose: the workers' output stays in Ray's log files, the driver's `ray` logger shows warnings only.
QUIET = {"log_to_driver": False, "logging_level": logging.WARNING}


def test_local_ray_gets_no_dashboard_cpus_and_the_worker_env(monkeypatch):
    monkeypatch.setenv("REIDLOOP_STOP_AT", "state.json@1")
    assert ray_start.init_plan(num_cpus=2) == ("local", {"num_cpus": 2, "include_dashboard": False, **QUIET, "runtime_env": {
        "env_vars": {"OMP_NUM_THREADS": "3", "REIDLOOP_STOP_AT": "state.json@1"}}})


def test_callers_env_vars_win_and_the_dashboard_can_be_left_to_ray():
    assert ray_start.init_plan(env_vars={"OMP_NUM_THREADS": 1}, include_dashboard=None) == (
        "local", {"num_cpus": None, "include_dashboard": None, **QUIET,
                  "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}}})


@pytest.mark.parametrize("given", [None, "10.0.0.5:6379"])
def test_a_cluster_is_joined_without_local_only_arguments(monkeypatch, given):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    assert ray_start.init_plan(given, num_cpus=2) == (
        "join", {"address": given or "10.0.0.9:6379", **QUIET, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "3"}}})


def test_inside_a_submitted_job_its_runtime_env_rules(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    monkeypatch.setenv(ray_start.JOB_CONFIG_ENV, "{}")
    monkeypatch.setenv("REIDLOOP_CRASH_AT", "state.json@1")
    assert ray_start.init_plan(env_vars={"OMP_NUM_THREADS": "1"}) == ("join", {"address": "10.0.0.9:6379", **QUIET})


def test_a_given_runtime_env_keeps_its_own_variables_over_the_drivers():
    plan = ray_start.init_plan(runtime_env={"env_vars": {"OMP_NUM_THREADS": "8"}, "pip": ["x"]})
    assert plan == ("local", {"num_cpus": None, "include_dashboard": False, **QUIET,
                              "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "8"}, "pip": ["x"]}})


@pytest.mark.parametrize("value", ["1", "yes"])
def test_verbose_leaves_ray_its_console_and_a_callers_choice_wins(monkeypatch, value):
    monkeypatch.setenv(ray_start.VERBOSE_ENV, value)
    assert ray_start.verbose()
    assert ray_start.init_plan(env_vars={"OMP_NUM_THREADS": "1"}) == (
        "local", {"num_cpus": None, "include_dashboard": False, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}}})
    monkeypatch.setenv(ray_start.VERBOSE_ENV, "0")
    assert not ray_start.verbose()
    assert ray_start.init_plan(log_to_driver=True)[1]["log_to_driver"] is True
