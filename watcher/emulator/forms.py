"""DRF-style validation of the Execution and Status API requests (bodies.py decodes them).

Messages, codes and attrs copy Django REST framework and the Unstract serializers
(`ExecutionRequestSerializer`, `ExecutionQuerySerializer`) as described in sections 3 and 8
of the behaviour sheet.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .bodies import FormData, Upload
from .responses import FieldError
from .results import Shaping

MAX_FILES = 32
MAX_TIMEOUT_SECONDS = 300
MAX_TAGS = 1
MAX_TAG_LENGTH = 50
_TAG_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]*$")
# DRF IntegerField accepts "5.0" or "5.00 " as 5, but not "5.5".
_DECIMAL_SUFFIX = re.compile(r"\.0*\s*$")
_INT_MAX_STRING_LENGTH = 1000

# DRF BooleanField's accepted words, exactly (case matters: "tRUE" is rejected).
TRUE_WORDS = frozenset("t T y Y yes Yes YES true True TRUE on On ON 1".split())
FALSE_WORDS = frozenset("f F n N no No NO false False FALSE off Off OFF 0".split())

_ENTERPRISE_TAIL = (
    "This advanced workflow feature is available in our enterprise version. "
    "Learn more at https://docs.unstract.com/unstract/unstract_platform/features/workflows/"
    "hqr_deployment_workflows/ or contact our sales team at https://unstract.com/contact/"
)
HITL_QUEUE_MESSAGE = (
    "Human-in-the-Loop (HITL) queue management requires Unstract Enterprise. " + _ENTERPRISE_TAIL
)
HITL_PACKET_MESSAGE = (
    "Packet-based HITL processing requires Unstract Enterprise. " + _ENTERPRISE_TAIL
)
NOT_A_FILE = "The submitted data was not a file. Check the encoding type on the form."


@dataclass(frozen=True)
class ExecutionForm:
    """A validated Execution API request."""

    files: tuple[Upload, ...]
    timeout: int = -1
    shaping: Shaping = field(default_factory=Shaping)
    use_file_history: bool = False
    tags: tuple[str, ...] = ()


def _tag_problem(tag: str) -> str | None:
    if len(tag) > MAX_TAG_LENGTH:
        return f"Tag '{tag}' exceeds the maximum length of {MAX_TAG_LENGTH}."
    if not _TAG_PATTERN.match(tag):
        return (
            f"Tag '{tag}' is invalid. Tags must start with a letter and can only "
            "contain letters, numbers, underscores, and hyphens."
        )
    return None


class _Fields:
    """Reads form values field by field, collecting DRF-style errors in field order."""

    def __init__(self, data: FormData) -> None:
        self.data = data
        self.errors: list[FieldError] = []

    def text(self, name: str) -> str | None:
        values = [v for v in self.data.get(name, ()) if isinstance(v, str)]
        return values[-1] if values else None

    def fail(self, name: str, detail: str, code: str = "invalid") -> None:
        self.errors.append(FieldError(detail, name, code))

    def boolean(self, name: str) -> bool:
        raw = self.text(name)
        if raw is None or raw == "" or raw in FALSE_WORDS:
            return False
        if raw in TRUE_WORDS:
            return True
        self.fail(name, "Must be a valid boolean.")
        return False

    def shaping(self) -> Shaping:
        return Shaping(
            include_metadata=self.boolean("include_metadata"),
            include_metrics=self.boolean("include_metrics"),
            include_extracted_text=self.boolean("include_extracted_text"),
        )

    def timeout(self) -> int:
        raw = self.text("timeout")
        if raw is None or raw == "":
            return -1
        if len(raw) > _INT_MAX_STRING_LENGTH:
            self.fail("timeout", "String value too large.", "max_string_length")
            return -1
        try:
            value = int(_DECIMAL_SUFFIX.sub("", raw))
        except ValueError:
            self.fail("timeout", "A valid integer is required.")
            return -1
        if value < -1:
            self.fail("timeout", "Ensure this value is greater than or equal to -1.", "min_value")
        elif value > MAX_TIMEOUT_SECONDS:
            detail = f"Ensure this value is less than or equal to {MAX_TIMEOUT_SECONDS}."
            self.fail("timeout", detail, "max_value")
        return value

    def tags(self) -> tuple[str, ...]:
        raw = (self.text("tags") or "").strip()
        tags = tuple(tag.strip() for tag in raw.split(",") if tag.strip())
        if len(tags) > MAX_TAGS:
            # Numbers quoted as section 3 quotes them; some server versions print them bare.
            self.fail(
                "tags", f"Maximum '{MAX_TAGS}' tags allowed. You provided '{len(tags)}' tags."
            )
            return ()
        problems = (p for p in map(_tag_problem, tags) if p)
        if problem := next(problems, None):
            self.fail("tags", problem)
        return tags

    def enterprise_only(self) -> None:
        # OSS builds reject hitl_queue_name whenever it is sent, even empty (section 3).
        if self.text("hitl_queue_name") is not None:
            self.fail("hitl_queue_name", HITL_QUEUE_MESSAGE)
        if (self.text("hitl_packet_id") or "").strip():
            self.fail("hitl_packet_id", HITL_PACKET_MESSAGE)
        if (self.text("llm_profile_id") or "").strip():
            self.fail("llm_profile_id", "Profile not found")

    def custom_data(self) -> None:
        raw = self.text("custom_data")
        if raw is None:
            return
        try:
            value = json.loads(raw)
        except ValueError:
            self.fail("custom_data", "Value must be valid JSON.")
            return
        if value is not None and not isinstance(value, dict):
            self.fail("custom_data", "custom_data must be a JSON object")

    def files(self) -> tuple[Upload, ...]:
        uploads: list[Upload] = []
        for index, value in enumerate(self.data.get("files", ())):
            if not isinstance(value, Upload):
                self.fail(f"files.{index}", NOT_A_FILE)
            elif not value.content:
                self.fail(f"files.{index}", "The submitted file is empty.", "empty")
            else:
                uploads.append(value)
        return tuple(uploads)


def validate_execution_form(data: FormData) -> ExecutionForm | list[FieldError]:
    """Validate an Execution API form; field errors in serializer field order."""
    fields = _Fields(data)
    tags = fields.tags()
    timeout = fields.timeout()
    shaping = fields.shaping()
    use_file_history = fields.boolean("use_file_history")
    fields.enterprise_only()
    fields.custom_data()
    files = fields.files()
    if fields.errors:
        return fields.errors
    # Non-field checks run only once every field is valid, as in DRF.
    if not files:
        detail = "You must provide at least one file or presigned URL."
        return [FieldError(detail, "non_field_errors")]
    if len(files) > MAX_FILES:
        detail = (
            f"You can upload a maximum of {MAX_FILES} files in total "
            "(uploaded or via presigned URLs)."
        )
        return [FieldError(detail, "non_field_errors")]
    return ExecutionForm(files, timeout, shaping, use_file_history, tags)


def parse_execution_id(raw: str | None) -> tuple[str, str] | FieldError:
    """(id as sent, stripped; canonical UUID) or the field error (section 8)."""
    if raw is None:
        return FieldError("This field is required.", "execution_id", "required")
    shown = raw.strip()
    if not shown:
        return FieldError("This field may not be blank.", "execution_id", "blank")
    try:
        return shown, str(uuid.UUID(shown))
    except ValueError:
        detail = f"Invalid execution_id '{shown}'. Must be a valid UUID."
        return FieldError(detail, "execution_id")


def parse_status_flags(query: Mapping[str, Sequence[str]]) -> tuple[Shaping, list[FieldError]]:
    """The include_* query flags of a Status API call and their errors."""
    fields = _Fields(query)
    shaping = fields.shaping()
    return shaping, fields.errors
