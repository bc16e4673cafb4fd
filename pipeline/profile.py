"""CleverTap's built-in profile keys and the formats CleverTap documents for them (docs/clevertap-api.md,
"Profile fields"): each converter turns what an SDK sends into CleverTap's format, or says why it cannot.

Pure, like mapping. Which traits feed which key is data in the preset (``profile``); the formats here are
CleverTap's and do not change per integration.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

#: (value or None, why it was left out or None)
Converted = tuple[Any, str | None]

_PHONE_STRIP = re.compile(r"[\s\-().]")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_DIGITS = re.compile(r"^[0-9]{1,20}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_URL = re.compile(r"^https?://[^\s/?#]+\S*$", re.IGNORECASE)
_GENDERS = {"m": "M", "male": "M", "f": "F", "female": "F"}
_YES_NO = {"y": "Y", "yes": "Y", "true": "Y", "n": "N", "no": "N", "false": "N"}
_EDUCATION = {"school": "School", "college": "College", "graduate": "Graduate"}
_TRUE_FALSE = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def normalise_phone(value: Any, default_country_code: str | None = None) -> str | None:
    """``+<country code><number>``, or None. ``00`` international prefixes become ``+``; a number without a
    country code gets ``default_country_code`` (one leading trunk ``0`` dropped: ``07700 900123`` with
    ``+44`` is ``+447700900123``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = _PHONE_STRIP.sub("", value)
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+") and default_country_code and _DIGITS.match(text):
        text = default_country_code + (text[1:] if text.startswith("0") else text)
    return text if _E164.match(text) else None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def name(value: Any, _: str | None) -> Converted:
    text = _text(value)
    return (text, None) if text else (None, "must be text")


def email(value: Any, _: str | None) -> Converted:
    text = value.strip() if isinstance(value, str) else None
    if text and _EMAIL.match(text):
        return text, None
    return None, "is not an email address (CleverTap code 515)"


def phone(value: Any, default_country_code: str | None) -> Converted:
    normalised = normalise_phone(value, default_country_code)
    if normalised:
        return normalised, None
    if default_country_code:
        return None, "is not a phone number (CleverTap wants +<country code><number>, code 516)"
    return None, (
        "has no country code (CleverTap wants +<country code><number>, code 516; set default_country_code "
        "to add one)"
    )


def gender(value: Any, _: str | None) -> Converted:
    found = _GENDERS.get(value.strip().lower()) if isinstance(value, str) else None
    return (
        (found, None)
        if found
        else (None, "is not one of m, male, f, female (CleverTap takes M or F, code 514)")
    )


def dob(value: Any, _: str | None) -> Converted:
    """CleverTap's date format, ``$D_<epoch seconds>``, from an ISO date (midnight UTC), an ISO date-time
    with a zone, epoch seconds or milliseconds, or ``$D_...`` as it is. Dates before 1970 are negative."""
    seconds: int | None = None
    if isinstance(value, str):
        text = value.strip()
        if _CT_DATE.match(text):
            seconds = int(text[3:])
            return (text, None) if _DOB_RANGE[0] <= seconds <= _DOB_RANGE[1] else (None, "is out of range")
        try:
            if _ISO_DATE.match(text):
                seconds = calendar.timegm(date.fromisoformat(text).timetuple())
            elif re.fullmatch(r"-?[0-9]{1,20}", text):
                seconds = _epoch(int(text))
            else:
                parsed = datetime.fromisoformat(text)
                if parsed.tzinfo is not None:
                    seconds = int(parsed.timestamp())
        except ValueError:
            seconds = None
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**15:
        seconds = _epoch(value)
    elif isinstance(value, float) and math.isfinite(value) and abs(value) < 1e15:
        seconds = _epoch(int(value))
    if seconds is None or not _DOB_RANGE[0] <= seconds <= _DOB_RANGE[1]:
        return None, "is not a date (an ISO date like 1990-05-17, ISO 8601 with a zone, or epoch seconds)"
    return f"$D_{seconds}", None


_CT_DATE = re.compile(r"^\$D_-?[0-9]{1,12}$")
#: 1800-01-01 to 2286-11-20: anything outside is a mistake, not a birthday.
_DOB_RANGE = (-5_364_662_400, 9_999_999_999)


def _epoch(number: int) -> int:
    """Epoch seconds from seconds or milliseconds (13 digits and up are milliseconds)."""
    return number // 1000 if abs(number) >= 100_000_000_000 else number


def yes_no(value: Any, _: str | None) -> Converted:
    if isinstance(value, bool):
        return ("Y" if value else "N"), None
    found = _YES_NO.get(value.strip().lower()) if isinstance(value, str) else None
    return (found, None) if found else (None, "is not true or false (CleverTap takes Y or N)")


def education(value: Any, _: str | None) -> Converted:
    found = _EDUCATION.get(value.strip().lower()) if isinstance(value, str) else None
    if found:
        return found, None
    return None, "is not one of School, College, Graduate (CleverTap code 518)"


def photo(value: Any, _: str | None) -> Converted:
    if isinstance(value, str) and _URL.match(value.strip()):
        return value.strip(), None
    return None, "is not an http(s) URL"


def flag(value: Any, _: str | None) -> Converted:
    if isinstance(value, bool):
        return value, None
    found = _TRUE_FALSE.get(value.strip().lower()) if isinstance(value, str) else None
    return (found, None) if found is not None else (None, "is not true or false")


#: CleverTap's built-in profile keys and how a value becomes each. A key not here is a custom property.
RESERVED: dict[str, Callable[[Any, str | None], Converted]] = {
    "Name": name,
    "Email": email,
    "Phone": phone,
    "Gender": gender,
    "DOB": dob,
    "Employed": yes_no,
    "Married": yes_no,
    "Education": education,
    "Customer Type": name,
    "Photo": photo,
    "MSG-email": flag,
    "MSG-push": flag,
    "MSG-sms": flag,
    "MSG-whatsapp": flag,
}
