"""A tiny YAML reader for the subset OpenAPI documents use (no PyYAML in the environment).

Supports block mappings and sequences, ``- key: value`` items, flow sequences ``[a, b]``,
quoted and plain scalars (multi-line plain scalars folded), block scalars (``|``, ``>``, ``>-``),
integers, booleans, null, and ``#`` comments. Anchors, tags and flow mappings are not supported.
"""

import re

_KEY = re.compile(r"""^("(?:[^"\\]|\\.)*"|'[^']*'|[^"'\s#-][^:]*?|-[^\s:][^:]*?)\s*:(?:\s+|$)""")


def _strip_comment(text):
    quote = None
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'" and (i == 0 or text[i - 1] in " [,:-"):
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] == " "):
            return text[:i].rstrip()
    return text.rstrip()


def _scalar(text):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_scalar(part) for part in inner.split(",")] if inner else []
    if text in ("true", "True"):
        return True
    if text in ("false", "False"):
        return False
    if text in ("null", "~", ""):
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


def _key(text):
    key = text.strip()
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
        return key[1:-1]
    return key


class _Reader:
    def __init__(self, text):
        self.lines = []
        for raw in text.splitlines():
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            content = _strip_comment(raw.strip())
            if content:
                self.lines.append([len(raw) - len(raw.lstrip(" ")), content])

    def block(self, i):
        indent = self.lines[i][0]
        if self.lines[i][1].startswith("- ") or self.lines[i][1] == "-":
            return self.sequence(i, indent)
        return self.mapping(i, indent)

    def _continuation(self, i, indent):
        parts = []
        while i < len(self.lines) and self.lines[i][0] > indent:
            parts.append(self.lines[i][1])
            i += 1
        return parts, i

    def mapping(self, i, indent):
        result = {}
        while i < len(self.lines) and self.lines[i][0] == indent and not self.lines[i][1].startswith("- "):
            content = self.lines[i][1]
            m = _KEY.match(content)
            if not m:
                raise ValueError(f"not a mapping entry: {content!r}")
            key, rest = _key(m.group(1)), content[m.end() :].strip()
            i += 1
            if rest == "":
                nxt = self.lines[i][1] if i < len(self.lines) else ""
                if (
                    i < len(self.lines)
                    and self.lines[i][0] > indent
                    and not (_KEY.match(nxt) or nxt[:2] == "- ")
                ):
                    parts, i = self._continuation(i, indent)
                    value = _scalar(" ".join(parts))
                elif i < len(self.lines) and (
                    self.lines[i][0] > indent
                    or (self.lines[i][0] == indent and self.lines[i][1].startswith("- "))
                ):
                    value, i = self.block(i)
                else:
                    value = None
            elif rest in ("|", "|-", ">", ">-", "|+", ">+"):
                parts, i = self._continuation(i, indent)
                value = ("\n" if rest.startswith("|") else " ").join(parts)
            else:
                parts, i = self._continuation(i, indent)
                value = _scalar(" ".join([rest] + parts)) if parts else _scalar(rest)
            result[key] = value
        return result, i

    def sequence(self, i, indent):
        items = []
        while (
            i < len(self.lines)
            and self.lines[i][0] == indent
            and (self.lines[i][1].startswith("- ") or self.lines[i][1] == "-")
        ):
            content = self.lines[i][1][1:].lstrip()
            if content == "":
                value, i = self.block(i + 1)
            elif _KEY.match(content):
                self.lines[i] = [indent + len(self.lines[i][1]) - len(content), content]
                value, i = self.mapping(i, self.lines[i][0])
            else:
                parts, j = self._continuation(i + 1, indent)
                value, i = _scalar(" ".join([content] + parts)), j
            items.append(value)
        return items, i


def load(text):
    reader = _Reader(text)
    if not reader.lines:
        return None
    value, i = reader.block(0)
    if i != len(reader.lines):
        raise ValueError(f"unparsed YAML from line: {reader.lines[i][1]!r}")
    return value
