"""Settings: NEXUS_* shared and NEXUS_<SERVICE>_* per service; a bad value is one line naming
the variable (and never echoing a secret)."""

from __future__ import annotations

import pytest

from nexusd.runtime.settings import ConfigError, SharedSettings, env_name, load_settings
from tests.runtime.probe import ProbeSettings


def test_prefixes(monkeypatch):
    monkeypatch.setenv("NEXUS_PROBE_PORT", "1234")
    monkeypatch.setenv("NEXUS_ETCD_ENDPOINTS", "http://a:1, http://b:2")
    assert load_settings(ProbeSettings).port == 1234
    assert load_settings(SharedSettings).etcd_endpoint_list == ["http://a:1", "http://b:2"]
    assert env_name(ProbeSettings, "max_body") == "NEXUS_PROBE_MAX_BODY"


def test_invalid_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("NEXUS_PROBE_PORT", "abc")
    with pytest.raises(ConfigError) as exc:
        load_settings(ProbeSettings)
    message = str(exc.value)
    assert message.startswith("NEXUS_PROBE_PORT: ") and "'abc'" in message
    assert "\n" not in message


def test_out_of_range_value(monkeypatch):
    monkeypatch.setenv("NEXUS_PROBE_PORT", "70000")
    with pytest.raises(ConfigError, match="NEXUS_PROBE_PORT"):
        load_settings(ProbeSettings)


def test_secret_values_are_not_echoed(monkeypatch):
    monkeypatch.setenv("NEXUS_ETCD_PASSWORD", "x")  # valid; make another secret-named field fail
    monkeypatch.setenv("NEXUS_ETCD_TTL", "1")
    with pytest.raises(ConfigError, match="NEXUS_ETCD_TTL"):
        load_settings(SharedSettings)

    class Secretive(SharedSettings):
        internal_token: int = 0  # type: ignore[assignment]

    monkeypatch.setenv("NEXUS_ETCD_TTL", "10")
    monkeypatch.setenv("NEXUS_INTERNAL_TOKEN", "super-secret-value")
    with pytest.raises(ConfigError) as exc:
        load_settings(Secretive)
    assert "NEXUS_INTERNAL_TOKEN" in str(exc.value) and "super-secret-value" not in str(exc.value)
