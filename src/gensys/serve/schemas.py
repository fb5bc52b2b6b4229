"""Request and response schemas of the HTTP API (pydantic; they are also the OpenAPI spec at /docs).

Bounds that depend on the server config (max_tokens cap, number of texts, ...) are checked in the handlers
against `ServeConfig.limits`; the bounds here are the fixed ones (types, ranges, non-empty).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Text = str
StopField = str | list[str] | None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error, OpenAI style: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorDetail


# ----------------------------------------------------------------------------------------------- compose
class SuggestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="the email body typed so far")
    subject: str = ""
    previous: str = Field("", description="the email being replied to, if any")
    cursor: int | None = Field(None, ge=0, description="caret position in `text` (default: its end)")
    draft_id: str | None = Field(
        None, min_length=1, max_length=200, description="id of the draft being typed (keeps its cache warm)"
    )
    session_id: str | None = Field(None, max_length=128)
    user: str | None = Field(None, max_length=128)


class SuggestResponse(BaseModel):
    suggestion: str = Field(description="text to show after the cursor ('' = none)")
    confidence: float
    triggered: bool = Field(description="whether a suggestion is shown")
    reason: str = Field(description="'ok' or why there is no suggestion")
    latency_ms: float
    debounce_ms: float | None = Field(None, description="how long a client should wait after a keystroke")
    request_id: str


# --------------------------------------------------------------------------------------------- translate
class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, description="one text (or use `texts`)")
    texts: list[str] | None = Field(None, min_length=1, description="several texts, translated together")
    beam: int = Field(5, ge=1, description="beam size (1 = greedy)")
    session_id: str | None = Field(None, max_length=128)

    @model_validator(mode="after")
    def _one_of(self) -> TranslateRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` or `texts`")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class Translation(BaseModel):
    translation: str
    score: float


class TranslateResponse(BaseModel):
    translations: list[Translation]
    src_lang: str | None = None
    tgt_lang: str | None = None
    request_id: str


# ----------------------------------------------------------------------------------------------- caption
class Caption(BaseModel):
    caption: str
    score: float


class ImageCaptions(BaseModel):
    filename: str
    width: int
    height: int
    captions: list[Caption]


class CaptionResponse(BaseModel):
    results: list[ImageCaptions]
    request_id: str


# --------------------------------------------------------------------------------------------------- rag
class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    mode: Literal["generative", "extractive"] = "generative"
    k: int = Field(5, ge=1, le=50, description="passages to retrieve")
    user: str = Field("anonymous", max_length=128)
    groups: list[str] = Field(
        default_factory=lambda: ["everyone"],
        max_length=64,
        description="access groups of the user (documents readable by none of them are never retrieved)",
    )
    session_id: str | None = Field(None, max_length=128)


class AskResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    answer: str
    citations: list[Any]
    retrieved: list[Any]
    request_id: str


# ---------------------------------------------------------------------------------- OpenAI: chat + text
class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingFields(BaseModel):
    """Fields shared by chat and text completions (OpenAI names; `top_k`, `repetition_penalty` are ours)."""

    model_config = ConfigDict(extra="ignore")  # OpenAI SDKs add fields over time; unknown ones are ignored
    model: str = Field(description="a model id from /v1/models (e.g. 'chat')")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy; default 1")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, description="choices to return")
    stop: StopField = Field(None, description="up to 4 stop strings (cut from the output)")
    seed: int | None = Field(None, ge=0, le=2**62)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=128)
    # accepted for compatibility; only their neutral values are supported
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logprobs: bool | int | None = None
    # gensys extras
    top_k: int | None = Field(None, ge=0, description="sample among the k most likely tokens (0 = off)")
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, description="> 1 discourages repeats")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: StopField) -> StopField:
        if isinstance(v, list):
            if len(v) > 4:
                raise ValueError("at most 4 stop strings")
            if any(not s for s in v):
                raise ValueError("stop strings must not be empty")
        elif v == "":
            raise ValueError("stop string must not be empty")
        return v

    def unsupported(self) -> str | None:
        """Name of a set-but-unsupported option (answered 400), or None."""
        if self.presence_penalty:
            return "presence_penalty (use repetition_penalty)"
        if self.frequency_penalty:
            return "frequency_penalty (use repetition_penalty)"
        if self.logprobs:
            return "logprobs"
        return None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    session_id: str | None = Field(None, max_length=128, description="gensys: conversation id for the logs")


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] = Field(description="text to continue (a list = several prompts)")
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    suffix: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: None = None


class SafetyInfo(BaseModel):
    """gensys extension: what the chat pipeline's safety layer decided for a choice."""

    refused: bool
    flagged: list[str]
    stage: str | None = Field(None, description="'input' or 'output' when refused")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    session_id: str | None = Field(None, description="gensys: the conversation (send it back to continue)")
    safety: list[SafetyInfo | None] | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gensys"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SessionSummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    title: str
    created: float
    updated: float
    n_messages: int


class SessionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SessionSummary]


class SessionDetail(SessionSummary):
    messages: list[dict[str, Any]]


class Deleted(BaseModel):
    id: str
    deleted: bool


# ---------------------------------------------------------------------------------------------- events
ClientEvent = Literal[
    "impression", "accept", "reject", "click", "conversion", "thumbs_up", "thumbs_down", "copy", "edit",
    "session_start", "session_end", "complete",
]  # fmt: skip


class EventRequest(BaseModel):
    """A user action on a shown result, for the online metrics (`gensys report`)."""

    model_config = ConfigDict(extra="forbid")
    system: Literal["compose", "translate", "chat", "caption", "rag"]
    event: ClientEvent
    request_id: str | None = Field(None, max_length=128)
    session: str | None = Field(None, max_length=128)
    user: str | None = Field(None, max_length=128)
    latency_ms: float | None = Field(None, ge=0.0, le=1e9)
    value: float | None = Field(None, ge=-1e12, le=1e12)
    meta: dict[str, Any] | None = None


class EventAck(BaseModel):
    logged: bool


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    systems: dict[str, dict[str, Any]]
    inflight: int
