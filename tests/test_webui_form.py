"""The web UI at the edges, in a real headless Chromium (Debian's chromium and chromium-driver): the start form
refuses each bad value before anything starts, naming the field; the Telemetry tab shows a run's end state
(drained, reconciled) without a reload; and the installed Locust page's polling rule that this relies on.

No rate is compared: one Locust web UI and one browser serve every bad value of the form."""

import locust  # noqa: I001  (first: gevent must patch before psycopg is imported)

import json
import re
import urllib.request
from pathlib import Path

import psycopg
import pytest

from firehose.report import webui
from tests.test_webui import ARTIFACTS, COUNT, WAIT_S, chromium, locust_web_ui, pick_classes, telemetry_rows

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

LOCUST_ASSETS = Path(locust.__file__).parent / "webui" / "dist" / "assets"
BIG_BATCH = 20_000
"""COPY batch size of the end-state run: several seconds of rows buffered, so STOP leaves a drain of seconds."""
NOT_THE_TARGET = "postgresql://bob@192.0.2.1:5432/prod"


def test_installed_page_polls_stats_only_while_spawning_or_running():
    """What the web UI's end state rests on (firehose.report.webui.reported_state): Locust's page takes its state
    from `/stats/requests` and polls that only while the state is spawning or running. If a Locust upgrade
    changes the rule, this fails: re-check how an open page learns a run's end."""
    page = "".join(path.read_text() for path in LOCUST_ASSETS.glob("*.js"))
    assert re.search(r"getStats:\w+\.query\(\{query:\(\)=>`stats/requests`", page)
    assert "RUNNING:`running`" in page and "SPAWNING:`spawning`" in page
    polling = re.search(
        r"(\w+)=(\w+)\.state===(\w+)\.SPAWNING\|\|\2\.state==\3\.RUNNING;.{0,2000}?shouldRunInterval:\1\}", page, re.S
    )
    assert polling, "the page polls /stats/requests on another condition than spawning or running"
    assert re.search(r"let\{state:(\w+),[^}]*\}=\w+[,;].{0,600}?\w+\(\{state:\1,workerCount:\w+\}\)", page, re.S), (
        "the page no longer takes its state from /stats/requests"
    )
    assert webui.reported_state("stopped", ending=True) == "running"
    assert webui.reported_state("stopping", ending=True) == "running"
    assert webui.reported_state("spawning", ending=True) == "spawning"
    assert webui.reported_state("stopped", ending=False) == "stopped"


def test_form_labels_show_no_format_codes_and_fit():
    label = webui.form_help("disk_floor", "free space (e.g. 5%% of the volume; default: %(default)s).", "1GB")
    assert label == "free space (e.g. 5% of the volume; default: 1GB)."
    long = webui.form_help("drain_timeout", "Seconds to wait (a, b). " + "More words here. " * 10, 60)
    assert long == "Seconds to wait (a, b)." + " More words here." * 5  # the whole sentences that fit
    assert len("Drain Timeout (" + long + ")") <= webui.FILLED_LABEL_CHARS < len("Drain Timeout (" + long) + 18
    clause = webui.form_help("seed", "Seed of the run (random by default, or the one given: " + "x" * 80 + ").", None)
    assert clause == "Seed of the run"  # no sentence fits: the last clause with its parentheses closed


@pytest.fixture(scope="module")
def web_ui(postgres):
    """One Locust web UI (large COPY batches, engineers that start over) and one browser for the module."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    extra = ("--continuous", "--copy-batch-size", str(BIG_BATCH), "--copy-pool-size", "1")
    with locust_web_ui(postgres.dsn, *extra, log_name="locust-form.log") as url, chromium() as driver:
        yield url, driver, postgres.dsn


def open_form(driver, url: str) -> None:
    """The start form: on a fresh page, or behind "New" once a run ended."""
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(
        lambda d: (
            d.find_elements(By.NAME, "userCount") or d.find_elements(By.XPATH, "//button[normalize-space()='New']")
        )
    )
    if new := driver.find_elements(By.XPATH, "//button[normalize-space()='New']"):
        new[0].click()
        WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.NAME, "userCount"))


def type_into(driver, name: str, value: str) -> str:
    """Replace a field's text (custom parameters are in their accordion, opened first); returns the text it had."""
    if not [field for field in driver.find_elements(By.NAME, name) if field.is_displayed()]:
        driver.find_element(By.XPATH, "//*[normalize-space()='Custom parameters']").click()
    field = WebDriverWait(driver, WAIT_S).until(
        lambda d: [field for field in d.find_elements(By.NAME, name) if field.is_displayed()]
    )[0]
    had = field.get_attribute("value")
    field.send_keys(Keys.CONTROL, "a")  # clear() does not reach React's state
    field.send_keys(value) if value else field.send_keys(Keys.DELETE)
    assert field.get_attribute("value") == value
    return had


