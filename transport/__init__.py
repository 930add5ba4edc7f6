"""The transport layer: Microsoft Graph and SMTP relay clients, the token provider and the MSAL boundary.

Used by worker/ (delivery) and api/ (Send test, the credential check on save); it imports only shared/."""
