"""The product document's Steps 5-6 walked in headless Chromium against the running API, workers and emulator.

Playwright for Python drives Debian's /usr/bin/chromium (no browser download). Screenshots of every
step go to $TEST_SCREENSHOTS_DIR (default: the test's tmp dir, `screenshots/`). At every screenshot
axe-core (tests/assets/axe.min.js, npm `axe-core`, MPL-2.0; a test asset Playwright injects into each
page, never served by the product) checks the page: no serious or critical violation, and the page
reported no Content-Security-Policy violation. Without chromium the test skips locally and fails in CI.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.settings import Settings
from tests.api_harness import ApiServer
from tests.conftest import IN_CI
from tests.stack import Stack

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).resolve().parent / "assets" / "axe.min.js"
_AXE_RUN = """async () => (await axe.run(document, {resultTypes: ['violations']})).violations.map(
    v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))"""
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WRONG_SECRET = "s1~the-secret-id-pasted-instead-of-its-value"
TEST_TO = "ana@example.org"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason}: CI must provide it (.ci/run installs Debian's chromium)")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A Chromium page in a fresh profile, headless; closed after the test."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context.set_default_timeout(20_000)
        context.add_init_script(path=str(AXE))  # through the DevTools protocol: the page's CSP does not apply
        page = context.pages[0] if context.pages else context.new_page()
        csp_errors: list[str] = []
        page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
        page.csp_errors = csp_errors
        try:
            yield page
        finally:
            context.close()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest, browser: Any, tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Save a full-page screenshot named after the test and the step, and check the page with axe-core there:
    no serious or critical violation, no CSP violation. The axe results of every step go to axe.json beside."""
    folder = Path(os.environ.get("TEST_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    taken: list[Path] = []
    results: dict[str, Any] = {}

    def take(step: str) -> Path:
        path = folder / f"{request.node.name}-{len(taken) + 1:02d}-{step}.png"
        browser.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000, f"empty screenshot {path}"
        taken.append(path)
        violations = browser.evaluate(_AXE_RUN)
        results[f"{len(taken):02d}-{step} {browser.url}"] = violations
        serious = [v for v in violations if v["impact"] in ("serious", "critical")]
        assert not serious, f"axe at {step} ({browser.url}): {json.dumps(serious, indent=1)}"
        assert not browser.csp_errors, f"CSP violations at {step}: {browser.csp_errors}"
        return path

    yield take
    (folder / f"{request.node.name}-axe.json").write_text(json.dumps(results, indent=1))
    counts = {step: len(v) for step, v in results.items()}
    print(f"axe: {len(results)} pages, 0 serious or critical; minor/moderate per page: {counts}")


def test_browser_walks_steps_5_and_6_of_the_product_document(
    browser: Any, screenshot: Callable[[str], Path], make_stack: Callable[..., Stack],
    make_api: Callable[[Settings], ApiServer], emulator: Any,
) -> None:
    from playwright.sync_api import expect

    stack = make_stack()
    api = make_api(stack.settings)
    page = browser

    # Given an admin signed in to the page of a tenant on the platform default provider
    page.goto(api.base_url + "/ui/login")
    screenshot("login")
    page.get_by_label("API key").fill(api.key("contoso", "admin"))
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/ui/email-provider$"))
    expect(page.locator("#current")).to_contain_text("Platform default")
    screenshot("email-provider")

    # Step 5: Edit > Customer provided > Microsoft Graph > fill in the fields
    page.get_by_role("link", name="Edit").click()
    expect(page.locator("#customer-fields")).to_be_hidden()  # Platform default is chosen until changed
    page.get_by_label("Customer provided").check()
    expect(page.locator("#customer-fields")).to_be_visible()
    page.get_by_label("Email service").select_option(label="Microsoft Graph")
    fields = {"Sender name": "Governance Team", "Sender email address": DEMO_SENDER,
              "Reply-to address": DEMO_SENDER, "Azure tenant ID": DEMO_TENANT_ID,
              "Application (client) ID": DEMO_CLIENT_ID}
    for label, value in fields.items():
        page.get_by_label(label, exact=False).fill(value)
    page.get_by_label("Client secret", exact=False).fill(WRONG_SECRET)
    screenshot("filled-with-wrong-secret")

    # When saved with the secret's ID instead of its value
    page.get_by_role("button", name="Save").click()

    # Then the error is inline with its diagnosis, the values stay, the secret does not, and the
    # previous configuration is still in force
    expect(page.locator("#error-client_secret")).to_contain_text("AADSTS7000215")
    expect(page.locator("#error-client_secret")).to_contain_text("Fix:")
    expect(page.locator("#error")).to_contain_text("previous configuration is still in force")
    for label, value in fields.items():
        expect(page.get_by_label(label, exact=False)).to_have_value(value)
    expect(page.get_by_label("Customer provided")).to_be_checked()
    expect(page.get_by_label("Client secret", exact=False)).to_have_value("")
    assert WRONG_SECRET not in page.content()
    expect(page.locator("#current")).to_contain_text("Platform default")
    assert api.client("contoso", "viewer").get("/v1/email-provider").json()["provider"] == "platform"
    screenshot("wrong-secret-error")

    # When saved with the right secret
    page.get_by_label("Client secret", exact=False).fill(DEMO_CLIENT_SECRET)
    page.get_by_role("button", name="Save").click()

    # Then it is the configuration in force
    expect(page.locator("#saved")).to_be_visible()
    expect(page.locator("#current")).to_contain_text("Customer provided")
    expect(page.locator("#current")).to_contain_text(DEMO_SENDER)
    expect(page.locator("#current")).to_contain_text("••••" + DEMO_CLIENT_SECRET[-4:])
    assert DEMO_CLIENT_SECRET not in page.content()
    screenshot("saved")

    # Step 6: Send test, to the admin's own address
    page.get_by_text("Send test", exact=True).first.click()  # the summary that opens the form
    page.get_by_label("Send a test message to").fill(TEST_TO)
    page.get_by_role("button", name="Send test").click()
    expect(page.locator("#test-result")).to_contain_text("Sent. Graph request-id:")
    request_id = page.locator("#test-result").inner_text().rsplit(":", 1)[1].strip()
    delivered = [m for m in emulator.outbox(mailbox=DEMO_SENDER) if m["request_id"] == request_id]
    assert len(delivered) == 1 and delivered[0]["recipient_addresses"] == [TEST_TO]
    screenshot("test-sent")

    # And notifications go out through the new configuration, one of them refused by Graph
    sender = api.client("contoso", "sender")
    emulator.add_fault(kind="status", route="sendMail", count=1, status=400, code="ErrorInvalidRecipients",
                       message="At least one recipient is not valid.")
    ids = [sender.post("/v1/notifications", json={"to": [f"user{i}@example.org"], "subject": f"Review {i}",
                                                  "body": "Please review."}).json()["id"] for i in range(2)]
    stack.start_workers(1, concurrency=2)
    assert sorted(stack.wait_terminal(ids).values()) == ["failed", "sent"]

    # View activity shows the test send with its request id, and the filters work
    page.get_by_role("link", name="View activity").first.click()
    expect(page).to_have_url(re.compile(r"/ui/activity$"))
    test_row = page.locator("#events tr", has_text="test_sent")
    expect(test_row).to_have_count(1)
    expect(test_row).to_contain_text(request_id)
    expect(page.locator("#events")).to_contain_text("provider_check_failed")
    expect(page.locator("#notifications tr")).to_have_count(3)  # header + 2
    screenshot("activity")

    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#notifications tr")).to_have_count(2)
    failed_row = page.locator("#notifications tr").nth(1)
    expect(failed_row).to_contain_text("ErrorInvalidRecipients")
    expect(failed_row).to_contain_text("Fix:")
    screenshot("activity-failed")

    page.get_by_label("Status").select_option("sent")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#notifications tr")).to_have_count(2)
    sent_to = page.locator("#notifications tr").nth(1).locator("td").nth(2).inner_text()

    page.get_by_label("Status").select_option("")
    page.get_by_label("Recipient").fill(sent_to)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#notifications tr")).to_have_count(2)
    expect(page.locator("#notifications")).to_contain_text("sent")

    page.get_by_label("Recipient").fill("nobody@example.org")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#no-notifications")).to_be_visible()

    page.get_by_label("Recipient").fill("")
    page.get_by_label("From (UTC)").fill("2099-01-01T00:00")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#no-notifications")).to_be_visible()
    screenshot("activity-filters")

    # The chart of the last 24 hours: this hour's two notifications, one sent and one failed
    page.goto(api.base_url + "/ui/activity")
    expect(page.locator("#chart-title")).to_contain_text("Sent (1) and failed (1)")
    expect(page.locator("#chart rect.bar-sent")).to_have_count(24)

    # The CSV export of what the filters select
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    with page.expect_download() as download:
        page.locator("#export").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("id,created_at,state,") and len(lines) == 2 and ",failed," in lines[1]

    # A notification's own page: its attempt with Graph's request id, and the diagnosis
    page.locator("#notifications a", has_text="Review").first.click()
    expect(page).to_have_url(re.compile(r"/ui/notifications/[0-9a-f]{32}$"))
    failed_id = page.url.rsplit("/", 1)[1]
    [attempt] = api.client("contoso", "viewer").get(f"/v1/notifications/{failed_id}").json()["attempts"]
    expect(page.locator("#attempts")).to_contain_text("ErrorInvalidRecipients")
    expect(page.locator("#attempts")).to_contain_text(attempt["request_id"])
    expect(page.locator("#diagnosis")).to_contain_text("Fix:")
    screenshot("notification")

    # Webhooks and API keys, from the navigation
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Webhooks").click()
    page.get_by_label("URL").fill("https://hooks.contoso.example/h")
    page.get_by_role("button", name="Add").click()
    expect(page.locator("#shown-once")).to_be_visible()
    screenshot("webhooks")
    page.locator("#webhooks a").first.click()
    expect(page.locator("#endpoint")).to_contain_text("hooks.contoso.example")
    screenshot("webhook-endpoint")
    nav.get_by_role("link", name="API keys").click()
    expect(page.locator("#keys")).to_be_visible()
    screenshot("api-keys")


def test_browser_walks_the_setup_guide_sees_the_dns_results_and_restores_a_version(
    browser: Any, screenshot: Callable[[str], Path], make_stack: Callable[..., Stack],
    make_api: Callable[[Settings], ApiServer],
) -> None:
    from playwright.sync_api import expect

    stack = make_stack()
    api = make_api(stack.settings)
    admin = api.client("contoso", "admin")
    provider = {"provider": "customer", "service": "microsoft_graph", "sender_name": "Governance Team",
                "sender_address": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID,
                "client_secret": DEMO_CLIENT_SECRET, "secret_expires_at": "2027-06-30", "cloud": "global"}
    # Given version 1 sending from the good zone's domain, version 2 from the broken zone's
    assert admin.put("/v1/email-provider", json=provider).status_code == 200
    assert admin.put("/v1/email-provider", json={**provider, "sender_address": "alerts@broken.example"}).ok
    page = browser
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=api.base_url)
    page.goto(api.base_url + "/ui/login")
    page.get_by_label("API key").fill(api.key("contoso", "admin"))
    page.get_by_role("button", name="Sign in").click()

    # The page shows the DNS results of the sender's domain, each failure with its fix
    expect(page.locator("#domain-spf")).to_contain_text("FAIL")
    expect(page.locator("#domain-spf")).to_contain_text("include:spf.protection.outlook.com")
    expect(page.locator("#domain-dkim")).to_contain_text("FAIL")
    expect(page.locator("#domain-dmarc")).to_contain_text("WARN")
    assert "<script>" not in page.content()  # the one script is a file, under a CSP without inline scripts
    screenshot("dns-results-broken")

    # The setup guide: this tenant's app id and sender in the commands, each with a Copy button
    page.get_by_text("Setup guide: send through your own Microsoft 365").click()
    rbac = page.locator("#step-rbac")
    expect(rbac).to_contain_text(f'New-ManagementRoleAssignment -App "{DEMO_CLIENT_ID}"')
    expect(rbac).to_contain_text("PrimarySmtpAddress -eq 'alerts@broken.example'")
    expect(page.locator("#step-permission")).to_contain_text("cancels the scope")
    expect(page.locator("#step-propagation")).to_contain_text("30 minutes to 2 hours")
    # the demo app may not read its service principal: step 1 says where its Object ID is, with the lookup to copy
    register = page.locator("#step-register")
    expect(register).to_contain_text("not the app registration's Object ID")
    expect(register.locator("pre.command").nth(1)).to_have_text(
        f"(Get-MgServicePrincipal -Filter \"appId eq '{DEMO_CLIENT_ID}'\").Id")
    expect(register.locator("button.copy")).to_have_count(2)
    expect(rbac).to_contain_text('-ObjectId "<ENTERPRISE_APP_OBJECT_ID>"')
    command = rbac.locator("pre.command").nth(3)
    rbac.locator("button.copy").nth(3).click()
    expect(rbac.locator("button.copy").nth(3)).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == command.inner_text()
    screenshot("setup-guide")

    # Generated for other values: two senders in a national cloud
    page.get_by_label("Sender mailbox(es)", exact=False).fill(f"{DEMO_SENDER} ops@contoso.example")
    page.get_by_label("Cloud for the guide").select_option("usgov_high")
    page.get_by_role("button", name="Generate the guide").click()
    expect(page).to_have_url(re.compile(r"/ui/email-provider/setup\?"))
    expect(page.locator("#setup-guide")).to_contain_text("https://portal.azure.us")
    expect(page.locator("#step-rbac")).to_contain_text("-ExchangeEnvironmentName O365USGovGCCHigh")
    expect(page.locator("#step-rbac")).to_contain_text("ops@contoso.example")
    screenshot("setup-guide-usgov")

    # The history says who changed what and when
    page.goto(api.base_url + "/ui/email-provider")
    history = page.locator("#history tr")
    expect(history).to_have_count(3)  # header + versions 2 and 1
    expect(history.nth(1)).to_contain_text("sender_address")
    expect(history.nth(1)).to_contain_text("in force")
    expect(history.nth(2)).to_contain_text("client_secret")
    assert re.search(r"\d{4}-\d{2}-\d{2}", history.nth(1).inner_text())
    actor = history.nth(1).locator("td").nth(3).inner_text()
    assert actor.strip(), "the history names who saved"

    # Restore version 1: its domain passes every check, and the history records the restore
    page.locator("#restore-1").click()
    expect(page.locator("#restored")).to_contain_text("Restored version 1 as version 3")
    for check in ("spf", "dkim", "dmarc"):
        expect(page.locator(f"#domain-{check}")).to_contain_text("PASS")
    expect(page.locator("#current")).to_contain_text(DEMO_SENDER)
    expect(page.locator("#history tr").nth(1)).to_contain_text("restored of version 1")
    screenshot("restored")

    # A second admin's restore from a page loaded before that save is told, not applied over it
    page.goto(api.base_url + "/ui/email-provider")
    assert admin.put("/v1/email-provider", json={**provider, "sender_name": "Another admin"}).ok  # version 4
    page.locator("#restore-2").click()
    expect(page.locator("#restore-error")).to_contain_text("version 4 is in force now")
    expect(page.locator("#current")).to_contain_text("version 4")
    screenshot("restore-conflict")
