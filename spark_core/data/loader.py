"""Load user training/eval data into PROMPTS rows; bad rows go to QUARANTINE, not into the run.

Accepted files: .json (a list, or {"data": [...]}), .jsonl, .parquet.
Accepted rows:
- the SPARK training format ({message, answer});
- the SPARK evaluation format ({dataset, problem, answer, image_path});
- ViRL39K as released (TIGER-Lab/ViRL39K, 39Krelease.parquet): {qid, question, answer,
  image, category, source, PassRate_*}, where `question` holds `<image>` placeholders,
  `image` is a list of paths relative to the file and `answer` may be `\\boxed{...}`;
- ViRL39K as the Hub's Parquet conversion has it: {problem, answer, images, ...}, with
  `images` a list of embedded image structs ({"bytes": ..., "path": ...});
- our own PROMPTS rows.
The row id comes from `prompt_id`, `qid` or `id`, the source name from `dataset`,
`source` or `category`. A boxed answer is unwrapped for the label.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from typing import Any, Callable

from PIL import Image

from spark_core import schemas
from spark_core.config import ANSWER_SUFFIX

# the answer-format instruction of the public SPARK / ViRL39K data
SPARK_SUFFIX = "Please first conduct reasoning, and then answer the question. Repeat the final answer using a '\\boxed{}'."

_SUFFIX_PATTERNS = [
    re.compile(
        r"\s*Please first conduct reasoning,?\s*and then answer the question\.?\s*"
        r"Repeat the final answer using an?\s*[\"'`]?\\{1,2}boxed\{\s*\}[\"'`]?\s*\.?[\"'`]?\s*$",
        re.IGNORECASE,
    ),
    re.compile(r"\s*" + re.escape(ANSWER_SUFFIX.rstrip(".")) + r"\.?\s*$"),
]
_IMAGE_TOKEN = re.compile(r"^\s*<image>\s*")
_IMAGE_PLACEHOLDER = re.compile(r"[ \t]*<image>[ \t]*\n?")
_WHOLE_BOX = re.compile(r"^\\boxed\s*\{(.*)\}$", re.DOTALL)
ID_KEYS = ("prompt_id", "qid", "id")
SOURCE_KEYS = ("dataset", "source", "category")
_RAW_LIMIT = 2000


class DataError(ValueError):
    """A data file that cannot be used at all (unreadable, or no valid rows)."""


class _Bad(Exception):
    """One row is invalid: which field and why."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


# ---- file reading ------------------------------------------------------------


def _read_records(path: str) -> list[Any]:
    """The file's rows as Python objects; a JSONL line that does not parse becomes a _Bad."""
    if not os.path.exists(path):
        raise DataError(f"data file {path!r} does not exist")
    if os.path.isdir(path):
        raise DataError(f"data path {path!r} is a directory; give a .json, .jsonl or .parquet file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for damaged files
            raise DataError(f"cannot read Parquet file {path!r}: {e}") from e
    if ext not in (".json", ".jsonl"):
        raise DataError(f"unsupported data file {path!r}: expected .json, .jsonl or .parquet")
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read data file {path!r}: {e}") from e
    if ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            lines = _jsonl(text)  # a JSONL file named .json is common; accept it if every line parses
            if lines is None or any(isinstance(x, _Bad) for x in lines):
                raise DataError(f"data file {path!r} is not valid JSON: {e}") from e
            return lines
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            return data["data"]
        if isinstance(data, list):
            return data
        raise DataError(f"data file {path!r} must hold a JSON list of rows or {{\"data\": [...]}}, "
                        f"got {type(data).__name__}")
    lines = _jsonl(text)
    return lines or []


def _jsonl(text: str) -> list[Any] | None:
    out: list[Any] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            out.append(_Bad("json", f"line {n} is not valid JSON ({e.msg} at column {e.colno})"))
    return out if out else None


# ---- row parsing -------------------------------------------------------------


def strip_suffix(text: str) -> str:
    """The question without a known answer-format instruction or leading <image> token."""
    prev = None
    text = text.strip()
    while prev != text:
        prev = text
        for pat in _SUFFIX_PATTERNS:
            text = pat.sub("", text).strip()
        text = _IMAGE_TOKEN.sub("", text).strip()
    return text


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, str) and not v.strip())


def _answer(row: dict[str, Any]) -> str:
    if "answer" not in row or row["answer"] is None:
        raise _Bad("answer", "has no answer")
    a = row["answer"]
    if isinstance(a, (list, dict)):
        a = json.dumps(a, ensure_ascii=False)
    a = str(a).strip()
    if not a:
        raise _Bad("answer", "has an empty answer")
    return unbox(a)


