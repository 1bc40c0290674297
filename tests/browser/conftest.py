"""Browser tests: Playwright driving Debian's Chromium against two running instances.

The two instances (alpha.localhost and beta.localhost, see harness.py) start once for
this directory and are killed, process group by process group, when its tests are done.
On PostgreSQL and Redis when PUSHMAIL_TEST_POSTGRES / PUSHMAIL_TEST_REDIS say so (tools/test.sh),
like the two-instance tests. With CI=true a missing /usr/bin/chromium, or a missing
PostgreSQL or Redis, fails every test here instead of skipping it.

The test process never touches the Django ORM (Playwright's sync API runs an event loop,
and the instances have their own databases): setup goes through management commands,
``manage.py shell`` on the instance, and the user API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.harness import (
    CHROMIUM,
    CountingServer,
    is_ci,
    launch_chromium,
    port_in_range,
    start_pair,
    stop_all,
)
from tests.integration.conftest import backend_problem
from tools.cluster import Backend, Instance, log_tails

_LIVE: list[Instance] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when in ("setup", "call"):
        report.sections.extend(log_tails(list(_LIVE)))


@pytest.fixture(scope="package")
def browser_prerequisites() -> Backend:
    """Chromium and (under CI) PostgreSQL + Redis: missing ones fail under CI=true, skip otherwise."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)"
        if is_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    backend = Backend.from_env()
    problem = backend_problem(backend)
    if problem:
        pytest.fail(problem, pytrace=False)
    return backend


@pytest.fixture(scope="package")
def image_server(browser_prerequisites: Backend) -> Iterator[CountingServer]:
    server = CountingServer(port_in_range(18900, 19000)).start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def instances(
    browser_prerequisites: Backend, image_server: CountingServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Instance]]:
    """alpha.localhost and beta.localhost, started once for all browser tests."""
    base = tmp_path_factory.mktemp("browser-instances")
    env = {
        # The image proxy may fetch from the local counting server (loopback is refused otherwise).
        "PUSHMAIL_IMAGE_PROXY_ALLOW_HOSTS": f"127.0.0.1,127.0.0.1:{image_server.port}",
    }
    pair = start_pair(base, prefix="browser", backend=browser_prerequisites, env=env)
    _LIVE.extend(pair.values())
    try:
        yield pair
    finally:
        stop_all(pair.values())
        _LIVE.clear()


@pytest.fixture(scope="package")
def alpha(instances: dict[str, Instance]) -> Instance:
    return instances["alpha"]


@pytest.fixture(scope="package")
def beta(instances: dict[str, Instance]) -> Instance:
    return instances["beta"]


@pytest.fixture(scope="package")
def playwright_driver(browser_prerequisites: Backend) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright_driver: Any) -> Iterator[Any]:
    chromium = launch_chromium(playwright_driver)
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile per test (no cookies), failing fast on a stuck page."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: Any) -> Any:
    """A page that records every dialog (alert, confirm, prompt) in ``page.dialogs``.

    Confirmations are accepted (a "Withdraw?" confirm is the user saying yes); the HTML-mail
    test asserts that no dialog opened at all.
    """
    page = context.new_page()
    page.dialogs = []

    def on_dialog(dialog: Any) -> None:
        page.dialogs.append(f"{dialog.type}: {dialog.message}")
        if dialog.type == "confirm":
            dialog.accept()
        else:
            dialog.dismiss()

    page.on("dialog", on_dialog)
    return page
