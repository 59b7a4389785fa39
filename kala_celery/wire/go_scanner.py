"""A port of Go's JSON scanner (encoding/json/scanner.go), for Go's error texts.

Python's json module decides whether a body is valid (it accepts exactly JSON, plus
NaN/Infinity, which the decoder refuses). When it is not, the body is run through this
scanner to get the message Go's json.Unmarshal gives. Pure: bytes in, a message out.
"""

from __future__ import annotations

import re

_MAX_DEPTH = 10000  # Go's maxNestingDepth
_SPACE = frozenset(b" \t\r\n")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPABLE = frozenset(b'bfnrt\\/"')
# Fast paths for the scanner below: regular expressions for stretches of input that Go's
# steps would walk through without an error. Quantifiers are possessive so that a failing
# match (an unterminated string, say) costs linear time instead of backtracking.
_WS = rb"[ \t\r\n]*+"
_ESCAPE = rb'\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}'
_STRING_RUN = re.compile(rb'(?:[^"\\\x00-\x1f]++|' + _ESCAPE + rb")++")
_SPACE_RUN = re.compile(rb"[ \t\r\n]+")
_STRING_TOKEN = rb'"(?:[^"\\\x00-\x1f]++|' + _ESCAPE + rb')*+"'
_NUMBER_TOKEN = rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?[0-9]++)?+"
_SCALAR = rb"(?:" + _STRING_TOKEN + rb"|true|false|null|" + _NUMBER_TOKEN + rb")"
_MEMBER = _STRING_TOKEN + _WS + rb":" + _WS + _SCALAR + _WS
# An array or object holding only scalars (one level of nesting).
_FLAT = (
    rb"(?:\[" + _WS + rb"(?:" + _SCALAR + _WS + rb"(?:," + _WS + _SCALAR + _WS + rb")*+)?+\]"
    rb"|\{" + _WS + rb"(?:" + _MEMBER + rb"(?:," + _WS + _MEMBER + rb")*+)?+\})"
)
# A whole value (group 2: a bare number, which needs a look at the next byte) + whitespace.
_VALUE_TOKEN = re.compile(
    rb"(" + _STRING_TOKEN + rb"|true|false|null|(" + _NUMBER_TOKEN + rb")|" + _FLAT + rb")" + _WS
)
_KEY_TOKEN = re.compile(_STRING_TOKEN + _WS)
# Runs of complete array elements / object members, each followed by a comma.
_ELEMENTS = re.compile(rb"(?:(?:" + _SCALAR + rb"|" + _FLAT + rb")" + _WS + rb"," + _WS + rb")++")
_MEMBERS = re.compile(
    rb"(?:"
    + _STRING_TOKEN
    + _WS
    + rb":"
    + _WS
    + rb"(?:"
    + _SCALAR
    + rb"|"
    + _FLAT
    + rb")"
    + _WS
    + rb","
    + _WS
    + rb")++"
)
_NUMBER_MORE = frozenset(b".eE+-0123456789")
_CONTROL_QUOTES = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}

_OBJECT_KEY, _OBJECT_VALUE, _ARRAY_VALUE = range(3)


