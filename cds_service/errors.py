"""One exception per kind of failure, each with its HTTP status; mapped to responses in app.py."""

from __future__ import annotations


class ServiceError(Exception):
    status = 500
    code = "exception"  # FHIR OperationOutcome issue type
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    """The request is not a valid CDS Hooks call (400)."""

    status = 400
    code = "invalid"


class AuthenticationRequired(ServiceError):
    """No valid client JWT (401). Same message whatever the reason, so probing learns nothing."""

    status = 401
    code = "login"
    headers = (("WWW-Authenticate", 'Bearer realm="cds-services"'),)

    def __init__(self, message: str = "authentication required"):
        super().__init__(message)


class UnknownService(ServiceError):
    status = 404
    code = "not-found"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "invalid"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "too-costly"


class DataUnavailable(ServiceError):
    """The data the assessment needs could not be had from prefetch or the FHIR server (412)."""

    status = 412
    code = "incomplete"
