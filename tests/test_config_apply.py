"""Applying a file with broken blocks: every valid integration keeps running, nothing collides."""

import json
from datetime import datetime
from pathlib import Path

import pytest

from affise_s3_assets.automation.live_config import apply_file, read_last_good, write_last_good
from affise_s3_assets.config import ConfigError
from affise_s3_assets.config.apply import AppliedConfig, apply_integrations, parse_integrations
from tests.conftest import ROOT

SHIPPED = (ROOT / "integrations.yaml").read_text()


def block(
    name: str, bucket: str, directory: str, extra: str = "", event_type: str = "clicks"
) -> str:
    return f"""  - name: {name}
    start: "2026-11-26 00:00:00"
    {event_type}:
      bucket: {bucket}
      region: us-west-2
      directory: "{directory}"
      access_key: ${{{name.upper()}_AWS_ACCESS_KEY_ID}}
      secret_key: ${{{name.upper()}_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: http://127.0.0.1:7480
{extra}"""


def names(applied: AppliedConfig) -> list[str]:
    return [integration.name for integration in applied.integrations]


def test_a_broken_block_is_left_out_and_the_others_keep_running() -> None:
    broken = SHIPPED.replace("frequency: 5\n", "frequency: 7\n")
    applied = apply_integrations(broken)
    assert names(applied) == ["acme", "initech"]
    (problem,) = applied.problems
    assert problem.startswith("integration 'globex': clicks.frequency: 7 minutes does not cut")


def test_a_broken_block_keeps_its_last_good_state() -> None:
    good = apply_integrations(SHIPPED)
    broken = SHIPPED.replace("frequency: 5\n", "frequency: 7\n")
    applied = apply_integrations(broken, last_good=good)
    assert names(applied) == ["acme", "globex", "initech"]
    globex = next(i for i in applied.integrations if i.name == "globex")
    assert globex.clicks is not None and globex.clicks.frequency == 5
    assert "integration 'globex': kept at its last good state until fixed" in applied.problems


def test_a_file_that_does_not_parse_changes_nothing() -> None:
    good = apply_integrations(SHIPPED)
    applied = apply_integrations("integrations: [\n", last_good=good)
    assert applied.integrations == good.integrations
    assert applied.file_error is not None and "not valid YAML" in applied.file_error
    assert apply_integrations("integrations: [\n").integrations == ()


def test_an_unreadable_file_is_an_error_not_an_empty_file(tmp_path: Path) -> None:
    good = apply_integrations(SHIPPED)
    applied = apply_file(tmp_path / "absent.yaml", last_good=good)
    assert applied.integrations == good.integrations
    assert applied.file_error is not None and "cannot read integrations file" in applied.file_error


def test_duplicate_keys_are_refused_naming_the_lines() -> None:
    text = SHIPPED.replace(
        "      affiliates: [101, 102]\n", "      affiliates: [101, 102]\n      affiliates: []\n", 1
    )
    with pytest.raises(
        ConfigError, match=r"key 'affiliates' appears twice in one block \(lines \d+ and \d+\)"
    ):
        parse_integrations(text)
    assert apply_integrations(text).file_error is not None


def test_a_name_used_twice_refuses_every_block_of_it() -> None:
    text = (
        "integrations:\n"
        + block("acme", "bucket-one", "x")
        + block("acme", "bucket-two", "y")
        + block("ok", "bucket-three", "z")
    )
    applied = apply_integrations(text)
    assert names(applied) == ["ok"]
    assert applied.problems == (
        "integration 'acme': name: appears more than once (2 times); names must be unique",
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("raw", "raw"),
        ("", "2026"),
        ("raw", "raw/2026"),
        ("raw", "raw/2026/11"),
    ],
)
def test_exports_that_could_share_keys_are_both_refused_when_both_are_new(
    first: str, second: str
) -> None:
    text = "integrations:\n" + block("one", "shared", first) + block("two", "shared", second)
    applied = apply_integrations(text + block("other", "shared", "elsewhere"))
    assert names(applied) == ["other"]
    (problem,) = applied.problems
    assert "'one' clicks" in problem and "'two' clicks" in problem and "both are refused" in problem


