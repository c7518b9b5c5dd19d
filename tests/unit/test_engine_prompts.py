"""stt_pod.engine prompt policy: which prompt length a window is decoded with, and which tokens (pure)."""

from stt_pod.engine import MAX_PROMPT_TOKENS, prompt_group


def test_prompt_lengths_group_by_powers_of_two_within_the_limit():
    assert [prompt_group(n, 64) for n in (0, 1, 2, 3, 4, 7, 8, 63, 64, 65, 500)] == [0, 1, 2, 2, 4, 4, 8, 32, 64, 64, 64]
    assert prompt_group(500, MAX_PROMPT_TOKENS) == 128


def test_a_group_never_asks_for_more_tokens_than_a_window_has():
    for n in range(0, 300):
        assert 0 <= prompt_group(n, 64) <= min(n, 64)
        assert n == 0 or prompt_group(n, 64) * 2 > min(n, 64)  # and keeps more than half of them


def test_a_trimmed_prompt_keeps_the_sessions_own_prompt_and_the_latest_text():
    from stt_pod.engine import fit_prompt

    own, previous = [1, 2, 3], [10, 11, 12, 13, 14]
    assert fit_prompt(own, previous, 8) == [1, 2, 3, 10, 11, 12, 13, 14]
    assert fit_prompt(own, previous, 4) == [1, 2, 3, 14]
    assert fit_prompt(own, previous, 2) == [1, 2]
    assert fit_prompt([], previous, 2) == [13, 14]
    assert fit_prompt([], [], 0) == []
