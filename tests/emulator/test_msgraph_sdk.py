"""The official Microsoft Graph Python SDK (a client none of us wrote) sends through the emulator."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest

from emulator.directory import PLATFORM_CLIENT_ID, PLATFORM_CLIENT_SECRET, PLATFORM_SENDER, PLATFORM_TENANT_ID

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:msgraph.*", "ignore::DeprecationWarning:kiota_abstractions.*"
)


async def _send_with_sdk(handle) -> None:
    from azure.identity.aio import ClientSecretCredential
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph.generated.models.body_type import BodyType
    from msgraph.generated.models.email_address import EmailAddress
    from msgraph.generated.models.internet_message_header import InternetMessageHeader
    from msgraph.generated.models.item_body import ItemBody
    from msgraph.generated.models.message import Message
    from msgraph.generated.models.recipient import Recipient
    from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody
    from msgraph_core import GraphClientFactory

    credential = ClientSecretCredential(
        PLATFORM_TENANT_ID,
        PLATFORM_CLIENT_ID,
        PLATFORM_CLIENT_SECRET,
        authority=f"127.0.0.1:{handle.port}",
        disable_instance_discovery=True,
        connection_verify=handle.ca_path,
    )
    auth = AzureIdentityAuthenticationProvider(
        credential, scopes=["https://graph.microsoft.com/.default"], allowed_hosts=["127.0.0.1"]
    )
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(verify=ssl.create_default_context(cafile=handle.ca_path), trust_env=False)
    )
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = handle.graph_base_url
    client = GraphServiceClient(request_adapter=adapter)
    body = SendMailPostRequestBody(
        message=Message(
            subject="From the official SDK",
            body=ItemBody(content_type=BodyType.Text, content="Hello"),
            to_recipients=[Recipient(email_address=EmailAddress(address="someone@example.com"))],
            internet_message_headers=[
                InternetMessageHeader(name="X-Tenantmail-Notification-Id", value="sdk-1")
            ],
        ),
        save_to_sent_items=False,
    )
    try:
        await client.users.by_user_id(PLATFORM_SENDER).send_mail.post(body)
    finally:
        await credential.close()
        await http.aclose()


def test_msgraph_sdk_sends_message_that_lands_in_outbox(emulator):
    asyncio.run(_send_with_sdk(emulator))
    [item] = emulator.outbox()
    assert item["mailbox"] == PLATFORM_SENDER
    assert item["message"]["subject"] == "From the official SDK"
    assert item["x_headers"] == {"X-Tenantmail-Notification-Id": "sdk-1"}
    assert emulator.counters()["tokens_issued"] == 1