@pytest.mark.parametrize(("first", "second"), [("raw", "raw/dt=2026-11-25"), ("", "dt=x/hour=10")])
def test_a_folder_inside_a_hive_exports_day_folders_collides_below_a_dated_one_not(
    first: str, second: str
) -> None:
    hive = block("one", "shared", first, "      layout: hive\n") + block("two", "shared", second)
    applied = apply_integrations("integrations:\n" + hive)
    assert names(applied) == [] and "both are refused" in applied.problems[0]
    # Below a dated export a dt= folder is no date folder of it (accepted before, still).
    dated = block("one", "shared", first) + block("two", "shared", second)
    applied = apply_integrations("integrations:\n" + dated)
    assert names(applied) == ["one", "two"] and applied.problems == ()


@pytest.mark.parametrize(("first", "second"), [("raw", "raw2"), ("", "clicks"), ("raw", "raw/sub")])
def test_separate_folders_do_not_collide(first: str, second: str) -> None:
    text = "integrations:\n" + block("one", "shared", first) + block("two", "shared", second)
    applied = apply_integrations(text)
    assert names(applied) == ["one", "two"] and applied.problems == ()


def test_the_same_bucket_name_on_two_stores_does_not_collide() -> None:
    other_store = block("two", "shared", "raw").replace("127.0.0.1:7480", "127.0.0.2:7480")
    applied = apply_integrations("integrations:\n" + block("one", "shared", "raw") + other_store)
    assert names(applied) == ["one", "two"]


def test_clicks_and_conversions_of_one_integration_must_not_share_a_folder() -> None:
    text = SHIPPED.replace("directory: affise/conversions", "directory: affise/clicks")
    applied = apply_integrations(text)
    assert names(applied) == ["globex", "initech"]
    assert "'acme' clicks" in applied.problems[0] and "'acme' conversions" in applied.problems[0]


def test_an_established_export_keeps_delivering_and_the_newcomer_is_refused() -> None:
    good = apply_integrations(SHIPPED)
    newcomer = block("newco", "acme-affise-raw", "affise/clicks")
    applied = apply_integrations(SHIPPED + newcomer, last_good=good)
    assert names(applied) == ["acme", "globex", "initech"]
    (problem,) = applied.problems
    assert problem.startswith("integration 'newco': clicks.directory: its objects could overwrite")
    assert "integration 'acme' clicks (s3://acme-affise-raw/affise/clicks/)" in problem


def test_an_export_moved_onto_another_falls_back_to_its_last_good_state() -> None:
    good = apply_integrations(SHIPPED)
    moved = SHIPPED.replace("directory: conversions", 'directory: ""')
    applied = apply_integrations(moved, last_good=good)
    globex = next(i for i in applied.integrations if i.name == "globex")
    assert globex.conversions is not None and globex.conversions.directory == "conversions"
    assert "integration 'globex': kept at its last good state until fixed" in applied.problems


def test_applied_config_round_trips_and_is_kept_for_the_next_start(tmp_path: Path) -> None:
    applied = apply_integrations(SHIPPED.replace("frequency: 5\n", "frequency: 7\n"))
    assert AppliedConfig.from_json(applied.to_json()) == applied
    assert read_last_good(tmp_path) is None
    write_last_good(tmp_path, applied)
    assert read_last_good(tmp_path) == applied


MERGED_EXPORT = """integrations:
  - name: acme
    start: "2026-11-26 00:00:00"
    clicks: &acme
      bucket: acme-affise-raw
      region: us-west-2
      directory: clicks
      access_key: ${ACME_AWS_ACCESS_KEY_ID}
      secret_key: ${ACME_AWS_SECRET_ACCESS_KEY}
      affiliates: [101]
    conversions: {MERGE}
"""


def test_yaml_merge_keys_share_settings_and_an_explicit_key_overrides_them() -> None:
    applied = apply_integrations(MERGED_EXPORT.replace("{MERGE}", "{<<: *acme, directory: c}"))
    assert applied.file_error is None and applied.problems == ()
    (acme,) = applied.integrations
    assert acme.conversions is not None and acme.conversions.directory == "c"
    assert acme.conversions.bucket == "acme-affise-raw" and acme.conversions.affiliates == (101,)


