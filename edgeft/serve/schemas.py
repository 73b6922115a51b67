"""Request bodies, checked with pydantic in strict JSON mode: a wrong type is an error, never coerced.

Fields the OpenAI API defines but edgeft does not use (``presence_penalty``, ``user``, ``logit_bias``, ...)
are accepted and ignored, so clients that send them work unchanged; ``n`` other than 1 is refused.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

_CFG = ConfigDict(extra="ignore", strict=True)


class ContentPart(BaseModel):
    model_config = _CFG
    type: str
    text: Optional[str] = None


class Message(BaseModel):
    model_config = _CFG
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart], None] = None


class StreamOptions(BaseModel):
    model_config = _CFG
    include_usage: bool = False


class Sampling(BaseModel):
    model_config = _CFG
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 (the default) is greedy, as validate decodes.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    seed: Optional[int] = None
    n: int = Field(1, ge=1, le=1, description="One choice per request.")

    def stops(self) -> list[str]:
        s = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return s


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class CompletionRequest(Sampling):
    prompt: Union[str, list[str]]


class ClassifyRequest(BaseModel):
    model_config = _CFG
    model: Optional[str] = None
    input: Union[str, list[str]]


class EmbeddingRequest(BaseModel):
    model_config = _CFG
    model: Optional[str] = None
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"
