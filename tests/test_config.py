from __future__ import annotations

from typing import Any

import pytest

from pipeline.config import load_settings
from pipeline.errors import ConfigError
from pipeline.secret import Secret
from tests.helpers import PASSCODE, environment, run_cli


def errors_of(env: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert PASSCODE not in str(info.value)
    return dict(info.value.errors)


def test_environment_defines_the_default_integration_with_documented_defaults() -> None:
    settings = load_settings(environment())
    integ = settings.integration("default")
    assert integ.account_id == "TEST-ACC-1"
    assert integ.upload_url == "https://eu1.api.clevertap.com/1/upload"
    assert (integ.batch_size, integ.max_concurrency, integ.flush_interval) == (1000, 15, 1.0)
    assert integ.consent_categories == ()
    assert settings.redis_url == "redis://127.0.0.1:1/0"


def test_passcode_never_appears_in_repr_str_or_public_dict() -> None:
    settings = load_settings(environment())
    for text in (
        repr(settings),
        str(settings),
        repr(settings.integration("default")),
        str(settings.public_dict()),
    ):
        assert PASSCODE not in text
    assert settings.integration("default").passcode.reveal() == PASSCODE
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(Secret("x"))


def test_region_error_names_the_variable_and_the_allowed_values() -> None:
    errs = errors_of(environment(CLEVERTAP_REGION="eu2"))
    assert errs == {"CLEVERTAP_REGION": "must be one of us1, in1, eu1, sg1, aps3, mec1, sk1"}


def test_every_error_is_reported_at_once() -> None:
    errs = errors_of(
        environment(
            CLEVERTAP_REGION="moon",
            CLEVERTAP_BATCH_SIZE="1001",
            CLEVERTAP_MAX_CONCURRENCY="16",
            CLEVERTAP_FLUSH_INTERVAL="0",
            CLEVERTAP_API_URL="ftp://example.com",
            CLEVERTAP_REGOIN="eu1",
        )
    )
    assert set(errs) == {
        "CLEVERTAP_REGION",
        "CLEVERTAP_BATCH_SIZE",
        "CLEVERTAP_MAX_CONCURRENCY",
        "CLEVERTAP_FLUSH_INTERVAL",
        "CLEVERTAP_API_URL",
        "CLEVERTAP_REGOIN",
    }
    assert errs["CLEVERTAP_BATCH_SIZE"] == "must be between 1 and 1000"
    assert errs["CLEVERTAP_MAX_CONCURRENCY"] == "must be between 1 and 15"
    assert "unknown setting" in errs["CLEVERTAP_REGOIN"]


def test_missing_credentials_are_named() -> None:
    errs = errors_of({"REDIS_URL": "redis://localhost:6379/0"})
    assert "CLEVERTAP_ACCOUNT_ID, CLEVERTAP_PASSCODE, CLEVERTAP_REGION" in errs


def test_consent_categories_are_a_comma_list_and_api_url_overrides_the_host() -> None:
    integ = load_settings(
        environment(
            CLEVERTAP_CONSENT_CATEGORIES="marketing, analytics", CLEVERTAP_API_URL="http://127.0.0.1:9000/"
        )
    ).integration("default")
    assert integ.consent_categories == ("marketing", "analytics")
    assert integ.upload_url == "http://127.0.0.1:9000/1/upload"


def test_passcode_with_a_line_break_is_rejected_without_echoing_it() -> None:
    errs = errors_of(environment(CLEVERTAP_PASSCODE=PASSCODE + "\r\nX-Evil: 1"))
    assert "CLEVERTAP_PASSCODE" in errs


TOML = """
redis_url = "redis://127.0.0.1:7777/2"

[integrations.eu]
account_id = "EU-ACC"
passcode_env = "EU_PASSCODE"
region = "eu1"
consent_categories = ["marketing"]
unmapped = "drop"

[integrations.eu.events]
"Video Played" = "Video Watched"

[integrations.eu.properties."Order Completed"]
coupon = "Coupon Code"

[integrations.in]
account_id = "IN-ACC"
passcode = "inline-passcode"
region = "in1"
batch_size = 500
"""


def test_toml_file_defines_several_integrations(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "pipeline.toml"  # type: ignore[operator]
    path.write_text(TOML)
    settings = load_settings({"CLEVERTAP_PIPELINE_CONFIG": str(path), "EU_PASSCODE": PASSCODE})
    assert set(settings.integrations) == {"eu", "in"}
    eu = settings.integration("eu")
    assert eu.passcode.reveal() == PASSCODE and eu.unmapped == "drop"
    assert eu.event_renames == {"Video Played": "Video Watched"}
    assert eu.property_renames == {"Order Completed": {"coupon": "Coupon Code"}}
    assert settings.integration("in").upload_url == "https://in1.api.clevertap.com/1/upload"
    assert settings.integration("in").batch_size == 500
    assert settings.redis_url == "redis://127.0.0.1:7777/2"
    # The environment's REDIS_URL wins over the file.
    settings = load_settings(
        {"CLEVERTAP_PIPELINE_CONFIG": str(path), "EU_PASSCODE": "x", "REDIS_URL": "redis://other:6379/0"}
    )
    assert settings.redis_url == "redis://other:6379/0"


def test_toml_errors_carry_key_paths(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "bad.toml"  # type: ignore[operator]
    path.write_text(
        '[integrations.eu]\naccount_id = "EU"\nregion = "eu9"\npasscode_env = "NOPE_UNSET"\nbogus = 1\n'
        '[integrations.us]\naccount_id = "EU"\nregion = "us1"\npasscode = "p"\nmax_concurrency = 5\n'
    )
    errs = errors_of({"CLEVERTAP_PIPELINE_CONFIG": str(path)})
    assert errs["integrations.eu.region"] == "must be one of us1, in1, eu1, sg1, aps3, mec1, sk1"
    assert errs["integrations.eu.bogus"] == "unknown key"


def test_integrations_sharing_an_account_must_share_its_limit(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "shared.toml"  # type: ignore[operator]
    path.write_text(
        '[integrations.a]\naccount_id = "ACC"\nregion = "eu1"\npasscode = "p"\nmax_concurrency = 15\n'
        '[integrations.b]\naccount_id = "ACC"\nregion = "eu1"\npasscode = "p"\nmax_concurrency = 5\n'
    )
    errs = errors_of({"CLEVERTAP_PIPELINE_CONFIG": str(path)})
    assert "integrations.b.max_concurrency" in errs


def test_unset_passcode_env_and_unreadable_file_are_errors(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "p.toml"  # type: ignore[operator]
    path.write_text('[integrations.eu]\naccount_id = "EU"\nregion = "eu1"\npasscode_env = "NOPE_UNSET"\n')
    assert errors_of({"CLEVERTAP_PIPELINE_CONFIG": str(path)}) == {
        "integrations.eu.passcode_env": "environment variable NOPE_UNSET is not set"
    }
    assert "CLEVERTAP_PIPELINE_CONFIG" in errors_of({"CLEVERTAP_PIPELINE_CONFIG": str(path) + ".missing"})


def test_token_lease_must_outlive_the_http_timeouts() -> None:
    errs = errors_of(environment(CLEVERTAP_READ_TIMEOUT="100", CLEVERTAP_TOKEN_LEASE="50"))
    assert "CLEVERTAP_TOKEN_LEASE" in errs


def test_check_config_prints_masked_settings_or_errors_with_exit_2() -> None:
    ok = run_cli("check-config", env=environment(process=True))
    assert ok.returncode == 0, ok.stderr
    assert b'"passcode": "********"' in ok.stdout
    assert PASSCODE.encode() not in ok.stdout + ok.stderr
    bad = run_cli("check-config", env=environment(process=True, CLEVERTAP_REGION="xx1"))
    assert bad.returncode == 2
    assert b"CLEVERTAP_REGION: must be one of us1, in1, eu1, sg1, aps3, mec1, sk1" in bad.stderr
    assert PASSCODE.encode() not in bad.stdout + bad.stderr


def test_check_config_takes_the_south_korea_region() -> None:
    ok = run_cli("check-config", env=environment(process=True, CLEVERTAP_REGION="sk1"))
    assert ok.returncode == 0, ok.stderr
    assert b'"region": "sk1"' in ok.stdout
    assert b"https://sk1.api.clevertap.com" in ok.stdout or b"sk1.api.clevertap.com" in ok.stdout


def test_a_passcode_that_cannot_be_an_http_header_is_rejected() -> None:
    assert "CLEVERTAP_PASSCODE" in errors_of(environment(CLEVERTAP_PASSCODE="pässcode"))


def test_the_rules_across_integrations_are_one_function_for_files_and_the_console(tmp_path: Any) -> None:
    from pipeline.config import rule_breaks

    base = load_settings(environment(None, CLEVERTAP_WRITE_KEY="k" * 20)).integration("default")
    broken = rule_breaks("other", base.account_id, 5, "k" * 20, [base])
    assert set(broken) == {"max_concurrency", "write_key"}
    assert "must equal integration default's max_concurrency (15)" in broken["max_concurrency"]
    assert "is integration default's write key too" in broken["write_key"]
    assert rule_breaks("other", "ANOTHER-ACC", 5, "j" * 20, [base]) == {}
    assert rule_breaks("default", base.account_id, 5, "k" * 20, [base]) == {}  # itself, being edited
    # The configuration file is held to the same rules, each named by its key path.
    path = tmp_path / "pipeline.toml"
    path.write_text(
        "\n".join(
            f'[integrations.{name}]\naccount_id = "ACC-1"\npasscode = "p"\nregion = "eu1"\n'
            f'max_concurrency = {limit}\nwrite_key = "{"k" * 20}"\n'
            for name, limit in (("a", 15), ("b", 5))
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_settings({"CLEVERTAP_PIPELINE_CONFIG": str(path)})
    assert dict(caught.value.errors) == {
        "integrations.b.max_concurrency": "must equal integration a's max_concurrency (15): both send as "
        "account ACC-1, which has one in-flight limit",
        "integrations.b.write_key": "is integration a's write key too: give each its own",
    }


def test_an_integration_that_breaks_a_rule_is_not_what_the_next_is_held_to(tmp_path: Any) -> None:
    path = tmp_path / "pipeline.toml"
    path.write_text(
        "\n".join(
            f'[integrations.{name}]\naccount_id = "ACC-1"\npasscode = "p"\nregion = "eu1"\n'
            f"max_concurrency = {n}\n"
            for name, n in (("a", 15), ("b", 10), ("c", 15))
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_settings({"CLEVERTAP_PIPELINE_CONFIG": str(path)})
    assert [p for p, _ in caught.value.errors] == ["integrations.b.max_concurrency"]  # c agrees with a


def test_console_integrations_that_break_a_rule_are_left_out_of_the_merge(redis_url: str) -> None:
    import dataclasses

    from pipeline.saved import merged

    base = load_settings(environment(redis_url, CLEVERTAP_WRITE_KEY="k" * 20))
    own = base.integration("default")

    class Saved:
        def configs(self) -> dict[str, Any]:
            return {
                "same-key": dataclasses.replace(own, name="same-key", account_id="OTHER"),
                "other-limit": dataclasses.replace(
                    own, name="other-limit", max_concurrency=5, write_key=None
                ),
                "fine": dataclasses.replace(own, name="fine", account_id="OTHER-2", write_key=None),
            }

    served = merged(base, Saved())  # type: ignore[arg-type]
    assert sorted(served.integrations) == ["default", "fine"]


def test_a_sentinel_broker_needs_its_master_name_and_every_password_is_masked() -> None:
    env = environment(
        None,
        CELERY_BROKER_URL="sentinel://:pw-one@h1:26379;sentinel://:pw-two@h2:26379/0",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert any(p.endswith(("BROKER_MASTER_NAME", "broker_master_name")) for p, _ in caught.value.errors)
    settings = load_settings({**env, "CLEVERTAP_BROKER_MASTER_NAME": "mymaster"})
    shown = settings.public_dict()
    assert "pw-" not in str(shown)
    assert shown["broker_url"] == "sentinel://:********@h1:26379;sentinel://:********@h2:26379/0"
    assert "pw-" not in repr(settings)
