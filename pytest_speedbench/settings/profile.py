"""Named profiles of speedbench.yaml, and the session header that says what a run measures.

Why profiles: the main job (`pytest benchmarks/` with no options) is a demo that must finish in
minutes on a laptop CPU, so it trims categories, prompts and output length. Those limits are the
demo's, not the suite's: a run against another engine, dataset, model or server must measure the
split's full scope. So the demo's settings live under `profiles: {demo: ...}` and apply only when
the run names none of those (or asks for the profile by name with --speedbench-profile).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_speedbench.errors import UsageError, bad_value

DEMO = "demo"
#: naming any of these (command line, ini or speedbench.yaml's top level) leaves the demo
LEAVES_DEMO: tuple[str, ...] = ("engine", "dataset", "model", "server_url")
#: --speedbench-profile values that switch every profile off
NO_PROFILE = ("none", "off")


def choose_profile(
    requested: str | None,
    profiles: Mapping[str, Any],
    named: Mapping[str, Any],
) -> str | None:
    """The profile this run uses: the requested one, else `demo` when the run names nothing
    in LEAVES_DEMO (`named`: option name -> value the user gave), else none."""
    if requested is not None and requested.strip():
        name = requested.strip()
        if name in NO_PROFILE:
            return None
        if name not in profiles:
            raise bad_value("profile in --speedbench-profile", name, [*profiles, *NO_PROFILE])
        return name
    if DEMO in profiles and not any(named.get(key) not in (None, "") for key in LEAVES_DEMO):
        return DEMO
    return None


def profile_values(profiles: Mapping[str, Any], name: str | None, where: object) -> dict[str, Any]:
    """The settings one profile holds (a mapping), or {} for no profile."""
    if name is None:
        return {}
    values = profiles.get(name) or {}
    if not isinstance(values, Mapping):
        raise UsageError(f"{where}: profile {name!r} must be a mapping of settings")
    return dict(values)


def capped(num_prompts: int, counts: dict[str, int] | None, categories: Any = ()) -> str:
    """'' when every category has --num-prompts rows (or nobody knows); else what a run
    really gets, e.g. '; capped at what exists: 512 per category, 1536 prompts'."""
    if not counts:
        return ""
    have = {c: n for c, n in counts.items() if not categories or c in categories}
    if not have or min(have.values()) >= num_prompts:
        return ""
    low, high = min(have.values()), max(have.values())
    per = f"{low}" if low == high or high <= num_prompts else f"{low}-{min(high, num_prompts)}"
    return f"; capped at what exists: {per} per category, {sum(min(n, num_prompts) for n in have.values())} prompts"


def prompt_lines(settings: Any, buckets: list[str], counts: dict[str, dict[str, int] | None] | None = None) -> list[str]:
    """What the run sends: dataset, categories, prompts per category (capped where the dataset
    has fewer; `counts`: rows per category by config, where known), output length."""
    s = settings
    counts = counts or {}
    per = f"{s.num_prompts} prompt(s) per category (--num-prompts)"
    lines = []
    if "qualitative" in s.split:
        cats = f"{len(s.category)} categories ({', '.join(s.category)})" if s.category else "all categories"
        lines.append(f"speedbench: prompts: {s.dataset} qualitative, {cats}; {per}"
                     f"{capped(s.num_prompts, counts.get('qualitative'), s.category)}")
    if "throughput" in s.split and buckets:
        lines.append(f"speedbench: prompts: {s.dataset} throughput {', '.join(buckets)}; "
                     f"{s.num_prompts} prompt(s) per entropy level and bucket (--num-prompts)")
        for b in buckets:
            cap = capped(s.num_prompts, counts.get(f"throughput_{b}"))
            if cap:
                lines.append(f"speedbench: prompts: throughput {b}{cap.replace('category', 'entropy level')}")
    lines.append(f"speedbench: up to {s.output_len} new tokens per turn (--output-len), "
                 f"{s.warmup} warmup request(s) per case")
    return lines


def profile_line(settings: Any, yaml_path: object) -> str:
    if settings.profile is None:
        return "speedbench: no profile: every setting is the command line's, speedbench.yaml's or the default"
    leave = ", ".join("--" + k.replace("_", "-") for k in LEAVES_DEMO)
    how = f"; naming {leave} or --speedbench-profile=none leaves it" if settings.profile == DEMO else ""
    return f"speedbench: profile {settings.profile!r} from {yaml_path}{how}"
