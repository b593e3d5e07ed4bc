"""Pushed messages (reminders, notices, nurse alerts) in the patient's language, dates in the patient's zone.

Everything the scheduler pushes comes from the Babel catalogs in `bot/locale/<locale>/LC_MESSAGES/notices.po`
(template: `bot/locale/notices.pot`), so a hospital rewords a reminder without a code change and care-plan
templates (data/care_plans/) name messages by key. Msgids are message keys (`medication_reminder`), not source
strings: the Chinese text is a translation like the English one, so its wording can change without touching code
or invalidating the other catalogs. Each message has a short form, `<key>.summary` (at most 20 characters, for
WeChat template messages). Dotted keys hold the rest: `format.*` date patterns, `measurement.*` terms, `chart.*`
labels.

The .po files are read at runtime with `read_po` (once per process), so the build has no compile step.

`python -m bot.notices check` validates the catalogs against the care-plan templates;
`python -m bot.notices show KEY --locale en --param name=张三` prints a rendering.
"""

from __future__ import annotations

import argparse
import logging
import string
import sys
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import yaml
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_time
from babel.messages.pofile import PoFileError, read_po
from babel.numbers import format_decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.config import DATA_DIR, get_settings
from bot.errors import DomainError

logger = logging.getLogger(__name__)

DOMAIN = "notices"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
CARE_PLANS_DIR = DATA_DIR / "care_plans"
PRIMARY_LOCALE = "zh_CN"
DEFAULT_TZ = "Asia/Shanghai"
FALLBACK_LOCALES: Tuple[str, ...] = ("zh_CN", "en")  # after the patient's own catalog, in this order
REQUIRED_LOCALES: Tuple[str, ...] = ("zh_CN", "en")  # `check` insists on these catalogs being complete
SUMMARY_LIMIT = 20  # characters in a WeChat template value (bot.outbound.providers.TEMPLATE_VALUE_LIMIT)
SUMMARY_SUFFIX = ".summary"

# Messages the scheduler and the actions push by name; care-plan templates may add more.
NOTICE_KEYS: Tuple[str, ...] = (
    "surgery_day1_checkin",
    "surgery_day3_wound_care",
    "surgery_day7_revisit",
    "survey_invitation",
    "medication_reminder",
    "medication_reask",
    "bp_request",
    "glucose_request",
    "hba1c_reminder",
    "monthly_bp_summary",
    "chemo_cycle_booking",
    "chemo_side_effects",
    "appointment_reminder_24h",
    "appointment_reminder_2h",
    "birthday_greeting",
    "winback_invitation",
    "nurse_alert_no_reading",
    "nurse_alert_missed_doses",
    "nurse_alert_reading",
    "reading_recorded",
)

# How a datetime parameter is shown depends on the placeholder: {time} wants the time of day, {date} the day.
_MOMENT_FORMATS = {"time": "format.time", "date": "format.date"}
_DEFAULT_MOMENT_FORMAT = "format.datetime"


class NoticeError(DomainError):
    """Base of the errors of this module; the message says what to fix."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


class UnknownNotice(NoticeError, KeyError):
    """No catalog has this message key."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"no pushed message {key!r} in the notices catalogs ({LOCALE_DIR}); add it to notices.pot and to every "
            f"notices.po, then run `python -m bot.notices check`"
        )
        self.key = key


class MissingParameter(NoticeError, KeyError):
    """The message needs a value the caller did not give; nothing half-filled is ever sent."""

    def __init__(self, key: str, names: Sequence[str]) -> None:
        listed = ", ".join(names)
        super().__init__(f"message {key!r} needs parameter(s) {listed}: pass them in params (not None or empty)")
        self.key = key
        self.names = tuple(names)


class InvalidParameter(NoticeError, ValueError):
    """A value cannot be put in a message (unknown time zone, a type with no patient-facing form)."""


class CatalogError(NoticeError):
    """A catalog entry is broken (unbalanced braces, a placeholder that is not a plain name)."""


