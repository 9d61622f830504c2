"""Answers: ask (search, pack, generate, cite), prompt (packing, [n] markers), generate/ (backends),
completion (RETRO code completion with the neighbours it read cited)."""
