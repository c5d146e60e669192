"""Checkpoints as data: a state of plain values written as strict JSON, never pickle.

A checkpoint file is one JSON object ``{"format": "bayes-defense-checkpoint",
"version": 1, "kind": ..., "state": ..., "extra": ...}``. Values JSON cannot
hold are written as tagged objects (``{"__t": "ndarray", ...}``, tuples, sets,
deques, dicts with non-string keys, non-finite floats, and instances of the
package's own stream classes as their attributes). Reading never runs code
from the file: a tag names one of a fixed set of containers, or a class that
must be defined in a ``bayes_defense.stream`` module (imported from the
installed package, never from the file), rebuilt from plain attribute values.
What a state means, and which values are valid, is checked by its owner (for
the defender, :meth:`~bayes_defense.stream.defender.StreamingDefender.load_state_dict`).

Memory is bounded before anything is allocated: a file larger than
:data:`MAX_CHECKPOINT_BYTES` is refused unread, an array is refused when its
declared size exceeds :data:`MAX_ARRAY_ELEMENTS` or differs from its data, and
nesting deeper than :data:`MAX_DEPTH` is refused.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.ioutil import atomic_write

__all__ = ["FORMAT", "VERSION", "MAX_CHECKPOINT_BYTES", "MAX_ARRAY_ELEMENTS", "MAX_DEPTH",
           "encode", "decode", "write_checkpoint", "read_checkpoint"]

FORMAT = "bayes-defense-checkpoint"
VERSION = 1
#: Largest checkpoint file read (bytes); a defender's state is a few MB at its bounds.
MAX_CHECKPOINT_BYTES = 256 * 1024 * 1024
#: Largest array a checkpoint may declare (elements).
MAX_ARRAY_ELEMENTS = 10_000_000
#: Deepest nesting of containers in a checkpoint.
MAX_DEPTH = 64
_DTYPES = {"float64": np.float64, "int64": np.int64, "bool": np.bool_}
_TAG = "__t"
_CLASS_PREFIX = "bayes_defense.stream."


def _float(value: float) -> Any:
    if math.isfinite(value):
        return value
    return {_TAG: "float", "v": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}


def encode(value: Any, _depth: int = 0) -> Any:
    """Return ``value`` as JSON-compatible data that :func:`decode` turns back into it.

    Examples
    --------
    >>> import numpy as np
    >>> decode(encode({("r0", "join"): (1.5, float("-inf")), "a": np.zeros(2)}))
    {('r0', 'join'): (1.5, -inf), 'a': array([0., 0.])}
    """
    if _depth > MAX_DEPTH:
        raise InvalidInputError(f"state nests deeper than {MAX_DEPTH} levels; it cannot be checkpointed")
    depth = _depth + 1
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _float(float(value))
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        dtype = value.dtype.name
        if dtype not in _DTYPES:
            raise InvalidInputError(f"arrays of dtype {dtype} cannot be checkpointed; use float64, int64 or bool")
        flat = value.ravel().tolist()
        return {_TAG: "ndarray", "dtype": dtype, "shape": list(value.shape),
                "data": [_float(x) for x in flat] if dtype == "float64" else flat}
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [encode(x, depth) for x in value]}
    if isinstance(value, (set, frozenset)):
        items = [encode(x, depth) for x in value]
        # A set's order depends on the hash seed; sort so that equal states give equal files.
        items.sort(key=lambda item: json.dumps(item, sort_keys=True))
        return {_TAG: "frozenset" if isinstance(value, frozenset) else "set", "items": items}
    if isinstance(value, collections.deque):
        return {_TAG: "deque", "maxlen": value.maxlen, "items": [encode(x, depth) for x in value]}
    if isinstance(value, list):
        return [encode(x, depth) for x in value]
    if isinstance(value, collections.OrderedDict):
        return {_TAG: "odict", "items": [[encode(k, depth), encode(v, depth)] for k, v in value.items()]}
    if isinstance(value, dict):
        if all(type(k) is str for k in value) and _TAG not in value:
            return {k: encode(v, depth) for k, v in value.items()}
        return {_TAG: "dict", "items": [[encode(k, depth), encode(v, depth)] for k, v in value.items()]}
    cls = type(value)
    if cls.__module__.startswith(_CLASS_PREFIX):
        if dataclasses.is_dataclass(value):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        else:
            names = [n for c in cls.__mro__ for n in getattr(c, "__slots__", ())]
            fields = {n: getattr(value, n) for n in names if hasattr(value, n)}
            fields.update(getattr(value, "__dict__", {}))
        return {_TAG: "object", "class": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {k: encode(v, depth) for k, v in fields.items()}}
    raise InvalidInputError(f"a value of type {cls.__module__}.{cls.__qualname__} cannot be checkpointed; "
                            "a checkpoint holds numbers, strings, containers, arrays and bayes_defense.stream objects")


def _class(name: Any) -> type:
    if not isinstance(name, str) or ":" not in name:
        raise InvalidInputError(f"checkpoint names a class as {name!r}; expected 'module:Class'")
    module_name, qualname = name.split(":", 1)
    if not module_name.startswith(_CLASS_PREFIX) or not qualname.replace("_", "a").isalnum():
        raise InvalidInputError(f"checkpoint names class {name!r}; only classes of bayes_defense.stream modules "
                                "may appear in a checkpoint")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise InvalidInputError(f"checkpoint names class {name!r}, whose module this installation lacks") from None
    cls = getattr(module, qualname, None)
    if not isinstance(cls, type) or cls.__module__ != module_name:
        raise InvalidInputError(f"checkpoint names class {name!r}, which {module_name} does not define")
    return cls


def decode(data: Any, _depth: int = 0) -> Any:
    """Rebuild a value written by :func:`encode`; refuse anything else with a reason.

    Examples
    --------
    >>> decode({"__t": "ndarray", "dtype": "float64", "shape": [2, 10**9], "data": []})
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: checkpoint array declares shape [2, 1000000000] ...
    """
    if _depth > MAX_DEPTH:
        raise InvalidInputError(f"checkpoint nests deeper than {MAX_DEPTH} levels")
    depth = _depth + 1
    if data is None or isinstance(data, (bool, int, float, str)):
        if isinstance(data, float) and not math.isfinite(data):
            raise InvalidInputError("checkpoint holds a bare non-finite number; it was not written by save()")
        return data
    if isinstance(data, list):
        return [decode(x, depth) for x in data]
    if not isinstance(data, dict):
        raise InvalidInputError(f"checkpoint holds a value of type {type(data).__name__}")
    tag = data.get(_TAG)
    if tag is None:
        return {k: decode(v, depth) for k, v in data.items()}
    try:
        if tag == "float":
            return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[data["v"]]
        if tag == "ndarray":
            return _array(data)
        if tag in ("tuple", "set", "frozenset", "deque"):
            items = data["items"]
            if not isinstance(items, list):
                raise TypeError
            decoded = [decode(x, depth) for x in items]
            if tag == "tuple":
                return tuple(decoded)
            if tag == "deque":
                maxlen = data["maxlen"]
                if maxlen is not None and (type(maxlen) is not int or maxlen < 0 or len(decoded) > maxlen):
                    raise InvalidInputError(f"checkpoint deque of {len(decoded)} items declares maxlen {maxlen!r}")
                return collections.deque(decoded, maxlen=maxlen)
            return (frozenset if tag == "frozenset" else set)(decoded)
        if tag in ("dict", "odict"):
            pairs = data["items"]
            if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise TypeError
            out = collections.OrderedDict() if tag == "odict" else {}
            for key, value in pairs:
                out[decode(key, depth)] = decode(value, depth)
            return out
        if tag == "object":
            cls = _class(data["class"])
            fields = data["fields"]
            if not isinstance(fields, dict):
                raise TypeError
            values = {str(k): decode(v, depth) for k, v in fields.items()}
            if dataclasses.is_dataclass(cls):
                return cls(**values)
            instance = object.__new__(cls)
            for key, value in values.items():
                setattr(instance, key, value)
            return instance
    except InvalidInputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InvalidInputError(f"checkpoint value tagged {tag!r} is malformed ({type(error).__name__}: "
                                f"{str(error)[:100]})") from None
    raise InvalidInputError(f"checkpoint holds an unknown tag {str(tag)[:40]!r}")


def _array(data: Mapping[str, Any]) -> np.ndarray:
    dtype, shape, values = data["dtype"], data["shape"], data["data"]
    if dtype not in _DTYPES:
        raise InvalidInputError(f"checkpoint array has dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(type(n) is int and n >= 0 for n in shape)):
        raise InvalidInputError(f"checkpoint array shape {str(shape)[:80]} is not a list of sizes")
    size = math.prod(shape)
    if size > MAX_ARRAY_ELEMENTS:
        raise InvalidInputError(f"checkpoint array declares shape {shape} ({size} elements), more than the "
                                f"{MAX_ARRAY_ELEMENTS} a checkpoint may hold")
    if not isinstance(values, list) or len(values) != size:
        raise InvalidInputError(f"checkpoint array declares shape {shape} but holds "
                                f"{len(values) if isinstance(values, list) else 'no list of'} values")
    if dtype == "float64":
        values = [decode(v) if isinstance(v, dict) else v for v in values]
    if not all(type(v) in (int, float, bool) for v in values):
        raise InvalidInputError("checkpoint array holds values that are not numbers")
    return np.array(values, dtype=_DTYPES[dtype]).reshape(shape)


def write_checkpoint(path: str | os.PathLike[str], kind: str, state: Mapping[str, Any],
                     extra: Mapping[str, Any] | None = None) -> None:
    """Write ``state`` (and plain ``extra`` data) to ``path`` atomically as strict JSON.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "state.json"
    >>> write_checkpoint(path, "example", {"count": 3})
    >>> read_checkpoint(path, "example")[0]
    {'count': 3}
    """
    document = {"format": FORMAT, "version": VERSION, "kind": kind, "state": encode(dict(state)),
                "extra": encode(dict(extra or {}))}
    text = json.dumps(document, allow_nan=False, separators=(",", ":"))
    with atomic_write(path) as handle:
        handle.write(text)


# Which defender wrote a checkpoint kind: "StreamingDefender" is the scored defender's, named so when it
# was the default (before the model filter became bd.StreamingDefender).
_KIND_HINTS = {
    "StreamingDefender": " (the scored defender's: load it with bayes_defense.stream.scored.ScoredDefender.load, "
                         "or resume with `bayes-defense defend --defender scored`)",
    "ModelDefender": " (the model filter's, the default defender: load it with "
                     "bayes_defense.stream.model_filter.ModelDefender.load, or resume with --defender model)",
}


def read_checkpoint(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint written by :func:`write_checkpoint`; return ``(state, extra)``.

    Raises
    ------
    InvalidInputError
        The file is too large, not JSON, not a checkpoint of ``kind`` or of
        this version, or holds a value :func:`decode` refuses.
    FileNotFoundError
        No such file.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise InvalidInputError(f"checkpoint {path.name!r} is {size} bytes, more than the {MAX_CHECKPOINT_BYTES} "
                                "a checkpoint may have; it was not written by save()")
    raw = path.read_bytes()
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise InvalidInputError(f"checkpoint {path.name!r} is not JSON ({str(error)[:100]}); checkpoints are written "
                                "by StreamingDefender.save or `bayes-defense defend --checkpoint`") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InvalidInputError(f"{path.name!r} is not a bayes-defense checkpoint (no \"format\": \"{FORMAT}\")")
    if document.get("version") != VERSION:
        raise InvalidInputError(f"checkpoint {path.name!r} has version {document.get('version')!r}; this "
                                f"installation reads version {VERSION}")
    if document.get("kind") != kind:
        hint = _KIND_HINTS.get(str(document.get("kind")), "")
        raise InvalidInputError(f"checkpoint {path.name!r} holds a {str(document.get('kind'))[:40]!r} state, not "
                                f"{kind!r}{hint}")
    state, extra = decode(document.get("state")), decode(document.get("extra", {}))
    if not isinstance(state, dict) or not isinstance(extra, dict):
        raise InvalidInputError(f"checkpoint {path.name!r} has no state object")
    return state, extra
