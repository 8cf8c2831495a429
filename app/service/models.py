"""Request and response models of the HTTP service, and the one error shape every 4xx/5xx uses:

    {"error": {"code": "invalid_request", "message": "k: must be at most 100", "fields": [...]}}
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.service.settings import MAX_K

MAX_WEIGHT = 10.0
MAX_TEXT = 500
FORM_FIELDS = ("item_id", "text", "k", "weights", "filter", "explain")


class ApiError(Exception):
    """An error the client can act on: an HTTP status, a stable code and a human message."""

    def __init__(self, status: int, code: str, message: str, fields: list[dict] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or []

    def body(self) -> dict:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}


class SearchRequest(BaseModel):
    """A composed query. The reference is `item_id` (a catalog item, left out of its own results) or,
    in a multipart request, an uploaded `image` file."""

    model_config = ConfigDict(extra="forbid")

    item_id: str | None = Field(None, min_length=1, max_length=512, description="a catalog item as the reference")
    text: str = Field(..., max_length=MAX_TEXT, description='the modification, e.g. "make it red"')
    k: int = Field(10, ge=1, le=MAX_K, description="how many results")
    weights: dict[str, float] | None = Field(
        None, description=f"override the model's attribute weights (the names GET /v1/info lists: color and "
                          f"shape by default), each in [0, {MAX_WEIGHT:g}]",
        examples=[{"color": 2.0}])
    filter: dict[str, Any] | None = Field(
        None, description="payload filter: {field: value} or {field: [values]} (values: string, integer, bool)",
        examples=[{"split": "val"}])
    explain: bool = Field(False, description="add each hit's score breakdown: base and each attribute")

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty: describe the modification, e.g. 'make it red'")
        return v.strip()

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for name, value in (v or {}).items():  # the names are checked against the bundle's by the backend
            if not math.isfinite(value) or not 0.0 <= value <= MAX_WEIGHT:
                raise ValueError(f"{name} must be between 0 and {MAX_WEIGHT:g}, got {value}")
        return v or None

    @field_validator("filter")
    @classmethod
    def _filter(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return v or None  # what a filter may hold is the plugin's rule (plugin.search.to_filter: BadFilter, 422)


class HitOut(BaseModel):
    id: str
    score: float
    payload: dict[str, Any]
    breakdown: dict[str, float] | None = Field(None, description="base and per-attribute MaxSim (explain=true)")


class SearchResponse(BaseModel):
    hits: list[HitOut]
    weights: dict[str, float] = Field(description="the attribute weights this query used")
    model_weights: dict[str, float] = Field(description="the weights the model chose for this query")
    reference: str | None = Field(None, description="the reference item id (left out of the results)")
    timings_ms: dict[str, float]


class ItemOut(BaseModel):
    id: str
    payload: dict[str, Any]


class ItemsOut(BaseModel):
    items: list[ItemOut]


class ServiceInfo(BaseModel):
    collection: str
    points: int  # Qdrant points (the token design stores one per image token)
    items: int  # catalog images
    fingerprint: str
    attributes: list[str]
    max_k: int
    max_upload_bytes: int
    api_key_required: bool


def validation_fields(errors: list) -> list[dict]:
    """pydantic's (or FastAPI's) error list as the API's fields: a dotted field name without the
    location prefix, and the message without pydantic's "Value error, "."""
    return [{"field": ".".join(str(p) for p in err["loc"] if p not in ("query", "path", "body")) or "body",
             "message": err["msg"].removeprefix("Value error, ")} for err in errors]


def invalid(fields: list[dict]) -> ApiError:
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return ApiError(422, "invalid_request", message, fields)


def parse_search(data: dict) -> SearchRequest:
    try:
        return SearchRequest.model_validate(data)
    except ValidationError as e:
        raise invalid(validation_fields(e.errors())) from None


def form_to_dict(form) -> dict:
    """The multipart form's text fields as the JSON request would hold them (weights and filter are
    JSON objects in a text field); the image file is handled by the caller."""
    unknown = sorted(set(form.keys()) - set(FORM_FIELDS) - {"image"})
    if unknown:
        raise invalid([{"field": name, "message": "unknown field"} for name in unknown])
    out: dict[str, Any] = {}
    for name in FORM_FIELDS:
        value = form.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise invalid([{"field": name, "message": "must be a text field, not a file"}])
        if name in ("weights", "filter"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise invalid([{"field": name, "message": 'must be a JSON object, e.g. {"color": 2}'}]) from None
        out[name] = value
    return out
