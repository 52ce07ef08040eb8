"""The claims table (interpbench.report.claims): the published file, its README copy, its checks
and the report section it makes."""
import json
import shutil
from pathlib import Path

import pytest

from interpbench.report.claims import (
    BEGIN,
    END,
    VERDICTS,
    claims_html,
    claims_markdown,
    find_claims,
    load_claims,
    main,
    synced_readme,
)

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "results" / "claims.json"
PAPERS = ("FA-CNN", "CA-Stream", "k-means head", "B-cos", "CoDA-Nets", "B-cosification")


def claim(**changes):
    base = {"paper": "B-cos", "claim": "contributions | sum to the logit", "paper_figure": "identity",
            "ours": "to 1e-4", "command": "pytest tests/test_bcos.py", "verdict": "reproduced",
            "why": "the identity holds <exactly>"}
    return dict(base, **changes)


def test_the_published_claims_cover_every_paper_and_the_readme_holds_them():
    claims = load_claims(CLAIMS)
    assert {c["paper"] for c in claims} == set(PAPERS)
    assert {c["verdict"] for c in claims} <= set(VERDICTS)
    readme = ROOT / "results" / "README.md"
    assert main([str(CLAIMS), str(readme), "--check"]) == 0  # the README's table is the file's
    assert claims_markdown(claims) in readme.read_text()


def test_bad_claims_files_give_one_line_naming_the_entry(tmp_path):
    path = tmp_path / "claims.json"
    cases = [
        ([claim(verdict="proved")], "claim 1: unknown verdict 'proved'; valid verdicts: reproduced, contradicted, "
                                    "inconclusive, not testable"),
        ([claim(), {k: v for k, v in claim().items() if k != "why"}], "claim 2 lacks why; fields: paper, claim"),
        ([claim(extra="x")], "claim 1 has unknown fields extra"),
        ([claim(ours="")], "claim 1: ours must be non-empty text"),
        ({"paper": "B-cos"}, "expected a list of claims, got dict"),
    ]
    for content, message in cases:
        path.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
            load_claims(path)
        assert "\n" not in str(error.value)


def test_markdown_and_html_escape_the_text():
    claims = [claim(), claim(paper="CoDA-Nets", verdict="not testable", why="needs a GPU")]
    table = claims_markdown(claims)
    assert "contributions \\| sum to the logit" in table  # a pipe would split the markdown cell
    assert table.rstrip().endswith("2 claims: 1 reproduced, 1 not testable.")
    page = claims_html(claims)
    assert "the identity holds &lt;exactly&gt;" in page and "<exactly>" not in page
    assert page.count("<tr>") == 3 and "verdict-not-testable" in page


def test_the_readme_part_between_the_markers_is_replaced(tmp_path):
    text = f"intro\n{BEGIN}\nold table\n{END}\nafter\n"
    new = synced_readme(text, [claim()])
    assert new.startswith(f"intro\n{BEGIN}\n| paper |") and new.endswith(f"{END}\nafter\n")
    assert "old table" not in new
    with pytest.raises(ValueError, match="needs one line <!-- claims:begin -->"):
        synced_readme("no markers", [claim()])
    readme, claims_file = tmp_path / "README.md", tmp_path / "claims.json"
    readme.write_text(text)
    claims_file.write_text(json.dumps([claim()]))
    assert main([str(claims_file), str(readme), "--check"]) == 1
    assert main([str(claims_file), str(readme)]) == 0
    assert main([str(claims_file), str(readme), "--check"]) == 0


def test_a_report_under_a_claims_file_shows_the_claims(tmp_path):
    from interpbench.report.build import build

    source = ROOT / "results" / "synthetic"
    if not (source / "cells.json").exists():
        pytest.skip(f"{source}/cells.json is absent")
    folder = tmp_path / "results" / "nested" / "synthetic"
    folder.mkdir(parents=True)
    shutil.copy(source / "cells.json", folder / "cells.json")
    build(str(folder), figures=False)
    assert find_claims(folder) is None and "claims-table" not in (folder / "report.html").read_text()
    (tmp_path / "results" / "claims.json").write_text(json.dumps([claim(claim="a claim seen in the report")]))
    assert find_claims(folder) == tmp_path / "results" / "claims.json"
    build(str(folder), figures=False)
    page = (folder / "report.html").read_text()
    assert "<details id=\"claims\">" in page and "a claim seen in the report" in page