def _quote_char(c: int) -> str:
    """Go's quoteChar: the byte as a rune, quoted like strconv.Quote, in single quotes."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    if c == 0x5C:
        return "'\\\\'"
    ch = chr(c)
    if ch.isprintable():
        return f"'{ch}'"
    if c in _CONTROL_QUOTES:
        return f"'{_CONTROL_QUOTES[c]}'"
    if c < 0x20 or c == 0x7F:
        return f"'\\x{c:02x}'"
    return f"'\\u{c:04x}'"


class _GoScanner:
    """Go's JSON scanner, one byte at a time; ``error`` holds Go's message once it fails.

    ``fast=False`` turns the regular-expression shortcuts off (the tests compare both ways).
    """

    def __init__(self, *, fast: bool = True) -> None:
        self.fast = fast
        self.step = self._begin_value
        self.stack: list[int] = []
        self.end_top = False
        self.error: str | None = None
        self.literal = b""  # the rest of true/false/null still expected
        self.literal_name = ""
        self.hex_left = 0

    def check(self, data: bytes) -> str | None:
        values = (self._begin_value, self._begin_value_or_empty)
        keys = (self._begin_string, self._begin_string_or_empty)
        spaces = (*values, *keys, self._end_value, self._end_top)
        i, n = 0, len(data)
        while i < n:
            step = self.step
            run = None
            # Fast paths (see the expressions above); the steps still see every byte that
            # could fail, so the messages are Go's.
            if not self.fast:
                pass
            elif step == self._in_string:
                run = _STRING_RUN.match(data, i)
            elif data[i] in _SPACE:
                if step in spaces:
                    run = _SPACE_RUN.match(data, i)
            elif len(self.stack) >= _MAX_DEPTH:
                pass  # a flat container here would exceed the depth: go byte by byte
            elif step in values:
                if self.stack and self.stack[-1] == _ARRAY_VALUE:
                    run = _ELEMENTS.match(data, i)
                if run is not None:
                    self.step = self._begin_value  # after a comma
                else:
                    run = _VALUE_TOKEN.match(data, i)
                    end = -1 if run is None else run.end(1)
                    if run is not None and run.group(2) and end < n and data[end] in _NUMBER_MORE:
                        run = None  # "1.", "1e", "01": let the steps name the byte
                    if run is not None:
                        self.step = self._end_value
            elif step in keys:
                run = _MEMBERS.match(data, i)
                if run is not None:
                    self.step = self._begin_string  # after a comma
                else:
                    run = _KEY_TOKEN.match(data, i)
                    if run is not None:
                        self.step = self._end_value
            if run is not None:
                i = run.end()
                continue
            step(data[i])
            if self.error is not None:
                return self.error
            i += 1
        return self.eof()

    def eof(self) -> str | None:
        if self.error is not None:
            return self.error
        if self.end_top:
            return None
        self.step(0x20)
        if self.end_top:
            return None
        if self.error is None:
            self.error = "unexpected end of JSON input"
        return self.error

    def _fail(self, c: int, context: str) -> None:
        self.step = self._failed
        self.error = f"invalid character {_quote_char(c)} {context}"

    def _failed(self, c: int) -> None:
        pass

    def _push(self, c: int, state: int) -> None:
        self.stack.append(state)
        if len(self.stack) > _MAX_DEPTH:
            self._fail(c, "exceeded max depth")

    def _pop(self) -> None:
        self.stack.pop()
        if self.stack:
            self.step = self._end_value
        else:
            self.step = self._end_top
            self.end_top = True

    def _begin_value_or_empty(self, c: int) -> None:
        if c in _SPACE:
            return
        if c == 0x5D:  # ]
            self._end_value(c)
            return
        self._begin_value(c)

    def _begin_value(self, c: int) -> None:
        if c in _SPACE:
            return
        if c == 0x7B:  # {
            self.step = self._begin_string_or_empty
            self._push(c, _OBJECT_KEY)
        elif c == 0x5B:  # [
            self.step = self._begin_value_or_empty
            self._push(c, _ARRAY_VALUE)
        elif c == 0x22:
            self.step = self._in_string
        elif c == 0x2D:  # -
            self.step = self._negative
        elif c == 0x30:
            self.step = self._zero
        elif c in _DIGITS:
            self.step = self._one
        elif c in b"tfn":
            self.literal_name = {0x74: "true", 0x66: "false", 0x6E: "null"}[c]
            self.literal = self.literal_name[1:].encode()
            self.step = self._in_literal
        else:
            self._fail(c, "looking for beginning of value")

    def _begin_string_or_empty(self, c: int) -> None:
        if c in _SPACE:
            return
        if c == 0x7D:  # }
            self.stack[-1] = _OBJECT_VALUE
            self._end_value(c)
            return
        self._begin_string(c)

    def _begin_string(self, c: int) -> None:
        if c in _SPACE:
            return
        if c == 0x22:
            self.step = self._in_string
        else:
            self._fail(c, "looking for beginning of object key string")

    def _end_value(self, c: int) -> None:
        if not self.stack:
            self.step = self._end_top
            self.end_top = True
            self._end_top(c)
            return
        if c in _SPACE:
            self.step = self._end_value
            return
        top = self.stack[-1]
        if top == _OBJECT_KEY:
            if c == 0x3A:  # :
                self.stack[-1] = _OBJECT_VALUE
                self.step = self._begin_value
            else:
                self._fail(c, "after object key")
        elif top == _OBJECT_VALUE:
            if c == 0x2C:  # ,
                self.stack[-1] = _OBJECT_KEY
                self.step = self._begin_string
            elif c == 0x7D:
                self._pop()
            else:
                self._fail(c, "after object key:value pair")
        elif c == 0x2C:
            self.step = self._begin_value
        elif c == 0x5D:
            self._pop()
        else:
            self._fail(c, "after array element")

    def _end_top(self, c: int) -> None:
        if c not in _SPACE:
            self._fail(c, "after top-level value")

    def _in_string(self, c: int) -> None:
        if c == 0x22:
            self.step = self._end_value
        elif c == 0x5C:
            self.step = self._in_string_escape
        elif c < 0x20:
            self._fail(c, "in string literal")

    def _in_string_escape(self, c: int) -> None:
        if c in _ESCAPABLE:
            self.step = self._in_string
        elif c == 0x75:  # u
            self.hex_left = 4
            self.step = self._in_string_hex
        else:
            self._fail(c, "in string escape code")

    def _in_string_hex(self, c: int) -> None:
        if c in _HEX:
            self.hex_left -= 1
            if not self.hex_left:
                self.step = self._in_string
        else:
            self._fail(c, "in \\u hexadecimal character escape")

    def _negative(self, c: int) -> None:
        if c == 0x30:
            self.step = self._zero
        elif c in _DIGITS:
            self.step = self._one
        else:
            self._fail(c, "in numeric literal")

    def _one(self, c: int) -> None:
        if c in _DIGITS:
            return
        self._zero(c)

    def _zero(self, c: int) -> None:
        if c == 0x2E:  # .
            self.step = self._dot
        elif c in b"eE":
            self.step = self._exponent
        else:
            self._end_value(c)

    def _dot(self, c: int) -> None:
        if c in _DIGITS:
            self.step = self._fraction
        else:
            self._fail(c, "after decimal point in numeric literal")

    def _fraction(self, c: int) -> None:
        if c in _DIGITS:
            return
        if c in b"eE":
            self.step = self._exponent
        else:
            self._end_value(c)

    def _exponent(self, c: int) -> None:
        if c in b"+-":
            self.step = self._exponent_sign
        else:
            self._exponent_sign(c)

    def _exponent_sign(self, c: int) -> None:
        if c in _DIGITS:
            self.step = self._exponent_digits
        else:
            self._fail(c, "in exponent of numeric literal")

    def _exponent_digits(self, c: int) -> None:
        if c not in _DIGITS:
            self._end_value(c)

    def _in_literal(self, c: int) -> None:
        want = self.literal[0]
        if c != want:
            self._fail(c, f"in literal {self.literal_name} (expecting {_quote_char(want)})")
            return
        self.literal = self.literal[1:]
        if not self.literal:
            self.step = self._end_value



def syntax_error(data: bytes) -> str | None:
    """Go's json.Unmarshal syntax message for ``data``, or None when Go finds it valid."""
    return _GoScanner().check(data)
