"""A tiny Llama and a byte tokenizer standing in for SmolLM2 in tests (the tests never read the 98 MB model)."""

from labkit.models import decoder_lm


class ByteTokenizer:
    """UTF-8 bytes as token ids: what labkit's LLM code needs of a tokenizer."""

    eos_token_id = 0

    def convert_tokens_to_ids(self, token: str) -> int:
        return 0  # every special token is byte 0 here

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return "<|endoftext|>" if token_id == 0 else chr(token_id)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def tiny_llm(name: str = "smollm2"):
    """``(model, tokenizer)`` as :func:`labkit.models.pretrained.load` returns them: a 2-layer Llama over bytes."""
    return decoder_lm.build_causal_lm("llama", 256, 32, 2, 2, max_positions=64, seed=0).eval(), ByteTokenizer()
