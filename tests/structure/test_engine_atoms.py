"""The union-find with exponents: batched joins agree with a one-at-a-time reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from weissi_cli.structure.engine.atoms import ONE, Atoms

Constraint = tuple[int, int, bool]  # c[a] = c[b] (or its inverse when True); b = 0 forces a


def reference(count: int, constraints: list[Constraint]) -> tuple[list[int], list[int]]:
    """(component label, parity) per atom, by plain sequential union-find; a component
    holding atom 0 or a contradiction is labelled 0."""
    parent = list(range(count))
    parity = [0] * count

    def find(x: int) -> tuple[int, int]:
        p = 0
        while parent[x] != x:
            p ^= parity[x]
            x = parent[x]
        return x, p

    broken: set[int] = set()
    for a, b, inverse in constraints:
        (ra, pa), (rb, pb) = find(a), find(b)
        if ra == rb:
            if pa ^ pb != int(inverse):
                broken.add(ra)
            continue
        low, high = min(ra, rb), max(ra, rb)
        parent[high] = low
        parity[high] = pa ^ pb ^ int(inverse)
        if high in broken:
            broken.add(low)
    labels, parities = [], []
    for x in range(count):
        root, p = find(x)
        forced = root == 0 or root in broken
        labels.append(0 if forced else root)
        parities.append(0 if forced else p)
    return labels, parities


constraints = st.lists(
    st.tuples(st.integers(1, 24), st.integers(0, 24), st.booleans()), max_size=40
)


@given(constraints, st.integers(1, 5))
def test_batched_joins_match_the_reference(found: list[Constraint], batches: int) -> None:
    atoms = Atoms(capacity=4)
    atoms.new(24)
    size = max(1, len(found) // batches)
    for start in range(0, len(found), size):
        batch = found[start : start + size]
        atoms.join(
            np.array([a for a, _, _ in batch]),
            np.array([b for _, b, _ in batch]),
            np.array([inverse for _, _, inverse in batch]),
        )
    labels, parities = reference(25, found)
    roots, parity = atoms.find(np.arange(25))
    forced = roots == ONE
    assert forced.tolist() == [label == 0 for label in labels]
    # same partition of the free atoms, with the same relative exponents
    for x in range(25):
        for y in range(25):
            if labels[x] and labels[y]:
                assert (roots[x] == roots[y]) == (labels[x] == labels[y])
                if labels[x] == labels[y]:
                    assert (parity[x] ^ parity[y]) == (parities[x] ^ parities[y])


def test_an_atom_equal_to_its_own_inverse_is_one() -> None:
    atoms = Atoms()
    a, b = atoms.new(2)
    atoms.join(np.array([a]), np.array([b]))
    atoms.join(np.array([a]), np.array([b]), True)
    assert atoms.forced(np.array([a, b])).all()
