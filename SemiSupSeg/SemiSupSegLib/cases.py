"""The case table of the module and the manifest the engine trains on.

A case is a volume — a node in the Slicer scene or an image file — with an optional segmentation (a node,
or a label file). A case is *labeled* when it has one and its "labeled" box is ticked; the others are
unlabeled cases, which the semi-supervised training learns from too. The table is plain data (node IDs
and paths), saved in the module's parameter node (the nodes as node references, the rest as JSON: see
:meth:`CaseTable.to_parts`), and turned into a manifest with the engine's ``SemiSupSegTraining.manifest``
module.
"""

import json
import os
import re
from dataclasses import asdict, dataclass, fields
from typing import Iterable, List, Optional, Sequence, Tuple

from SemiSupSegTraining.layouts import scan_folder, split_image_name
from SemiSupSegTraining.manifest import CaseEntry, ClassInfo, Manifest, write_manifest

@dataclass
class CaseRow:
    """One row of the case table. A case is a volume node or an image file, with an optional segmentation
    node or label file."""

    id: str
    volume_node_id: Optional[str] = None
    volume_name: str = ""
    segmentation_node_id: Optional[str] = None
    segmentation_name: str = ""
    image_path: Optional[str] = None
    label_path: Optional[str] = None
    labeled: bool = False
    status: str = ""
    score: Optional[float] = None  # from "Suggest next case": higher, a label teaches more

    @property
    def score_text(self) -> str:
        return "" if self.score is None or self.is_labeled else f"{self.score:.2f}"

    @property
    def has_label(self) -> bool:
        return bool(self.segmentation_node_id or self.label_path)

    @property
    def is_labeled(self) -> bool:
        return self.has_label and self.labeled

    @property
    def volume_text(self) -> str:
        if self.volume_node_id:
            return self.volume_name or self.volume_node_id
        return os.path.basename(self.image_path or "") or self.id

    @property
    def label_text(self) -> str:
        if self.segmentation_node_id:
            return self.segmentation_name or self.segmentation_node_id
        if self.label_path:
            return os.path.basename(self.label_path)
        return ""


