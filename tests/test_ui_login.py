"""The copilot behind a login: every page stops at the sign-in form, a token shows only its user's repositories,
a revoked or expired token signs the session out, `grounding ui` off loopback always asks for a login; in
AppTest and in a real browser against `grounding ui --login`."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from grounding import access, tokens
from grounding.cli import main
from grounding.index.ingest import ingest
from tests.conftest import git_repo, streamlit_server
from tests.conftest import write_tree as tree
from tests.test_browser import CHROMEDRIVER, CHROMIUM, browser, running_copilot  # noqa: F401  (browser: a fixture)

APP = Path(__file__).resolve().parent.parent / "app"
PAGES = ("copilot.py", "pages/1_Ingest.py", "pages/2_Index.py", "pages/3_Training.py")
LOGIN = ["Sign in to grounding"]
AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "s" * 32}  # [auth] in secrets.toml


@pytest.fixture
def teams(engine, repo_name, hashing, tmp_path, monkeypatch):
    """`public` granted to alice, `payroll` to nobody; alice's token; the copilot's pages on sys.path, login on."""
    names = {"public": f"{repo_name}-public", "payroll": f"{repo_name}-payroll"}
    ingest(str(git_repo(tree(tmp_path / "p", {"greet.py": "def greet():\n    return 'hi'\n"}))), name=names["public"],
           embedder=hashing)  # fmt: skip
    ingest(str(git_repo(tree(tmp_path / "q", {"bonus.py": "def payroll_bonus():\n    return 0.42\n"}))),
           name=names["payroll"], embedder=hashing)  # fmt: skip
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    access.grant(alice, names["public"])
    monkeypatch.syspath_prepend(str(APP))
    monkeypatch.setenv("GROUNDING_UI_AUTH", "token")
    monkeypatch.setenv("GROUNDING_UI_USER", "someone-else")  # ignored once a login is on
    yield {**names, "alice": alice, "token": tokens.create(alice), "tmp": tmp_path}
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM api_tokens WHERE user_name = :u"), {"u": alice})
        conn.execute(sa.text("DELETE FROM grants WHERE principal = :p"), {"p": f"user:{alice}"})


def text_of(at: AppTest) -> str:
    """Everything a reader could see: text, the options of every select box, the cells of every table."""
    kinds = ("markdown", "caption", "info", "warning", "error", "success", "title", "subheader")
    parts = [e.value for kind in kinds for e in getattr(at, kind)]
    parts += [str(o) for box in (*at.multiselect, *at.selectbox) for o in box.options]
    parts += [frame.value.to_csv() for frame in at.dataframe]
    return "\n".join(str(p) for p in parts)


def signed_in(page: str, token: str, at: AppTest | None = None) -> AppTest:
    """The page after typing `token` into its login form and pressing Sign in."""
    at = at or AppTest.from_file(str(APP / page), default_timeout=120)
    at.run()
    at.text_input[0].input(token)
    next(b for b in at.button if b.label == "Sign in").click().run()
    return at


@pytest.mark.parametrize("page", PAGES)
def test_every_page_stops_at_the_login_form_then_shows_only_the_users_repositories(teams, page):
    at = AppTest.from_file(str(APP / page), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == LOGIN
    shown = text_of(at)
    assert teams["public"] not in shown and teams["payroll"] not in shown and "trusted mode" not in shown

    signed_in(page, teams["token"].secret, at)
    assert not at.exception, at.exception
    shown = text_of(at)
    assert teams["public"] in shown and teams["payroll"] not in shown, shown
    assert f"Signed in as **{teams['alice']}**" in shown and "trusted mode" not in shown


def test_a_bad_token_shows_an_error_and_nothing_else(teams):
    bad = signed_in("copilot.py", teams["token"].secret[:-2] + "xx")
    assert "That token is not valid" in text_of(bad) and teams["public"] not in text_of(bad)
    assert [t.value for t in bad.title] == LOGIN and not bad.sidebar.multiselect


def test_an_admin_token_acts_as_its_user_on_the_ingest_page(teams):
    at = signed_in("pages/1_Ingest.py", tokens.create(teams["alice"], admin=True).secret)
    assert f"Signed in as **{teams['alice']}** (admin)" in text_of(at)
    assert at.selectbox[0].options == [teams["public"]], "re-ingest only what alice may read"
    assert not [t for t in at.text_input if t.label == "Source"], "no free-form source: that is trusted mode's"


@pytest.mark.parametrize("end", ["revoked", "expired"])
def test_a_revoked_or_expired_token_signs_the_session_out(teams, engine, end):
    at = signed_in("copilot.py", teams["token"].secret)
    assert at.sidebar.multiselect[0].options == [teams["public"]]
    at.session_state["chat"] = [{"role": "user", "content": "what does payroll pay?"}]
    if end == "revoked":
        tokens.revoke(teams["token"].id)
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE api_tokens SET expires_at = now() WHERE id = :i"), {"i": teams["token"].id})
        tokens._checked.forget()  # what token_cache_s seconds would do: the copilot looks at the row again
    at.run()  # the next interaction
    assert [t.value for t in at.title] == LOGIN and "no longer valid" in text_of(at)
    assert teams["public"] not in text_of(at) and "chat" not in at.session_state, "the session forgets what it held"


def test_sign_out_forgets_the_token(teams):
    at = signed_in("pages/2_Index.py", teams["token"].secret)
    assert teams["public"] in text_of(at)
    next(b for b in at.sidebar.button if b.label == "Sign out").click().run()
    assert [t.value for t in at.title] == LOGIN and teams["public"] not in text_of(at)
    at.run()
    assert [t.value for t in at.title] == LOGIN


@pytest.mark.parametrize(
    ("args", "auth"),
    [
        (["--address", "0.0.0.0"], "token"),  # off loopback: a login, not a refusal, and never trusted mode
        (["--address", "10.1.2.3"], "token"),
        (["--login"], "token"),
        ([], "none"),  # loopback without --login: the one user of GROUNDING_UI_USER, or trusted mode
    ],
)
def test_grounding_ui_off_loopback_starts_behind_the_login(teams, monkeypatch, capsys, args, auth, loopback_ui):
    started = {}

    class Streamlit:  # stands in for `streamlit run`: records how it was started, and exits at once
        def __init__(self, command, *, env, cwd):
            started.update(command=command, env=env)

        def poll(self):
            return 0

        wait = poll

    monkeypatch.setattr(subprocess, "Popen", Streamlit)
    assert main(["ui", "--headless", *args]) == 0
    env = started["env"]
    assert env["GROUNDING_UI_AUTH"] == auth
    assert started["command"][started["command"].index("--server.address") + 1] == (args[1:2] or ["127.0.0.1"])[0]
    assert ("GROUNDING_UI_USER" in env) == (auth == "none"), "--user and GROUNDING_UI_USER only without a login"

    monkeypatch.setenv("GROUNDING_UI_AUTH", env["GROUNDING_UI_AUTH"])  # the app, as that command starts it
    monkeypatch.delenv("GROUNDING_UI_USER")
    command = started["command"]
    st_config.set_option("server.address", command[command.index("--server.address") + 1])
    hosts = [command[i + 1] for i, arg in enumerate(command) if arg == "--server.allowedHosts"]
    assert (hosts == ["127.0.0.1", "::1", "localhost"]) == (auth == "none"), "no login: this machine's names only"
    st_config.set_option("server.allowedHosts", hosts)
    at = AppTest.from_file(str(APP / "copilot.py"), default_timeout=120)
    at.run()
    assert ([t.value for t in at.title] == LOGIN) == (auth == "token")
    assert (teams["payroll"] in text_of(at)) == (auth == "none"), "trusted mode reads every repository"


@pytest.mark.parametrize(
    ("address", "hosts"),
    [
        ("0.0.0.0", ["localhost"]),
        ("::", ["localhost"]),
        (None, ["localhost"]),
        ("127.0.0.1", []),  # loopback, but any Host admitted: a page rebound to 127.0.0.1 could drive it
        ("127.0.0.1", ["*"]),
        ("127.0.0.1", ["localhost", "intranet.example.com"]),
    ],
)
def test_trusted_mode_is_refused_by_a_server_listening_off_loopback(teams, monkeypatch, address, hosts):
    """GROUNDING_UI_AUTH=none by hand, with `streamlit run --server.address 0.0.0.0`, or with no address
    (Streamlit then listens on every interface), or admitting a Host that is not this machine: a login all the
    same."""
    monkeypatch.setenv("GROUNDING_UI_AUTH", "none")
    monkeypatch.delenv("GROUNDING_UI_USER")
    with streamlit_server(address, hosts):
        at = AppTest.from_file(str(APP / "pages/1_Ingest.py"), default_timeout=120)
        at.run()
    assert [t.value for t in at.title] == LOGIN and teams["payroll"] not in text_of(at)


def test_grounding_ui_refuses_the_removed_insecure_flag(capsys):
    with pytest.raises(SystemExit):
        main(["ui", "--address", "0.0.0.0", "--insecure-no-auth", "--headless"])
    assert "unrecognized arguments: --insecure-no-auth" in capsys.readouterr().err


# Streamlit's OIDC: no identity provider here, so AppTest stands in for what st.login leaves in st.user.


@pytest.fixture
def oidc(teams, monkeypatch):
    """secrets.toml's [auth] with an unnamed provider and [auth.okta], Authlib taken as installed."""
    import streamlit.auth_util

    monkeypatch.setattr(streamlit.auth_util, "is_authlib_installed", lambda: True)
    return {
        **AUTH,
        "client_id": "grounding",
        "client_secret": "x",
        "server_metadata_url": "https://sso.example.com/.well-known/openid-configuration",
        "okta": {"client_id": "g", "client_secret": "x", "server_metadata_url": "https://okta.example.com/x"},
    }


