"""The SemiSupSeg module: its registration and its self-test; the rest lives in SemiSupSegLib/.

``SemiSupSegLib.widget`` (the panel), ``.logic`` (the work, scriptable), ``.parameter_node`` (the settings
saved with the scene), ``.interfaces`` (what the widget needs from the logic) and the plain-Python pieces.
The names below stay importable from here, as scripts use them::

    import SemiSupSeg
    logic = SemiSupSeg.SemiSupSegLogic()
"""

import os
import time

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

from SemiSupSegLib import job as jobs
from SemiSupSegLib import nodes
from SemiSupSegLib.logic import SemiSupSegLogic
from SemiSupSegLib.parameter_node import SemiSupSegParameterNode, readCases, writeCases
from SemiSupSegLib.recorded_engine import ReplayRunner
from SemiSupSegLib.widget import SemiSupSegWidget

__all__ = ["SemiSupSeg", "SemiSupSegLogic", "SemiSupSegParameterNode", "SemiSupSegTest", "SemiSupSegWidget"]


class SemiSupSeg(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Semi-Supervised Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SemiSupSeg developers"]
        self.parent.helpText = _("""
Train a 3D segmentation model on your own cases, a few labeled and many unlabeled (two networks teach each
other with pseudo labels, consistency and prototype contrastive learning), segment new volumes, correct the
result in the Segment Editor and retrain.
See the <a href="https://github.com/semisupseg/SlicerSemiSupSeg">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
The method follows "Dual-network semi-supervised segmentation with pseudo labels and prototype contrastive
learning". The module follows the shape of SlicerMONAIAuto3DSeg and SlicerNNUnet.
""")


class SemiSupSegTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer on synthetic volumes: train (preset "tiny"), suggest the next case, segment with a region
    of interest and an uncertainty volume, use the result as a label (then it is refused as an output), retrain,
    cancel a long training (by its stop file) and resume it.

    By default (ctest, build machines) the engine is replaced by a process that replays recorded engine output
    (``SemiSupSegLib.recorded_engine``): no installs, no network, seconds. Set the environment variable
    ``SEMISUPSEG_FULL_SELFTEST=1`` to run the real engine (installs torch and monai when missing; minutes)."""

    FULL = os.environ.get("SEMISUPSEG_FULL_SELFTEST", "") not in ("", "0")

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SemiSupSeg1()

    @staticmethod
    def _syntheticCase(name, center, withSegmentation):
        import numpy as np

        shape = (24, 40, 40)  # k, j, i
        k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
        inside = ((i - center[0]) ** 2 + (j - center[1]) ** 2 + ((k - center[2]) * 2.0) ** 2) < 9.0 ** 2
        noise = np.random.default_rng(len(name)).normal(0, 20, shape)
        ijkToRas = np.diag([-1.0, -1.0, 2.0, 1.0])
        ijkToRas[:3, 3] = [20.0, 20.0, -24.0]
        volumeNode = slicer.util.addVolumeFromArray((inside * 200.0 + noise).astype(np.int16), ijkToRas, name)
        segmentationNode = None
        if withSegmentation:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name + " segmentation")
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            segmentId = segmentationNode.GetSegmentation().AddEmptySegment("sphere", "sphere")
            slicer.util.updateSegmentBinaryLabelmapFromArray(inside.astype(np.uint8), segmentationNode, segmentId,
                                                             volumeNode)
        return volumeNode, segmentationNode

    def test_SemiSupSeg1(self):
        self.delayDisplay("Starting the test" + (" (the real engine)" if self.FULL else " (recorded engine output)"))
        logic = SemiSupSegLogic()
        logic.settings = qt.QSettings(os.path.join(slicer.util.tempDirectory("SemiSupSegTest-settings-"),  # not the user's
                                                   "settings.ini"), qt.QSettings.IniFormat)
        logic.askConfirmation = False
        if not self.FULL:
            logic.runner = ReplayRunner(base_env=slicer.util.startupEnvironment(), delay_s=0.02)
            logic._requirementsReady = True  # the replay needs no torch and no monai
        wait = 300 if self.FULL else 30
        volume1, segmentation1 = self._syntheticCase("case1", (18, 20, 12), True)
        volume2 = self._syntheticCase("case2", (22, 19, 11), False)[0]
        modelFolder = slicer.util.tempDirectory("SemiSupSegTest-")

        model = logic.train([(volume1, segmentation1), volume2], modelFolder, preset="tiny", iterations=2, device="cpu")
        self.assertEqual([c["name"] for c in logic.readModelMetadata(model)["classes"]], ["background", "sphere"])
        ranking = logic.suggest([(volume1, segmentation1), volume2], model, device="cpu")
        self.assertEqual([item["id"] for item in ranking], ["case2"])  # the one unlabeled case
        self.delayDisplay("Trained and suggested")

        bounds = [0.0] * 6
        volume2.GetRASBounds(bounds)
        roiNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "organ")
        roiNode.SetCenter([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
        roiNode.SetSize([(bounds[1] - bounds[0]) * 0.8, (bounds[3] - bounds[2]) * 0.8, (bounds[5] - bounds[4]) * 0.8])
        segmentation = logic.segment(volume2, model, roiNode=roiNode, device="cpu", uncertainty=True)
        self.assertEqual([name for _, name in nodes.segments(segmentation)], ["sphere"])
        reference = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
        self.assertEqual(reference.GetID(), volume2.GetID())
        self.assertEqual(logic.lastUncertaintyVolume.GetImageData().GetDimensions(),
                         volume2.GetImageData().GetDimensions())
        self.delayDisplay("Segmented")

        table = logic.caseTable([(volume1, segmentation1), (volume2, segmentation)])
        writeCases(logic.getParameterNode(), table)  # "Use as label": the scene's cases, as node references
        self.assertEqual(readCases(logic.getParameterNode()).to_parts()[2], [segmentation1.GetID(), segmentation.GetID()])
        with self.assertRaises(ValueError):  # a label is never an output
            logic.segment(volume2, model, outputSegmentation=segmentation, device="cpu")
        retrained = logic.train(table, modelFolder, preset="tiny", iterations=2, device="cpu", initModel=model)
        self.assertNotEqual(os.path.dirname(retrained), os.path.dirname(model))
        self.delayDisplay("Retrained")

        job = logic.train(table, modelFolder, preset="tiny", iterations=100000, device="cpu", waitForCompletion=False)
        deadline = time.monotonic() + wait
        while job.last_progress is None and not job.finished and time.monotonic() < deadline:
            job.poll()
            slicer.app.processEvents()
            time.sleep(0.1)
        self.assertEqual(job.state, jobs.RUNNING)
        job.cancel()
        self.assertEqual(job.wait(timeout=120, on_tick=slicer.app.processEvents), jobs.CANCELLED)
        self.assertFalse(job.terminated)  # it stopped by its stop file, with a checkpoint, on every platform
        runFolder, workFolder = logic.resumableTraining()
        self.assertEqual(runFolder, job.context["runFolder"])
        self.assertTrue(os.path.isdir(workFolder))  # kept for the resume
        if not self.FULL:  # (the real one would resume its 100000 iterations)
            self.assertTrue(os.path.isfile(logic.resume(runFolder, workFolder, device="cpu")))
            self.assertFalse(os.path.isdir(workFolder))  # removed once the resumed training is over
        self.delayDisplay("Test passed")