def runs_recorded(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM firehose_runs").fetchone()[0]


def state(url: str) -> str:
    with urllib.request.urlopen(f"{url}/stats/requests", timeout=10) as answer:
        return json.load(answer)["state"]


BAD_VALUES = [
    # (what the form gets: classes ticked, input name -> text), the field the refusal must name
    ({"classes": {"CopyEngineer"}, "copyBatchSize": "lots"}, "Copy Batch Size"),  # text in a number field
    ({"classes": {"CopyEngineer"}, "copyBatchSize": "-5"}, "Copy Batch Size"),
    ({"classes": {"CopyEngineer"}, "copyPoolSize": "0"}, "Copy Pool Size"),
    ({"classes": {"CopyEngineer"}, "tracesPerEngineer": "0"}, "Traces Per Engineer"),
    ({"classes": {"CopyEngineer"}, "seed": "abc"}, "Seed"),
    ({"classes": {"CopyEngineer"}, "userCount": "0"}, "Number of users"),
    ({"classes": {"CopyEngineer"}, "host": NOT_THE_TARGET}, "Host"),
    ({"classes": {"CopyEngineer", "BatchedEngineer"}}, "User classes"),
    ({"classes": set()}, "User classes"),  # none ticked: Locust would run them all
]


@pytest.mark.slow
def test_form_refuses_each_bad_value_naming_the_field(web_ui):
    url, driver, dsn = web_ui
    before = runs_recorded(dsn)
    start_state = state(url)
    refused = {}
    open_form(driver, url)  # one form for every value: a refusal leaves it open, with its message
    for values, field in BAD_VALUES:
        pick_classes(driver, values["classes"])
        good = {name: type_into(driver, name, text) for name, text in values.items() if name != "classes"}
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        alert = WebDriverWait(driver, WAIT_S).until(
            lambda d: [a.text for a in d.find_elements(By.CSS_SELECTOR, "[role=alert]") if a.text.strip()]
        )
        refused[field] = alert[0]
        assert alert[0].startswith(f"{field}: "), (values, alert)
        assert state(url) == start_state, f"{values} started a run"
        for name, text in good.items():  # the next value alone is bad (typing clears the message)
            type_into(driver, name, text)
    driver.save_screenshot(str(ARTIFACTS / "form-refused.png"))
    assert "An unknown error occurred" not in " ".join(refused.values())
    assert NOT_THE_TARGET not in refused["Host"]  # the refusal names the target, not what was typed
    assert runs_recorded(dsn) == before, "a refused form recorded a run"


@pytest.mark.slow
def test_telemetry_tab_shows_the_end_state_without_a_reload(web_ui):
    """A COPY run from the form, stopped with STOP while a large batch is buffered: the open page (never
    reloaded) shows acknowledged == rows in the database, 0 buffered and the reconciliation line within 10 s
    of the drain's end (the summary printed)."""
    url, driver, dsn = web_ui
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE spans, metrics, logs, quarantine")
    log = ARTIFACTS / "locust-form.log"
    summaries_before = log.read_text().count("reconciliation:")
    open_form(driver, url)
    pick_classes(driver, {"CopyEngineer"})
    type_into(driver, "userCount", "4")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    # The tabs appear once the page has taken the run's start: wait for them, then open the Telemetry tab.
    telemetry_tab = "//button[contains(., 'Telemetry')]"
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.XPATH, telemetry_tab))[0].click()
    driver.execute_script("window.firehoseKept = 1")  # gone if the page were loaded again

    def buffered(d) -> int:
        rows = telemetry_rows(d)
        return int(rows["total"][4].replace(",", "")) if "total" in rows else 0

    WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(lambda d: buffered(d) >= BIG_BATCH // 2)
    driver.save_screenshot(str(ARTIFACTS / "end-1-buffered.png"))
    driver.find_element(By.XPATH, "//button[normalize-space()='Stop']").click()

    def ended(d) -> bool:
        return any(name.startswith("» reconciliation:") for name in telemetry_rows(d))

    # The drain's end is the summary printed; from then on the page has 10 s, without a reload.
    WebDriverWait(driver, 3 * WAIT_S, poll_frequency=0.2).until(
        lambda d: log.read_text().count("reconciliation:") > summaries_before
    )
    WebDriverWait(driver, 10, poll_frequency=0.2).until(ended)
    driver.save_screenshot(str(ARTIFACTS / "end-2-reconciled.png"))
    rows = telemetry_rows(driver)
    with psycopg.connect(dsn, autocommit=True) as conn:
        in_database = conn.execute(COUNT).fetchone()[0]
    assert in_database > 0
    assert int(rows["total"][3].replace(",", "")) == in_database, rows["total"]
    assert rows["total"][4] == "0", rows["total"]
    line = next(name for name in rows if name.startswith("» reconciliation:"))
    assert "lost = 0, duplicates = 0" in line and line.endswith("[OK]"), line
    assert driver.execute_script("return window.firehoseKept") == 1, "the page was reloaded"
    with urllib.request.urlopen(f"{url}/stats/report", timeout=30) as answer:  # the UI's Download Report
        report = answer.read().decode()
    assert 'id="firehose-telemetry"' in report and "reconciliation: lost = 0, duplicates = 0" in report
