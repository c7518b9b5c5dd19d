"""stt_pod.agreement: LocalAgreement-2 between consecutive hypotheses."""

from __future__ import annotations

from stt_pod.agreement import MAX_OVERLAP_WORDS, OVERLAP_SECONDS, TIME_TOLERANCE, LocalAgreement
from stt_pod.words import Word


def words(*texts: str, start: float = 0.0, step: float = 0.4, length: float = 0.3) -> list[Word]:
    """Words one after another: `step` apart, each `length` long."""
    return [Word(" " + t, start + i * step, start + i * step + length) for i, t in enumerate(texts)]


def keys(ws: list[Word]) -> list[str]:
    return [w.key for w in ws]


def test_the_first_hypothesis_commits_nothing():
    la = LocalAgreement()
    agreed, tentative = la.update(words("the", "cat", "sat"), 0.0)
    assert agreed == []
    assert keys(tentative) == ["the", "cat", "sat"]


def test_two_hypotheses_commit_only_their_common_prefix():
    la = LocalAgreement()
    la.update(words("the", "cat", "sat"), 0.0)
    agreed, tentative = la.update(words("the", "cat", "sat", "on", "the", "mat"), 0.0)
    assert keys(agreed) == ["the", "cat", "sat"]
    assert keys(tentative) == ["on", "the", "mat"]


def test_agreement_stops_at_the_first_difference():
    la = LocalAgreement()
    la.update(words("i", "scream", "for", "ice"), 0.0)
    agreed, tentative = la.update(words("i", "scream", "four", "ice"), 0.0)
    assert keys(agreed) == ["i", "scream"]
    assert keys(tentative) == ["four", "ice"]  # "ice" matches too, but after a difference


def test_a_different_first_word_commits_nothing():
    la = LocalAgreement()
    la.update(words("ice", "cream"), 0.0)
    agreed, tentative = la.update(words("i", "scream"), 0.0)
    assert agreed == [] and keys(tentative) == ["i", "scream"]


def test_a_shorter_hypothesis_commits_what_both_have():
    la = LocalAgreement()
    la.update(words("a", "b", "c", "d"), 0.0)
    agreed, tentative = la.update(words("a", "b"), 0.0)
    assert keys(agreed) == ["a", "b"] and tentative == []


def test_comparison_ignores_case_and_punctuation():
    la = LocalAgreement()
    la.update([Word(" Hello,", 0.0, 0.3), Word(" world", 0.4, 0.7), Word(" it's", 0.8, 1.0)], 0.0)
    agreed, _ = la.update([Word(" hello", 0.0, 0.3), Word(" World.", 0.4, 0.7), Word(" It's!", 0.8, 1.0)], 0.0)
    assert keys(agreed) == ["hello", "world", "it's"]


def test_agreement_continues_past_the_commit_point():
    la = LocalAgreement()
    la.update(words("one", "two", "three"), 0.0)
    agreed, _ = la.update(words("one", "two", "three", "four"), 0.0)
    committed_until = agreed[-1].end
    # the next window starts at the utterance's start again: the committed words are in it
    agreed, tentative = la.update(words("one", "two", "three", "four", "five"), committed_until)
    assert keys(agreed) == ["four"]
    assert keys(tentative) == ["five"]


# --- what is fresh -----------------------------------------------------------------


def test_words_before_the_commit_point_are_dropped():
    la = LocalAgreement()
    hyp = words("a", "b", "c", "d")  # a 0-0.3, b 0.4-0.7, c 0.8-1.1, d 1.2-1.5
    assert keys(la.fresh(hyp, 0.7)) == ["c", "d"]
    assert keys(la.fresh(hyp, 1.5)) == []
    assert keys(la.fresh(hyp, 0.0)) == ["a", "b", "c", "d"]


def test_word_edges_get_the_alignment_tolerance():
    la = LocalAgreement()
    cut = 1.0
    ends_just_after = Word(" late", 0.6, cut + TIME_TOLERANCE / 2)  # imprecise end of a committed word
    starts_just_before = Word(" early", cut - TIME_TOLERANCE / 2, cut + 0.05)  # imprecise start of a new one
    ends_well_after = Word(" long", 0.5, cut + 2 * TIME_TOLERANCE)  # a word that really straddles
    assert la.fresh([ends_just_after], cut) == []
    assert la.fresh([starts_just_before], cut) == [starts_just_before]
    assert la.fresh([ends_well_after], cut) == [ends_well_after]


# --- overlap with committed words ----------------------------------------------------


def test_committed_words_repeated_at_the_start_are_removed():
    la = LocalAgreement()
    la.commit(words("the", "quick", "brown"))  # ends at 1.1
    # a new window re-hears "quick brown" with times that land after the commit point
    repeat = words("quick", "brown", "fox", "jumps", start=1.15)
    assert keys(la.fresh(repeat, 1.1)) == ["fox", "jumps"]


def test_the_longest_overlap_is_removed():
    la = LocalAgreement()
    la.commit(words("no", "no", "no"))
    assert keys(la.fresh(words("no", "no", "yes", start=1.2), 1.1)) == ["yes"]


def test_overlap_ignores_case_and_punctuation():
    la = LocalAgreement()
    la.commit([Word(" Hello,", 0.0, 0.4), Word(" World.", 0.5, 0.9)])
    assert keys(la.fresh([Word(" hello", 0.95, 1.2), Word(" world", 1.3, 1.5), Word(" again", 1.6, 1.9)], 0.9)) == ["again"]


def test_a_non_matching_start_is_kept():
    la = LocalAgreement()
    la.commit(words("the", "quick", "brown"))
    fresh = words("fox", "brown", start=1.15)
    assert la.fresh(fresh, 1.1) == fresh


def test_only_a_suffix_of_the_committed_words_counts():
    la = LocalAgreement()
    la.commit(words("the", "quick", "brown"))
    fresh = words("the", "quick", "fox", start=1.15)  # a prefix of what was committed, not its tail
    assert la.fresh(fresh, 1.1) == fresh


def test_words_far_from_the_commit_point_are_not_overlap():
    la = LocalAgreement()
    la.commit(words("yes"))
    later = words("yes", "indeed", start=0.3 + OVERLAP_SECONDS + 0.5)
    assert la.fresh(later, 0.3) == later


def test_committed_memory_is_bounded():
    la = LocalAgreement()
    la.commit(words(*"abcdefghij"))
    assert len(la.committed) == MAX_OVERLAP_WORDS
    assert keys(la.committed) == list("abcdefghij"[-MAX_OVERLAP_WORDS:])


def test_agreed_words_join_the_committed_tail():
    la = LocalAgreement()
    la.update(words("red", "green"), 0.0)
    la.update(words("red", "green", "blue"), 0.0)
    assert keys(la.committed) == ["red", "green"]
    # so a next window that re-hears "green" right after the commit point drops it
    assert keys(la.fresh(words("green", "blue", start=0.75), 0.7)) == ["blue"]


# --- reset -----------------------------------------------------------------------


def test_reset_forgets_the_tentative_words():
    la = LocalAgreement()
    la.update(words("a", "b"), 0.0)
    la.reset()
    agreed, tentative = la.update(words("a", "b"), 0.0)
    assert agreed == [] and keys(tentative) == ["a", "b"]


def test_reset_keeps_the_committed_words_for_overlap():
    la = LocalAgreement()
    la.commit(words("x", "y"))
    la.reset()
    assert keys(la.fresh(words("y", "z", start=0.75), 0.7)) == ["z"]
