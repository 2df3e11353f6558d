"""The default thread count: the cores the load leaves idle, at least one; the env var wins."""

from __future__ import annotations

import pytest

from compressai_vlic.errors import ConfigError
from compressai_vlic.threads import THREADS_ENV, default_threads, idle_threads


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [(2, 0.0, 2), (2, 0.4, 2), (2, 1.0, 1), (2, 6.0, 1), (16, 0.2, 16), (16, 4.0, 12), (1, 0, 1)],
)
def test_idle_threads_leaves_busy_cores_alone(cores, load, expected):
    assert idle_threads(cores, load) == expected


def test_env_overrides_and_is_checked(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    assert default_threads() == 3
    monkeypatch.setenv(THREADS_ENV, "zero")
    with pytest.raises(ConfigError, match=THREADS_ENV):
        default_threads()
    monkeypatch.delenv(THREADS_ENV)
    assert default_threads() >= 1
