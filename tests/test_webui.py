"""The web UI as a user meets it, in a real headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium): the class picker, a paced CopyEngineer run started from the form, the Telemetry tab's rows/s checked
against what the database itself counts over the same seconds, the reconciliation after the run, and a run
of two classes broken down per class. Screenshots go to results/webui/ (test artifacts)."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager, suppress
from datetime import datetime

import psycopg
import pytest

from firehose.strategies import user_classes
from services.ports import free_port
from tests.conftest import REPO

pytestmark = pytest.mark.slow
PACED = ("--engineer-rate", "300", "--copy-batch-size", "500", "--analyst-think-time", "0.25")
"""Both runs paced (each engineer at 300 events/s, analysts pausing between queries): a steady rate to compare, with
the CPU of a fraction of a core, on cores the other tests share; small COPY batches, so a class's "rows/s now" sees
commits every second or two, not one batch of 5,000 rows every ~15 s."""

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = REPO / "results" / "webui"
WAIT_S = 60
COUNT = "SELECT (SELECT count(*) FROM spans) + (SELECT count(*) FROM metrics) + (SELECT count(*) FROM logs)"

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("chromium and chromium-driver are not installed (make services)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@contextmanager
def locust_web_ui(dsn: str, *extra: str, log_name: str = "locust.log"):
    """`locust -f locustfile.py` with its web UI on a free loopback port (locust.conf: the class picker); its
    output in results/webui/`log_name`."""
    port = free_port()
    log = (ARTIFACTS / log_name).open("w")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "locust", "-f", "locustfile.py"),
            *("--web-host", "127.0.0.1", "--web-port", str(port), "--pg-dsn", dsn, *extra),
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            with suppress(OSError):
                urllib.request.urlopen(url, timeout=1).close()
                break
            assert process.poll() is None, (ARTIFACTS / log_name).read_text()[-3000:]
            assert time.monotonic() < deadline, "the web UI did not answer"
            time.sleep(0.1)
        yield url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
        log.close()


@contextmanager
def chromium():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class DatabaseCounter:
    """Counts the telemetry tables' rows in a thread, with the time each count's snapshot was taken."""

    def __init__(self, dsn: str) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(dsn,), daemon=True)
        self._thread.start()

    def _run(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                before = time.time()
                count = conn.execute(COUNT).fetchone()[0]
                self.samples.append((before, count))
                self._stop.wait(0.2)

    def at(self, when: float) -> float:
        """Rows in the database at `when` (interpolated between the two counts around it)."""
        for (t0, c0), (t1, c1) in zip(self.samples, self.samples[1:], strict=False):
            if t0 <= when <= t1:
                return c0 + (c1 - c0) * (when - t0) / (t1 - t0)
        raise AssertionError(f"no database count around {when}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def pick_classes(driver, wanted: set[str]) -> None:
    """In the class picker, check exactly `wanted`."""
    rows = driver.find_elements(By.XPATH, "//tr[td[substring(text(), string-length(text()) - 7) = 'Engineer'"
                                " or text() = 'Analyst']]")  # fmt: skip
    listed = len(user_classes()) + 1  # every strategy's class and the Analyst
    assert len(rows) == listed, f"the class picker lists the {listed} user classes"
    for row in rows:
        name = row.find_elements(By.TAG_NAME, "td")[1].text
        box = row.find_element(By.CSS_SELECTOR, "input[type=checkbox]")
        if box.is_selected() != (name in wanted):
            # With eight classes the picker's list outgrows the dialog: bring the row into view first.
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
            box.click()
    assert {r.find_elements(By.TAG_NAME, "td")[1].text for r in rows if r.find_element(
        By.CSS_SELECTOR, "input[type=checkbox]").is_selected()} == wanted  # fmt: skip


def start_run(
    driver, url: str, classes: set[str], users: int, run_time: str, *, new: bool = False, mixed: bool = False
) -> None:
    """Start a run from the form (`mixed`: tick Mixed, for several writing classes)."""
    driver.get(url)
    if new:  # after a run: the "New" button opens the start form again
        WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.XPATH, "//button[normalize-space()='New']"))[
            0
        ].click()
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.NAME, "userCount"))
    pick_classes(driver, classes)
    for name, value in (("userCount", str(users)), ("spawnRate", str(users))):
        field = driver.find_element(By.NAME, name)
        field.send_keys(Keys.CONTROL, "a")  # clear() does not reach React's state
        field.send_keys(value)
        assert field.get_attribute("value") == value
    run_field = driver.find_element(By.NAME, "runTime")
    if not run_field.is_displayed():  # in the "Advanced options" accordion
        driver.find_element(By.XPATH, "//button[contains(., 'Advanced options')]").click()
        WebDriverWait(driver, WAIT_S).until(lambda d: run_field.is_displayed())
    run_field.send_keys(Keys.CONTROL, "a")
    run_field.send_keys(run_time)
    assert run_field.get_attribute("value") == run_time
    if mixed:
        driver.find_element(By.XPATH, "//*[normalize-space()='Custom parameters']").click()
        label = WebDriverWait(
            driver, WAIT_S
        ).until(  # MUI's checkbox input itself is transparent: its label takes clicks
            lambda d: [
                label for label in d.find_elements(By.XPATH, "//label[.//input[@name='mixed']]") if label.is_displayed()
            ]
        )[0]
        label.click()
        assert label.find_element(By.TAG_NAME, "input").is_selected()
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def telemetry_rows(driver) -> dict[str, list[str]]:
    """The Telemetry tab's table: first cell -> the row's cells (read at once: React re-renders it every 2 s)."""
    found = driver.execute_script(
        "return [...document.querySelectorAll('table tr')]"
        ".map(r => [...r.querySelectorAll('td')].map(c => c.innerText))"
    )
    return {cells[0]: cells for cells in found if cells}


def window_of(rows: dict[str, list[str]]) -> tuple[float, float] | None:
    """The seconds "rows/s now" was measured over, from the tab's window row (HH:MM:SS.s - HH:MM:SS.s)."""
    for name in rows:
        if match := re.match(
            r"» rows/s now: over the last [\d.]+ s \((\d\d:\d\d:\d\d\.\d) - (\d\d:\d\d:\d\d\.\d)\)", name
        ):
            today = datetime.now().strftime("%Y-%m-%d ")
            return tuple(
                datetime.strptime(today + stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp() for stamp in match.groups()
            )
    return None


@pytest.mark.usefixtures("rate_priority")  # the Telemetry tab's rows/s within 20 % of the database's
def test_telemetry_tab_rows_per_s_matches_the_database(dsn):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    counter = DatabaseCounter(dsn)
    try:
        with locust_web_ui(dsn, "--continuous", *PACED) as url, chromium() as driver:
            # The class picker is on (locust.conf), the Host field shows the database, no "no host" warning.
            driver.get(url)
            WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.NAME, "host"))
            assert "dbname=firehose" in driver.find_element(By.NAME, "host").get_attribute("value")
            assert "no host attribute" not in driver.page_source
            start_run(driver, url, {"CopyEngineer"}, users=10, run_time="25s")
            driver.save_screenshot(str(ARTIFACTS / "1-started.png"))

            driver.get(f"{url}/?tab=telemetry")
            # Wait for a full window of rows/s (10 s of samples), then compare with the database's own count.
            checked = None

            def full_window(d):
                nonlocal checked
                rows = telemetry_rows(d)
                window = window_of(rows)
                if window and window[1] - window[0] >= 9.5 and "total" in rows and rows["total"][1]:
                    checked = (float(rows["total"][1].replace(",", "")), window)
                    return True
                return False

            WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(full_window)
            driver.save_screenshot(str(ARTIFACTS / "2-telemetry-tab.png"))
            page_rate, (start, end) = checked
            database_rate = (counter.at(end) - counter.at(start)) / (end - start)
            print(f"Telemetry tab: {page_rate:,.0f} rows/s; database over the same {end - start:.1f} s: "
                  f"{database_rate:,.0f} rows/s")  # fmt: skip
            assert database_rate > 0
            assert abs(page_rate - database_rate) <= 0.2 * database_rate

            # STOP once the rates were compared; the chart page, then the reconciliation once the run drained.
            driver.find_element(By.XPATH, "//button[normalize-space()='Stop']").click()
            driver.get(f"{url}/telemetry")
            WebDriverWait(driver, WAIT_S).until(
                lambda d: d.find_element(By.ID, "chart").find_elements(By.TAG_NAME, "path")
            )
            driver.save_screenshot(str(ARTIFACTS / "3-chart-page.png"))
            WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(
                lambda d: d.find_element(By.ID, "reconciliation").text
            )
            line = driver.find_element(By.ID, "reconciliation").text
            assert line.startswith("reconciliation: lost = 0, duplicates = 0") and line.endswith("[OK]"), line
            driver.save_screenshot(str(ARTIFACTS / "4-run-ended.png"))
            driver.get(f"{url}/?tab=telemetry")
            WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(
                lambda d: any(name.startswith("» reconciliation: lost = 0") for name in telemetry_rows(d))
            )
            driver.save_screenshot(str(ARTIFACTS / "5-telemetry-tab-ended.png"))

            # A second run, of two writing classes on purpose (Mixed) and the analysts: the summary and the tab break
            # rows/s down per class, and the tab shows the analysts' query percentiles at the end.
            # The run is stopped once each writing class committed rows and an analyst's query was counted (a query
            # still in flight when a run ends is not: after a 25 s run's rows, a first query can outlast a short run).
            classes = {"CopyEngineer", "BatchedEngineer", "Analyst"}
            start_run(driver, url, classes, users=6, run_time="120s", new=True, mixed=True)
            driver.get(f"{url}/?tab=telemetry")

            def each_class_wrote_and_a_query_counted(d) -> bool:
                rows = telemetry_rows(d)
                wrote = all(  # each class's rows/s now
                    float((rows.get(name, ["", ""])[1] or "0").replace(",", "")) > 0
                    for name in ("class CopyEngineer", "class BatchedEngineer")
                )
                return wrote and any(name.startswith("» query ") for name in rows)

            WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(each_class_wrote_and_a_query_counted)
            driver.find_element(By.XPATH, "//button[normalize-space()='Stop']").click()
            driver.get(f"{url}/telemetry")
            WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(
                lambda d: (
                    "BatchedEngineer" in d.find_element(By.ID, "summary").text
                    and d.find_element(By.ID, "reconciliation").text.endswith("[OK]")
                )
            )
            summary = driver.find_element(By.ID, "summary").text
            driver.save_screenshot(str(ARTIFACTS / "6-two-classes.png"))
            per_class = {line.split()[0] for line in summary.splitlines() if line.split()[:1] in (
                ["CopyEngineer"], ["BatchedEngineer"])}  # fmt: skip
            assert per_class == {"CopyEngineer", "BatchedEngineer"}, summary
            driver.get(f"{url}/?tab=telemetry")
            WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(
                lambda d: any(name.startswith("» reconciliation:") for name in telemetry_rows(d))
            )
            rows = telemetry_rows(driver)
            driver.save_screenshot(str(ARTIFACTS / "7-two-classes-tab.png"))
            for name in ("class CopyEngineer", "class BatchedEngineer"):
                assert float(rows[name][1].replace(",", "")) > 0, rows[name]  # the class's rows/s
            queries = [name for name in rows if name.startswith("» query ")]
            assert queries and all("p50 / p95 / p99 ms" in name for name in queries), list(rows)
    finally:
        counter.stop()
