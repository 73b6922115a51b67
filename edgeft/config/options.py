"""Typed options of quantize schemes and exporters: one pydantic model per scheme / exporter format.

A scheme or exporter declares its options as a subclass of :class:`Options` next to its code and
registers the class with itself (``Scheme(..., options_model=...)`` in ``edgeft.quantize``,
``EXPORTERS.register(format, options=...)`` in ``edgeft.exporters``). The model is the one place an
option's type, default and description are written:

- the config loader checks a recipe's ``quantize.N.options`` and an export preset's ``options``
  with it when the file loads (unknown keys with did-you-mean, wrong types, bad values), so a typo
  fails before anything runs;
- the scheme / exporter reads its settings from the validated instance (``opts.block_size``);
- ``edgeft recipes schema`` publishes the models as JSON Schema (:mod:`edgeft.recipe`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from edgeft.config.loader import check_options

__all__ = ["Options", "check_options", "option_table", "options_from_table"]


class Options(BaseModel):
    """Base of every options model: unknown keys fail, every field documents itself."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    #: What these options belong to, for messages ("quantize scheme int4-rtn", "genai export").
    owner: ClassVar[str] = "options"

    @classmethod
    def of(cls, opts: Optional["Options | dict"] = None, /, **options: Any):
        """``opts`` when it is already an instance; otherwise validate ``opts`` (a dict) and/or keywords."""
        if isinstance(opts, cls) and not options:
            return opts
        data = dict(opts.model_dump() if isinstance(opts, BaseModel) else (opts or {}))
        data.update(options)
        return check_options(cls, data, cls.owner, path="", owner=cls.owner)


def option_table(model_cls: type[BaseModel]) -> dict[str, tuple[Any, str]]:
    """``{option: (default, description)}`` of an options model (for help texts and messages)."""
    return {name: (f.get_default(call_default_factory=True), f.description or "")
            for name, f in model_cls.model_fields.items()}


def options_from_table(name: str, table: dict[str, tuple[Any, str]]) -> type[Options]:
    """An options model from a ``{option: (default, description)}`` table: names are checked, values not typed.

    For schemes written before typed options; a new scheme declares an :class:`Options` subclass instead.
    """
    fields = {k: (Any, Field(default, description=desc)) for k, (default, desc) in table.items()}
    return create_model(name, __base__=Options, **fields)
