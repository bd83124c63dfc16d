"""Settings: TOML in, frozen validated objects out, and errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from meterlake.config.errors import ConfigError, PermanentError
from meterlake.config.settings import (
    API_TOKENS_ENV,
    CONFIG_ENV,
    DEFAULT_CONFIG_NAME,
    MQTT_PASSWORD_ENV,
    ApiToken,
    Settings,
    load_settings,
)

TOKEN = "tok-4f9b2c7d1e8a6035"
OTHER_TOKEN = "tok-0a1b2c3d4e5f6789"
PASSWORD = "pw-Xq93!kd-unique"


@pytest.fixture(autouse=True)
def _no_ambient_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never pick up a ``meterlake.toml`` or ``$METERLAKE_*`` of the machine running the tests."""
    monkeypatch.chdir(tmp_path)
    for name in (CONFIG_ENV, MQTT_PASSWORD_ENV, API_TOKENS_ENV):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / "etc" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={} if environ is None else environ)
    return str(info.value)


def test_no_file_gives_defaults() -> None:
    settings, source = load_settings(None, environ={})
    assert source is None
    assert settings == Settings()
    assert settings.site.timezone == "Asia/Shanghai"
    assert settings.mqtt == ()
    assert settings.api.tokens == ()


def test_full_file_is_parsed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        [lake]
        path = "/srv/lake"
        compact_min_files = 8
        compact_target_rows = 100000

        [site]
        timezone = "Europe/Berlin"

        [[mqtt]]
        host = "broker.local"
        port = 8883
        username = "gw1"
        password = "{PASSWORD}"
        topics = ["tele/+/SENSOR", "$share/meterlake/meters/#"]

        [[mqtt]]
        host = "10.0.0.2"

        [[api.tokens]]
        token = "{TOKEN}"
        scopes = ["bills:read", "usage:read"]
        accounts = ["acc-1"]
        """,
    )
    settings, source = load_settings(path, environ={})
    assert source == path
    assert settings.lake.path == Path("/srv/lake")
    assert settings.lake.compact_min_files == 8
    assert settings.lake.compact_target_rows == 100_000
    assert settings.site.timezone == "Europe/Berlin"
    first, second = settings.mqtt
    assert (first.host, first.port, first.username) == ("broker.local", 8883, "gw1")
    assert first.password == PASSWORD
    assert first.topics == ("tele/+/SENSOR", "$share/meterlake/meters/#")
    assert (second.host, second.port, second.password) == ("10.0.0.2", 1883, None)
    assert settings.api.tokens == (
        ApiToken(token=TOKEN, scopes=("bills:read", "usage:read"), accounts=("acc-1",)),
    )


def test_default_file_in_working_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / DEFAULT_CONFIG_NAME).write_text("[[mqtt]]\nport = 1884\n")
    settings, source = load_settings(None, environ={})
    assert source == Path(DEFAULT_CONFIG_NAME)
    assert settings.mqtt[0].port == 1884


def test_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[[mqtt]]\nport = 1885\n")
    (tmp_path / DEFAULT_CONFIG_NAME).write_text("[[mqtt]]\nport = 1884\n")
    settings, source = load_settings(None, environ={CONFIG_ENV: str(path)})
    assert source == path
    assert settings.mqtt[0].port == 1885


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "gateway.toml"
    message = config_error(missing)
    assert str(missing) in message
    assert "no such config file" in message


def test_missing_file_named_by_env_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone.toml"
    message = config_error(None, {CONFIG_ENV: str(missing)})
    assert str(missing) in message


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[[mqtt]]\nhost = "a"\nport = = 3\n')
    message = config_error(path)
    assert message.startswith(f"{path}: not valid TOML")
    assert "line 3" in message


def test_config_error_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(PermanentError):
        load_settings(write(tmp_path, "[[mqtt]]\nport = 0\n"), environ={})


@pytest.mark.parametrize(
    ("text", "key", "value", "allowed"),
    [
        ("[[mqtt]]\nport = 70000\n", "[[mqtt]] #1 port", "70000", "less than or equal to 65535"),
        ("[[mqtt]]\nport = 0\n", "[[mqtt]] #1 port", "0", "greater than or equal to 1"),
        ("[[mqtt]]\n[[mqtt]]\nport = 'x'\n", "[[mqtt]] #2 port", "'x'", "valid integer"),
        ("[lake]\ncompact_min_files = 1\n", "[lake] compact_min_files", "1", "greater than"),
        ("[lake]\ncompact_target_rows = 10\n", "[lake] compact_target_rows", "10", "1000"),
        (
            "[site]\ntimezone = 'Mars/Olympus_Mons'\n",
            "[site] timezone",
            "'Mars/Olympus_Mons'",
            "IANA time zone such as Asia/Shanghai",
        ),
        (
            "[site]\ntimezone = '../../etc/passwd'\n",
            "[site] timezone",
            "'../../etc/passwd'",
            "IANA time zone",
        ),
        (
            f"[[api.tokens]]\ntoken = '{TOKEN}'\nscopes = 'bills:read'\n",
            "[[api.tokens]] #1 scopes",
            "'bills:read'",
            "valid tuple",
        ),
    ],
)
def test_bad_value_names_file_key_value_and_what_is_allowed(
    tmp_path: Path, text: str, key: str, value: str, allowed: str
) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert str(path) in message
    assert f"{key} = {value}" in message
    assert allowed in message


def test_bad_scope_names_the_scope_and_the_allowed_ones(tmp_path: Path) -> None:
    path = write(tmp_path, f"[[api.tokens]]\ntoken = '{TOKEN}'\nscopes = ['bills:write']\n")
    message = config_error(path)
    assert str(path) in message
    assert "scopes" in message
    assert "'bills:write': Input should be 'bills:read' or 'usage:read'" in message
    assert TOKEN not in message


def test_every_problem_is_listed(tmp_path: Path) -> None:
    path = write(tmp_path, "[[mqtt]]\nport = 0\n[site]\ntimezone = 'Nowhere/City'\n")
    message = config_error(path)
    assert "2 problems" in message
    assert "[[mqtt]] #1 port = 0" in message
    assert "[site] timezone = 'Nowhere/City'" in message


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ("[[mqtt]]\nhots = 'x'\n", "[[mqtt]] #1 hots", "host, port, username, password"),
        (
            "[lakes]\npath = 'x'\n",
            "lakes",
            "lake, site, mqtt, modbus, collect, spool, upstream, api, vee",
        ),
        ("[lake]\nroot = 'x'\n", "[lake] root", "path, compact_min_files, compact_target_rows"),
        (
            f"[[api.tokens]]\ntoken = '{TOKEN}'\nscopes = ['bills:read']\nscope = 'x'\n",
            "[[api.tokens]] #1 scope",
            "token, scopes, accounts",
        ),
    ],
)
def test_unknown_key_lists_the_allowed_keys(
    tmp_path: Path, text: str, key: str, allowed: str
) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert str(path) in message
    assert f"{key}: unknown key; allowed here: " in message
    assert allowed in message


def test_relative_lake_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[lake]\npath = 'data/lake'\n")
    settings, _ = load_settings(path, environ={})
    assert settings.lake.path == tmp_path / "etc" / "data" / "lake"


def test_default_lake_path_is_next_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[site]\ntimezone = 'UTC'\n")
    settings, _ = load_settings(path, environ={})
    assert settings.lake.path == tmp_path / "etc" / "lake"


def test_relative_tls_ca_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[[mqtt]]\ntls_ca_file = 'certs/ca.pem'\n[[mqtt]]\n[[mqtt]]\ntls_ca_file = '/etc/ca.pem'\n",
    )
    settings, _ = load_settings(path, environ={})
    assert [b.tls_ca_file for b in settings.mqtt] == [
        tmp_path / "etc" / "certs" / "ca.pem",
        None,
        Path("/etc/ca.pem"),
    ]


def test_relative_api_files_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[api]\ntls_cert = 'certs/api.pem'\ntls_key = '/etc/api.key'\n"
        "cursor_key_file = 'cursor.key'\n",
    )
    settings, _ = load_settings(path, environ={})
    assert settings.api.tls_cert == tmp_path / "etc" / "certs" / "api.pem"
    assert settings.api.tls_key == Path("/etc/api.key")
    assert settings.api.cursor_key_file == tmp_path / "etc" / "cursor.key"


def test_absolute_lake_path_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, f"[lake]\npath = '{tmp_path / 'elsewhere'}'\n")
    settings, _ = load_settings(path, environ={})
    assert settings.lake.path == tmp_path / "elsewhere"


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings, _ = load_settings(
        write(
            tmp_path,
            f"[[mqtt]]\n[[api.tokens]]\ntoken = '{TOKEN}'\nscopes = ['bills:read']\n",
        ),
        environ={},
    )
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.mqtt[0].port = 1  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.lake = settings.lake  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.api.tokens[0].token = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        settings.api.tokens.append(settings.api.tokens[0])  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        settings.mqtt[0] = settings.mqtt[0]  # type: ignore[index]
    assert isinstance(settings.api.tokens[0].scopes, tuple)
    assert settings.mqtt[0].port == 1883


def test_env_overrides_mqtt_password(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[[mqtt]]\nusername = 'gw1'\npassword = 'from-file'\n[[mqtt]]\nhost = 'b2'\n",
    )
    settings, _ = load_settings(path, environ={MQTT_PASSWORD_ENV: PASSWORD})
    assert [b.password for b in settings.mqtt] == [PASSWORD, PASSWORD]
    assert settings.mqtt[0].username == "gw1"
    settings, _ = load_settings(path, environ={})
    assert [b.password for b in settings.mqtt] == ["from-file", None]


def test_secrets_are_not_in_the_repr(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"[[mqtt]]\npassword = '{PASSWORD}'\n[[api.tokens]]\ntoken = '{TOKEN}'\n"
        "scopes = ['bills:read']\n",
    )
    settings, _ = load_settings(path, environ={})
    assert PASSWORD not in repr(settings)
    assert TOKEN not in repr(settings)


def test_os_environ_is_the_default_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MQTT_PASSWORD_ENV, PASSWORD)
    settings, _ = load_settings(write(tmp_path, "[[mqtt]]\nport = 1883\n"))
    assert settings.mqtt[0].password == PASSWORD


def test_env_overrides_api_tokens(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[[api.tokens]]\ntoken = 'file-token-000000000'\nscopes = ['bills:read']\n"
    )
    env = {API_TOKENS_ENV: f"{TOKEN}:bills:read+usage:read, {OTHER_TOKEN}:usage:read,"}
    settings, _ = load_settings(path, environ=env)
    assert settings.api.tokens == (
        ApiToken(token=TOKEN, scopes=("bills:read", "usage:read")),
        ApiToken(token=OTHER_TOKEN, scopes=("usage:read",)),
    )


@pytest.mark.parametrize(
    "entry",
    [TOKEN, f"{TOKEN}:", f":{TOKEN}", f"{TOKEN}:bills:read, {OTHER_TOKEN}"],
)
def test_malformed_token_entry_is_a_clear_error_without_the_secret(entry: str) -> None:
    message = config_error(None, {API_TOKENS_ENV: entry})
    assert f"${API_TOKENS_ENV}" in message
    assert "TOKEN:scope+scope" in message
    assert TOKEN not in message
    assert OTHER_TOKEN not in message
    assert TOKEN[3:] not in message
    assert OTHER_TOKEN[3:] not in message


@pytest.mark.parametrize(
    ("text", "environ"),
    [
        ("[[mqtt]]\npassword = 12345\n", {}),
        (f"[[mqtt]]\npassword = ['{PASSWORD}']\n", {}),
        ("[[api.tokens]]\ntoken = 'short-pw-Xq93'\nscopes = ['bills:read']\n", {}),
        (f"[[api.tokens]]\ntoken = '{TOKEN}'\nscopes = []\n", {}),
        (f"[api]\ntokens = '{TOKEN}:bills:read'\n", {}),
        (f"[api]\ntokens = ['{TOKEN}']\n", {}),
        (f"[api]\ntokens = {{ token = '{TOKEN}', scopes = ['bills:read'] }}\n", {}),
        (f"[[api.tokens]]\ntoken = '{TOKEN}'\nscopes = 'bills:read'\n", {}),
        (f"[[api.tokens]]\ntoken = '{TOKEN}'\nscopes = ['bills:write']\n", {}),
        (f"[[api.tokens]]\ntoken = '{TOKEN}'\n", {}),
        (f"[mqtt]\npassword = '{PASSWORD}'\n", {}),
        ("[[mqtt]]\nport = 0\n", {MQTT_PASSWORD_ENV: PASSWORD}),
        ("[[mqtt]]\nport = 0\n", {API_TOKENS_ENV: f"{TOKEN}:bills:write"}),
        ("[[mqtt]]\nport = 1883\n", {API_TOKENS_ENV: "short-pw-Xq93:bills:read"}),
        (f"mqtt = ['broker.local {PASSWORD}']\n", {MQTT_PASSWORD_ENV: PASSWORD}),
        (f"mqtt = 'broker.local {PASSWORD}'\n", {MQTT_PASSWORD_ENV: PASSWORD}),
        (f"api = 'x {TOKEN}'\n", {API_TOKENS_ENV: f"{TOKEN}:bills:read"}),
    ],
)
def test_secrets_never_appear_in_errors(tmp_path: Path, text: str, environ: dict[str, str]) -> None:
    path = write(tmp_path, text)
    message = config_error(path, environ)
    assert str(path) in message
    for secret in (TOKEN, PASSWORD, "short-pw-Xq93", "12345"):
        assert secret not in message


def test_hidden_secret_still_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[[api.tokens]]\ntoken = 'short-pw-Xq93'\nscopes = ['bills:read']\n")
    message = config_error(path)
    assert (
        "[[api.tokens]] #1 token = <hidden>: String should have at least 16 characters" in message
    )


def test_section_of_the_wrong_type_is_a_config_error_with_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt = 'broker.local'\napi = 3\n")
    environ = {MQTT_PASSWORD_ENV: PASSWORD, API_TOKENS_ENV: f"{TOKEN}:bills:read"}
    message = config_error(path, environ)
    assert str(path) in message
    assert "mqtt = <hidden>: Input should be a valid tuple" in message
    assert "api = <hidden>: Input should be a valid dictionary" in message