@pytest.mark.parametrize(
    ("merge", "refusal"),
    [
        # A second `<<` would drop the filter the first one brought.
        (
            "{<<: *acme, <<: {affiliates: []}, directory: c}",
            r"key '<<' appears twice in one block \(line 11, columns \d+ and \d+\)",
        ),
        # A key twice inside a merged block never passes through a mapping of its own.
        (
            "{<<: {<<: *acme, affiliates: [101], affiliates: []}, directory: c}",
            r"key 'affiliates' appears twice in one block \(line 11, columns \d+ and \d+\)",
        ),
        # Two merged blocks giving one key: which wins is PyYAML's guess, not the file's.
        (
            "{<<: [*acme, {affiliates: []}], directory: c}",
            r"key 'affiliates' comes from two merged blocks \(lines 10 and 11\)",
        ),
    ],
)
def test_a_key_given_twice_through_merges_is_refused(merge: str, refusal: str) -> None:
    text = MERGED_EXPORT.replace("{MERGE}", merge)
    with pytest.raises(ConfigError, match=refusal):
        parse_integrations(text)
    good = apply_integrations(MERGED_EXPORT.replace("{MERGE}", "{<<: *acme, directory: c}"))
    (acme,) = good.integrations
    assert acme.conversions is not None and acme.conversions.affiliates == (101,)
    applied = apply_integrations(text, last_good=good)
    assert applied.file_error is not None and applied.integrations == good.integrations


@pytest.mark.parametrize(
    "value", ["!!int wJalrXUtnFEMIK7MDENGbPxRfiCY", "!!timestamp wJalrXUtnFEMIK7MDENGbPxRfiCY"]
)
def test_a_value_its_tag_cannot_read_is_a_file_error_that_never_quotes_it(value: str) -> None:
    # PyYAML's own errors quote the value (int()'s ValueError) or crash (AttributeError for
    # a timestamp): either would take the code location down or echo a secret.
    text = MERGED_EXPORT.replace("{MERGE}", "*acme").replace("${ACME_AWS_SECRET_ACCESS_KEY}", value)
    applied = apply_integrations(text)
    assert applied.file_error is not None
    assert "line 9" in applied.file_error and "cannot be read as its tag !!" in applied.file_error
    assert "wJalr" not in applied.file_error


def test_a_key_yaml_cannot_hash_is_a_file_error_not_a_crash() -> None:
    applied = apply_integrations("integrations:\n  - ? [a, b]\n    : 1\n")
    assert applied.file_error is not None and "not valid YAML" in applied.file_error


def test_one_store_spelled_two_ways_is_one_store() -> None:
    other_spelling = block("two", "shared", "raw").replace(
        "http://127.0.0.1:7480", "http://127.0.0.1:7480/"
    )
    applied = apply_integrations("integrations:\n" + block("one", "shared", "raw") + other_spelling)
    assert names(applied) == []
    aws = block("one", "shared", "raw").replace(
        "      endpoint_url: http://127.0.0.1:7480\n", ""
    ) + block("two", "shared", "raw").replace(
        "http://127.0.0.1:7480", "https://s3.us-west-2.amazonaws.com"
    )
    assert names(apply_integrations("integrations:\n" + aws)) == []
    from affise_s3_assets.config.schema import store_of

    for spelling in (
        "https://s3.us-west-2.amazonaws.com:443",
        "https://s3.dualstack.us-west-2.amazonaws.com",
        "https://s3-fips.us-east-1.amazonaws.com/",
        "http://s3.amazonaws.com",
    ):
        assert store_of(spelling) == "AWS", spelling
    assert store_of("https://acct.r2.cloudflarestorage.com") != "AWS"


