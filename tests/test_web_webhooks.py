"""The page's Settings > Webhooks and Settings > API keys: secrets and keys shown once, then never."""

from __future__ import annotations

import re

import requests

from tests.api_harness import ApiServer, PageSession


def _page_session(api: ApiServer) -> requests.Session:
    session = PageSession()
    session.trust_env = False
    session.cookies.set("tm_key", api.key("acme", "admin"), path="/ui")
    return session


def test_page_adds_an_endpoint_shows_its_secret_once_and_rotates_it(api: ApiServer) -> None:
    with _page_session(api) as page:
        added = page.post(api.base_url + "/ui/webhooks", data={"url": "https://hooks.acme.example/h",
                                                               "type:provider.saved": "on"}, timeout=30)
        secret = re.search(r"id='secret'>(whsec_[^<]+)<", added.text)
        assert secret is not None
        listing = page.get(api.base_url + "/ui/webhooks", timeout=30).text
        assert secret.group(1) not in listing and "https://hooks.acme.example/h" in listing
        endpoint = re.search(r"/ui/webhooks/(ep_[0-9a-f]+)'", listing)
        assert endpoint is not None
        url = f"{api.base_url}/ui/webhooks/{endpoint.group(1)}"
        rotated = page.post(url, data={"action": "rotate"}, timeout=30).text
        assert "id='secret'>whsec_" in rotated and secret.group(1) not in rotated
        assert "disabled" in page.post(url, data={"action": "disable"}, timeout=30).text
        refused = page.post(api.base_url + "/ui/webhooks", data={"url": "http://hooks.acme.example/h"}, timeout=30)
        assert "id='error'" in refused.text and "https" in refused.text
        gone = page.post(url, data={"action": "delete"}, timeout=30, allow_redirects=False)
        assert gone.status_code == 303


def test_page_creates_a_key_once_and_revokes_it(api: ApiServer) -> None:
    with _page_session(api) as page:
        created = page.post(api.base_url + "/ui/keys", data={"role": "viewer", "label": "dashboards"}, timeout=30)
        key = re.search(r"id='secret'>(tm_[^<]+)<", created.text)
        assert key is not None
        listing = page.get(api.base_url + "/ui/keys", timeout=30).text
        assert key.group(1) not in listing and "dashboards" in listing
        assert api.anonymous(key.group(1)).get("/v1/activity").status_code == 200
        key_id = key.group(1).split("_")[1]
        assert "id='revoked'" in page.post(f"{api.base_url}/ui/keys/{key_id}/revoke", timeout=30).text
        assert api.anonymous(key.group(1)).get("/v1/activity").status_code == 401
        bad = page.post(api.base_url + "/ui/keys", data={"role": "service"}, timeout=30)
        assert "id='error'" in bad.text
