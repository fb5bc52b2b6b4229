"""Post-processing and safety filters on hand-made candidates."""

from __future__ import annotations

from gensys.apps.compose.postprocess import finish_candidate, pii_reason, safety_reason


def fin(generated, prefix="Please let me", tail=" ", partial="", ended="stop", max_words=5, **kw):
    return finish_candidate(
        generated, prefix=prefix, tail=tail, partial=partial, ended=ended, max_words=max_words, **kw
    )


def test_boundary_suggestion_drops_the_typed_space_and_stops_at_the_sentence_end():
    f = fin(" know if you can. Thanks again")
    assert (f.text, f.reason, f.words) == ("know if you can.", "ok", 4)


def test_partial_word_is_completed_not_repeated():
    f = fin(" know if you can.", tail=" kn", partial="kn")
    assert f.text == "ow if you can."
    assert fin(" now is the time.", tail=" kn", partial="kn").reason == "inconsistent"


def test_token_limit_cut_loses_the_unfinished_last_word():
    assert fin(" know if you ha", ended="length").text == "know if you"
    # A trailing "." at the token limit may be "john." of "john.doe": not a sentence end.
    assert fin(" write to john.", ended="length").text == "write to"
    assert fin(" write to john.", ended="eos").text == "write to john."
    assert fin(" kno", ended="length").reason == "empty"
    # When the word being typed is itself cut, nothing is left to suggest.
    assert fin(" knowled", tail=" kn", partial="kn", ended="length").reason == "too_long_word"


def test_one_line_only_and_spaces_collapsed():
    assert fin(" know  if\nyou can").text == "know if"


def test_long_filter_truncates_or_drops():
    long = " know if you have any further questions"
    assert fin(long, max_words=3).text == "know if you"
    assert fin(long, max_words=3, long_policy="drop").reason == "too_long"
    assert fin(long, max_words=6).text == "know if you have any further"


def test_casing_repair():
    # Sentence start gets a capital; a lone "i" becomes "I" (not inside words, not "i.e.").
    assert fin(" thanks for the update.", prefix="Hi John.").text == "Thanks for the update."
    assert fin(" thanks for the update.", prefix="Hi John,").text == "thanks for the update."
    assert fin(" i think i'll go.", prefix="Well,").text == "I think I'll go."
    assert fin(" in it, i.e. soon.", prefix="Put").text == "in it, i.e."  # abbreviations end it (known)
    # A completed partial word keeps the user's casing.
    assert fin(" iPhone is here.", prefix="The", tail=" i", partial="i").text == "Phone is here."


def test_no_leading_space_needed_after_punctuation():
    f = fin(" How are you?", prefix="Hi Bob,", tail="")
    assert f.text == " How are you?"


def test_pii_patterns():
    assert fin(" call me at (713) 853-1234.").reason == "pii_phone"
    assert fin(" email me at john.doe@enron.com.").reason == "pii_email"
    assert fin(" my ssn is 123-45-6789.").reason == "pii_id_number"
    # Completing an address the user started is caught too.
    assert pii_reason("write to john@", "enron.com") == "pii_email"
    # Numbers that are not personal data pass.
    assert fin(" meet at 10:30 on the 5th.").reason == "ok"


def test_offensive_and_gendered_terms():
    assert fin(" know what this shit is.").reason == "offensive"
    assert fin(" him know.", prefix="Please let").reason == "gendered"
    assert fin(" her know.", prefix="Please let").reason == "gendered"
    assert fin(" them know.", prefix="Please let").text == "them know."
    assert fin(" him know.", prefix="Please let", block_gendered=False).text == "him know."
    # Whole words only: "she" inside "shelter" is fine.
    assert safety_reason("", "", "the shelter is open") is None


def test_line_start_suggestion_has_no_leading_space():
    f = fin("Please send it.", prefix="Thanks.\n", tail="")
    assert (f.text, f.reason) == ("Please send it.", "ok")
    assert fin(" please send it.", prefix="Thanks.\n", tail="").text == "Please send it."
