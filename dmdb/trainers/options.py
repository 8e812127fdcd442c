"""What a trainer is asked for, and the one converter from user values to typed options.

``dmdb train`` and ``dmdb verify`` hand every trainer factory the same
:class:`TrainerRequest`: the experiment's shape, the device, and a
:class:`TrainerOptions` holding the three kinds of user input a trainer can
take:

``settings``
    ``--set key=value`` pairs (strings), or typed values from Python or from
    the options recorded on runs.
``config``
    ``--config FILE``: a JSON or TOML table of further options, which the
    settings override.
``batch_models``
    ``--batch-models``: how many runs dmdb hands the trainer per call. Each
    factory says what else it means (the MLP trains that many models as one
    chunk).

A factory turns these into its own options dataclass with
:func:`options_from_dict`, so every trainer converts ``"20"`` to ``20`` and
``"false"`` to ``False`` the same way and reports a bad value in the same words.
"""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from dmdb.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = [
    "TrainerOptions",
    "TrainerRequest",
    "convert_option",
    "load_config",
    "options_from_dict",
]


class _Validated(Protocol):
    def validate(self) -> None: ...


T = TypeVar("T", bound=_Validated)


@dataclass(frozen=True)
class TrainerOptions:
    """The user's options for one trainer; build it with :meth:`of`.

    Attributes
    ----------
    settings : dict
        Option name to value (``--set key=value``); never holds ``config``.
    config : str or None
        Path of a JSON or TOML file of options (``--config``).
    batch_models : int or None
        Runs per trainer call (``--batch-models``); None lets the trainer choose.
    """

    settings: Mapping[str, Any] = field(default_factory=dict)
    config: str | None = None
    batch_models: int | None = None

    @classmethod
    def of(
        cls,
        settings: Mapping[str, Any] | None = None,
        *,
        config: str | os.PathLike[str] | None = None,
        batch_models: int | None = None,
    ) -> TrainerOptions:
        """Check and normalise a trainer's options.

        Parameters
        ----------
        settings : mapping, optional
            May name the config file as ``config`` (the documented
            ``--set config=PATH``, and how runs record it); it is moved into
            :attr:`config`.
        config : path, optional
        batch_models : int, optional

        Raises
        ------
        UsageError
            If ``batch_models`` is below 1, or two different config files are named.
        """
        values = dict(settings or {})
        named = values.pop("config", None)
        named = None if named is None or str(named).strip() == "" else str(named)
        path = None if config is None or str(config).strip() == "" else str(config)
        if named is not None and path is not None and named != path:
            raise UsageError(f"two config files: --config {path} and config={named}; give one")
        if batch_models is not None and (isinstance(batch_models, bool) or batch_models < 1):
            raise UsageError(f"--batch-models must be positive, got {batch_models}")
        return cls(values, path or named, None if batch_models is None else int(batch_models))

    def values(self) -> dict[str, Any]:
        """The config file's options, overridden by :attr:`settings`.

        Raises
        ------
        UsageError
            If the config file cannot be read, or names another config file.
        """
        merged: dict[str, Any] = {}
        if self.config is not None:
            merged.update(load_config(self.config))
            if "config" in merged:
                raise UsageError("a config file cannot name another config file")
        merged.update(self.settings)
        return merged

    def recorded(self) -> dict[str, Any]:
        """What runs keep in ``info.options``: the settings and the config file's path.

        ``dmdb verify`` reads this back through :meth:`of` to retrain with the
        same trainer; ``batch_models`` only changes throughput, so it is not kept.
        """
        return dict(self.settings) | ({"config": self.config} if self.config else {})


@dataclass(frozen=True)
class TrainerRequest:
    """What a trainer factory receives (see :func:`dmdb.trainers.register_trainer`).

    Attributes
    ----------
    name : str
        The name the trainer was asked for, e.g. ``'fmow'`` or ``'pkg.mod:fn'``.
    dataset_name : str or None
        The experiment's built-in dataset, or None for user data.
    n_train, n_targets : int
        The experiment's N and M.
    device : torch.device
        Already resolved and checked.
    options : TrainerOptions
    """

    name: str
    dataset_name: str | None
    n_train: int
    n_targets: int
    device: torch.device
    options: TrainerOptions


