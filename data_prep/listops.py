"""ListOps: LRA's generator, the official TSV reader and the tokeniser.

The generator follows LRA's algorithm (see shared/notes/lra_tasks.md): a node at depth < max_depth
is a leaf with probability 0.75 (a uniform digit), otherwise an operator, uniform over MIN, MAX,
MED, SM, with randint(2, max_args) children. At max_depth every node is a leaf. Length counts
tokens: a leaf is 1, an operator node 2 (its opening token and `]`) plus its children.
A tree is kept only if min_length < length < max_length (strict), duplicates are dropped,
and the first examples go to train, the next to val and the last to test.

Strings use LRA's nested form, e.g. `( ( ( [MAX 2 ) 9 ) ] )`. Tokenising drops the parentheses,
so that string becomes `[MAX 2 9 ]`. A token outside the language (operators, `]`, digits) is an
error naming it, never a silent `<unk>`: the vocabulary keeps `<unk>` so that ids stay those of
earlier caches, but nothing produces it.

Both sources are stored in their own order: the generator emits trees (and so labels) at random,
and the release's TSVs were made by the same generator.
"""

from __future__ import annotations

import csv
import random
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from . import mini, tasks
from .atomic import atomic_write
from .cache import SPLITS, DataError, Split, pack, write_task

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
PAD, UNK = "<pad>", "<unk>"
VOCAB = (PAD, UNK, *OPERATORS, CLOSE, *(str(d) for d in range(10)))
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
# What a source string may hold: the language's tokens and the parentheses tokenising drops.
SOURCE_ID = {tok: TOKEN_ID[tok] for tok in VOCAB if tok not in (PAD, UNK)}
SOURCE_TOKENS = frozenset((*SOURCE_ID, "(", ")"))
NUM_CLASSES = 10
LEAF_PROBABILITY = 0.75

# Published settings.
LRA_SETTINGS = {"max_depth": 10, "max_args": 10, "min_length": 500, "max_length": 2000,
                "sizes": {"train": 96_000, "val": 2_000, "test": 2_000}}

# A tree is a digit (int) or (operator, [children]).
Tree = int | tuple[str, list]


def generate_tree(rng: random.Random, max_depth: int, max_args: int, depth: int = 1
                  ) -> tuple[Tree, int]:
    """One random tree and its token length, by LRA's recursion."""
    r = rng.random() if depth < max_depth else 1.0
    if r > 1 - LEAF_PROBABILITY:
        return rng.randrange(10), 1
    num_children = rng.randint(2, max_args)
    children, length = [], 2
    for _ in range(num_children):
        child, child_len = generate_tree(rng, max_depth, max_args, depth + 1)
        children.append(child)
        length += child_len
    return (rng.choice(OPERATORS), children), length


