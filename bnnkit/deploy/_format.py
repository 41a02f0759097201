"""Reading and writing .bnn files: safetensors with JSON metadata (docs/deploy_format.md).

The safetensors header's `__metadata__` holds four strings: `format` ("bnnkit-deploy"),
`format_version` ("3"), `graph` (the JSON graph, including a sha256 of every tensor's bytes) and
`graph_sha256` (the sha256 of the `graph` string's UTF-8 bytes, exactly as stored, so that a
reader in any language checks it without re-serializing JSON). No pickle anywhere. Every
problem is reported as DeployFormatError with one line naming it and the fix.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as serialize

from ._errors import DeployFormatError
from ._ops import FORMAT_NAME, FORMAT_VERSION

REEXPORT = "re-export the model with `bnnkit export CKPT -o FILE`"
FIRST_WITH_GRAPH_DIGEST = 3  # files before it digest only their tensors


def tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def graph_digest(graph_text: str) -> str:
    """sha256 hex of the stored graph string's UTF-8 bytes (the `graph_sha256` metadata key)."""
    return hashlib.sha256(graph_text.encode("utf-8")).hexdigest()


def write(path: str | os.PathLike, graph: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    graph = dict(graph, digests={k: tensor_digest(v) for k, v in sorted(tensors.items())})
    graph_text = json.dumps(graph, separators=(",", ":"), allow_nan=True)
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "graph": graph_text,
            "graph_sha256": graph_digest(graph_text)}
    _write_whole(str(path), serialize(tensors, metadata=meta))


def _write_whole(path: str, data: bytes) -> None:
    """Write data to path so that a failure (a full disk, a kill) leaves the old file or none, never
    a partial one: a temporary file in the same folder, renamed over path once complete. A path
    that exists and is not a regular file (/dev/null, /dev/full, a pipe) is written directly,
    since renaming would replace the device itself. An OSError names path."""
    try:
        if os.path.exists(path) and not os.path.isfile(path):
            with open(path, "wb") as f:
                f.write(data)
            return
        tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), path) from None


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The graph and the tensors of a .bnn file, after checking format, version and checksums."""
    path = str(path)

    def fail(problem: str, fix: str = REEXPORT) -> DeployFormatError:
        return DeployFormatError(f"{path}: {problem}; {fix}")

    if not os.path.isfile(path):
        raise fail("no such file", "check the path")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in names}
    except DeployFormatError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad headers and sizes
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise fail(f"not a readable .bnn (safetensors) file, it is corrupt or truncated ({msg})") from None
    if meta.get("format") != FORMAT_NAME:
        raise fail(f"not a bnnkit deployment file (format {meta.get('format')!r}, expected {FORMAT_NAME!r})")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise fail(f"unreadable format version {meta.get('format_version')!r}") from None
    if version < FIRST_WITH_GRAPH_DIGEST:
        raise fail(f"format version {version} has no graph checksum, this bnnkit reads version {FORMAT_VERSION}")
    if version != FORMAT_VERSION:
        raise fail(f"format version {version}, this bnnkit reads version {FORMAT_VERSION}", "upgrade bnnkit")
    graph_text = meta.get("graph", "")
    if meta.get("graph_sha256") != graph_digest(graph_text):
        problem = "lacks its graph checksum" if "graph_sha256" not in meta else "its graph does not match its checksum"
        raise fail(f"{problem} (the header was edited or is corrupt)")
    try:
        graph = json.loads(graph_text)
    except ValueError as e:
        raise fail(f"its graph metadata is not valid JSON ({e})") from None
    if not isinstance(graph, dict):
        raise fail("its graph metadata is not a JSON object")
    digests = graph.get("digests")
    if not isinstance(digests, dict) or set(digests) != set(tensors):
        raise fail("its tensor checksums do not list exactly the tensors in the file")
    for k, t in tensors.items():
        if tensor_digest(t) != digests[k]:
            raise fail(f"tensor {k!r} does not match its checksum (the file is corrupt)")
    return graph, tensors