@dataclass(frozen=True)
class Notice:
    """A message ready to push: the full text, its short form and the catalog locale both came from."""

    text: str
    summary: str
    locale: str


@dataclass(frozen=True)
class Term:
    """A parameter that is itself translated, in the same language as the message: Term("measurement.glucose")
    reads 血糖 to a Chinese patient and "blood glucose" to an English one."""

    key: str


# ----------------------------------------------------------------------------------------------
# Catalogs
# ----------------------------------------------------------------------------------------------
def po_path(locale: str, locale_dir: Optional[Path] = None) -> Path:
    return (locale_dir or LOCALE_DIR) / locale / "LC_MESSAGES" / f"{DOMAIN}.po"


def _read_entries(path: Path, locale: Optional[str]) -> Dict[str, Optional[str]]:
    """msgid → msgstr of one .po/.pot file; None for untranslated or fuzzy entries, which gettext never uses."""
    with open(path, "rb") as handle:
        catalog = read_po(handle, locale=locale, domain=DOMAIN, ignore_obsolete=True, abort_invalid=True)
    return {
        message.id: (message.string or None) if not message.fuzzy else None
        for message in catalog
        if isinstance(message.id, str) and message.id
    }


@lru_cache(maxsize=None)
def available_locales() -> Tuple[str, ...]:
    return tuple(sorted(path.parent.parent.name for path in LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po")))


@lru_cache(maxsize=None)
def _messages(locale: str) -> Dict[str, str]:
    """The translated entries of one catalog, read once per process."""
    entries = _read_entries(po_path(locale), locale)
    return {key: text for key, text in entries.items() if text is not None}


def reload_catalogs() -> None:
    """Forget the catalogs read so far; the next message reads the .po files again (after a hospital edits them)."""
    available_locales.cache_clear()
    _messages.cache_clear()
    catalog_locale.cache_clear()


def _parse_locale(name: Optional[str]) -> Optional[Locale]:
    if not name:
        return None
    try:
        return Locale.parse(name.replace("-", "_"))
    except (ValueError, TypeError, UnknownLocaleError):
        return None


@lru_cache(maxsize=256)
def catalog_locale(locale: Optional[str]) -> str:
    """The catalog serving a patient's locale: 'zh-CN', 'zh_Hans_CN' → zh_CN; 'en_US' → en; an unknown or empty
    locale → zh_CN, the hospital's language. Another variant of a language gets that language's catalog
    (zh_TW → zh_CN) rather than a foreign one."""
    parsed = _parse_locale(locale)
    if parsed is None:
        return PRIMARY_LOCALE
    available = available_locales()
    for candidate in (f"{parsed.language}_{parsed.territory}", parsed.language):
        if candidate in available:
            return candidate
    same_language = [name for name in available if name.split("_")[0] == parsed.language]
    same_language.sort(key=lambda name: name != PRIMARY_LOCALE)
    return same_language[0] if same_language else PRIMARY_LOCALE


def _chain(locale: Optional[str]) -> Tuple[str, ...]:
    """Catalogs to look a key up in: the patient's, then zh_CN, then en."""
    candidates = (catalog_locale(locale), *FALLBACK_LOCALES)
    return tuple(name for name in dict.fromkeys(candidates) if name in available_locales())


def _lookup(key: str, chain: Iterable[str]) -> Tuple[str, str]:
    """(catalog locale, template) of the first catalog in `chain` that has `key`."""
    for name in chain:
        template = _messages(name).get(key)
        if template is not None:
            return name, template
    raise UnknownNotice(key)


# ----------------------------------------------------------------------------------------------
# Placeholders and values
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=1024)
def _pieces(template: str) -> Tuple[Tuple[str, Optional[str]], ...]:
    """(literal, placeholder) pairs. Only plain names are allowed: a catalog must not reach into attributes or
    format specs of the values (`{name.__class__}`), so this does not use str.format."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise CatalogError(
            f"unbalanced braces in {template!r} ({error}); write a literal brace as {{{{ or }}}}"
        ) from error
    pieces = []
    for literal, field, spec, conversion in parsed:
        if field is not None and (not field.isidentifier() or spec or conversion):
            raise CatalogError(f"placeholder {{{field}}} in {template!r} is not a plain name like {{name}}")
        pieces.append((literal, field))
    return tuple(pieces)


def placeholders(template: str) -> Set[str]:
    """The placeholder names of a catalog text: {'name', 'drug'} for '{name}您好，该吃{drug}了'."""
    return {field for _, field in _pieces(template) if field is not None}


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _zone(tz: Optional[str]) -> ZoneInfo:
    """The patient's zone; none recorded means the hospital's (HOSPITAL_TIMEZONE), as everywhere in the CRM."""
    if not tz:
        return get_settings().tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as error:
        raise InvalidParameter(
            f"unknown time zone {tz!r}: use an IANA name such as Asia/Shanghai or America/New_York"
        ) from error


@lru_cache(maxsize=32)
def _babel(locale: str) -> Locale:
    """The parsed Babel locale, once: passing a string to babel's formatters parses it on every call (11% of the
    dispatcher's time per reminder, bench/reminders.py)."""
    return Locale.parse(locale)


def _format_moment(placeholder: str, moment: datetime, locale: str, zone: ZoneInfo) -> str:
    """A datetime (aware, or naive meaning UTC as the CRM stores it) shown as the patient's local time."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
    local = aware.astimezone(zone)
    pattern = _lookup(_MOMENT_FORMATS.get(placeholder, _DEFAULT_MOMENT_FORMAT), _chain(locale))[1]
    if placeholder == "date":
        return format_date(local.date(), pattern, locale=_babel(locale))
    return format_datetime(local, pattern, tzinfo=zone, locale=_babel(locale))


def _format_value(placeholder: str, value: Any, locale: str, zone: ZoneInfo) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Term):
        return _lookup(value.key, _chain(locale))[1]
    if isinstance(value, datetime):
        return _format_moment(placeholder, value, locale, zone)
    if isinstance(value, date):
        return format_date(value, _lookup("format.date", _chain(locale))[1], locale=_babel(locale))
    if isinstance(value, time):  # a wall-clock time (a dose time): already the patient's local time
        return format_time(value, _lookup("format.time", _chain(locale))[1], locale=_babel(locale))
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return format_decimal(value, locale=_babel(locale))
    raise InvalidParameter(
        f"parameter {placeholder!r}: a {type(value).__name__} has no patient-facing form; pass a str, a number, "
        f"a date, a time, a datetime or a Term"
    )


def _fill(key: str, template: str, params: Mapping[str, Any], locale: str, zone: ZoneInfo) -> str:
    try:
        pieces = _pieces(template)
    except CatalogError as error:
        raise CatalogError(f"{locale} catalog, message {key!r}: {error}") from error
    missing = sorted({field for _, field in pieces if field is not None and _is_blank(params.get(field))})
    if missing:
        raise MissingParameter(key, missing)
    return "".join(
        literal + (_format_value(field, params[field], locale, zone) if field is not None else "")
        for literal, field in pieces
    )


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
def translate(
    key: str,
    params: Optional[Mapping[str, Any]] = None,
    *,
    locale: Optional[str] = PRIMARY_LOCALE,
    tz: Optional[str] = DEFAULT_TZ,
) -> str:
    """One catalog text filled in, without a summary: chart labels, terms, anything that is not pushed alone."""
    found, template = _lookup(key, _chain(locale))
    return _fill(key, template, params or {}, found, _zone(tz))


def render(
    key: str, params: Mapping[str, Any], *, locale: Optional[str] = PRIMARY_LOCALE, tz: Optional[str] = DEFAULT_TZ
) -> Notice:
    """The message `key` for a patient: text and summary in their language, dates and times in their zone.

    `locale` is normalised ('zh-CN', 'en_US'); an unknown one gets zh_CN, and a key missing from the patient's
    catalog comes from zh_CN, then en (`Notice.locale` says which). A `tz` of None or "" means the hospital's zone.
    Datetime parameters are aware, or naive meaning UTC; `{time}` shows the time of day, `{date}` the day, any other
    placeholder the day and time ('11月24日 星期二 上午9:00' / 'Tue, Nov 24, 9:00 AM'). Dates, wall-clock times,
    numbers, pre-formatted strings and `Term`s are accepted too. Raises UnknownNotice, MissingParameter (also for
    None or empty values) or InvalidParameter rather than sending a half-filled message.
    """
    found, template = _lookup(key, _chain(locale))
    zone = _zone(tz)
    text = _fill(key, template, params, found, zone)
    return Notice(text=text, summary=_summary(key, params, found, zone), locale=found)


def _summary(key: str, params: Mapping[str, Any], locale: str, zone: ZoneInfo) -> str:
    """The short form; a missing one must not stop a reminder, so it is logged and left empty (providers then
    shorten the text)."""
    try:
        found, template = _lookup(key + SUMMARY_SUFFIX, _chain(locale))
    except UnknownNotice:
        logger.warning(
            "message %r has no %s in the notices catalogs; run python -m bot.notices check", key, SUMMARY_SUFFIX
        )
        return ""
    return _fill(key + SUMMARY_SUFFIX, template, params, found, zone)


# ----------------------------------------------------------------------------------------------
# Checking the catalogs
# ----------------------------------------------------------------------------------------------
def template_messages(templates_dir: Path = CARE_PLANS_DIR) -> Dict[str, List[str]]:
    """Message key → the care-plan template files whose steps name it."""
    used: Dict[str, List[str]] = {}
    for path in sorted(templates_dir.glob("*.yml")):
        with open(path, encoding="utf-8") as handle:
            plan = yaml.safe_load(handle) or {}
        for step in plan.get("steps") or []:
            if isinstance(step, dict) and step.get("message"):
                used.setdefault(str(step["message"]), []).append(path.name)
    return used


def _load_for_check(path: Path, locale: Optional[str], problems: List[str]) -> Optional[Dict[str, Optional[str]]]:
    try:
        return _read_entries(path, locale)
    except FileNotFoundError:
        problems.append(f"{path}: missing")
    except (PoFileError, ValueError) as error:
        problems.append(f"{path}: not a valid PO file ({error})")
    return None


def _needed_ids(template_ids: Iterable[str], used_by_templates: Mapping[str, List[str]]) -> Set[str]:
    """Every id the catalogs must translate: the template's, the notices the code sends, the care plans' messages,
    and a summary for each message (undotted) key."""
    keys = set(NOTICE_KEYS) | set(used_by_templates) | {i for i in template_ids if "." not in i}
    return set(template_ids) | keys | {key + SUMMARY_SUFFIX for key in keys}


def _entry_problems(locale: str, key: str, text: str) -> List[str]:
    try:
        names = placeholders(text)
    except CatalogError as error:
        return [f"{locale}: {key!r}: {error}"]
    if key.endswith(SUMMARY_SUFFIX):
        found = []
        if len(text) > SUMMARY_LIMIT:
            found.append(f"{locale}: {key!r} has {len(text)} characters, more than {SUMMARY_LIMIT}: {text!r}")
        if names:
            found.append(f"{locale}: {key!r} uses placeholders {sorted(names)}; summaries are fixed text")
        return found
    if key.startswith("format."):
        try:
            format_datetime(datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc), text, locale=locale)
        except Exception as error:  # babel raises several types for a bad pattern; report whichever it is
            return [f"{locale}: {key!r}: {text!r} is not a Babel date pattern or width ({error})"]
    return []


def check_catalogs(templates_dir: Path = CARE_PLANS_DIR, locale_dir: Optional[Path] = None) -> List[str]:
    """Problems with the catalogs (bot/locale unless `locale_dir`), one line each; empty when every needed key is
    translated in zh_CN and en, summaries fit, and both languages use the same placeholders."""
    locale_dir = locale_dir or LOCALE_DIR
    problems: List[str] = []
    template = _load_for_check(locale_dir / f"{DOMAIN}.pot", None, problems) or {}
    used = template_messages(templates_dir)
    needed = _needed_ids(template, used)
    for key in sorted((set(used) | set(NOTICE_KEYS)) - set(template)):
        users = ", ".join(used.get(key, ["bot.notices.NOTICE_KEYS"]))
        problems.append(f"notices.pot: {key!r} (used by {users}) is missing")
    catalogs: Dict[str, Dict[str, Optional[str]]] = {}
    for locale in REQUIRED_LOCALES:
        entries = _load_for_check(po_path(locale, locale_dir), locale, problems)
        if entries is None:
            continue
        catalogs[locale] = entries
        for key in sorted(needed):
            if entries.get(key) is None:
                problems.append(f"{locale}: {key!r} is missing or untranslated")
        for key in sorted(set(entries) - needed):
            problems.append(f"{locale}: {key!r} is not in notices.pot; add it there or remove it")
        for key, text in sorted(entries.items()):
            if text is not None:
                problems.extend(_entry_problems(locale, key, text))
    problems.extend(_placeholder_mismatches(catalogs))
    return problems


def _placeholder_mismatches(catalogs: Mapping[str, Mapping[str, Optional[str]]]) -> List[str]:
    """Keys whose translations use different placeholders: a caller fills one set, so the other would fail."""
    found = []
    shared = set.intersection(*(set(entries) for entries in catalogs.values())) if catalogs else set()
    for key in sorted(shared):
        sets = {}
        for locale, entries in catalogs.items():
            text = entries[key]
            if text is None:
                continue
            try:
                sets[locale] = placeholders(text)
            except CatalogError:
                continue  # reported by _entry_problems
        if len({frozenset(names) for names in sets.values()}) > 1:
            described = "; ".join(f"{locale} {sorted(names)}" for locale, names in sets.items())
            found.append(f"{key!r}: placeholders differ: {described}")
    return found


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _cli_value(raw: str) -> Any:
    """ISO datetimes and dates given on the command line become datetime/date (naive = UTC); the rest is text."""
    try:
        if "T" in raw:
            return datetime.fromisoformat(raw.replace("Z", "+00:00"))
        return date.fromisoformat(raw)
    except ValueError:
        return raw


def _cli_params(pairs: Sequence[str]) -> Dict[str, Any]:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--param needs NAME=VALUE, got {pair!r}")
        params[name.strip()] = _cli_value(value)
    return params


def _run_check(args: argparse.Namespace) -> int:
    problems = check_catalogs(Path(args.templates))
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in the notices catalogs", file=sys.stderr)
        return 1
    print(f"notices catalogs OK: {', '.join(REQUIRED_LOCALES)}; templates in {args.templates}")
    return 0


def _run_show(args: argparse.Namespace) -> int:
    try:
        notice = render(args.key, _cli_params(args.param), locale=args.locale, tz=args.tz)
    except NoticeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"[{notice.locale}] {notice.text}")
    print(f"summary: {notice.summary}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.notices", description="Pushed-message catalogs.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate the catalogs against the care-plan templates")
    check.add_argument("--templates", default=str(CARE_PLANS_DIR), help="folder of care-plan YAML templates")
    check.set_defaults(run=_run_check)
    show = commands.add_parser("show", help="print one message as a patient would receive it")
    show.add_argument("key")
    show.add_argument("--locale", default=PRIMARY_LOCALE)
    show.add_argument("--tz", default=DEFAULT_TZ)
    show.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="ISO datetimes are parsed")
    show.set_defaults(run=_run_show)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
