"""Which library photo a corpus text describes, pure: a corpus names the photo (its ``image`` column or
field) by a path, absolute or relative to one of the library's roots, or by its file name alone. A path
is tried first; else the file name, which links only when exactly one photo of the library has it (a name
held by several photos links to none: guessing would put one photo's caption on another). Texts whose
photo is not found stay unlinked; `PhotoFinder` counts both kinds and `warn_unlinked` says so once each.

Links are made when the corpus is indexed: a photo indexed later gets its captions when
``xmodal index-texts`` reads that corpus again."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

logger = logging.getLogger(__name__)


class PhotoFinder:
    """Resolves a corpus's photo references against the photos `(id, path)` of a library with `roots`."""

    def __init__(self, photos: Iterable[tuple[int, str]], roots: Sequence[str]) -> None:
        self.roots = [os.path.normpath(r) for r in roots]
        self._by_path: dict[str, int] = {}
        self._by_name: dict[str, list[int]] = {}
        for image_id, path in photos:
            self._by_path[os.path.normpath(path)] = int(image_id)
            self._by_name.setdefault(os.path.basename(path), []).append(int(image_id))
        self.linked = 0  # texts linked to a photo
        self.unresolved = 0  # texts naming no photo of the library
        self.ambiguous = 0  # texts naming a file name several photos share
        self.unresolved_example: str | None = None
        self.ambiguous_example: tuple[str, int] | None = None  # (reference, how many photos have that name)

    def resolve(self, ref: str | None) -> int | None:
        """The id of the photo `ref` names, or None (no reference, not found, or a shared file name)."""
        if not ref:
            return None
        image_id = self._by_ref_path(ref)
        if image_id is None:
            held = self._by_name.get(os.path.basename(os.path.normpath(ref)), [])
            if len(held) == 1:
                image_id = held[0]
            elif held:
                self.ambiguous += 1
                self.ambiguous_example = self.ambiguous_example or (ref, len(held))
                return None
            else:
                self.unresolved += 1
                self.unresolved_example = self.unresolved_example or ref
                return None
        self.linked += 1
        return image_id

    def _by_ref_path(self, ref: str) -> int | None:
        if os.path.isabs(ref):
            return self._by_path.get(os.path.normpath(ref))
        for root in self.roots:
            image_id = self._by_path.get(os.path.normpath(os.path.join(root, ref)))
            if image_id is not None:
                return image_id
        return None


def warn_unlinked(source: str, finder: PhotoFinder) -> None:
    """One warning for the references that name no photo and one for the shared file names, each with an
    example and what to do."""
    if finder.unresolved:
        logger.warning("%s: %d text(s) name a photo that is not in the library (e.g. %r) and stay unlinked; index "
                       "that photo, then run `xmodal index-texts %s` again", source, finder.unresolved,
                       finder.unresolved_example, source)
    if finder.ambiguous_example is not None:
        ref, count = finder.ambiguous_example
        logger.warning("%s: %d text(s) name a photo by a file name that several photos share (e.g. %r, held by %d "
                       "photos) and are linked to none; name the photo by its path relative to a library root",
                       source, finder.ambiguous, ref, count)
