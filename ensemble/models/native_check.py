"""Native tree-model files checked before their library parses them in this process.

LightGBM's and XGBoost's model parsers trust their input. A truncated or edited file can kill the
process that parses it (SIGSEGV; SIGABRT when LightGBM fails inside its OpenMP tree loop), make it hang,
or, for LightGBM, load silently with fewer trees. So a file is never handed to the library in this
process until it passed two checks:

1. **Structure** (LightGBM's text format only, in Python: :func:`check_lightgbm_text`): the header
   fields the parser needs; ``tree_sizes`` matching the actual byte length of every ``Tree=<i>`` block
   (the parser jumps by them); every tree's arrays with the lengths its ``num_leaves`` implies and
   finite numbers; split features within ``max_feature_idx``; children forming one tree (no cycle, no
   index out of range, so prediction cannot read out of bounds or loop); ``end of trees`` after the last
   tree and the closing ``pandas_categorical`` line that the Python package writes (a cut file lacks it).
2. **Parse in a child process** (:func:`probe_native_load`): the same bytes are parsed by the library's
   C API in a fresh interpreter with a time limit; a crash or a hang ends the child, not the caller, and
   is reported as :class:`CorruptArtifactError`.

The caller then loads the very bytes that were checked (the file is read once), so nothing can change
between the check and the load. Inside the registry the sha256 manifest already refuses any edited
byte before a model's ``load`` runs; these checks protect ``Forecaster.load(directory)`` on directories
outside the registry.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Literal

from ensemble.models.base import UnsafeArtifactError

PROBE_TIMEOUT_S = 60.0
_MAX_FEATURES = 10_000_000
_MAX_LEAVES = 1 << 24
_MAX_TREE_LINES = 22  # LightGBM's tree parser reads at most this many ``key=value`` lines
_INT32 = (-(2**31), 2**31 - 1)

_INTS = re.compile(rb"-?\d{1,10}(?: -?\d{1,10})*")
# decimal numbers as LightGBM writes them ("%.17g"); without an exponent at most 40 digits: finite
_NUM = rb"-?(?:\d{1,40}(?:\.\d{0,40})?|\.\d{1,40})(?:[eE][-+]?\d{1,3})?"
_FLOATS = re.compile(_NUM + rb"(?: " + _NUM + rb")*")

NativeKind = Literal["lightgbm", "xgboost"]


class CorruptArtifactError(UnsafeArtifactError):
    """A native model file is damaged (truncated, edited, not the library's format): refused before the
    library parses it in this process."""


def _fail(path: str | Path, problem: str) -> CorruptArtifactError:
    return CorruptArtifactError(f"refusing to load {path}: {problem}")


# -- LightGBM text: structure ------------------------------------------------------------------------


def _values(raw: bytes, n: int, field: str, where: str, path: str | Path, *, floats: bool) -> list[bytes]:
    """The ``n`` space-separated numbers of a field (integers, or finite decimals when ``floats``)."""
    if n == 0 and raw == b"":
        return []
    if not (_FLOATS if floats else _INTS).fullmatch(raw):
        kind = "decimal numbers" if floats else "integers"
        raise _fail(path, f"{where}: {field} is not a list of {kind}")
    tokens = raw.split(b" ")
    if len(tokens) != n:
        raise _fail(path, f"{where}: {field} holds {len(tokens)} values, expected {n}")
    if floats and (b"e" in raw or b"E" in raw) and not all(math.isfinite(float(v)) for v in tokens):
        raise _fail(path, f"{where}: {field} holds a number too large to represent")
    return tokens


def _ints(raw: bytes, n: int, field: str, where: str, path: str | Path) -> list[int]:
    values = [int(v) for v in _values(raw, n, field, where, path, floats=False)]
    if any(not _INT32[0] <= v <= _INT32[1] for v in values):
        raise _fail(path, f"{where}: {field} holds a value outside the 32-bit integer range")
    return values


def _one_int(
    fields: dict[bytes, bytes], key: bytes, where: str, path: str | Path, low: int, high: int
) -> int:
    if key not in fields:
        raise _fail(path, f"{where}: the {key.decode()} field is missing")
    (value,) = _ints(fields[key], 1, key.decode(), where, path)
    if not low <= value <= high:
        raise _fail(path, f"{where}: {key.decode()}={value} is outside [{low}, {high}]")
    return value


def _check_topology(left: list[int], right: list[int], n_leaves: int, where: str, path: str | Path) -> None:
    """Children must form one binary tree rooted at node 0: every internal node and leaf reached once."""
    n_internal = n_leaves - 1
    seen_nodes, seen_leaves = {0}, set()
    stack = [0]
    while stack:
        node = stack.pop()
        for child in (left[node], right[node]):
            if child >= 0:
                if child >= n_internal or child in seen_nodes:
                    raise _fail(
                        path, f"{where}: node {node} has child {child}: not a tree (cycle or out of range)"
                    )
                seen_nodes.add(child)
                stack.append(child)
            else:
                leaf = ~child
                if leaf >= n_leaves or leaf in seen_leaves:
                    raise _fail(
                        path, f"{where}: node {node} points at leaf {leaf}: out of range or reached twice"
                    )
                seen_leaves.add(leaf)
    if len(seen_nodes) != n_internal or len(seen_leaves) != n_leaves:
        raise _fail(
            path,
            f"{where}: the tree reaches {len(seen_nodes)} of {n_internal} nodes and {len(seen_leaves)} of "
            f"{n_leaves} leaves",
        )


def _check_tree(block: bytes, index: int, n_features: int, path: str | Path) -> None:
    where = f"tree {index}"
    head = f"Tree={index}\n".encode()
    if not block.startswith(head):
        raise _fail(
            path, f"{where}: expected a block starting with {head.decode().strip()!r}, found {block[:20]!r}"
        )
    if not block.endswith(b"\n\n\n") or len(block) < len(head) + 3:
        raise _fail(
            path, f"{where}: the block does not end with its blank lines (size in tree_sizes is wrong)"
        )
    lines = block[len(head) : -3].split(b"\n")
    if len(lines) > _MAX_TREE_LINES:
        raise _fail(path, f"{where}: {len(lines)} lines, LightGBM reads at most {_MAX_TREE_LINES}")
    fields: dict[bytes, bytes] = {}
    for line in lines:
        key, sep, value = line.partition(b"=")
        if not sep or not key:
            raise _fail(path, f"{where}: line {line[:40]!r} is not key=value")
        fields[key] = value
    n_leaves = _one_int(fields, b"num_leaves", where, path, 1, _MAX_LEAVES)
    n_cat = _one_int(fields, b"num_cat", where, path, 0, _MAX_LEAVES)
    if fields.get(b"is_linear", b"0") != b"0":
        raise _fail(
            path, f"{where}: linear trees (is_linear={fields[b'is_linear'].decode()}) are not supported"
        )
    if b"leaf_value" not in fields:
        raise _fail(path, f"{where}: the leaf_value field is missing")
    _values(fields[b"leaf_value"], n_leaves, "leaf_value", where, path, floats=True)
    if b"shrinkage" in fields:
        _values(fields[b"shrinkage"], 1, "shrinkage", where, path, floats=True)
    if n_leaves == 1:
        return  # LightGBM reads nothing else of a one-leaf tree
    n = n_leaves - 1
    for key in (b"left_child", b"right_child", b"split_feature", b"threshold"):
        if key not in fields:
            raise _fail(path, f"{where}: the {key.decode()} field is missing")
    left = _ints(fields[b"left_child"], n, "left_child", where, path)
    right = _ints(fields[b"right_child"], n, "right_child", where, path)
    features = _ints(fields[b"split_feature"], n, "split_feature", where, path)
    thresholds = _values(fields[b"threshold"], n, "threshold", where, path, floats=True)
    for key, count in (
        (b"split_gain", n),
        (b"internal_value", n),
        (b"internal_weight", n),
        (b"leaf_weight", n_leaves),
    ):
        if key in fields:
            _values(fields[key], count, key.decode(), where, path, floats=True)
    for key, count in ((b"internal_count", n), (b"leaf_count", n_leaves)):
        if key in fields:
            _values(fields[key], count, key.decode(), where, path, floats=False)
    decision = _ints(fields.get(b"decision_type", b" ".join([b"0"] * n)), n, "decision_type", where, path)
    bad_feature = next((f for f in features if not 0 <= f < n_features), None)
    if bad_feature is not None:
        raise _fail(
            path, f"{where}: split_feature {bad_feature} is outside the model's {n_features} features"
        )
    for node, dt in enumerate(decision):
        if not 0 <= dt <= 127 or (dt >> 2) & 3 == 3:
            raise _fail(path, f"{where}: node {node} has an invalid decision_type {dt}")
        if dt & 1:  # categorical: the threshold indexes the tree's category sets
            thr = float(thresholds[node])
            if not (thr.is_integer() and 0 <= thr < n_cat):
                raise _fail(
                    path, f"{where}: categorical node {node} has threshold {thr}, not a category set index"
                )
    if n_cat > 0:
        for key in (b"cat_boundaries", b"cat_threshold"):
            if key not in fields:
                raise _fail(path, f"{where}: the {key.decode()} field is missing")
        bounds = _ints(fields[b"cat_boundaries"], n_cat + 1, "cat_boundaries", where, path)
        if bounds[0] != 0 or any(b < a for a, b in zip(bounds, bounds[1:], strict=False)):
            raise _fail(path, f"{where}: cat_boundaries are not increasing from 0")
        words = _ints(fields[b"cat_threshold"], bounds[-1], "cat_threshold", where, path)
        if any(w < 0 for w in words):
            raise _fail(path, f"{where}: cat_threshold holds a negative value")
    _check_topology(left, right, n_leaves, where, path)


def check_lightgbm_text(data: bytes, path: str | Path = "<model>") -> str:
    """Validate a LightGBM text model (as ``Booster.save_model`` writes it) without parsing it with
    LightGBM; return it as text. Raises :class:`CorruptArtifactError` naming ``path`` and the problem."""
    if not data.startswith(b"tree\n"):
        raise _fail(path, f"not a LightGBM text model (it starts with {data[:12]!r})")
    if b"\x00" in data or b"\r" in data:
        raise _fail(path, "a NUL byte or a carriage return (LightGBM writes neither)")
    if not data.endswith(b"\n"):
        raise _fail(path, "the file does not end with a newline: truncated")
    start = data.find(b"\nTree=")
    if start < 0:
        raise _fail(path, "no 'Tree=' block: truncated or not a model")
    start += 1
    header: dict[bytes, bytes] = {}
    for line in data[:start].split(b"\n")[1:]:
        if line:
            key, _, value = line.partition(b"=")
            header[key] = value
    for key in (b"version", b"num_class", b"num_tree_per_iteration", b"label_index", b"max_feature_idx"):
        if key not in header:
            raise _fail(path, f"header field {key.decode()} is missing")
    _one_int(header, b"num_class", "header", path, 1, 1 << 16)
    per_iteration = _one_int(header, b"num_tree_per_iteration", "header", path, 1, 1 << 16)
    _one_int(header, b"label_index", "header", path, 0, _MAX_FEATURES)
    n_features = _one_int(header, b"max_feature_idx", "header", path, 0, _MAX_FEATURES) + 1
    for key in (b"feature_names", b"feature_infos"):
        if key not in header:
            raise _fail(path, f"header field {key.decode()} is missing")
        if len(header[key].split(b" ")) != n_features:
            raise _fail(path, f"header field {key.decode()} does not list {n_features} features")
    if b"tree_sizes" not in header or not header[b"tree_sizes"]:
        raise _fail(path, "header field tree_sizes is missing or empty")
    raw_sizes = header[b"tree_sizes"]
    sizes = _ints(raw_sizes, raw_sizes.count(b" ") + 1, "tree_sizes", "header", path)
    if len(sizes) % per_iteration:
        raise _fail(path, f"{len(sizes)} trees is not a multiple of num_tree_per_iteration={per_iteration}")
    offset = start
    for i, size in enumerate(sizes):
        if size <= 0 or offset + size > len(data):
            raise _fail(
                path,
                f"tree {i} of {len(sizes)} would end at byte {offset + size} of a {len(data)}-byte file: "
                "truncated, or tree_sizes was edited",
            )
        _check_tree(data[offset : offset + size], i, n_features, path)
        offset += size
    if not data.startswith(b"end of trees\n", offset):
        raise _fail(path, f"'end of trees' does not follow tree {len(sizes) - 1} at byte {offset}")
    last = data[:-1].rsplit(b"\n", 1)[-1]
    if not last.startswith(b"pandas_categorical:"):
        raise _fail(path, "the closing 'pandas_categorical:' line is missing: truncated")
    try:
        cats = json.loads(last[len(b"pandas_categorical:") :])
    except ValueError:
        raise _fail(path, "the closing 'pandas_categorical:' line is not JSON: truncated") from None
    if cats is not None and not isinstance(cats, list):
        raise _fail(path, "the closing 'pandas_categorical:' line is not a list")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(path, f"not UTF-8 text ({exc})") from None


# -- any native format: parse once in a child process --------------------------------------------------

_PROBE = r"""
import ctypes, sys
kind, lib_path = sys.argv[1], sys.argv[2]
data = sys.stdin.buffer.read()
lib = ctypes.CDLL(lib_path)
handle = ctypes.c_void_p()
if kind == "lightgbm":
    lib.LGBM_GetLastError.restype = ctypes.c_char_p
    n_iter = ctypes.c_int(0)
    rc = lib.LGBM_BoosterLoadModelFromString(ctypes.c_char_p(data), ctypes.byref(n_iter), ctypes.byref(handle))
    error = lib.LGBM_GetLastError
else:
    lib.XGBGetLastError.restype = ctypes.c_char_p
    rc = lib.XGBoosterCreate(None, ctypes.c_uint64(0), ctypes.byref(handle))
    if rc == 0:
        rc = lib.XGBoosterLoadModelFromBuffer(handle, ctypes.c_char_p(data), ctypes.c_uint64(len(data)))
    error = lib.XGBGetLastError
if rc != 0:
    sys.stderr.write((error() or b"unknown error").decode("utf-8", "replace"))
    sys.exit(3)
"""


def _library_path(kind: NativeKind) -> str:
    """The shared library the Python package loaded (so the child parses with the very same code)."""
    module = importlib.import_module("lightgbm.basic" if kind == "lightgbm" else "xgboost.core")
    name = getattr(getattr(module, "_LIB", None), "_name", None)
    if not isinstance(name, str) or not os.path.isfile(name):
        raise RuntimeError(
            f"cannot locate the {kind} shared library to check a model file in a child process"
        )
    return name


def probe_native_load(
    kind: NativeKind, data: bytes, path: str | Path, timeout_s: float = PROBE_TIMEOUT_S
) -> None:
    """Parse ``data`` with ``kind``'s C API in a child process; raise :class:`CorruptArtifactError`
    naming ``path`` if the library refuses it, crashes on it, or does not finish within ``timeout_s``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-I", "-c", _PROBE, kind, _library_path(kind)]
    try:
        done = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise _fail(
            path, f"{kind} did not finish parsing it within {timeout_s:.0f}s (checked in a child process)"
        ) from None
    if done.returncode == 0:
        return
    message = done.stderr.decode("utf-8", "replace").strip().splitlines()
    detail = message[-1][:300] if message else ""
    if done.returncode < 0:
        try:
            what = signal.Signals(-done.returncode).name
        except ValueError:
            what = f"signal {-done.returncode}"
        raise _fail(path, f"{kind} crashed parsing it ({what}, in a child process): a damaged model file")
    raise _fail(path, f"{kind} cannot parse it: {detail or f'exit status {done.returncode}'}")


def read_lightgbm_model(path: str | Path) -> str:
    """The text of a LightGBM model file, checked (structure, then a parse in a child process)."""
    data = Path(path).read_bytes()
    text = check_lightgbm_text(data, path)
    probe_native_load("lightgbm", data, path)
    return text


def read_xgboost_model(path: str | Path) -> bytearray:
    """The bytes of an XGBoost model file (UBJSON or JSON), checked by a parse in a child process."""
    data = Path(path).read_bytes()
    if not data.startswith(b"{"):
        raise _fail(path, f"not an XGBoost UBJSON/JSON model (it starts with {data[:12]!r})")
    probe_native_load("xgboost", data, path)
    return bytearray(data)


__all__ = [
    "CorruptArtifactError",
    "check_lightgbm_text",
    "probe_native_load",
    "read_lightgbm_model",
    "read_xgboost_model",
]
