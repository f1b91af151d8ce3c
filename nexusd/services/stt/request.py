"""The multipart/form-data body of /v1/audio/transcriptions and /translations, as OpenAI's
`CreateTranscriptionRequest` and `CreateTranslationRequest`, read with bounds.

The `file` part is copied into a `SpooledTemporaryFile` as it arrives: in memory up to 1 MiB,
then an anonymous temporary file (unlinked from the start, so nothing is left behind even when
the process dies). The other fields are small text parts, read whole with a bound each. Fields
are accepted in any order (the openai client sends `model` after `file`).
"""

from __future__ import annotations

import tempfile
from typing import IO, Any, Literal

from aiohttp import BodyPartReader, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nexusd.runtime import ApiError

SPOOL_IN_MEMORY = 1 << 20
FIELD_LIMIT = 64 * 1024  # a text field (the prompt is the longest)
ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
Granularity = Literal["word", "segment"]
# OpenAI fields this service knows but does not implement: a 400 naming them, never ignored.
UNSUPPORTED = {"chunking_strategy": "server-side chunking is not offered; the whole file is transcribed",
               "include[]": "logprobs are not offered", "include": "logprobs are not offered",
               "known_speaker_names[]": "diarization is not offered",
               "known_speaker_references[]": "diarization is not offered"}


class TranscriptionForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=256)
    language: str | None = Field(None, pattern=r"^[a-zA-Z]{2,3}([-_][a-zA-Z0-9]{2,8})?$")
    prompt: str | None = Field(None, max_length=FIELD_LIMIT)
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[Granularity] = Field(default_factory=list)
    stream: bool = False


class TranslationForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=256)
    prompt: str | None = Field(None, max_length=FIELD_LIMIT)
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)


class Upload:
    """The uploaded file: its name as the client gave it, its size, and the spooled bytes."""

    def __init__(self) -> None:
        self.filename = "file"
        self.size = 0
        self.data: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)

    def close(self) -> None:
        self.data.close()


async def read_form(request: web.Request, form: type[BaseModel], max_upload: int) -> tuple[Any, Upload]:
    """The validated fields and the spooled file; ApiError 400/413/415 otherwise. The caller
    closes the upload (`finally: upload.close()`)."""
    if request.content_type != "multipart/form-data":
        raise ApiError(415, f"Content-Type must be multipart/form-data, got {request.content_type or 'none'}",
                       code="unsupported_media_type")
    upload = Upload()
    try:
        fields = await _read_parts(request, upload, max_upload, form)
        if fields.pop("_file", None) is None:
            raise ApiError(400, "file: a file part is required", param="file", code="missing_required_parameter")
        try:
            parsed = form.model_validate(fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = str(err["loc"][0]) if err["loc"] else None
            code = "unknown_parameter" if err["type"] == "extra_forbidden" else "invalid_value"
            raise ApiError(400, f"{param}: {err['msg']}", param=param, code=code) from None
        upload.data.seek(0)
        return parsed, upload
    except BaseException:
        upload.close()
        raise


async def _read_parts(request: web.Request, upload: Upload, max_upload: int,
                      form: type[BaseModel]) -> dict[str, Any]:
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:  # no boundary, not multipart
        raise ApiError(400, f"Malformed multipart body: {exc}", code="invalid_multipart") from None
    fields: dict[str, Any] = {}
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "Nested multipart bodies are not accepted", code="invalid_multipart")
            name = part.name or ""
            if name == "file":
                if "_file" in fields:
                    raise ApiError(400, "file: only one file per request", param="file", code="invalid_value")
                upload.filename = (part.filename or "file")[:256]
                await _spool(part, upload, max_upload)
                fields["_file"] = True
                continue
            if name in UNSUPPORTED:
                raise ApiError(400, f"{name}: not supported by this service ({UNSUPPORTED[name]})",
                               param=name, code="unsupported_parameter")
            value = await _text(part, name)
            if name == "timestamp_granularities[]" and "timestamp_granularities" in form.model_fields:
                fields.setdefault("timestamp_granularities", []).append(value)
            elif name in fields:
                raise ApiError(400, f"{name}: given more than once", param=name, code="invalid_value")
            else:
                fields[name] = value
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(max_upload) from None
    except ValueError as exc:  # aiohttp: a broken part or boundary
        raise ApiError(400, f"Malformed multipart body: {exc}", code="invalid_multipart") from None
    return fields


async def _spool(part: Any, upload: Upload, max_upload: int) -> None:
    while chunk := await part.read_chunk(256 * 1024):
        upload.size += len(chunk)
        if upload.size > max_upload:
            raise _too_large(max_upload)
        upload.data.write(chunk)


async def _text(part: Any, name: str) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(16 * 1024):
        data += chunk
        if len(data) > FIELD_LIMIT:
            raise ApiError(400, f"{name or 'a field'}: longer than {FIELD_LIMIT} bytes", param=name or None,
                           code="invalid_value")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ApiError(400, f"{name}: not UTF-8 text", param=name or None, code="invalid_value") from None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"Audio file larger than {limit} bytes ({limit / (1 << 20):g} MiB)",
                    param="file", code="request_too_large")


def form_options(max_upload: int) -> dict[str, Any]:
    """For /v1/metadata `options`: what a caller may pass."""
    return {
        "file": {"type": "file", "maxBytes": max_upload,
                 "formats": ["flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "wav", "webm"]},
        "model": {"type": "string"},
        "language": {"type": "string", "description": "ISO-639-1 code, transcriptions only"},
        "prompt": {"type": "string", "maxLength": FIELD_LIMIT},
        "response_format": {"enum": ["json", "text", "srt", "verbose_json", "vtt"], "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
        "timestamp_granularities[]": {"items": {"enum": ["word", "segment"]},
                                      "description": "verbose_json only; transcriptions only"},
        "stream": {"type": "boolean", "description": "transcript.text.delta / .done events; json or text only"},
    }