class CaseTable:
    """The cases of the module, in table order."""

    def __init__(self, rows: Optional[Iterable[CaseRow]] = None):
        self.rows: List[CaseRow] = list(rows or [])

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, index: int) -> CaseRow:
        return self.rows[index]

    # -- adding and removing -----------------------------------------------------------------------------

    def unique_id(self, name: str) -> str:
        """A case id made of the name's letters, digits, '-' and '_', not used yet."""
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "case"
        used = {r.id for r in self.rows}
        case_id, n = base, 2
        while case_id in used:
            case_id = f"{base}_{n}"
            n += 1
        return case_id

    def find_volume(self, volume_node_id: str) -> Optional[int]:
        for index, row in enumerate(self.rows):
            if row.volume_node_id == volume_node_id:
                return index
        return None

    def add_volume(self, volume_node_id: str, volume_name: str = "",
                   segmentation_node_id: Optional[str] = None, segmentation_name: str = "",
                   image_path: Optional[str] = None) -> Tuple[CaseRow, bool]:
        """Adds a volume node (with its segmentation node, then it is labeled); a volume that is in the table
        already is not added twice and its row is left as it is (its label changes only by the user's choice
        in the table or *Use as label*). ``image_path``: the file it was loaded from (the same file is then
        not added again as a file case). Returns (row, added)."""
        index = self.find_volume(volume_node_id)
        if index is not None:
            return self.rows[index], False
        row = CaseRow(id=self.unique_id(volume_name or volume_node_id), volume_node_id=volume_node_id,
                      volume_name=volume_name, segmentation_node_id=segmentation_node_id,
                      segmentation_name=segmentation_name if segmentation_node_id else "",
                      labeled=bool(segmentation_node_id), image_path=image_path)
        self.rows.append(row)
        return row, True

    def find_file(self, image_path: str) -> Optional[int]:
        """The row of an image file (a file case, maybe loaded into the scene already), or None."""
        wanted = os.path.normcase(os.path.abspath(image_path))
        for index, row in enumerate(self.rows):
            if row.image_path and os.path.normcase(os.path.abspath(row.image_path)) == wanted:
                return index
        return None

    def attach_volume(self, index: int, volume_node_id: str, volume_name: str = "") -> None:
        """A file case loaded into the scene: its row goes on with the volume node (the file is kept, so the
        row falls back to it when the node leaves the scene)."""
        row = self.rows[index]
        row.volume_node_id, row.volume_name = volume_node_id, volume_name

    def add_files(self, image_path: str, label_path: Optional[str] = None, case_id: Optional[str] = None,
                  labeled: bool = True) -> Tuple[CaseRow, bool]:
        """Adds an image file (with its label file); the same image file is not added twice."""
        image_path = os.path.abspath(image_path)
        index = self.find_file(image_path)
        if index is not None:
            return self.rows[index], False
        stem, _ = split_image_name(os.path.basename(image_path))
        row = CaseRow(id=self.unique_id(case_id or stem), image_path=image_path,
                      label_path=os.path.abspath(label_path) if label_path else None,
                      labeled=bool(label_path) and labeled)
        self.rows.append(row)
        return row, True

    def add_folder(self, folder: str) -> int:
        """Adds the cases found in a folder (see :func:`scan_folder`); returns how many were new."""
        return sum(self.add_files(image, label, case_id)[1] for case_id, image, label in scan_folder(folder))

    def add_manifest(self, manifest: Manifest) -> int:
        """Adds a manifest's cases (as files); returns how many were new."""
        return sum(self.add_files(c.image, c.label, c.id, labeled=c.labeled)[1] for c in manifest.cases)

    def remove(self, indices: Iterable[int]) -> None:
        for index in sorted(set(indices), reverse=True):
            if 0 <= index < len(self.rows):
                del self.rows[index]

    def clear(self) -> None:
        self.rows.clear()

    # -- editing -----------------------------------------------------------------------------------------

    def set_segmentation(self, index: int, segmentation_node_id: Optional[str], segmentation_name: str = "") -> None:
        """Sets a case's segmentation node; a case that gets one becomes labeled, one that loses it unlabeled."""
        row = self.rows[index]
        had = row.has_label
        row.segmentation_node_id = segmentation_node_id or None
        row.segmentation_name = segmentation_name if segmentation_node_id else ""
        if not row.has_label:
            row.labeled = False
        elif not had:
            row.labeled = True

    def set_labeled(self, index: int, labeled: bool) -> None:
        row = self.rows[index]
        if labeled and not row.has_label:
            raise ValueError(f"Case '{row.id}' has no segmentation: choose its segmentation first.")
        row.labeled = bool(labeled)

    def forget_missing_nodes(self, existing_node_ids: Iterable[str]) -> List[str]:
        """Drops the rows whose volume node left the scene (a file case goes back to its file) and the
        segmentations that did; returns the ids of the dropped cases."""
        existing = set(existing_node_ids)
        for row in self.rows:
            if row.image_path and row.volume_node_id and row.volume_node_id not in existing:
                row.volume_node_id, row.volume_name = None, ""
                row.segmentation_node_id, row.segmentation_name = None, ""
                row.labeled = row.labeled and bool(row.label_path)
        dropped = [r.id for r in self.rows if r.volume_node_id and r.volume_node_id not in existing]
        self.rows = [r for r in self.rows if not (r.volume_node_id and r.volume_node_id not in existing)]
        for index, row in enumerate(self.rows):
            if row.segmentation_node_id and row.segmentation_node_id not in existing:
                self.set_segmentation(index, None)
        return dropped

    def set_status(self, status: str, indices: Optional[Iterable[int]] = None) -> None:
        for index in (range(len(self.rows)) if indices is None else indices):
            self.rows[index].status = status

    def set_scores(self, ranking: Sequence[dict]) -> Optional[int]:
        """Takes the scores of ``semisupseg suggest``'s ranking (``{"id", "score"}`` items, best first; case ids
        as in the manifest the module wrote) and forgets older ones; returns the row of the best-scored case
        that is still unlabeled, or None."""
        for row in self.rows:
            row.score = None
        by_id = {row.id: index for index, row in enumerate(self.rows)}
        best = None
        for item in ranking:
            index = by_id.get(str(item.get("id")))
            if index is None or self.rows[index].is_labeled:
                continue
            self.rows[index].score = float(item["score"])
            if best is None or self.rows[index].score > self.rows[best].score:
                best = index
        return best

    # -- questions ---------------------------------------------------------------------------------------

    @property
    def labeled_rows(self) -> List[CaseRow]:
        return [r for r in self.rows if r.is_labeled]

    @property
    def unlabeled_rows(self) -> List[CaseRow]:
        return [r for r in self.rows if not r.is_labeled]

    def readiness(self) -> Tuple[bool, str]:
        """Whether a training can start, and why not (or a remark) in one sentence."""
        if not self.rows:
            return False, "Add cases first: volumes of the scene, a folder or a manifest."
        if not self.labeled_rows:
            return False, ("No case is labeled yet: give at least one case a segmentation and tick "
                           "its 'Labeled' box.")
        if not self.unlabeled_rows:
            return True, "All cases are labeled: add unlabeled cases to make use of semi-supervised learning."
        return True, ""

    def summary(self) -> str:
        n, k = len(self.rows), len(self.labeled_rows)
        return f"{n} case{'s' if n != 1 else ''}: {k} labeled, {n - k} unlabeled"

    # -- saving ------------------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps([asdict(r) for r in self.rows])

    #: The fields that hold node IDs: saved as node references of the parameter node, not in the JSON text,
    #: because Slicer remaps references (not IDs inside a string) when a scene is imported into another.
    NODE_FIELDS = ("volume_node_id", "segmentation_node_id")

    def to_parts(self) -> Tuple[str, List[Optional[str]], List[Optional[str]]]:
        """(the rows as JSON without node IDs, the volume node ID of each row, the segmentation node ID of
        each row); file cases have None in both lists."""
        data = [{k: v for k, v in asdict(r).items() if k not in self.NODE_FIELDS} for r in self.rows]
        return (json.dumps(data), [r.volume_node_id for r in self.rows],
                [r.segmentation_node_id for r in self.rows])

    @classmethod
    def from_parts(cls, text: str, volume_node_ids: Sequence[Optional[str]],
                   segmentation_node_ids: Sequence[Optional[str]]) -> "CaseTable":
        """The table of :meth:`to_parts`, its node IDs from the node references (as the scene has them now).
        A text of an older scene, with the IDs inside it, is read as it is when the lists do not match."""
        table = cls.from_json(text)
        if len(volume_node_ids) == len(table.rows) == len(segmentation_node_ids):
            for row, volume, segmentation in zip(table.rows, volume_node_ids, segmentation_node_ids):
                row.volume_node_id = volume or None
                # a segmentation node labels a case only with its volume node (a file case: its label file)
                row.segmentation_node_id = (segmentation or None) if volume else None
                if not row.has_label:
                    row.labeled = False
            # a row whose volume node left the scene (its reference is gone) is no case any more
            table.rows = [r for r in table.rows if r.volume_node_id or r.image_path]
        return table

    @classmethod
    def from_json(cls, text: str) -> "CaseTable":
        """The table saved by :meth:`to_json`; an empty or unreadable text gives an empty table."""
        try:
            data = json.loads(text) if text else []
        except ValueError:
            return cls()
        names = {f.name for f in fields(CaseRow)}
        rows = []
        for item in data if isinstance(data, list) else []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                rows.append(CaseRow(**{k: v for k, v in item.items() if k in names}))
        return cls(rows)


def build_manifest(entries: Sequence[Tuple[str, str, Optional[str], bool]], classes: Sequence[ClassInfo],
                   modality: str = "MRI", path: Optional[str] = None) -> Manifest:
    """A manifest of ``(case id, image path, label path or None, labeled)`` entries; written to ``path``
    (paths relative to its folder) when given."""
    if not entries:
        raise ValueError("A training needs at least one case.")
    cases = [CaseEntry(id=case_id, image=os.path.abspath(image),
                       label=os.path.abspath(label) if label else None, labeled=bool(labeled))
             for case_id, image, label, labeled in entries]
    manifest = Manifest(classes=list(classes), cases=cases, modality=modality)
    if path:
        write_manifest(manifest, path)
    return manifest
