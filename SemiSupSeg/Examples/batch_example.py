"""Train on a folder of cases and segment a new scan, from a script, without the GUI.

    Slicer --no-main-window --python-script SemiSupSeg/Examples/batch_example.py \
        CASES_FOLDER MODEL_FOLDER IMAGE OUTPUT.seg.nrrd "STRUCTURE[, STRUCTURE...]" [PRESET [ITERATIONS]]

for example::

    Slicer --no-main-window --python-script batch_example.py \
        ~/data/atria ~/models/atria ~/data/new/patient42.nrrd ~/data/new/patient42.seg.nrrd "left atrium" cpu-fast

CASES_FOLDER holds image files, some with label files found by name (``case01.nii.gz`` with
``case01_label.nii.gz`` or ``case01.seg.nrrd``, or ``images/`` with ``labels/``); label value 1 is the first
structure, 2 the second... Cases without a label are the unlabeled cases. The SemiSupSeg module must be
installed (or its folder added to Slicer's module paths).
"""

import os
import sys

import slicer
from SemiSupSeg import SemiSupSegLogic
from SemiSupSegLib.cases import CaseTable


def main(argv):
    if len(argv) < 5:
        print(__doc__)
        return 2
    casesFolder, modelFolder, image, output, structures = argv[:5]
    preset = argv[5] if len(argv) > 5 else "cpu-fast"
    iterations = int(argv[6]) if len(argv) > 6 else None

    logic = SemiSupSegLogic()
    logic.askConfirmation = False  # a script has no one to ask: install monai, scipy and psutil if missing

    cases = CaseTable()
    cases.add_folder(os.path.expanduser(casesFolder))
    print(cases.summary())

    # Blocks until the training is done (progress goes to the log); returns the model file.
    model = logic.train(cases, os.path.expanduser(modelFolder), preset=preset, iterations=iterations,
                        device="auto", structureNames=structures)
    print(f"Model file: {model}")

    volume = slicer.util.loadVolume(os.path.expanduser(image))
    segmentation = logic.segment(volume, model, device="auto")
    segmentNames = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                    for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    print(f"Segments: {', '.join(segmentNames)}")
    if not slicer.util.saveNode(segmentation, os.path.expanduser(output)):
        return 1
    print(f"Segmentation written: {output}")
    return 0


# Slicer runs the script in its Python console's namespace; sys.exit ends Slicer with the exit code.
try:
    exitCode = main(sys.argv[1:])
except Exception as e:
    print(f"Error: {e}")
    exitCode = 1
sys.exit(exitCode)
