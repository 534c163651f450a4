import pytest

from ruleengine.diagnostics import DiagnosticError
from ruleengine.yamlsafe import MAX_NODES, load_yaml_text


def codes(exc):
    return [d.code for d in exc.value.diagnostics]


def test_locations_of_values_and_keys():
    doc = load_yaml_text("a:\n  b: 1\n  c: [x, y]\n", "f.yaml")
    assert doc.data == {"a": {"b": 1, "c": ["x", "y"]}}
    assert (doc.loc(("a", "b")).line, doc.loc(("a", "b")).col) == (2, 6)
    assert (doc.loc(("a", "b"), key=True).line, doc.loc(("a", "b"), key=True).col) == (2, 3)
    assert doc.loc(("a", "c", 1)).col == 10
    # unknown paths fall back to the nearest known parent
    assert doc.loc(("a", "zzz")).line == 2


def test_duplicate_keys_are_errors_not_silently_overwritten():
    with pytest.raises(DiagnosticError) as exc:
        load_yaml_text("a: 1\nb: 2\na: 3\n", "f.yaml")
    assert codes(exc) == ["yaml-duplicate-key"]
    assert exc.value.diagnostics[0].location.line == 3


def test_syntax_error_is_located():
    with pytest.raises(DiagnosticError) as exc:
        load_yaml_text("a: [1, 2\nb: 3\n", "f.yaml")
    d = exc.value.diagnostics[0]
    assert d.code == "yaml-syntax" and d.location.file == "f.yaml" and d.location.line >= 1


def test_alias_bomb_is_refused():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    prev = "a"
    for i in range(8):
        name = f"l{i}"
        bomb += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
        prev = name
    with pytest.raises(DiagnosticError) as exc:
        load_yaml_text(bomb, "bomb.yaml")
    assert codes(exc) == ["yaml-too-many-nodes"]
    assert MAX_NODES < 10**9


def test_python_tags_are_refused():
    with pytest.raises(DiagnosticError) as exc:
        load_yaml_text("a: !!python/object/apply:os.system ['true']\n", "evil.yaml")
    assert codes(exc) == ["yaml-bad-value"]


def test_several_documents_are_refused():
    with pytest.raises(DiagnosticError) as exc:
        load_yaml_text("a: 1\n---\nb: 2\n", "f.yaml")
    assert codes(exc) == ["yaml-multiple-documents"]


def test_oversized_document_is_refused():
    with pytest.raises(DiagnosticError) as exc:
        load_yaml_text("a: '" + "x" * (3 * 1024 * 1024) + "'\n", "big.yaml")
    assert codes(exc) == ["yaml-too-large"]
