"""Diagnoses: every code the pipeline records for a failure has one, and the two ErrorAccessDenied texts differ."""

from __future__ import annotations

import pytest

from emulator.entra_errors import CATALOGUE as ENTRA
from emulator.graph_errors import CATALOGUE as GRAPH
from shared.access_diagnosis import access_code
from shared.codes import Code
from shared.diagnosis import diagnose


def test_diagnose_access_policy_refusal_points_at_test_applicationaccesspolicy() -> None:
    d = diagnose("ErrorAccessDenied", "Access to OData is disabled: [RAOP] : Blocked by tenant configured "
                                      "AppOnly AccessPolicy settings.")
    assert d is not None and "Access Policy" in d.cause and "Test-ApplicationAccessPolicy" in d.fix


def test_diagnose_missing_mail_send_points_at_admin_consent() -> None:
    d = diagnose("ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    assert d is not None and "Mail.Send" in d.cause and "admin consent" in d.fix


@pytest.mark.parametrize("code", [
    "ErrorInvalidUser", "MailboxNotEnabledForRESTAPI", "ErrorSendAsDenied", "ErrorInvalidRecipients",
    "ErrorMessageSizeExceeded", "AADSTS90002", "AADSTS900023", "AADSTS700016", "AADSTS7000215",
    "AADSTS7000222", "AADSTS7000218", "AADSTS700027", "AADSTS700024", "NoProviderConfigured", "WorkerLost", "Timeout",
    "ConnectionReset", "HTTP503", "MaxAgeExceeded", "SMTP451", "SMTP550", "SMTP535", "TLSError",
    "SMTPNotSupported", "ConnectionRefused",
])
def test_diagnose_knows_every_recorded_failure_code(code: str) -> None:
    d = diagnose(code)
    assert d is not None and d.cause and d.fix


def _recordable_codes() -> list[str]:
    """Every error code the pipeline can record: ours, the emulator's Entra ID and Graph catalogues
    (built from Microsoft's documented errors) and every SMTP reply class the relay client maps."""
    codes = [str(code) for code in Code]
    codes += sorted({f"AADSTS{code}" for _, _, code, _ in ENTRA.values()})
    codes += sorted({code for _, code, _ in GRAPH.values()})
    codes += [f"SMTP{reply}" for reply in range(400, 600)]
    return codes


@pytest.mark.parametrize("code", _recordable_codes())
def test_diagnose_every_code_we_can_record(code: str) -> None:
    d = diagnose(code)
    assert d is not None and d.cause and d.fix, f"no diagnosis for {code}"


def test_codes_keep_their_stored_strings() -> None:
    # rows already in the database hold these strings: the enum must keep matching them
    assert Code.WORKER_LOST == "WorkerLost" and Code.INTERNAL_ERROR.value == "InternalError"
    assert f"{Code.MAX_AGE_EXCEEDED}" == "MaxAgeExceeded"


def test_diagnose_wrong_secret_mentions_secret_id_versus_value() -> None:
    d = diagnose("AADSTS7000215")
    assert d is not None and "ID" in d.cause and "Value" in d.fix


def test_diagnose_nothing_for_no_code() -> None:
    assert diagnose(None) is None and diagnose("") is None


def test_diagnose_certificate_mismatch_says_what_to_upload_and_check() -> None:
    d = diagnose("AADSTS700027")
    assert d is not None and "thumbprint" in d.cause
    assert "public part" in d.fix and "thumbprint" in d.fix and "expired" in d.fix


def test_diagnose_smtp_replies_temporary_retry_permanent_not() -> None:
    temporary, permanent = diagnose("SMTP421"), diagnose("SMTP554")
    assert temporary is not None and "retried" in temporary.fix
    assert permanent is not None and "not retried" in permanent.fix


def test_every_error_the_emulator_can_answer_has_a_diagnosis() -> None:
    # the emulator's catalogues are built from Microsoft's documented Entra ID and Graph errors
    missing = [f"AADSTS{code}" for _, _, code, _ in ENTRA.values() if diagnose(f"AADSTS{code}") is None]
    missing += [code for _, code, message in GRAPH.values() if diagnose(code, message) is None]
    assert missing == []


def test_diagnose_older_400_for_a_request_over_4_mb_as_too_large() -> None:
    d = diagnose("BadRequest", "The maximum request length supported is 4MB.")
    assert d is not None and d == diagnose("RequestEntityTooLarge") and "3 MB" in d.fix
    assert diagnose("BadRequest", "Unable to read JSON request payload.") != d


_RAOP = "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."
_DENIED = "Access is denied. Check credentials and try again."


@pytest.mark.parametrize(("message", "roles", "age_s", "expected"), [
    (_RAOP, ["Mail.Send"], None, Code.ACCESS_POLICY_DENIED),     # the policy marker decides, whatever the roles
    (_RAOP, [], 10.0, Code.ACCESS_POLICY_DENIED),
    (_DENIED, [], 3 * 3600.0, Code.RBAC_SCOPE_DENIED),           # no Mail.Send: only RBAC could have let it send
    (_DENIED, ["Application.Read.All"], None, Code.RBAC_SCOPE_DENIED),
    (_DENIED, [], 60.0, Code.RBAC_PROPAGATING),                  # saved within Exchange's 2 h cache time
    (_DENIED, ["Mail.Send"], 60.0, None),                        # Mail.Send in the token: Graph's code stands
    (_DENIED, None, 60.0, None),                                 # roles unknown: nothing more to say
])
def test_access_code_tells_policy_scope_and_propagation_apart(message: str, roles: list[str] | None,
                                                               age_s: float | None, expected: Code | None) -> None:
    assert access_code("ErrorAccessDenied", message, token_roles=roles, config_age_s=age_s) == expected


def test_access_code_leaves_other_codes_alone() -> None:
    assert access_code("ErrorSendAsDenied", _DENIED, token_roles=[], config_age_s=1.0) is None


@pytest.mark.parametrize(("code", "check", "other"), [
    (Code.ACCESS_POLICY_DENIED, "Test-ApplicationAccessPolicy", "Test-ServicePrincipalAuthorization"),
    (Code.RBAC_SCOPE_DENIED, "Test-ServicePrincipalAuthorization", "Test-ApplicationAccessPolicy"),
    (Code.RBAC_PROPAGATING, "Test-ServicePrincipalAuthorization", "Test-ApplicationAccessPolicy"),
])
def test_each_recorded_access_code_names_its_own_powershell_check(code: Code, check: str, other: str) -> None:
    d = diagnose(code)
    assert d is not None and check in d.fix and other not in d.fix