# ----------------------------------------------------------------------------- config files


def _toml_module(path: Path) -> Any:
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef,unused-ignore]
        except ImportError:
            raise UsageError(f"reading the TOML config {str(path)!r} needs Python 3.11+ or "
                             "`pip install tomli`; or write the config as JSON") from None
    return tomllib


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a trainer config file: a JSON object or a TOML table of options.

    Parameters
    ----------
    path : str or path-like
        ``*.toml`` is parsed as TOML, anything else as JSON.

    Returns
    -------
    dict
        Option name to value, e.g. ``{"epochs": 30, "train_beton": "..."}``.

    Raises
    ------
    UsageError
        If the file is missing, unparsable, or not a table/object.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read config file {str(p)!r}: {e.strerror}") from e
    is_toml = p.suffix.lower() == ".toml"
    try:
        data = _toml_module(p).loads(text) if is_toml else json.loads(text)
    except ValueError as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise UsageError(f"config file {str(p)!r} is not valid "
                         f"{'TOML' if is_toml else 'JSON'}: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"config file {str(p)!r} must hold an object/table of options")
    return data


# ----------------------------------------------------------------------------- conversion

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _kind(hint: Any) -> tuple[type, bool]:
    """(the field's type, whether it may be None) from a type hint like ``int | None``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:
            return others[0], len(others) < len(args)
    return hint, False


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def convert_option(key: str, hint: Any, value: Any) -> Any:
    """Convert one option value (a CLI string or a JSON/TOML value) to the field's type.

    Parameters
    ----------
    key : str
        The option's name, for the message.
    hint : type
        ``bool``, ``int``, ``float``, ``str``, or one of them ``| None``.
    value : str, bool, int, float or None
        Strings are parsed (booleans as true/false/1/0/yes/no/on/off); typed
        values must already be of the right kind (an int is a valid float).

    Raises
    ------
    UsageError
        ``option epochs='three': expected int; 'three' is not a number``.
    """
    kind, optional = _kind(hint)
    bad = f"option {key}={value!r}: expected {kind.__name__}"
    if value is None:
        if optional:
            return None
        raise UsageError(bad)
    if isinstance(value, str):
        text = value.strip()
        if kind is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise UsageError(f"{bad} (true/false, 1/0, yes/no or on/off)")
        if kind is str:
            return text
        try:
            return kind(text)
        except ValueError:
            reason = "" if _is_number(text) else f"; {text!r} is not a number"
            raise UsageError(bad + reason) from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(bad)
    if isinstance(value, bool) or kind is str:
        raise UsageError(bad)
    if kind is int and isinstance(value, int | np.integer):
        return int(value)
    if kind is float and isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    raise UsageError(bad)


def options_from_dict(
    cls: type[T], values: Mapping[str, Any] | None, *, trainer: str, own: Sequence[str] = ()
) -> T:
    """Build a trainer's options dataclass from a mapping of user values, and validate it.

    Parameters
    ----------
    cls : dataclass type with a ``validate()`` method
        Every field has a default; its type hint says how to convert.
    values : mapping, optional
        Field name to value (strings are converted, see :func:`convert_option`).
    trainer : str
        The trainer's name, for messages.
    own : sequence of str
        Keys the factory reads itself (e.g. the recipes' beton paths); they are
        skipped here, and listed as valid.

    Returns
    -------
    cls
        The defaults with ``values`` applied.

    Raises
    ------
    UsageError
        On an unknown key (naming the valid ones), an unconvertible value, or
        one that ``validate()`` refuses.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    given: dict[str, Any] = {}
    for key, value in (values or {}).items():
        if key in own:
            continue
        if key not in names:
            raise UsageError(f"unknown option {key!r} for trainer {trainer!r}; valid options: "
                             f"{', '.join([*own, *names])}")
        given[key] = convert_option(key, hints[key], value)
    options = cls(**given)
    options.validate()
    return options
