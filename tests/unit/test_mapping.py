"""`${{ }}` placeholders: parsing, rendering, and errors that name the bad placeholder."""

from __future__ import annotations

import pytest

from exo_celery.mapping import PlaceholderError, Ref, as_text, parse_refs, render, scan_refs


def angle(ref: Ref) -> str:
    return f"<{ref.kind}:{ref.name}:{ref.field}>"


@pytest.mark.parametrize(
    "text",
    ["${{ a.outputs.f }}", "${{a.outputs.f}}", "${{   a.outputs.f\t}}", "${{ a.outputs.f}}", "${{a.outputs.f }}"],
)
def test_output_ref_parses_with_or_without_spaces(text: str) -> None:
    assert parse_refs(text) == [Ref("output", "a", "f")]


@pytest.mark.parametrize("text", ["${{ store.k }}", "${{store.k}}", "${{ store.k}}", "${{store.k }}"])
def test_store_ref_parses_with_or_without_spaces(text: str) -> None:
    assert parse_refs(text) == [Ref("store", "k")]


def test_identifiers_and_fields_may_hold_dashes_and_underscores() -> None:
    assert parse_refs("${{ my-node_1.outputs.some_field }}") == [Ref("output", "my-node_1", "some_field")]


def test_several_placeholders_in_one_string_in_order_with_text_kept() -> None:
    text = "pre ${{ a.outputs.x }} mid ${{store.k}}/${{ b-2.outputs.y }} post"
    assert parse_refs(text) == [Ref("output", "a", "x"), Ref("store", "k"), Ref("output", "b-2", "y")]
    assert render(text, angle) == "pre <output:a:x> mid <store:k:>/<output:b-2:y> post"


def test_render_text_without_placeholders_is_unchanged() -> None:
    assert render("plain {{ not one }} $ {x}", angle) == "plain {{ not one }} $ {x}"
    assert parse_refs("plain {{ a.outputs.b }} ${ a.outputs.b }") == []


def test_render_does_not_rescan_substituted_text() -> None:
    assert render("${{ a.outputs.x }}", lambda ref: "${{ store.k }}") == "${{ store.k }}"


def test_render_same_placeholder_twice() -> None:
    assert render("${{ a.outputs.x }}-${{ a.outputs.x }}", lambda ref: "v") == "v-v"


def test_ref_str_round_trips() -> None:
    for ref in (Ref("output", "a", "f"), Ref("store", "k")):
        assert parse_refs(str(ref)) == [ref]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (7, "7"),
        (1.5, "1.5"),
        (True, "true"),
        (False, "false"),
        (None, ""),
        ({"a": [1, True, None]}, '{"a":[1,true,null]}'),
        ([1, "x"], '[1,"x"]'),
        ("s", "s"),
    ],
)
def test_non_string_template_values_become_text(value: object, text: str) -> None:
    assert as_text(value) == text
    assert render(value, angle) == text


def test_placeholder_inside_a_list_value_is_rendered() -> None:
    assert render(["${{ a.outputs.f }}"], lambda ref: "v") == '["v"]'


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("${{ a.b }}", "${{ a.b }}"),
        ("${{ a.outputs }}", "${{ a.outputs }}"),
        ("${{ a.outputs.f.g }}", "${{ a.outputs.f.g }}"),
        ("${{ store.a.b }}", "${{ store.a.b }}"),
        ("${{ store. }}", "${{ store. }}"),
        ("${{ store.outputs.f }}", "${{ store.outputs.f }}"),
        ("${{}}", "${{}}"),
        ("${{ a .outputs.f }}", "${{ a .outputs.f }}"),
        ("x ${{ a.outputs.f", "${{ a.outputs.f"),
        ("ok ${{ a.outputs.f }} then ${{ b.outputs", "${{ b.outputs"),
        ("${{ b ${{ a.outputs.x }}", "${{ b"),
    ],
)
def test_malformed_placeholder_raises_naming_it(text: str, named: str) -> None:
    with pytest.raises(PlaceholderError) as info:
        parse_refs(text)
    assert repr(named) in str(info.value)
    with pytest.raises(PlaceholderError):
        render(text, angle)


def test_unterminated_placeholder_says_so() -> None:
    with pytest.raises(PlaceholderError, match="unterminated"):
        parse_refs("value ${{ a.outputs.f")


def test_render_raises_before_resolving_anything() -> None:
    calls: list[Ref] = []

    def resolve(ref: Ref) -> str:
        calls.append(ref)
        return "v"

    with pytest.raises(PlaceholderError):
        render("${{ a.outputs.f }} ${{ bad }}", resolve)
    assert calls == []


def test_scan_refs_reports_every_problem_and_keeps_good_refs() -> None:
    refs, problems = scan_refs("${{ a.b }} ${{ x.outputs.y }} ${{ c.outputs }} ${{ store.k }} ${{ tail")
    assert refs == [Ref("output", "x", "y"), Ref("store", "k")]
    assert len(problems) == 3
    assert "'${{ a.b }}'" in problems[0]
    assert "'${{ c.outputs }}'" in problems[1]
    assert "'${{ tail'" in problems[2] and "unterminated" in problems[2]


def test_placeholder_error_is_a_value_error() -> None:
    assert issubclass(PlaceholderError, ValueError)