def oidc_app(page: str, auth: dict, user: dict) -> AppTest:
    at = AppTest.from_file(str(APP / page), default_timeout=120)
    at.secrets["auth"], at.user = auth, user
    return at.run()


def test_oidc_sign_in_is_offered_where_configured_and_its_user_sees_only_their_repositories(teams, oidc):
    at = oidc_app("copilot.py", oidc, {"is_logged_in": False})
    assert [t.value for t in at.title] == LOGIN
    assert {b.label for b in at.button} >= {"Sign in with sso.example.com", "Sign in with Okta"}
    assert teams["public"] not in text_of(at)

    at = oidc_app("pages/2_Index.py", oidc, {"is_logged_in": True, "sub": teams["alice"], "email": "a@example.com"})
    shown = text_of(at)
    assert f"Signed in as **{teams['alice']}** (through your identity provider)" in shown
    assert teams["public"] in shown and teams["payroll"] not in shown


@pytest.mark.parametrize("sub", ["group:payroll", "user:x", "", None])
def test_an_oidc_claim_that_names_no_user_signs_in_nobody(teams, oidc, sub):
    at = oidc_app("copilot.py", oidc, {"is_logged_in": True, "sub": sub})
    assert [t.value for t in at.title] == LOGIN and "no usable `sub` claim" in text_of(at)
    assert teams["public"] not in text_of(at) and teams["payroll"] not in text_of(at)