def unbox(answer: str) -> str:
    """The label inside an answer that is exactly one `\\boxed{...}` (ViRL39K ships them so)."""
    m = _WHOLE_BOX.match(answer)
    if m is None or not _balanced(m.group(1)) or m.group(1).endswith("\\"):  # e.g. "\\boxed{1} or \\boxed{2}" stays as is
        return answer
    inner = m.group(1).strip()
    if not inner:
        raise _Bad("answer", "has an empty \\boxed{} answer")
    return inner


def _balanced(text: str) -> bool:
    """Braces of `text` pair up (an escaped brace does not count) and never close below zero."""
    depth = 0
    for tok in re.finditer(r"\\.|[{}]", text, re.DOTALL):
        t = tok.group()
        depth += 1 if t == "{" else -1 if t == "}" else 0
        if depth < 0:
            return False
    return depth == 0


def _image_list(value: Any, field: str) -> Any:
    """The one image of a list-valued image column (ViRL39K), None for an empty list."""
    if hasattr(value, "tolist") and not isinstance(value, (bytes, bytearray)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return value
    items = [v for v in value if v not in (None, "", b"")]
    if len(items) > 1:
        raise _Bad(field, f"has {len(items)} images; only one image per prompt is supported")
    return items[0] if items else None


def _virl_question(text: str, has_image: bool, field: str) -> str:
    """The question without its `<image>` placeholders (the image travels separately)."""
    n = text.count("<image>")
    if n > 1:
        raise _Bad(field, f"has {n} <image> placeholders; only one image per prompt is supported")
    if n and not has_image:
        raise _Bad(field, "has an <image> placeholder but no image")
    return _IMAGE_PLACEHOLDER.sub(" ", text).strip() if n else text


def _user_turn(message: Any) -> tuple[str, Any]:
    """(question text, image reference or None) from a chat message list."""
    if isinstance(message, (bytes, bytearray)):
        message = message.decode("utf-8", errors="replace")
    if isinstance(message, str):
        try:
            message = json.loads(message)
        except json.JSONDecodeError as e:
            raise _Bad("message", f"has a message that is not valid JSON ({e.msg} at position {e.pos})") from e
    if isinstance(message, dict):
        message = [message]
    if not isinstance(message, list) or not message:
        raise _Bad("message", "has a message that is not a non-empty list of chat turns")
    users = [t for t in message if isinstance(t, dict) and t.get("role", "user") == "user"]
    if not users:
        raise _Bad("message", "has a message without a user turn")
    content = users[0].get("content")
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise _Bad("message", "has a user turn whose content is neither text nor a list of items")
    texts, images = [], []
    for item in content:
        if isinstance(item, str):
            texts.append(item)
        elif not isinstance(item, dict):
            raise _Bad("message", f"has a content item of type {type(item).__name__}")
        elif item.get("type") in ("image", "image_url") or "image" in item or "image_url" in item:
            ref = item.get("image", item.get("image_url"))
            if isinstance(ref, dict):
                ref = ref.get("url") or ref.get("path")
            images.append(ref)
        elif item.get("type", "text") == "text":
            texts.append(str(item.get("text") or ""))
    if len(images) > 1:
        raise _Bad("message", f"has {len(images)} images; only one image per prompt is supported")
    return "\n".join(t for t in texts if t), (images[0] if images else None)


def _image_bytes(ref: Any, base_dir: str, field: str) -> bytes:
    """PNG bytes of an image given as bytes, a {bytes, path} struct, a path, file:// or data: URI."""
    if isinstance(ref, dict):
        ref = ref.get("bytes") or ref.get("path")
    if isinstance(ref, (bytes, bytearray)):
        data = bytes(ref)
    elif isinstance(ref, str) and ref.strip():
        ref = ref.strip()
        if ref.startswith("data:"):
            try:
                data = base64.b64decode(ref.split(",", 1)[1], validate=False)
            except (IndexError, ValueError) as e:
                raise _Bad(field, "has a data: image URI that does not decode") from e
        else:
            path = ref[len("file://"):] if ref.startswith("file://") else ref
            path = os.path.expanduser(path)
            if not os.path.isabs(path):
                path = os.path.join(base_dir, path)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError as e:
                raise _Bad(field, f"refers to image file {path!r}, which does not exist") from e
            except OSError as e:
                raise _Bad(field, f"refers to image file {path!r}, which cannot be read ({e})") from e
    else:
        raise _Bad(field, "has an image reference that is empty or not a path")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()
        with Image.open(io.BytesIO(data)) as im:  # verify() leaves the image unusable; reopen
            im.load()  # decodes pixels, which catches truncated files verify() lets through
            if fmt == "PNG":
                return data
            if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
                im = im.convert("RGB")
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return buf.getvalue()
    except Exception as e:  # PIL raises many types for damaged images
        raise _Bad(field, f"has an image that cannot be decoded ({type(e).__name__}: {e})") from e


def _parse(row: Any, base_dir: str, stem: str) -> dict[str, Any]:
    """One PROMPTS row (without prompt_id) or _Bad."""
    if isinstance(row, _Bad):
        raise row
    if not isinstance(row, dict):
        raise _Bad("row", f"is a {type(row).__name__}, not an object")
    kind, provenance = schemas.KIND_SOLVE, {"template_id": "", "source_prompt_id": "", "source_rollout_id": ""}
    keep_message = None
    if "question" in row and "problem" not in row and isinstance(row.get("image"), (list, tuple, str)):
        # ViRL39K as released: `<image>` in the question, image paths relative to the file
        if not _present(row.get("question")):
            raise _Bad("question", "has an empty question")
        img_ref = _image_list(row["image"], "image")
        question = strip_suffix(_virl_question(str(row["question"]), img_ref is not None, "question"))
        field = "image"
    elif "question" in row and "image" in row and "problem" not in row:
        # our own PROMPTS artifact: image bytes inline
        if not _present(row.get("question")):
            raise _Bad("question", "has an empty question")
        question = strip_suffix(str(row["question"]))
        img_ref = row["image"]
        field = "image"
        kind = str(row.get("kind") or schemas.KIND_SOLVE)
        provenance = {k: str(row.get(k) or "") for k in provenance}
        if kind != schemas.KIND_SOLVE and isinstance(row.get("message"), str):
            keep_message = row["message"]  # recycled prompts carry their own instruction format
    elif "problem" in row or "image_path" in row:
        if not _present(row.get("problem")):
            raise _Bad("problem", "has no problem text")
        if "images" in row and not _present(row.get("image_path")):
            # the Hub's Parquet: a list of embedded {"bytes", "path"} image structs
            field = "images"
            img_ref = _image_list(row["images"], field)
            question = strip_suffix(_virl_question(str(row["problem"]), img_ref is not None, "problem"))
        else:
            question = strip_suffix(str(row["problem"]))
            img_ref = row.get("image_path") or None
            field = "image_path"
    elif "message" in row:
        if not _present(row.get("message")) and not isinstance(row.get("message"), list):
            raise _Bad("message", "has an empty message")
        text, img_ref = _user_turn(row["message"])
        question = strip_suffix(text)
        field = "image"
    else:
        raise _Bad("message", "has neither a message nor a problem field")
    answer = _answer(row)
    if not question:
        raise _Bad("problem" if field in ("image_path", "images") else "message", "has an empty question text")
    image = _image_bytes(img_ref, base_dir, field) if img_ref not in (None, "") else None
    source = next((row[k] for k in SOURCE_KEYS if _present(row.get(k))), None)
    message = keep_message or schemas.message_json(question + "\n" + ANSWER_SUFFIX, image is not None)
    return {
        "kind": kind,
        "message": message,
        "question": question,
        "answer": answer,
        "image": image,
        "source": str(source) if _present(source) else stem,
        **provenance,
    }


def _raw(row: Any) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray)):
            return f"<{len(v)} bytes>"
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    if isinstance(row, _Bad):
        return json.dumps({"error": row.reason})
    return json.dumps(clean(row), ensure_ascii=False, default=str)[:_RAW_LIMIT]


