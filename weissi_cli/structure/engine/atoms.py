"""Scale atoms and the constraints between them: a union-find with exponents, on arrays.

An *atom* is one positive scale variable `c[a]`. Constraints have the form
`c[a] = c[b] ** e` with `e = ±1`, or `c[a] = 1`. They are kept in a union-find whose edges
carry a parity bit (0: equal, 1: inverse). Atom 0 is the constant 1: an atom joined to it is
*forced*, and a contradiction (an atom equal to its own inverse, `c = 1/c`) forces its whole
component, since the only positive solution is 1.

Every operation takes whole arrays of atoms at once (a weight's rows, a value's channels),
so that a graph with millions of atoms is solved by a few thousand numpy calls.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Ids = npt.NDArray[np.int64]
Bits = npt.NDArray[np.int8]

ONE = 0  # the atom that is always 1


class Atoms:
    """A growing set of atoms and the constraints joining them."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._parent = np.zeros(capacity, dtype=np.int64)
        self._parity = np.zeros(capacity, dtype=np.int8)
        self.count = 1  # atom 0 is ONE, its own root

    # creating ---------------------------------------------------------------------------
    def new(self, shape: int | tuple[int, ...]) -> Ids:
        """Fresh, unconstrained atoms in an array of `shape`."""
        size = int(np.prod(shape, dtype=np.int64))
        start = self.count
        self._grow(start + size)
        ids = np.arange(start, start + size, dtype=np.int64)
        self._parent[start : start + size] = ids
        self._parity[start : start + size] = 0
        self.count += size
        return ids.reshape(shape)

    def _grow(self, needed: int) -> None:
        if needed <= len(self._parent):
            return
        capacity = max(needed, 2 * len(self._parent))
        parent = np.zeros(capacity, dtype=np.int64)
        parity = np.zeros(capacity, dtype=np.int8)
        parent[: self.count] = self._parent[: self.count]
        parity[: self.count] = self._parity[: self.count]
        self._parent, self._parity = parent, parity

    # reading ----------------------------------------------------------------------------
    def find(self, ids: Ids) -> tuple[Ids, Bits]:
        """The root of each atom and its parity relative to the root (`c = root ** ±1`),
        compressing the paths it walked."""
        flat = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        node = flat.copy()
        parity = np.zeros(flat.shape, dtype=np.int8)
        while True:
            parent = self._parent[node]
            moving = parent != node
            if not moving.any():
                break
            parity ^= np.where(moving, self._parity[node], 0).astype(np.int8)
            node = parent
        self._parent[flat] = node
        self._parity[flat] = parity
        # atom 0 and its own entries stay consistent: 0 is its own root with parity 0
        self._parent[ONE] = ONE
        self._parity[ONE] = 0
        return node.reshape(np.shape(ids)), parity.reshape(np.shape(ids))

    def forced(self, ids: Ids) -> npt.NDArray[np.bool_]:
        """Which atoms are fixed to 1."""
        roots, _ = self.find(ids)
        forced: npt.NDArray[np.bool_] = roots == ONE
        return forced

    # constraining -----------------------------------------------------------------------
    def join(self, first: Ids, second: Ids, inverse: bool | npt.NDArray[np.bool_] = False) -> None:
        """`c[first] = c[second]` (or its inverse), element by element (broadcasting)."""
        first_b, second_b = np.broadcast_arrays(
            np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
        )
        a = first_b.ravel()
        b = second_b.ravel()
        wanted = np.broadcast_to(np.asarray(inverse, dtype=np.int8), first_b.shape).ravel()
        if a.size == 0:
            return
        # Hook roots one way only (the larger under the smaller) so that one round of
        # hooking never makes a cycle; pairs whose hook lost a race are retried.
        pending = np.ones(a.size, dtype=bool)
        while pending.any():
            index = np.nonzero(pending)[0]
            root_a, parity_a = self.find(a[index])
            root_b, parity_b = self.find(b[index])
            apart = root_a != root_b
            if not apart.any():
                break
            index, root_a, root_b = index[apart], root_a[apart], root_b[apart]
            parity_a, parity_b = parity_a[apart], parity_b[apart]
            low = np.minimum(root_a, root_b)
            high = np.maximum(root_a, root_b)
            self._parent[high] = low
            self._parity[high] = (parity_a ^ parity_b ^ wanted[index]).astype(np.int8)
            pending[:] = False
            pending[index] = True
        # Pairs already joined whose parities disagree say c = 1/c: their component is 1.
        root_a, parity_a = self.find(a)
        _, parity_b = self.find(b)
        clash = ((parity_a ^ parity_b) != wanted) & (root_a != ONE)
        if clash.any():
            self.force(root_a[clash])

    def force(self, ids: Ids) -> None:
        """`c[ids] = 1`."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        if flat.size:
            self.join(flat, np.zeros(flat.size, dtype=np.int64))

    def all_forced(self, ids: Ids) -> bool:
        return bool(np.asarray(ids).size == 0 or self.forced(ids).all())
