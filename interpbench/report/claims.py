"""The claims table: each checkable claim of the papers behind the zoo, the paper's figure, ours,
the command that measured ours and a verdict.

The table lives in one file, ``results/claims.json``: a list of objects with the string fields
``paper``, ``claim``, ``paper_figure`` (the paper's number or statement, and where it is),
``ours``, ``command``, ``verdict`` (one of :data:`VERDICTS`) and ``why`` (what the verdict rests on,
or why the claim cannot be tested at this scale). Two views are made from it:

- ``results/README.md`` holds it as a markdown table between the lines ``<!-- claims:begin -->``
  and ``<!-- claims:end -->``; ``python -m interpbench.report.claims results/claims.json
  results/README.md`` rewrites that part (``--check``: exit 1 if it is out of date);
- every ``report.html`` built under a folder whose parents (up to three levels) hold a
  ``claims.json`` shows the table in a "Claims" section (:func:`find_claims`, :func:`claims_html`).
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from interpbench.storage import atomic_write_text

VERDICTS = ("reproduced", "contradicted", "inconclusive", "not testable")
FIELDS = ("paper", "claim", "paper_figure", "ours", "command", "verdict", "why")
BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"
HEADERS = ("paper", "claim", "the paper", "ours", "command", "verdict")


def load_claims(path: Path) -> List[Dict[str, str]]:
    """The claims of ``path``, checked: a list of objects with exactly :data:`FIELDS`, all strings,
    and a verdict from :data:`VERDICTS`; anything else is one line naming the entry and the field."""
    try:
        claims = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if not isinstance(claims, list):
        raise ValueError(f"{path}: expected a list of claims, got {type(claims).__name__}")
    for number, claim in enumerate(claims, start=1):
        if not isinstance(claim, dict):
            raise ValueError(f"{path}: claim {number} is {type(claim).__name__}, expected an object")
        missing = [f for f in FIELDS if f not in claim]
        unknown = sorted(set(claim) - set(FIELDS))
        if missing or unknown:
            raise ValueError(f"{path}: claim {number} " + "; ".join(
                part for part in (f"lacks {', '.join(missing)}" if missing else "",
                                  f"has unknown fields {', '.join(unknown)}" if unknown else "") if part)
                + f"; fields: {', '.join(FIELDS)}")
        wrong = [f for f in FIELDS if not isinstance(claim[f], str) or not claim[f].strip()]
        if wrong:
            raise ValueError(f"{path}: claim {number}: {', '.join(wrong)} must be non-empty text")
        if claim["verdict"] not in VERDICTS:
            raise ValueError(f"{path}: claim {number}: unknown verdict {claim['verdict']!r}; "
                             f"valid verdicts: {', '.join(VERDICTS)}")
    return claims


def find_claims(folder: Path, levels: int = 3) -> Optional[Path]:
    """The first ``claims.json`` in ``folder`` or one of its ``levels`` nearest parents, or None."""
    here = Path(folder).resolve()
    for candidate in [here, *list(here.parents)[:levels]]:
        path = candidate / "claims.json"
        if path.is_file():
            return path
    return None


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def claims_markdown(claims: Sequence[Dict[str, str]]) -> str:
    """The table in markdown: one row per claim, the verdict in bold followed by its reason."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for claim in claims:
        lines.append("| " + " | ".join([
            _cell(claim["paper"]), _cell(claim["claim"]), _cell(claim["paper_figure"]), _cell(claim["ours"]),
            f"`{_cell(claim['command'])}`", f"**{claim['verdict']}**: {_cell(claim['why'])}"]) + " |")
    counts = {v: sum(c["verdict"] == v for c in claims) for v in VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return "\n".join(lines) + f"\n\n{len(claims)} claims: {summary}.\n"


def claims_html(claims: Sequence[Dict[str, str]]) -> str:
    """The table as an HTML ``<table id="claims-table">`` (text escaped)."""
    esc = lambda value: html.escape(str(value), quote=True)  # noqa: E731
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADERS)
    rows = []
    for claim in claims:
        rows.append("<tr>" + "".join(f"<td>{esc(claim[f])}</td>" for f in ("paper", "claim", "paper_figure", "ours"))
                    + f"<td><code>{esc(claim['command'])}</code></td>"
                    + f"<td class=\"verdict-{esc(claim['verdict'].replace(' ', '-'))}\">"
                    + f"<b>{esc(claim['verdict'])}</b>: "
                    + f"{esc(claim['why'])}</td></tr>")
    return f"<table id=\"claims-table\"><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def synced_readme(text: str, claims: Sequence[Dict[str, str]], source: str = "README") -> str:
    """``text`` with the part between :data:`BEGIN` and :data:`END` replaced by the table."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{source}: needs one line {BEGIN} and, after it, one line {END} around the claims table")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + claims_markdown(claims) + text[end:]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interpbench.report.claims",
                                     description="Write the claims table of CLAIMS into README.")
    parser.add_argument("claims", help="the claims file (results/claims.json)")
    parser.add_argument("readme", help="the markdown file holding the table (results/README.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is out of date")
    args = parser.parse_args(argv)
    try:
        claims = load_claims(Path(args.claims))
        text = Path(args.readme).read_text()
        new = synced_readme(text, claims, args.readme)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"{args.readme}: the claims table is out of date; run without --check", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(Path(args.readme), new)
    print(f"wrote {len(claims)} claims into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
