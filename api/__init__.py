"""tenantmail HTTP API (JSON under /v1) and the tenant admin's web page; see docs/api.md."""
