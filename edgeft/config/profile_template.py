"""The commented device-profile template (``edgeft devices template``, ``devices/TEMPLATE.yaml.example``).

Every field of :class:`~edgeft.config.schema.DeviceProfile` with its schema description, whether it
is required, its default and its choices, and an example value. Written as text rather than dumped
by a YAML library because each line carries a generated comment and unset optional fields appear
commented out, which no dumper produces.
"""

from __future__ import annotations

import json
import re
import textwrap
import typing
from typing import Any, Union

__all__ = ["profile_template"]

#: Comments for sections whose schema field has no description.
_SECTION_NOTES = {
    "cpu": "The CPU the model runs on, or that feeds the accelerator.",
    "memory": "RAM and memory bandwidth (the bandwidth bounds decode speed of a large model).",
    "compute": "Sustained compute; a datasheet peak times a utilisation factor, with the arithmetic in source.",
}

#: Example values written into the template (a Raspberry Pi 5-like board); None: shown commented out.
_EXAMPLE: dict[str, Any] = {
    "name": "my-board",
    "class": "edge",
    "description": "What device this stands for: board or SoC, cores, RAM, the runtime the model uses. "
                   "Say which numbers are product targets rather than measurements.",
    "source": "Datasheet names and measurements behind every number, and the arithmetic for each estimate, "
              "e.g. bandwidth estimate: 4267 MT/s x 4 B = 17.1 GB/s theoretical, x0.6 for a streaming read "
              "= ~10 GB/s.",
    "cpu": {"arch": "arm64", "cores": 4, "threads": 4},
    "memory": {"total_mb": 8192, "model_budget_mb": 6144, "bandwidth_gbps": 10.0},
    "compute": {"fp32_gflops": 90.0, "int8_gops": 300.0},
    "formats": ["onnx"],
    "precisions": ["fp32", "int8", "int4"],
    "int8_modes": ["weight-only", "dynamic", "static", "full-integer"],
    "op_allowlist": None,
    "static_shapes": False,
    "max_model_mb": None,
    "onchip_param_mb": None,
    "tflite": None,
    "budgets": {"ttft_ms": 2000, "decode_tok_s": 8, "per_inference_ms": None, "ram_mb": 2048, "size_mb": 1024},
    "remote": None,
}

#: Values for the commented-out lines (optional fields left unset in the example).
_COMMENTED: dict[str, Any] = {
    "op_allowlist": ["QuantizeLinear", "DequantizeLinear", "MatMul", "Add", "Softmax"],
    "max_model_mb": 4096,
    "onchip_param_mb": 8,
    "per_inference_ms": 50,
    "tflite": {"runtime": "edgetpu", "op_allowlist": ["CONV_2D", "FULLY_CONNECTED", "ADD", "SOFTMAX"],
               "innermost_dims": 3,
               "op_limits": {"FULLY_CONNECTED": {"max_output_non_unit_dims": 1, "note": "output one-dimensional"},
                             "SOFTMAX": {"max_input_non_unit_dims": 1, "max_input_elements": 16000,
                                         "note": "1-D input, at most 16,000 elements"}}},
    "remote": {"ssh": "pi@raspberrypi.local", "python": "python3", "port": 22},
}

_WIDTH = 100


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _choices(tp: Any) -> tuple[list[str], bool]:
    """Literal choices of ``tp`` or of its list items, and whether it is a list."""
    tp = _strip_optional(tp)
    is_list = typing.get_origin(tp) is list
    inner = typing.get_args(tp)[0] if is_list and typing.get_args(tp) else tp
    if typing.get_origin(inner) is typing.Literal:
        return [str(a) for a in typing.get_args(inner)], is_list
    return [], is_list


def _is_model(tp: Any) -> bool:
    from pydantic import BaseModel

    tp = _strip_optional(tp)
    return isinstance(tp, type) and issubclass(tp, BaseModel)


_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _dict_of_model(tp: Any):
    """The value model of a ``dict[str, Model]`` annotation, else None."""
    if typing.get_origin(tp) is dict:
        value = typing.get_args(tp)[1]
        return value if _is_model(value) else None
    return None


def _scalar(value: Any) -> str:
    import yaml

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value}"
    if isinstance(value, list):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = str(value)
    if re.fullmatch(r"[A-Za-z][\w.@-]*", text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)  # a double-quoted YAML scalar


def _default_text(field) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
        if _is_model(type(value)):
            unset = all(v is None for v in value.model_dump().values())
            return "all unset" if unset else "every field at its default"
        return _scalar(value)
    if field.default is PydanticUndefined:
        return ""
    return "null" if field.default is None else _scalar(field.default)


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, width=_WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ",
                         break_on_hyphens=False)


def _render(model_cls, values: dict, indent: str = "", spaced: bool = False) -> list[str]:
    """YAML lines for ``model_cls``: each field preceded by a comment from its schema description.

    A field whose example value is None is written commented out, with a value from ``_COMMENTED``.
    """
    out: list[str] = []
    for attr, field in model_cls.model_fields.items():
        key = field.alias or attr
        note = field.description or _SECTION_NOTES.get(key, "")
        if field.is_required():
            note += " Required."
        else:
            default = _default_text(field)
            note += f" Optional; default: {default}." if default else " Optional."
        choices, is_list = _choices(field.annotation)
        if choices:
            note += f" {'Each one of' if is_list else 'One of'}: {' | '.join(choices)}."
        if spaced and out:
            out.append("")
        out += _comment(note.strip(), indent)
        value = values.get(key)
        shown = _COMMENTED.get(key) if value is None else value
        if _is_model(field.annotation):
            lines = [f"{indent}{key}:"] + _render(_strip_optional(field.annotation), shown or {}, indent + "  ")
        elif _dict_of_model(field.annotation) is not None and isinstance(shown, dict):  # name -> section
            lines = [f"{indent}{key}:"]
            for name, section in shown.items():
                lines += [f"{indent}  {name}:"] + _render(_dict_of_model(field.annotation), section, indent + "    ")
        elif isinstance(shown, str) and len(shown) > 60:
            lines = [f"{indent}{key}: >-"] + textwrap.wrap(shown, width=_WIDTH, initial_indent=f"{indent}  ",
                                                           subsequent_indent=f"{indent}  ")
        else:
            lines = [f"{indent}{key}: {_scalar(shown)}"]
        if value is None:  # optional and unset: commented out; removing the first '# ' enables it
            lines = [f"{indent}# {line[len(indent):]}" for line in lines]
        out += lines
    return out


def profile_template() -> str:
    """A commented device profile: every field of :class:`~edgeft.config.schema.DeviceProfile` with its
    description, whether it is required, its default and its choices, and an example value (optional
    fields left unset are shown commented out). Saved as ``devices/TEMPLATE.yaml.example``."""
    from edgeft.config.schema import DeviceProfile

    header = [
        "# Device profile template: every field with what it means, whether it is required, its default",
        "# and its choices. Generated from edgeft/config/schema.py; regenerate with",
        "#   edgeft devices template > devices/TEMPLATE.yaml.example",
        "# Start a new profile with `edgeft devices add NAME --from PROFILE` (copies a shipped profile), or",
        "# copy this file to devices/NAME.yaml, set name: NAME and replace every value. The values below",
        "# are an example (a Raspberry Pi 5-like board), not defaults; '# key: value' lines are optional",
        "# fields left unset. Units: MiB for memory and sizes, GB/s, GFLOP/s and GOP/s, ms, tokens/s.",
        "",
    ]
    return "\n".join(header + _render(DeviceProfile, _EXAMPLE, spaced=True)) + "\n"
