"""The copilot behind a login: every page stops at the sign-in form, a token shows only its user's repositories,
a revoked token signs the session out; in a real browser against `grounding ui --login`."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from grounding import access, tokens
from grounding.index.ingest import ingest
from tests.conftest import git_repo
from tests.conftest import write_tree as tree
from tests.test_browser import CHROMEDRIVER, CHROMIUM, browser, running_copilot  # noqa: F401  (browser: a fixture)

APP = Path(__file__).resolve().parent.parent / "app"
PAGES = ("copilot.py", "pages/1_Ingest.py", "pages/2_Index.py", "pages/3_Training.py")




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
    yield {**names, "alice": alice, "token": tokens.create(alice)}
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM api_tokens WHERE user_name = :u"), {"u": alice})


def text_of(at: AppTest) -> str:
    kinds = ("markdown", "caption", "info", "warning", "error", "title")
    parts = [e.value for kind in kinds for e in getattr(at, kind)]
    parts += [str(o) for s in at.sidebar.multiselect for o in s.options]
    parts += [str(o) for s in at.selectbox for o in s.options]
    return "\n".join(str(p) for p in parts)


def signed_in(page: str, token: str) -> AppTest:
    at = AppTest.from_file(str(APP / page), default_timeout=120)
    at.run()
    at.text_input[0].input(token)
    at.button[0].click().run()  # the form's submit
    return at


@pytest.mark.parametrize("page", PAGES)
def test_every_page_stops_at_the_login_form(teams, page):
    at = AppTest.from_file(str(APP / page), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Sign in to grounding"]
    shown = text_of(at)
    assert teams["public"] not in shown and teams["payroll"] not in shown and "trusted mode" not in shown


def test_a_token_shows_only_its_users_repositories_and_a_bad_one_nothing(teams):
    at = signed_in("copilot.py", teams["token"].secret)
    assert not at.exception, at.exception
    assert at.sidebar.multiselect[0].options == [teams["public"]]
    assert f"Signed in as **{teams['alice']}**" in text_of(at) and teams["payroll"] not in text_of(at)

    bad = signed_in("copilot.py", teams["token"].secret[:-2] + "xx")
    assert "That token is not valid" in text_of(bad) and teams["public"] not in text_of(bad)
    assert [t.value for t in bad.title] == ["Sign in to grounding"]


def test_a_revoked_token_signs_the_session_out_and_sign_out_forgets_it(teams):
    at = signed_in("copilot.py", teams["token"].secret)
    assert at.sidebar.multiselect[0].options == [teams["public"]]
    tokens.revoke(teams["token"].id)
    at.run()  # the next interaction
    assert [t.value for t in at.title] == ["Sign in to grounding"] and "no longer valid" in text_of(at)
    assert teams["public"] not in text_of(at)

    again = signed_in("copilot.py", tokens.create(teams["alice"]).secret)
    assert again.sidebar.multiselect[0].options == [teams["public"]]
    next(b for b in again.sidebar.button if b.label == "Sign out").click().run()
    assert [t.value for t in again.title] == ["Sign in to grounding"]


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs Debian's chromium")
def test_the_browser_asks_for_a_login_then_shows_only_the_users_repositories(teams, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    copilot = running_copilot(tmp_path, "--login", drop=("GROUNDING_UI_AUTH",))
    with copilot as (url, proc, log_path):
        assert "with a login" in log_path.read_text()
        wait = WebDriverWait(browser, 120, poll_frequency=0.3)
        browser.get(f"{url}/?repo={teams['payroll']}")
        field = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'input[type="password"]'))
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "Sign in to grounding" in body and teams["public"] not in body and teams["payroll"] not in body
        field.send_keys(teams["token"].secret)
        field.send_keys(Keys.ENTER)
        sidebar = wait.until(
            lambda d: next(
                (e for e in d.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebar"]') if "Signed in as" in e.text),
                None,
            )
        )
        wait.until(lambda d: teams["public"] in d.find_element(By.TAG_NAME, "body").text)
        browser.save_screenshot(str(tmp_path / "signed-in.png"))
        body = browser.find_element(By.TAG_NAME, "body").text
        assert teams["alice"] in sidebar.text and teams["public"] in body
        assert teams["payroll"] not in body, "a ?repo= link to an ungranted repository selects nothing"
