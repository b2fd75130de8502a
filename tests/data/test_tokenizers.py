"""The CTC tokenizers (the document and character-LM ones are tested with the text data)."""

from tsformer.data.tokenizers import (
    CharTokenizer,
    CTCSentencePieceTokenizer,
    build_tokenizer,
    tokenizer_from_state,
)


def test_char_tokenizer_roundtrip_and_state():
    tok = CharTokenizer.train(["seven three", "ZERO"])
    assert tok.vocab_size == len(set("SEVEN THREEZRO")) + 1
    ids = tok.encode("SEVEN ZERO")
    assert 0 not in ids and tok.decode(ids) == "SEVEN ZERO"
    assert tokenizer_from_state(tok.state()).encode("THREE") == tok.encode("THREE")


def test_sentencepiece_tokenizer_roundtrip_and_state():
    texts = ["SEVEN THREE ZERO", "ONE TWO THREE", "FOUR FIVE SIX", "SEVEN EIGHT NINE"] * 20
    for kind in ("unigram", "bpe"):
        tok = build_tokenizer(texts, type="sentencepiece", vocab_size=30, model_type=kind)
        ids = tok.encode("SEVEN THREE ZERO")
        assert min(ids) >= 1 and tok.decode(ids) == "SEVEN THREE ZERO"
        again = tokenizer_from_state(tok.state())
        assert isinstance(again, CTCSentencePieceTokenizer) and again.encode("NINE ONE") == tok.encode("NINE ONE")
