"""Reading a multipart upload into memory, never onto disk, with a byte limit enforced while the
body streams in (Starlette's UploadFile would spool anything over 1 MB to a temporary file)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.multipart import MultipartParser, parse_options_header

from busdx.inference.errors import EmptyInput, InputError, TooLarge, UnsupportedFormat

# Room for the multipart framing and small extra fields around the file itself.
FRAMING_ALLOWANCE = 64 * 1024
# RFC 2046 allows boundaries of 1 to 70 characters; a longer one is a malformed request.
MAX_BOUNDARY = 70


class _Collector:
    """Keeps the bytes of one named field; refuses the upload once it passes ``limit``."""

    def __init__(self, field: str, limit: int) -> None:
        self.field = field.encode()
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.found = False
        self._in_field = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_cb,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._in_field = False
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._in_field = options.get(b"name") == self.field and not self.found
        self.found = self.found or self._in_field

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_field:
            return
        self.size += end - start
        if self.size > self.limit:
            raise TooLarge(f"the file is over the limit of {self.limit // (1024 * 1024)} MB")
        self.chunks.append(bytes(data[start:end]))


async def read_upload(
    content_type: str | None,
    content_length: str | None,
    stream: AsyncIterator[bytes],
    field: str,
    limit: int,
) -> bytes:
    """The bytes of multipart field ``field``; InputError subclasses for every bad request."""
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UnsupportedFormat(f"send the image as multipart/form-data in a field named {field!r}")
    if len(boundary) > MAX_BOUNDARY:
        raise InputError(f"the multipart boundary is {len(boundary)} characters long; at most "
                         f"{MAX_BOUNDARY} are allowed")
    body_limit = limit + FRAMING_ALLOWANCE
    if content_length and content_length.isdigit() and int(content_length) > body_limit:
        raise TooLarge(f"the file is over the limit of {limit // (1024 * 1024)} MB")
    collector = _Collector(field, limit)
    received = 0
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async for chunk in stream:
            received += len(chunk)
            if received > body_limit:
                raise TooLarge(f"the file is over the limit of {limit // (1024 * 1024)} MB")
            parser.write(chunk)
        parser.finalize()
    except InputError:
        raise
    except Exception as err:  # python-multipart's parse errors
        raise InputError("the multipart request body is malformed") from err
    if not collector.found:
        raise InputError(f"no file in the request: send it in a multipart field named {field!r}")
    data = b"".join(collector.chunks)
    if not data:
        raise EmptyInput("the file is empty (zero bytes)")
    return data