def test_time_passing_never_breaks_an_integration_already_delivering() -> None:
    """The bound on windows before now grows with the clock: an export applied within it
    stays applied with the same start and frequency, while a new one is refused."""
    text = "integrations:\n" + block("acme", "acme-raw", "a", "      frequency: 1\n").replace(
        "2026-11-26 00:00:00", "2025-01-01 00:00:00"
    )
    then = apply_integrations(text, now=datetime(2026, 11, 1))
    assert names(then) == ["acme"] and then.problems == ()
    later = datetime(2027, 12, 1)
    assert names(apply_integrations(text, last_good=then, now=later)) == ["acme"]
    fresh = apply_integrations(text, now=later)
    assert names(fresh) == [] and "windows of 1 min (clicks) before now" in fresh.problems[0]


def test_lateness_defaults_per_event_type_and_is_set_at_the_top_of_the_file() -> None:
    """Clicks wait 2 minutes after a window's end, conversions 10 (postbacks come later);
    the file's `lateness:` block sets either, and the applied config carries it through
    its JSON (a run rebuilds the definitions from it) and a release that wrote none."""
    assert parse_integrations(SHIPPED).lateness.model_dump() == {
        "clicks": 2,
        "conversions": 10,
        "conversion_updates": 10,
    }
    text = "lateness:\n  conversions: 90\n" + SHIPPED.split("\n", 2)[2]
    applied = apply_integrations(text)
    assert applied.problems == ()
    assert applied.lateness.model_dump() == {
        "clicks": 2,
        "conversions": 90,
        "conversion_updates": 10,
    }
    again = AppliedConfig.from_json(applied.to_json())
    assert again == applied
    older = json.loads(applied.to_json())
    del older["lateness"]
    assert AppliedConfig.from_json(json.dumps(older)).lateness.model_dump()["conversions"] == 10


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("lateness:\n  clicks: -1\n", "lateness: clicks: must be whole minutes from 0 to 1440"),
        ("lateness:\n  clicks: 1441\n", "lateness: clicks: must be whole minutes from 0 to 1440"),
        ("lateness:\n  clicks: 2.5\n", "lateness: clicks: must be whole minutes from 0 to 1440"),
        ("lateness:\n  impressions: 3\n", "lateness: impressions: is not an event type"),
        ("lateness: 5\n", "lateness: must be a mapping of event type to minutes"),
    ],
)
def test_a_broken_lateness_keeps_the_last_good_one_and_says_why(block: str, problem: str) -> None:
    good = apply_integrations("lateness:\n  clicks: 4\n" + SHIPPED)
    applied = apply_integrations(block + SHIPPED, last_good=good)
    assert applied.lateness == good.lateness
    assert names(applied) == names(good)  # the integrations are not harmed
    (found,) = [p for p in applied.problems if p.startswith("lateness")]
    assert (
        found.startswith(problem)
        and "kept at {'clicks': 4, 'conversions': 10, 'conversion_updates': 10}" in found
    )
    with pytest.raises(ConfigError, match="lateness"):
        parse_integrations(block + SHIPPED)


@pytest.mark.parametrize(
    ("name", "field", "variable"),
    [
        ("evil", "access_key", "ACME_AWS_ACCESS_KEY_ID"),  # another customer's
        ("rogue", "secret_key", "DAGSTER_PG_PASSWORD"),  # the deployment's
        # Renamed to reach globex's: its own would be GLOBEX_AWS_AWS_SECRET_ACCESS_KEY.
        ("globex_aws", "secret_key", "GLOBEX_AWS_SECRET_ACCESS_KEY"),
        ("acme", "access_key", "ACME_AWS_SECRET_ACCESS_KEY"),  # its own secret, sent in clear
    ],
)
def test_an_integration_names_only_its_own_two_variables(
    name: str, field: str, variable: str
) -> None:
    """Whoever edits one block could otherwise send another integration's secret, or the
    deployment's, to an endpoint of their choosing: an access key goes out in clear. The two
    variables come from the name alone, so no other block, now or later, can name them."""
    own = {
        "access_key": f"${{{name.upper()}_AWS_ACCESS_KEY_ID}}",
        "secret_key": f"${{{name.upper()}_AWS_SECRET_ACCESS_KEY}}",
    }
    text = block(name, f"{name.replace('_', '-')}-raw", "x").replace(own[field], f"${{{variable}}}")
    applied = apply_integrations("integrations:\n" + block("globex", "globex-raw", "g") + text)
    assert names(applied) == ["globex"]
    (problem,) = applied.problems
    assert problem.startswith(f"integration {name!r}: clicks.{field}: must be {own[field]}"), (
        problem
    )
    assert f"not ${{{variable}}}: an integration's credentials are named for it" in problem


