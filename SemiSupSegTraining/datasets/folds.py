"""Folds: which cases each fold trains and tests on, and which of its training cases are labeled
(``folds.json``). Contiguous blocks of the sorted case list in the reference code's pattern, or the
reference's own list files."""

import os
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

FOLDS_FORMAT = "semisupseg-folds"


def safe_id(name: str) -> str:
    """A case id usable as a file name: runs of other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"


def contiguous_folds(case_ids: Sequence[str], folds: int) -> List[Tuple[List[str], List[str]]]:
    """(train, test) per fold over the sorted ids, in the reference code's pattern: fold 0 holds out the last
    ``n // folds`` cases; folds 1, 2, ... hold out the contiguous blocks before them, from the start (the
    smaller blocks first). The training cases keep the sorted order. For 82 pancreas cases in 4 folds this
    gives the reference's test blocks of 20, 20, 21 and 21 cases."""
    ids = sorted(case_ids)
    n = len(ids)
    last = n // folds
    rest = n - last
    k = folds - 1
    sizes = [rest // k + (1 if i >= k - rest % k else 0) for i in range(k)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    tests = [ids[rest:]] + [ids[starts[i]:starts[i + 1]] for i in range(k)]
    result = []
    for test in tests:
        held_out = set(test)
        result.append(([c for c in ids if c not in held_out], test))
    return result


def read_fold_lists(folder: str, case_ids: Sequence[str]) -> List[Tuple[List[str], List[str]]]:
    """(train, test) per fold from ``train{k}.list`` and ``test{k}.list`` files (k = 0, 1, ...; one case id
    per line, a file extension such as ``.h5`` is ignored), as the reference code ships them. The training
    cases keep the file's order, so the labeled subsets are the first n lines of each train list."""
    known = set(case_ids)
    result = []
    k = 0
    while os.path.isfile(os.path.join(folder, f"test{k}.list")):
        pair = []
        for split in ("train", "test"):
            path = os.path.join(folder, f"{split}{k}.list")
            if not os.path.isfile(path):
                raise InputError(f"The fold-list folder {folder} has test{k}.list but no {split}{k}.list; give "
                                 f"both lists of every fold.")
            with open(path, encoding="utf-8") as f:
                ids = [safe_id(re.sub(r"\.(h5|nii\.gz|nii|nrrd)$", "", line.strip()))
                       for line in f if line.strip()]
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise InputError(f"The fold list {path} names case '{unknown[0]}', which is not among the "
                                 f"{len(known)} cases found; check that the list belongs to this dataset.")
            pair.append(ids)
        overlap = sorted(set(pair[0]) & set(pair[1]))
        if overlap:
            raise InputError(f"The fold lists train{k}.list and test{k}.list in {folder} share case "
                             f"'{overlap[0]}'; a case cannot be trained and tested in one fold.")
        result.append((pair[0], pair[1]))
        k += 1
    if not result:
        raise InputError(f"The fold-list folder {folder} holds no test0.list; give the folder with train0.list, "
                         f"test0.list, train1.list, ... (e.g. the reference code's dataset/LA/Flods).")
    return result


def make_folds(case_ids: Sequence[str], folds: int, labeled_counts: Sequence[int], dataset: str,
               fold_lists: Optional[str] = None) -> dict:
    """The content of ``folds.json``: per fold the train and test ids and, per labeled count, the first n
    training cases (the labeled subset). ``fold_lists``: a folder of reference-style list files to use
    instead of contiguous blocks (``folds`` is then the number of list pairs)."""
    ids = sorted(case_ids)
    if fold_lists is None:
        if folds < 2:
            raise InputError(f"--folds is {folds}; give at least 2 folds.")
        if len(ids) < folds:
            raise InputError(f"Only {len(ids)} case(s) were found but {folds} folds need at least {folds}; "
                             f"add cases or give fewer --folds.")
        splits = contiguous_folds(ids, folds)
        rule = ("contiguous blocks of the sorted case list: fold 0 tests the last n // folds cases, folds 1.. "
                "the blocks before them from the start; labeled = the first n training cases")
    else:
        splits = read_fold_lists(fold_lists, ids)
        rule = f"the lists in {os.path.abspath(fold_lists)}; labeled = the first n lines of each train list"
    counts = sorted(set(int(n) for n in labeled_counts))
    if not counts or counts[0] < 1:
        raise InputError(f"--labeled {' '.join(str(n) for n in labeled_counts)} must list numbers of at "
                         f"least 1 labeled case per fold.")
    entries = []
    for k, (train, test) in enumerate(splits):
        if counts[-1] > len(train):
            raise InputError(f"--labeled asks for {counts[-1]} labeled cases but fold {k} has only "
                             f"{len(train)} training cases ({len(ids)} cases in {len(splits)} folds); give a "
                             f"smaller --labeled.")
        entries.append({"fold": k, "train": train, "test": test,
                        "labeled": {str(n): train[:n] for n in counts}})
    return {"format": FOLDS_FORMAT, "version": 1, "dataset": dataset, "cases": ids, "rule": rule,
            "folds": entries}