def evaluate(tree: Tree) -> int:
    """The value of a tree: MIN, MAX, MED = int(median), SM = sum mod 10."""
    if isinstance(tree, int):
        return tree
    op, children = tree
    values = [evaluate(c) for c in children]
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[MED":
        return int(statistics.median(values))
    return sum(values) % 10


def to_string(tree: Tree) -> str:
    """LRA's nested-parenthesis form: each child closes one more `( ... )` around the operator."""
    if isinstance(tree, int):
        return str(tree)
    op, children = tree
    text = f"( {op} {to_string(children[0])} )"
    for child in children[1:]:
        text = f"( {text} {to_string(child)} )"
    return f"( {text} {CLOSE} )"


def tokenize(source: str) -> list[str]:
    """LRA's tokenisation: drop parentheses, split on whitespace."""
    return [tok for tok in source.split() if tok not in ("(", ")")]


def encode(source: str) -> list[int]:
    """Token ids of a source string; a token outside the language raises KeyError naming it
    (`read_tsv` reports such a token with its file and line before anything is encoded)."""
    return [SOURCE_ID[tok] for tok in tokenize(source)]


# Draws in a row without a new example after which the generator gives up: far more than any
# workable setting needs (depth 2 with 2 arguments has only 410 distinct trees, 10 leaves and
# 4 x 10 x 10 operator nodes, and every one of them turns up within a few thousand draws).
GIVE_UP_AFTER = 100_000


def generate(
    sizes: dict[str, int], *, seed: int, max_depth: int, max_args: int, min_length: int,
    max_length: int, progress: bool = True,
) -> dict[str, list[tuple[str, int]]]:
    """Unique (source, label) examples, split in order: train first, then val, then test."""
    from tqdm import tqdm

    rng = random.Random(seed)
    total = sum(sizes.values())
    seen: dict[str, int] = {}
    misses = 0  # draws since the last new example
    with tqdm(total=total, desc="listops", unit="tree", disable=not progress,
              file=sys.stderr) as bar:
        while len(seen) < total:
            # Small settings admit few distinct trees in the length window: say so, never spin.
            if misses >= GIVE_UP_AFTER:
                raise DataError(
                    f"listops generator: only {len(seen)} distinct trees of the {total} asked "
                    f"came out of max_depth={max_depth}, max_args={max_args}, "
                    f"{min_length} < length < {max_length} ({GIVE_UP_AFTER} draws in a row gave "
                    "nothing new); widen the settings or ask for fewer examples")
            misses += 1
            tree, length = generate_tree(rng, max_depth, max_args)
            if not min_length < length < max_length:
                continue
            text = to_string(tree)
            if text not in seen:
                seen[text] = evaluate(tree)
                misses = 0
                bar.update(1)
    examples = list(seen.items())
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = examples[start:start + size]
        start += size
    return out


def read_tsv(path: str | Path) -> list[tuple[str, int]]:
    """Read an official `basic_{train,val,test}.tsv` (header `Source<TAB>Target`); any row that
    is not a ListOps example fails with the file, the line and what is wrong."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; prepare ListOps with: "
                        "python -m data_prep listops --source <lra_release|generate>")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader, None)
            if header != ["Source", "Target"]:
                raise DataError(f"{path}: expected the header 'Source<TAB>Target', got "
                                f"{header!r}")
            for line_no, row in enumerate(reader, start=2):
                rows.append(_row(row, f"{path}:{line_no}"))
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: {err}; is this a listops-1000 file?"
                            ) from None
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text ({err.reason}); is this a listops-1000 "
                            "file?") from None
    return rows


def _row(row: list[str], where: str) -> tuple[str, int]:
    """One TSV row as (source, label), checked."""
    if len(row) != 2:
        raise DataError(f"{where}: expected 2 tab-separated columns, got {len(row)}")
    source, target = row
    if not SOURCE_TOKENS.issuperset(source.split()):
        unknown = next(tok for tok in source.split() if tok not in SOURCE_TOKENS)
        raise DataError(f"{where}: unknown token {unknown!r}; ListOps sources hold only "
                        f"{' '.join(sorted(SOURCE_TOKENS))}: is this a listops-1000 file?")
    try:
        label = int(target)
    except ValueError:
        raise DataError(f"{where}: target {target!r} is not an integer") from None
    if not 0 <= label < NUM_CLASSES:
        raise DataError(f"{where}: target {label} is outside 0-9")
    return source, label


def write_tsv(path: str | Path, examples: Iterable[tuple[str, int]]) -> None:
    """Write examples in the official format, atomically (used for fixtures and exports)."""
    text = "Source\tTarget\n" + "".join(f"{source}\t{label}\n" for source, label in examples)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def to_split(examples: list[tuple[str, int]], max_len: int, *, where: Callable[[int], str],
             fix: str) -> Split:
    """Encode examples into a cached split (tokens, lengths, labels); a source longer than
    max_len tokens fails naming `where(i)` and `fix` (see `cache.pack`)."""
    tokens, lengths = pack([encode(src) for src, _ in examples], max_len, where=where, fix=fix)
    labels = np.array([label for _, label in examples], dtype=np.int64)
    return Split(tokens, lengths, labels)


def build_generated(out_dir: str | Path, *, sizes: dict[str, int], seed: int, max_depth: int,
                    max_args: int, min_length: int, max_length: int, mini: bool,
                    progress: bool = True) -> Path:
    """Generate ListOps with our generator and write it to the cache at `out_dir`."""
    params = {"sizes": dict(sizes), "seed": seed, "max_depth": max_depth, "max_args": max_args,
              "min_length": min_length, "max_length": max_length}
    examples = generate(sizes, seed=seed, max_depth=max_depth, max_args=max_args,
                        min_length=min_length, max_length=max_length, progress=progress)
    # Lengths are strictly below max_length, so max_length - 1 tokens always fit.
    max_len = max_length - 1
    kind = "mini stand-in, not the LRA benchmark" if mini else "LRA generator settings"
    splits = {name: to_split(ex, max_len, where=lambda i, name=name: f"generated {name} tree {i}",
                             fix="generated trees are shorter than max_length, so this is a bug")
              for name, ex in examples.items()}
    return write_task(
        out_dir, splits, task="listops", source="generate", num_classes=NUM_CLASSES,
        vocab_size=len(VOCAB), vocab=VOCAB, max_len=max_len, mini=mini, params=params,
        description=f"ListOps from our LRA-faithful generator ({kind})",
    )


def build_from_release(out_dir: str | Path, listops_dir: str | Path) -> Path:
    """Read the official `listops-1000/basic_{train,val,test}.tsv` into the cache."""
    listops_dir = Path(listops_dir)
    max_len = LRA_SETTINGS["max_length"]
    splits = {}
    for split in SPLITS:
        path = listops_dir / f"basic_{split}.tsv"
        splits[split] = to_split(
            read_tsv(path), max_len, where=lambda i, path=path: f"{path}:{i + 2}",  # after header
            fix="the release's sources are shorter than 2,000 tokens: is this a listops-1000 file?")
    return write_task(
        out_dir, splits, task="listops", source="lra_release", num_classes=NUM_CLASSES,
        vocab_size=len(VOCAB), vocab=VOCAB, max_len=max_len, mini=False,
        params={"release_dir": str(listops_dir)},
        description="ListOps from the official LRA release (listops-1000)",
    )


# ---- the mini stand-in, and the task's entry in the registry ---------------------------------

def build_mini(out_dir: Path, progress: bool = True) -> Path:
    """The stand-in: our generator with shorter trees (up to 511 tokens, so CPU training takes
    minutes); the algorithm is LRA's."""
    return build_generated(out_dir, sizes=dict(mini.SIZES), seed=0, max_depth=10, max_args=10,
                           min_length=64, max_length=512, mini=True, progress=progress)


tasks.register(tasks.Task(
    name="listops", order=1,
    help="ListOps (listops-1000 TSVs from the release, or LRA's generator)",
    sources={
        "lra_release": tasks.release_source(
            lambda args: "listops-1000", lambda args, out, folder: build_from_release(out, folder)),
        "generate": tasks.Source(
            tasks.LRA_GENERATOR,
            lambda args, out: build_generated(out, seed=args.seed, mini=False,
                                              progress=not args.quiet, **LRA_SETTINGS),
            tasks.seed_flag),
    },
    mini=build_mini,
))
