"""The web UI's start form, checked like the command line before Locust starts anything.

Locust 2.47's `/swarm` view copies the form's values into `parsed_options` itself (`type(current value)(text)`:
text in a number field is a 500, "An unknown error occurred.") and knows none of firehose's bounds. A
`before_request` hook on `POST /swarm` runs first (`refusal`): it converts each value as argparse does on the
command line (the option's own `type`), runs the command line's checks (firehose.run.preflight.check_options,
handed in by the run: this layer stands below it), and answers a bad value the way Locust's view answers its
own (`{"success": False, "message": ...}`, status 200: the form shows the message; an error status would show
"An unknown error occurred."), naming the form's field. Nothing has changed or started then.

Also refused from the form: several writing classes at once without --mixed (Locust's picker ticks every class,
and NEW ticks them all again), a Host other than the target (the field shows the database firehose writes to;
it cannot change it), and options the form does not offer (applied once, when Locust starts).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping

from locust.env import Environment
from locust.runners import STATE_RUNNING, STATE_SPAWNING
from locust.util.timespan import parse_timespan

from firehose.strategies import writer_classes

OptionCheck = Callable[[argparse.Namespace], "tuple[str, str | None] | None"]
"""The command line's checks of a set of options: None, or the refusal's message and the option's dest."""
MIXED = "mixed"
"""The option (--mixed, a checkbox in the form) that lets a start from the form use several writing classes."""
LOCUST_FIELDS = {
    "user_count": "Number of users",
    "num_users": "Number of users",
    "spawn_rate": "Ramp up",
    "host": "Host",
    "run_time": "Run time",
    "user_classes": "User classes",
}
"""Locust's own fields of the form, by the name the form posts (or the option's dest) -> their label."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The form's own option."""
    parser.add_argument(
        f"--{MIXED}",
        action="store_true",
        default=False,
        help="Let a start from the web form write with several strategies at once (a mixed run). Without it the "
        "form refuses more than one writing class (Analyst may join one). Classes named on the command line "
        "are taken as given.",
    )


def field_label(name: str) -> str:
    """The label the form shows for a field: Locust's own, or a custom option's dest as Locust titles it
    ("copy_batch_size" -> "Copy Batch Size")."""
    return LOCUST_FIELDS.get(name) or " ".join(word.capitalize() for word in name.split("_"))


def refused(field: str, message: str) -> str:
    """A refusal's text: the field's label first, so the form names it."""
    return f"{field_label(field)}: {message}"


def refusal(
    environment: Environment,
    form: Mapping[str, str],
    picked: list[str] | None,
    actions: dict[str, argparse.Action],
    check: OptionCheck,
) -> tuple[str | None, dict]:
    """(None, the options' new values) for a form that may start, or (the message naming the field, {}).

    `picked`: the classes ticked in the class picker (an empty list: Locust takes them all), None without a
    picker; `actions`: firehose's options by dest (Locust's own are left to its view), `include_in_web_ui` set
    on those the form offers."""
    options = environment.parsed_options
    users = form.get("user_count", "")
    try:
        if int(users) < 1:
            return refused("user_count", f"{users} starts no user: give at least 1"), {}
    except ValueError:
        return refused("user_count", f"{users!r} is not a whole number"), {}
    try:
        rate = float(form.get("spawn_rate", ""))
    except ValueError:
        return refused("spawn_rate", f"{form.get('spawn_rate')!r} is not a number"), {}
    if not (math.isfinite(rate) and rate > 0):
        return refused("spawn_rate", f"{form.get('spawn_rate')} users/s: give a number above 0"), {}
    if (host := form.get("host")) is not None and host.strip() != (environment.host or ""):
        return refused(
            "host",
            f"firehose writes to {environment.host}; this field cannot change that (start firehose with "
            "--pg-dsn to write to another database)",
        ), {}
    if run_time := form.get("run_time"):
        try:
            parse_timespan(run_time)
        except ValueError:
            return refused("run_time", f"{run_time!r}: give e.g. 20, 20s, 3m, 2h, 1h20m"), {}
    if picked is not None and (problem := classes_refusal(environment, form, picked, options)):
        return problem, {}
    values: dict = {}
    for name, text in form.items():
        if name in LOCUST_FIELDS or (action := actions.get(name)) is None:
            continue  # Locust's own fields, for its view
        if not getattr(action, "include_in_web_ui", False):
            return refused(name, "not offered in the form: it applies when firehose starts (give it there)"), {}
        try:
            values[name] = convert(action, text)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            kind = {int: "a whole number", float: "a number"}.get(action.type, "a valid value")
            return refused(name, f"{text!r} is not {kind}"), {}
        if action.choices is not None and values[name] not in action.choices:
            return refused(name, f"{text!r}: choose from {', '.join(map(str, action.choices))}"), {}
    candidate = argparse.Namespace(**{**vars(options), **values, "num_users": int(users)})
    if (problem := check(candidate)) is not None:
        message, option = problem
        return (refused(option, message) if option else message), {}
    return None, values


def classes_refusal(
    environment: Environment, form: Mapping[str, str], selected: list[str], options: argparse.Namespace
) -> str | None:
    """More than one writing class ticked (or none ticked: Locust then runs them all) without --mixed. Editing a
    running test sends no classes: Locust keeps the running ones, checked when the run started."""
    if not selected and environment.runner is not None and environment.runner.state in (STATE_SPAWNING, STATE_RUNNING):
        return None
    mixed = form.get(MIXED, "true" if getattr(options, MIXED, False) else "false") == "true"
    available = environment.available_user_classes or {}
    chosen = [available[name] for name in selected if name in available] or list(available.values())
    writing = sorted(user.__name__ for user in chosen if getattr(user, "writer_class", None) is not None)
    if len(writer_classes(chosen)) > 1 and not mixed:
        return refused(
            "user_classes",
            f"{', '.join(writing)} would write with {len(writing)} strategies at once: tick one writing class "
            "(Analyst may join it), or tick Mixed for a mixed run on purpose",
        )
    return None


def convert(action: argparse.Action, text: str) -> object:
    """The form's text as the command line would parse it: a checkbox's "true"/"false", an empty field as the
    option's default when that is None, else the option's `type` (a string without one)."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return text == "true"
    if text == "" and action.default is None:
        return None
    return action.type(text) if callable(action.type) else text
