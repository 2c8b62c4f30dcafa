"""Who the training films came from, for the artifact's ``population`` (the gate's age rule).

An image folder says nothing about its patients' ages, so the populations of the data sets this
project knows are written down here, from their publications, and matched by the folder's name;
``squid export --population-age MIN-MAX`` sets or overrides it for any other data. An unknown
population leaves the metadata empty and the age rule off for that artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

KNOWN: dict[str, dict[str, Any]] = {
    "zhanglab": {
        "age_years": {"min": 1, "max": 5},
        "description": "pediatric patients aged one to five years "
        "(Guangzhou Women and Children's Medical Center)",
        "source": "Kermany et al., Cell 2018 (ZhangLab chest X-rays)",
    },
}


def known_population(data_root: str | Path) -> dict[str, Any]:
    """The population of a known data set, from any part of its path's name; empty when unknown."""
    parts = [part.lower() for part in Path(str(data_root)).parts]
    for key, population in KNOWN.items():
        if any(key in part for part in parts):
            return dict(population)
    return {}


def parse_age_range(text: str) -> dict[str, Any]:
    """``"1-5"`` -> the ``population`` metadata of patients aged 1 to 5 completed years."""
    low, sep, high = text.partition("-")
    try:
        bounds = (float(low), float(high))
    except ValueError:
        raise ValueError(f"expected an age range like 1-5 (years), got {text!r}") from None
    if not sep or bounds[0] < 0 or bounds[1] < bounds[0]:
        raise ValueError(f"expected an age range like 1-5 (years), got {text!r}")
    return {
        "age_years": {"min": bounds[0], "max": bounds[1]},
        "description": f"patients aged {bounds[0]:g} to {bounds[1]:g} years (given at export)",
        "source": "squid export --population-age",
    }
