"""Standard (SNOMED CT) codes for the segments the module makes, as Slicer's terminology entry strings.

A segment named "left atrium" or "Pancreas" gets the code of that structure, the way SlicerMONAIAuto3DSeg
codes its results, so that DICOM SEG export and the Segment Editor's terminology show the structure, not
only a name. The entry string is Slicer's serialised terminology entry: seven ``~``-separated fields, each
code ``scheme^value^meaning``: context, category, type, type modifier, anatomic context, region, region
modifier. Names without a known code get none (Slicer keeps its default). Plain Python.
"""

import re
from typing import Optional

CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMICAL_STRUCTURE = "SCT^123037004^Anatomical Structure"
LEFT, RIGHT = "SCT^7771000^Left", "SCT^24028007^Right"

#: Structure name (lower case, single spaces) -> (SNOMED CT type code, its meaning, modifier code or "").
STRUCTURES = {
    "left atrium": ("82471001", "Left atrium", ""),
    "pancreas": ("15776009", "Pancreas", ""),
    "liver": ("10200004", "Liver", ""),
    "spleen": ("78961009", "Spleen", ""),
    "heart": ("80891009", "Heart", ""),
    "aorta": ("15825003", "Aorta", ""),
    "prostate": ("41216001", "Prostate", ""),
    "brain": ("12738006", "Brain", ""),
    "stomach": ("69695003", "Stomach", ""),
    "gallbladder": ("28231008", "Gallbladder", ""),
    "esophagus": ("32849002", "Esophagus", ""),
    "urinary bladder": ("89837001", "Urinary bladder", ""),
    "kidney": ("64033007", "Kidney", ""),
    "left kidney": ("64033007", "Kidney", LEFT),
    "right kidney": ("64033007", "Kidney", RIGHT),
    "lung": ("39607008", "Lung", ""),
    "left lung": ("39607008", "Lung", LEFT),
    "right lung": ("39607008", "Lung", RIGHT),
}
ALIASES = {"la": "left atrium", "bladder": "urinary bladder", "oesophagus": "esophagus", "gall bladder": "gallbladder"}


def _key(name: str) -> str:
    key = re.sub(r"[\s_-]+", " ", name.strip().lower())
    return ALIASES.get(key, key)


def terminology_entry(name: str) -> Optional[str]:
    """Slicer's terminology entry string for a structure name, or None when the name has no known code."""
    found = STRUCTURES.get(_key(name))
    if found is None:
        return None
    code, meaning, modifier = found
    return "~".join([CONTEXT, ANATOMICAL_STRUCTURE, f"SCT^{code}^{meaning}", modifier or "^^", ANATOMIC_CONTEXT,
                     "^^", "^^"])
