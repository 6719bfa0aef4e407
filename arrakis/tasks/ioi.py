"""Indirect object identification (Wang et al. 2022), with its "ABC" corruption.

"When Mary and John went to the store, John gave a drink to" -> " Mary": the sentence names
two people, repeats one (the subject, S), and the model must complete with the other (the
indirect object, IO). The metric is logit(IO) - logit(S).

The corrupted twin replaces the repeated subject with a third name, "When Mary and John went
to the store, Sam gave a drink to": both names of the first clause now occur once, so
nothing says which of them the sentence wants, while the template, its length and every
other token stay the same. Patching a head's activation from that run removes exactly the
information "which name was repeated".

Names are drawn from a list filtered to the ones the model's tokenizer makes one token in
the middle of a sentence, so the same generator works for any tokenizer; prompts are
encoded as the tokenizer does by default (with its BOS where it adds one).
"""

from __future__ import annotations

import random
from typing import Any

from arrakis.models import HookedAutoModel
from arrakis.tasks.task import Task

# Wang et al. 2022's templates, in both orders of the first clause (ABBA and BABA). All eight
# kept here are completed right by SmolLM2-135M on nearly every example.
TEMPLATES = (
    "When {A} and {B} went to the store, {S} gave a drink to",
    "When {A} and {B} went to the park, {S} gave a ball to",
    "After {A} and {B} went to the office, {S} gave a letter to",
    "Then, {A} and {B} had a long argument. Afterwards, {S} said to",
    "While {A} and {B} were working at the hospital, {S} gave a book to",
    "Then, {A} and {B} went to the school. {S} gave a bone to",
    "When {A} and {B} got a snack at the house, {S} decided to give it to",
    "After the lunch, {A} and {B} went to the beach. {S} gave a ring to",
)
NAMES = (
    "Mary", "John", "Tom", "James", "Anna", "Sarah", "David", "Paul", "Mark", "Lisa", "Kate", "Michael",
    "Emma", "Alice", "Bob", "Sam", "Jack", "Peter", "Laura", "Daniel", "Robert", "Linda", "Susan", "Kevin",
    "Jason", "Amy", "Ben", "Dan", "Joe", "Max", "Rachel", "Steve", "Tim", "Adam", "Eric", "George",
)  # fmt: skip
MIN_NAMES = 3  # IO, S and the corrupting third name
MAX_TRIES = 100  # draws per example before giving up (only odd tokenizers merge names with their context)


def name_tokens(tokenizer: Any, names: tuple[str, ...] = NAMES, context: str = "When") -> dict[str, int]:
    """Each name that is one token after a space in the middle of a sentence, with that id."""
    base = tokenizer.encode(context, add_special_tokens=False)
    found = {}
    for name in names:
        ids = tokenizer.encode(f"{context} {name}", add_special_tokens=False)
        if len(ids) == len(base) + 1 and ids[: len(base)] == base:
            found[name] = ids[-1]
    return found


def ioi(model: HookedAutoModel, n: int = 32, seed: int = 0, *, templates: tuple[str, ...] = TEMPLATES) -> Task:
    """``n`` IOI prompts with their ABC twins: answer = the indirect object (" Mary"), foil =
    the subject (" John"), src = the IO's position in the first clause, dst = the last token
    (" to"), metric logit(IO) - logit(S). Seeded: the same seed gives the same task.

    Example i uses template i mod len(templates), and the IO comes first in the first clause
    for even i (ABBA), second for odd i (BABA).
    """
    if not isinstance(model, HookedAutoModel):
        raise TypeError(f"ioi needs a HookedAutoModel (with a tokenizer), got {type(model).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (examples), got {n!r}")
    tokenizer = model.require_tokenizer()
    ids_of = name_tokens(tokenizer)
    if len(ids_of) < MIN_NAMES:
        raise ValueError(f"this tokenizer makes only {sorted(ids_of)} of the candidate names one token; ioi needs 3")
    names = sorted(ids_of)
    rng = random.Random(seed)
    clean, corrupted, answers, foils, srcs = [], [], [], [], []
    for i in range(n):
        template = templates[i % len(templates)]
        for _ in range(MAX_TRIES):
            io, s, c = rng.sample(names, 3)
            first, second = (io, s) if i % 2 == 0 else (s, io)
            clean_row = tokenizer.encode(template.format(A=first, B=second, S=s))
            corrupted_row = tokenizer.encode(template.format(A=first, B=second, S=c))
            # the names must stand as their own tokens: IO once, S twice, and the twin as long
            if (
                len(clean_row) == len(corrupted_row)
                and clean_row.count(ids_of[io]) == 1
                and clean_row.count(ids_of[s]) == 2
            ):
                break
        else:
            raise ValueError(f"could not build IOI example {i} from template {template!r} with this tokenizer")
        clean.append(clean_row)
        corrupted.append(corrupted_row)
        answers.append(ids_of[io])
        foils.append(ids_of[s])
        srcs.append(clean_row.index(ids_of[io]))
    return Task(clean, corrupted, answer=answers, foil=foils, src=srcs, model=model, name="ioi")