def test_an_unverified_email_signs_in_nobody(teams, oidc, monkeypatch):
    from grounding.config import reset_settings

    monkeypatch.setenv("GROUNDING_OIDC_USER_CLAIM", "email")
    reset_settings()
    try:
        at = oidc_app("copilot.py", oidc, {"is_logged_in": True, "email": teams["alice"], "email_verified": False})
        assert [t.value for t in at.title] == LOGIN and teams["public"] not in text_of(at)
        at = oidc_app("copilot.py", oidc, {"is_logged_in": True, "email": teams["alice"], "email_verified": True})
        assert at.sidebar.multiselect[0].options == [teams["public"]]
    finally:
        monkeypatch.delenv("GROUNDING_OIDC_USER_CLAIM")
        reset_settings()


def test_without_authlib_an_oidc_section_offers_nothing_and_signs_in_nobody(teams, oidc, monkeypatch):
    import streamlit.auth_util

    monkeypatch.setattr(streamlit.auth_util, "is_authlib_installed", lambda: False)
    at = oidc_app("copilot.py", oidc, {"is_logged_in": True, "sub": teams["alice"]})
    assert [t.value for t in at.title] == LOGIN and [b.label for b in at.button] == ["Sign in"]


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs Debian's chromium")
def test_the_browser_asks_for_a_login_then_shows_only_the_users_repositories(teams, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def body() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    def sign_in_with(secret: str) -> None:
        field = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'input[type="password"]'))
        field.send_keys(secret)
        field.send_keys(Keys.ENTER)

    copilot = running_copilot(tmp_path, "--login", drop=("GROUNDING_UI_AUTH",))
    with copilot as (url, proc, log_path):
        assert "with a login" in log_path.read_text()
        wait = WebDriverWait(browser, 120, poll_frequency=0.3)
        browser.get(f"{url}/?repo={teams['payroll']}")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'input[type="password"]'))
        assert "Sign in to grounding" in body() and teams["public"] not in body() and teams["payroll"] not in body()

        sign_in_with(teams["token"].secret[:-2] + "xx")
        wait.until(lambda d: "That token is not valid" in body())
        assert teams["public"] not in body() and teams["payroll"] not in body() and "Signed in as" not in body()

        sign_in_with(teams["token"].secret)
        sidebar = wait.until(
            lambda d: next(
                (e for e in d.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebar"]') if "Signed in as" in e.text),
                None,
            )
        )
        wait.until(lambda d: teams["public"] in body())
        browser.save_screenshot(str(tmp_path / "signed-in.png"))
        assert teams["alice"] in sidebar.text and teams["public"] in body()
        assert teams["payroll"] not in body(), "a ?repo= link to an ungranted repository selects nothing"


def test_a_failed_ingests_error_is_shown_to_a_signed_in_admin_and_not_to_a_user(teams, monkeypatch):
    """As the API shows a failed snapshot's error to admins only (it may name server paths)."""
    import sys

    from grounding.errors import GroundingError

    def fail(*args, **kwargs):
        raise RuntimeError("could not read /srv/secret-mount/ledger.db")

    with monkeypatch.context() as patch:
        patch.setattr(sys.modules["grounding.index.ingest"], "_write_snapshot", fail)
        with pytest.raises(GroundingError):
            ingest(str(teams["tmp"] / "p"), name=teams["public"])
    admin = tokens.create(teams["alice"], admin=True)
    for token, sees in ((teams["token"], False), (admin, True)):
        at = signed_in("pages/2_Index.py", token.secret)
        assert not at.exception, at.exception
        shown = text_of(at)
        assert ("secret-mount" in shown) is sees, shown
        assert ("an administrator can read why" in shown) is not sees
        assert str(teams["tmp"]) not in shown, "the source stays trusted mode's"
