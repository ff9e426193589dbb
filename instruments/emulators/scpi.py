"""SCPI parsing shared by the SCPI instrument emulators (Keithley 2450, Keysight B2900).

What a real SCPI parser accepts (SCPI-99 vol. 1 §6-7, IEEE 488.2 §7): every mnemonic in its short
form (the upper-case part of the manual's spelling, "SOUR") or its long form ("SOURCE"), in any
case, and nothing in between ("SOURC" is an undefined header); optional nodes ("[:LEVel]") may be
left out; a numeric suffix selects a channel ("SOUR2"); a leading colon is optional; several
commands share one line separated by ";", where a header without a leading colon continues the
previous command's path ("SOUR:VOLT 1;ILIM 1e-3" = ":SOUR:VOLT 1" + ":SOUR:ILIM 1e-3").

`header(spec)` turns a manual spelling into a regular expression for `@command`; the `parse_*`
helpers turn parameters into numbers, booleans, lists and strings or raise `ScpiError` with the
standard code (-104 data type, -109 missing parameter, -222 data out of range, ...).
`ScpiEmulator` is a `LineEmulator` that splits compound lines, turns `ScpiError` (and a bench
short) into error-queue entries, and answers unknown headers with -113 "Undefined header".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from instruments.emulators.bench import BenchShort
from instruments.emulators.server import LineEmulator

# Standard SCPI error codes and messages (SCPI-99 vol. 2 §21.8; the B2900 and 2450 manuals'
# error lists use these numbers and texts for the command, execution and query errors).
SCPI_ERRORS: dict[int, str] = {
    -100: "Command error",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -200: "Execution error",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -230: "Data corrupt or stale",
    -350: "Queue overflow",
}

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


class ScpiError(Exception):
    """An SCPI error the emulator queues: standard code, message, optional detail."""

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = code
        self.message = SCPI_ERRORS.get(code, "Error")
        self.detail = detail
        super().__init__(f"{code}, {self.message}" + (f"; {detail}" if detail else ""))


# -- headers --------------------------------------------------------------------------------------


def mnemonic(word: str) -> str:
    """Regex for one mnemonic as spelled in a manual ("VOLTage" -> short VOLT or long VOLTAGE).

    A trailing "#" captures a numeric suffix (a channel; the group is "" when absent).
    """
    capture = word.endswith("#")
    base = word.rstrip("#")
    short = "".join(ch for ch in base if not ch.islower()) or base
    long = base.upper()
    core = f"(?:{long}|{short})" if long != short else long
    return core + r"(\d*)" if capture else core


def header(spec: str) -> str:
    """Regex matching the header of a manual spelling such as
    ":SOURce#:VOLTage[:LEVel][:IMMediate][:AMPLitude]" or "[:SOURce#]:LIST:VOLTage".

    Square brackets mark optional nodes; the leading colon is optional; "?" ends a query.
    """
    query = spec.endswith("?")
    body = spec[:-1] if query else spec
    tokens = re.findall(r"\[:[^\]]+\]|:?[^:\[]+", body)
    parts: list[str] = []
    for index, token in enumerate(tokens):
        optional = token.startswith("[")
        regex = mnemonic(token.strip("[]").lstrip(":"))
        if index == 0 and optional and len(tokens) > 1:
            # "[:SOURce#]:LIST": the first node may be left out, the colon after it then too
            parts.append(f"(?::?{regex}(?=:))?:?")
            continue
        if index == 1 and tokens[0].startswith("["):
            parts.append(f"(?:{regex})?" if optional else regex)
            continue
        if index == 0:
            parts.append(f"(?::?{regex})?" if optional else f":?{regex}")
            continue
        parts.append(f"(?::{regex})?" if optional else f":{regex}")
    text = "".join(parts)
    return text + (r"\?" if query else "")


def command_pattern(spec: str, parameters: bool = True) -> str:
    """Full-line regex for `@command`: the header, then (if allowed) one group with everything
    after the first whitespace (None when absent)."""
    tail = r"(?:\s+(.*?))?\s*" if parameters else r"\s*"
    return header(spec) + tail


# -- parameters -----------------------------------------------------------------------------------


def require(text: str | None, what: str) -> str:
    """The parameter text, or -109 Missing parameter."""
    if text is None or not text.strip():
        raise ScpiError(-109, what)
    return text.strip()


def parse_number(
    text: str | None,
    what: str,
    low: float = -math.inf,
    high: float = math.inf,
    named: Mapping[str, float] | None = None,
) -> float:
    """An NRf number (or MIN/MAX/DEF via `named`, keys upper-case short forms) within
    [low, high]; -109 when missing, -104 when not a number, -222 when out of range."""
    value_text = require(text, what)
    upper = value_text.upper()
    if named:
        for key, value in named.items():
            if upper in (key, _LONG_NAMES.get(key, key)):
                return value
    if not _NUMBER.fullmatch(value_text):
        raise ScpiError(-104, f"{what}: {value_text!r}")
    value = float(value_text)
    if not low <= value <= high:
        raise ScpiError(-222, f"{what}: {value_text} outside [{low:g}, {high:g}]")
    return value


_LONG_NAMES = {"MIN": "MINIMUM", "MAX": "MAXIMUM", "DEF": "DEFAULT"}


def parse_bool(text: str | None, what: str) -> bool:
    """ON/OFF/1/0 (IEEE 488.2 boolean); -109 missing, -224 anything else."""
    value = require(text, what).upper()
    if value in ("ON", "1"):
        return True
    if value in ("OFF", "0"):
        return False
    if _NUMBER.fullmatch(value):
        return round(float(value)) != 0
    raise ScpiError(-224, f"{what}: {value!r}")


def split_parameters(text: str | None) -> list[str]:
    """Comma-separated parameters, quotes respected; [] when there are none."""
    if text is None or not text.strip():
        return []
    items, unterminated = _split_outside_quotes(text, ",")
    if unterminated:
        raise ScpiError(-102, f"unterminated string in {text!r}")
    return items


def _split_outside_quotes(text: str, separator: str) -> tuple[list[str], bool]:
    """Pieces of text (stripped) split at `separator` outside '...' and "..." quotes, and
    whether a quote was left open."""
    items: list[str] = []
    current: list[str] = []
    quote = ""
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            current.append(ch)
        elif ch == separator:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    items.append("".join(current).strip())
    return items, bool(quote)


def parse_number_list(
    text: str | None, what: str, low: float = -math.inf, high: float = math.inf
) -> list[float]:
    """Comma-separated NRf numbers, each within [low, high]."""
    items = split_parameters(require(text, what))
    return [parse_number(item, f"{what}[{index}]", low, high) for index, item in enumerate(items)]


def parse_string(text: str | None, what: str) -> str:
    """A quoted string parameter ("CURR" or 'CURR'), returned without quotes; -104 if unquoted."""
    value = require(text, what)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    raise ScpiError(-104, f"{what}: expected a quoted string, got {value!r}")


def parse_channel_list(text: str | None, what: str, channels: int) -> list[int]:
    """A channel list "(@1)", "(@1,2)" or "(@1:2)" of channels 1..channels; -224 otherwise."""
    value = require(text, what).replace(" ", "")
    match = re.fullmatch(r"\(@([\d,:]+)\)", value)
    if not match:
        raise ScpiError(-224, f"{what}: expected a channel list like (@1), got {value!r}")
    result: list[int] = []
    for item in match.group(1).split(","):
        bounds = item.split(":")
        if not all(b.isdigit() for b in bounds) or len(bounds) > 2:
            raise ScpiError(-224, f"{what}: {value!r}")
        first, last = int(bounds[0]), int(bounds[-1])
        result.extend(range(first, last + 1))
    if not result or any(not 1 <= c <= channels for c in result):
        raise ScpiError(-224, f"{what}: channels must be 1..{channels}, got {value!r}")
    return result


def format_number(value: float) -> str:
    """NR3 response formatting as SCPI instruments print it (e.g. +1.234560E-06)."""
    return f"{value:+.6E}"


# -- the emulator base ----------------------------------------------------------------------------


def split_units(line: str) -> list[str]:
    """Program message units of one line (split at ";" outside quotes), relative headers
    expanded against the previous unit's path."""
    units, _ = _split_outside_quotes(line, ";")
    expanded: list[str] = []
    path = ""
    for unit in units:
        if not unit:
            continue
        full = unit if unit.startswith((":", "*")) or not path else path + unit
        if not full.startswith("*"):
            full_head = full.split(None, 1)[0]
            path = full_head[: full_head.rfind(":") + 1] if ":" in full_head.lstrip(":") else ""
            if path and not path.startswith(":"):
                path = ":" + path
        expanded.append(full)
    return expanded


class ScpiEmulator(LineEmulator):
    """LineEmulator with SCPI conveniences: compound lines, `ScpiError` -> error queue, bench
    shorts -> -200 Execution error, unknown headers -> -113 Undefined header."""

    def handle(self, line: str) -> str | None:
        replies: list[str] = []
        for unit in split_units(line.strip()):
            try:
                reply = super().handle(unit)
            except ScpiError as error:
                self.push_error(error.code, error.message)
                continue
            except BenchShort as error:
                self.push_error(-200, f"{SCPI_ERRORS[-200]}, {error}")
                continue
            if reply is not None:
                replies.append(reply)
        return ";".join(replies) if replies else None

    def unknown(self, line: str) -> str | None:
        self.push_error(-113, SCPI_ERRORS[-113])
        return None

    def pop_error(self) -> tuple[int, str] | None:
        """The oldest queued error (code, message), or None when the queue is empty."""
        return self.errors.popleft() if self.errors else None
