from nexusd.services.tts.sentences import split_sentences


def test_splits_on_sentence_ends_and_paragraphs():
    text = 'Hello there. "How are you?" she asked!  Fine…\n\nNew paragraph\nwith a wrapped line'
    assert split_sentences(text) == [
        "Hello there.", '"How are you?"', "she asked!", "Fine…", "New paragraph with a wrapped line",
    ]


def test_long_sentences_are_cut_at_clauses_then_spaces():
    clause = "one two three four five six seven eight nine ten, "
    pieces = split_sentences(clause * 20, max_chars=120)
    assert all(len(p) <= 120 for p in pieces)
    assert all(p.endswith(",") for p in pieces[:-1])
    assert " ".join(pieces).split() == (clause * 20).split()
    unbroken = "x" * 250
    assert split_sentences(unbroken, max_chars=100) == ["x" * 100, "x" * 100, "x" * 50]


def test_drops_pieces_without_words():
    assert split_sentences("... !!! ?") == []
    assert split_sentences("  Hi.  ...  ") == ["Hi."]