# ---- public ------------------------------------------------------------------


def load_rows(
    path: str,
    *,
    count_tokens: Callable[[str], int] | None = None,
    max_prompt_tokens: int | None = None,
    id_prefix: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(valid PROMPTS rows, QUARANTINE rows) from a user data file.

    Raises DataError if the file cannot be read or no valid row remains.
    """
    path = os.fspath(path)
    records = _read_records(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    prefix = id_prefix or stem
    valid: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        rid = None
        if isinstance(rec, dict):
            for key in ID_KEYS:
                if _present(rec.get(key)):
                    rid = str(rec[key]).strip()
                    break
        rid = rid or f"{prefix}-{i}"
        try:
            out = _parse(rec, base_dir, stem)
            if count_tokens is not None and max_prompt_tokens:
                n_tok = count_tokens(out["question"] + "\n" + ANSWER_SUFFIX)
                if n_tok > max_prompt_tokens:
                    raise _Bad("message", f"has a prompt of {n_tok} tokens, longer than max_prompt_tokens="
                                          f"{max_prompt_tokens}")
            if rid in seen:
                raise _Bad("prompt_id", "duplicates the id of an earlier row (the first one is kept)")
        except _Bad as bad:
            quarantine.append({
                "row_index": i,
                "row_id": rid,
                "field": bad.field,
                "reason": f"row {rid!r} (index {i}) {bad.reason}",
                "raw": _raw(rec),
            })
            continue
        seen.add(rid)
        valid.append({"prompt_id": rid, **out})
    if not valid:
        if not quarantine:
            raise DataError(f"data file {path!r} contains no rows")
        first = "; ".join(q["reason"] for q in quarantine[:3])
        raise DataError(f"data file {path!r} has no valid rows: all {len(quarantine)} rows were quarantined. "
                        f"First reasons: {first}")
    return valid, quarantine