def test_every_credential_not_its_own_is_named_in_one_problem() -> None:
    text = block("acme", "acme-raw", "x", extra="").replace("${ACME_AWS_", "${GLOBEX_AWS_")
    (problem,) = apply_integrations("integrations:\n" + text).problems
    assert problem.startswith("integration 'acme': clicks.access_key: must be ")
    assert problem.endswith("; wrong as well: clicks.secret_key")


def test_a_stored_state_naming_anothers_variable_is_not_brought_back(tmp_path: Path) -> None:
    """A last applied state written by an older version, or by hand, holding a block that
    names another's variable, loses that integration when it is read: neither the unchanged
    file's short cut nor a fallback can bring it back."""
    path = tmp_path / "integrations.yaml"
    path.write_text(
        "integrations:\n" + block("acme", "acme-raw", "x") + block("globex", "globex-raw", "g")
    )
    state = tmp_path / "state"
    write_last_good(state, apply_file(path))
    stored = state / "last-applied-config.json"
    stored.write_text(
        stored.read_text().replace("GLOBEX_AWS_ACCESS_KEY_ID", "ACME_AWS_ACCESS_KEY_ID")
    )
    last_good = read_last_good(state)
    assert last_good is not None and names(last_good) == ["acme"]
    assert last_good.problems[0] == (
        "integration 'globex': its last applied state breaks a rule of this version and is not kept"
    )
    assert names(apply_file(path, last_good=last_good)) == ["acme", "globex"]
    path.write_text(path.read_text() + "  - name: [\n")  # a file error: the last good runs
    kept = apply_file(path, last_good=last_good)
    assert names(kept) == ["acme"] and kept.problems == last_good.problems[:1]
    # A stored state of the wrong shape is unreadable, not a crash.
    text = stored.read_text()
    for broken in (
        text.replace('"integrations": [', '"integrations": null, "x": [', 1),
        text.replace('"problems": [', '"problems": "abc", "y": [', 1),
        "[]",
    ):
        stored.write_text(broken)
        assert read_last_good(state) is None


def test_a_stored_state_an_older_version_accepted_loses_only_that_integration(
    tmp_path: Path,
) -> None:
    """One stored integration breaking a rule of this version (here a name now refused)
    leaves the others' last good states, and so their ownership of their folders, intact."""
    good = apply_integrations("integrations:\n" + block("acme", "acme-raw", "x"))
    text = good.to_json().replace('"integrations": [', '"integrations": [{"name": "aws"}, ', 1)
    write_last_good(tmp_path, good)
    (tmp_path / "last-applied-config.json").write_text(text)
    stored = read_last_good(tmp_path)
    assert stored is not None and stored.integrations == good.integrations
    assert stored.problems[0] == (
        "integration 'aws': its last applied state breaks a rule of this version and is not kept"
    )
    newcomer = apply_integrations(
        "integrations:\n" + block("acme", "acme-raw", "x") + block("beta", "acme-raw", "x"),
        last_good=stored,
    )
    assert names(newcomer) == ["acme"]


@pytest.mark.parametrize("name", ["aws", "dagster", "dagster_pg", "affise", "aws_secret"])
def test_a_name_reaching_into_the_deployments_environment_is_refused(name: str) -> None:
    applied = apply_integrations("integrations:\n" + block(name, "x-raw", "x"))
    assert names(applied) == []
    assert (
        f"integration {name!r}: name: {name!r} must not begin with aws or dagster or affise"
        in (applied.problems[0])
    )
    # A name that only looks alike is not the deployment's.
    assert names(apply_integrations("integrations:\n" + block("awsome", "x-raw", "x"))) == [
        "awsome"
    ]
