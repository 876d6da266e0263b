"""Named presets (``--config NAME`` or a path to a TOML file); command-line flags override them."""

from __future__ import annotations

import tomllib
from pathlib import Path

from whiten_cli.errors import InputError, WhitenError

_PACKAGE = Path(__file__).resolve().parent
# Installed wheels carry the presets inside the package; a source checkout has them at the top.
PRESET_DIRS = (_PACKAGE / "configs", _PACKAGE.parent / "configs")
KEYS = {
    "model": str, "pooling": str, "max_length": int, "batch_size": int, "k": int,
    "beta": float, "gamma": float, "whiten": bool, "jl_dim": int, "seed": int, "normalize": bool, "dtype": str,
}

# Checked here so that a bad value is reported in the file, not under a flag the user did not give.
RANGES = {"max_length": (1, None), "batch_size": (1, None), "k": (1, None), "jl_dim": (1, None), "seed": (0, None),
          "beta": (0, 1), "gamma": (0, 1)}


def preset_names() -> list[str]:
    return sorted({p.stem for d in PRESET_DIRS if d.is_dir() for p in d.glob("*.toml")})


def load_config(name_or_path: str | None) -> dict:
    """The settings of a preset name or TOML file, type-checked; {} when none is given."""
    if not name_or_path:
        return {}
    path = Path(name_or_path)
    if not path.is_file():
        candidates = [d / f"{name_or_path}.toml" for d in PRESET_DIRS]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise WhitenError(f"no config named {name_or_path!r} (presets: {', '.join(preset_names()) or 'none'})")
    try:
        settings = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, "not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"invalid TOML ({exc})") from None
    for key, value in settings.items():
        if key == "description":
            continue
        if key not in KEYS:
            raise InputError(path, f"unknown setting {key!r} (known: {', '.join(KEYS)})")
        expected = KEYS[key]
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            if not (expected is float and isinstance(value, int) and not isinstance(value, bool)):
                raise InputError(path, f"setting {key!r} must be a {expected.__name__}, got {value!r}")
        low, high = RANGES.get(key, (None, None))
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"in [{low}, {high}]" if high is not None else f"at least {low}"
            raise InputError(path, f"setting {key!r} must be {bounds}, got {value!r}")
    settings.pop("description", None)
    return settings
