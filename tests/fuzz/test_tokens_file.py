"""The tokens file (node/auth.py load): any content gives a usable AuthConfig or an AuthError
naming the file, never another exception (which would stop the node with a traceback instead of
a clear message), and never a config that lets a token in that the file did not grant."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import auth
from tests.fuzz.conftest import fuzz_examples

# long runs (FUZZ_EXAMPLES) outlast the suite's 300 s per-test timeout
pytestmark = pytest.mark.timeout(max(300, fuzz_examples() // 10))

TOKEN = "t" * 16
JUNK = st.one_of(st.sampled_from(['""', "5", "true", "[]", "[[]]", "{}", '["a", 1]', "1e999",
                                  '"\\u0000"', "-0", '"short"']),
                 st.text(alphabet='"[]{}=,.#\\ abc01\n', max_size=12))
PLAUSIBLE = {
    "token": st.builds(lambda i: f'"{TOKEN}{i}"', st.integers(0, 3)),
    "role": st.sampled_from(['"admin"', '"producer"', '"consumer"', '["producer", "consumer"]',
                             '"root"', '["admin", "nobody"]']),
    "queues": st.sampled_from(['"orders*"', '["a", "b*"]', '"*"', '[]', '["a", 1]']),
    "topics": st.sampled_from(['"orders.*"', '["t.#"]', '[]']),
    "extra": st.just('"ignored"'),
}


def value(key: str) -> st.SearchStrategy[str]:
    """Mostly plausible (so some files load and their tokens are checked), 1 in 8 junk."""
    return st.integers(0, 7).flatmap(lambda n: JUNK if n == 0 else PLAUSIBLE[key])


@st.composite
def tokens_files(draw: st.DrawFn) -> str:
    lines = []
    if draw(st.booleans()):
        lines.append(f"metrics_auth = {draw(st.one_of(st.sampled_from(['true', 'false']), JUNK))}")
    for _ in range(draw(st.integers(0, 3))):
        header = ["[[tokens]]"] * 6 + ["[tokens]", "tokens = 1", "[[other]]"]
        lines.append(draw(st.sampled_from(header)))
        keys = ["token", "role"] + draw(st.lists(st.sampled_from(["queues", "topics", "extra"]),
                                                 max_size=3, unique=True))
        for key in keys:
            if draw(st.integers(0, 9)) > 0:
                lines.append(f"{key} = {draw(value(key))}")
    return "\n".join(lines) + "\n"


@settings(max_examples=fuzz_examples(100), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=tokens_files())
def test_any_tokens_file_loads_or_is_refused_clearly(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    try:
        config = auth.load(path)
    except auth.AuthError as exc:
        assert str(path) in str(exc)
        return
    for token in config.tokens:
        assert len(token.secret) >= auth.TOKEN_BYTES_MIN
        assert token.roles and token.roles <= set(auth.ROLES)
        assert token.queues and token.topics


def test_a_binary_tokens_file_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_bytes(b"\xff\xfe[[tokens]]\n")
    with pytest.raises(auth.AuthError):
        auth.load(path)
