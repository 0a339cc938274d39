"""The module's annotator loop with the scene as plain data, for the randomized test of user actions.

Each action does what the widget (``SemiSupSegLib.widget``) and the logic (``SemiSupSegLib.logic``) do, by
calling the same plain-Python decisions (``review``, ``form``, ``cases``, ``commands``); only the Slicer
calls are replaced by changes of plain data: a node is a ``review.NodeInfo``, a segmentation's content is a
token that each write changes (its stamp follows it, as ``nodes.contentStamp`` follows a stroke), and the
parameter node holds the case table as ``CaseTable.to_parts`` with node references that vanish with
their nodes (as ``parameter_node.readCases`` sees them).
"""

import copy
import random
from typing import Dict, List, Optional

from SemiSupSegLib import commands, form, review
from SemiSupSegLib.cases import CaseTable


class Scene:
    """Nodes (``review.NodeInfo``), segmentation contents and the module's parameter node, as plain data."""

    def __init__(self):
        self.nodes: Dict[str, review.NodeInfo] = {}
        self.content: Dict[str, str] = {}
        self.counter = 0
        self.parameters = {"cases": CaseTable().to_parts(), "input": None, "output": None, "roi": None,
                           "preset": commands.DEFAULT_PRESET, "method": commands.PRESET_METHOD}

    def new_id(self, class_name: str) -> str:
        self.counter += 1
        return f"{class_name}{self.counter}"

    def add(self, class_name: str, name: str, **fields) -> str:
        node_id = self.new_id(class_name)
        self.nodes[node_id] = review.NodeInfo(id=node_id, class_name=class_name, name=name, **fields)
        if class_name == review.SEGMENTATION:
            self.write(node_id)
        return node_id

    def write(self, segmentation_id: str) -> None:
        """Any change of a segmentation's content (a stroke, an import) changes its stamp."""
        self.counter += 1
        self.content[segmentation_id] = f"content{self.counter}"
        self.nodes[segmentation_id].stamp = self.content[segmentation_id]

    def remove(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)
        self.content.pop(node_id, None)
        for key in ("input", "output", "roi"):
            if self.parameters[key] == node_id:
                self.parameters[key] = None

    def info(self, node_id: Optional[str]) -> Optional[review.NodeInfo]:
        return self.nodes.get(node_id) if node_id else None

    def by_class(self, class_name: str) -> List[review.NodeInfo]:
        return [n for n in self.nodes.values() if n.class_name == class_name]

    # the parameter node's case table (readCases / writeCases)
    def read_cases(self) -> CaseTable:
        text, volumes, segmentations = self.parameters["cases"]
        return CaseTable.from_parts(text, [v if v in self.nodes else None for v in volumes],
                                    [s if s in self.nodes else None for s in segmentations])

    def write_cases(self, cases: CaseTable) -> None:
        self.parameters["cases"] = cases.to_parts()


class Job:
    def __init__(self, kind: str, volume: Optional[str] = None, target: Optional[str] = None):
        self.kind, self.volume, self.target = kind, volume, target
        self.active = True


class Loop:
    """The widget and the logic over a :class:`Scene`, with the user's ground truth kept beside them:
    ``user_content`` (what each segmentation the user drew or edited holds), ``confirmed`` (the label the
    user confirmed for each case volume) and ``results`` (the volume each result was computed from)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.scene = Scene()
        self.jobs: List[Job] = []
        self.user_content: Dict[str, str] = {}
        self.confirmed: Dict[str, str] = {}
        self.results: Dict[str, str] = {}
        self.drawn: Dict[str, str] = {}  # the segmentations the user drew from scratch -> their volume
        self.roi_volume: Dict[str, Optional[str]] = {}  # each ROI -> the volume it was first segmented with
        self.has_model = False
        self.resumable = False
        self.saved = None
        self.input_seen = None  # the widget's _inputVolumeId
        self.files = [f"/data/case{i}.nii.gz" for i in range(4)]

    # -- the widget's pieces -------------------------------------------------------------------------------

    @property
    def cases(self) -> CaseTable:
        return self.scene.read_cases()

    def running(self) -> Optional[str]:
        return next((job.kind for job in self.jobs if job.active), None)

    def enabled(self) -> Dict[str, bool]:
        p = self.scene.parameters
        cases = self.cases
        return form.enabled_actions(form.FormState(
            running=self.running(), ready_to_train=cases.readiness()[0], has_model=self.has_model,
            resumable=self.resumable, has_input=bool(p["input"]), has_output=bool(p["output"]),
            has_unlabeled=bool(cases.unlabeled_rows)))

    def follow_input(self) -> None:
        p = self.scene.parameters
        if p["input"] == self.input_seen:
            return
        self.input_seen = p["input"]
        if p["output"] and not review.output_after_input_change(self.cases, p["input"], self.scene.info(p["output"])):
            p["output"] = None
        if p["roi"] and not review.roi_after_input_change(self.scene.info(p["roi"]), p["input"]):
            p["roi"] = None

    def confirm(self, volume_id: str, segmentation_id: str) -> None:
        """The user made this segmentation the volume's label: it is their work from now on."""
        self.confirmed[volume_id] = segmentation_id
        self.user_content[segmentation_id] = self.scene.content[segmentation_id]
        self.scene.nodes[segmentation_id].attributes.update(review.confirmed_attributes(self.scene.nodes[segmentation_id]))

    # -- user actions ----------------------------------------------------------------------------------------

    def load_volume(self):
        file = self.rng.choice(self.files + [None])
        kind = self.rng.choice([review.SCALAR_VOLUME] * 4 + ["vtkMRMLVectorVolumeNode", "vtkMRMLLabelMapVolumeNode"])
        self.scene.add(kind, f"volume{self.scene.counter}", file=file)

    def draw(self):
        volumes = self.scene.by_class(review.SCALAR_VOLUME)
        if volumes:
            volume = self.rng.choice(volumes)
            seg = self.scene.add(review.SEGMENTATION, "drawn", reference_volume_id=volume.id)
            self.user_content[seg] = self.scene.content[seg]
            self.drawn[seg] = volume.id

    def edit(self):
        """A Segment Editor stroke on any segmentation: it is the user's work from now on."""
        segmentations = self.scene.by_class(review.SEGMENTATION)
        if segmentations:
            seg = self.rng.choice(segmentations).id
            self.scene.write(seg)
            self.user_content[seg] = self.scene.content[seg]

    def add_volume(self):
        volumes = list(self.scene.nodes.values())
        if volumes:
            self._add([self.rng.choice(volumes)])

    def add_all(self):
        self._add([n for n in self.scene.nodes.values() if "Volume" in n.class_name])

    def _add(self, volumes):
        cases = self.cases
        before = {r.volume_node_id for r in cases}
        review.add_volumes(cases, volumes, self.scene.by_class(review.SEGMENTATION))
        for row in cases:
            # a volume added with the segmentation the user drew on it: their label (nothing else may be taken)
            if row.volume_node_id not in before and self.drawn.get(row.segmentation_node_id) == row.volume_node_id:
                self.confirm(row.volume_node_id, row.segmentation_node_id)
        self.scene.write_cases(cases)

    def add_folder(self):
        cases = self.cases
        for file in self.files:
            cases.add_files(file)
        self.scene.write_cases(cases)

    def tick(self):
        cases = self.cases
        if len(cases):
            index = self.rng.randrange(len(cases))
            cases.set_labeled(index, not cases[index].labeled and cases[index].has_label)
            if cases[index].is_labeled and cases[index].volume_node_id:
                self.confirm(cases[index].volume_node_id, cases[index].segmentation_node_id)
            self.scene.write_cases(cases)

    def choose_in_table(self):
        """The user picks a case's segmentation in the table: their confirmation of it as that case's label."""
        cases = self.cases
        rows = [i for i, r in enumerate(cases) if r.volume_node_id]
        segmentations = [s for s in self.scene.by_class(review.SEGMENTATION)
                         if review.case_of_segmentation(cases, s.id) is None]
        if rows and segmentations:
            index = self.rng.choice(rows)
            seg = self.rng.choice(segmentations)
            if review.use_as_label_refusal(cases, self.scene.info(cases[index].volume_node_id), seg) is None:
                cases.set_segmentation(index, seg.id, seg.name)
                self.confirm(cases[index].volume_node_id, seg.id)
                self.scene.write_cases(cases)

    def select_input(self):
        volumes = [n.id for n in self.scene.by_class(review.SCALAR_VOLUME)]
        self.scene.parameters["input"] = self.rng.choice(volumes + [None])

    def place_roi(self):
        self.scene.parameters["roi"] = self.scene.add("vtkMRMLMarkupsROINode", "roi")

    def segment(self):
        if not self.enabled()["segment"]:
            return
        if self.running() == form.SEGMENT:
            return self.cancel()
        p = self.scene.parameters
        output = p["output"] if review.writable_result(self.cases, self.scene.info(p["output"]), p["input"]) else None
        if p["roi"]:
            self.scene.nodes[p["roi"]].source_volume_id = p["input"]
            self.roi_volume.setdefault(p["roi"], p["input"])
        self.jobs.append(Job(form.SEGMENT, p["input"], output))

    def suggest(self):  # the button cancels its own running job, as in the widget
        if self.enabled()["suggest"]:
            if self.running() == form.SUGGEST:
                return self.cancel()
            self.jobs.append(Job(form.SUGGEST))

    def train(self):
        if self.enabled()["train"]:
            if self.running() == form.TRAIN:
                return self.cancel()
            self.check_training_labels()
            self.jobs.append(Job(form.TRAIN))

    def choose_model(self):
        """A model file browsed to (or the last one trained)."""
        self.has_model = True

    def retrain(self):
        if self.enabled()["retrain"]:
            self.check_training_labels()
            self.jobs.append(Job(form.TRAIN))

    def resume(self):
        if self.enabled()["resume"]:
            self.resumable = False
            self.jobs.append(Job(form.TRAIN))

    def cancel(self):
        for job in self.jobs:
            if job.active:
                job.active = False
                if job.kind == form.TRAIN:
                    self.resumable = True  # cancelled with a checkpoint
        self.jobs = []

    def use_as_label(self):
        p = self.scene.parameters
        if not self.enabled()["use_as_label"]:
            return
        cases = self.cases
        try:
            review.use_as_label(cases, self.scene.info(p["input"]), self.scene.info(p["output"]))
        except ValueError:
            return
        self.confirm(p["input"], p["output"])
        self.scene.write_cases(cases)

    def finish_job(self):
        """The engine ends the running job now: a result lands (or fails to import)."""
        job = next((j for j in self.jobs if j.active), None)
        if job is None:
            return
        job.active = False
        self.jobs.remove(job)
        if job.kind == form.TRAIN:
            self.has_model = True
        elif job.kind == form.SUGGEST:
            self.land_suggestion()
        elif job.volume in self.scene.nodes:
            self.land_result(job)

    def land_result(self, job: Job) -> None:
        """``logic.importSegmentation`` and ``widget.onSegmentState(DONE)``."""
        scene, p = self.scene, self.scene.parameters
        result = scene.add(review.SEGMENTATION, "result", reference_volume_id=job.volume)
        if self.rng.random() < 0.1:  # the import failed: the new node goes, nothing else changed
            scene.remove(result)
            return
        target = scene.info(job.target) if job.target in scene.nodes else None
        if target is not None and review.writable_result(self.cases, target, job.volume):
            name = target.name
            scene.remove(target.id)
            scene.nodes[result].name = name
        scene.nodes[result].source_volume_id = job.volume
        scene.nodes[result].attributes = review.provenance(review.ROLE_RESULT, "model.pt", scene.content[result])
        self.results[result] = job.volume
        if self.rng.random() < 0.3:  # an uncertainty volume too
            scene.add(review.SCALAR_VOLUME, "uncertainty", source_volume_id=job.volume,
                      attributes=review.provenance(review.ROLE_UNCERTAINTY))
        if review.result_lands_on_input(job.volume, p["input"]):
            p["output"] = result

    def land_suggestion(self) -> None:
        """``widget.showSuggestion``: a random unlabeled case is the best; a file case is loaded first."""
        cases = self.cases
        unlabeled = [i for i, r in enumerate(cases) if not r.is_labeled]
        if not unlabeled:
            return
        best = self.rng.choice(unlabeled)
        row = cases[best]
        volume = row.volume_node_id
        if not volume and row.image_path:
            volume = self.scene.add(review.SCALAR_VOLUME, row.id, file=row.image_path)
            cases.attach_volume(best, volume, row.id)
        self.scene.write_cases(cases)
        if volume:
            self.scene.parameters["input"] = volume

    def save_scene(self):
        self.saved = copy.deepcopy((self.scene, self.user_content, self.confirmed, self.results, self.drawn,
                                    self.roi_volume))

    def load_scene(self):
        if self.saved:
            self.close_scene()
            scene, self.user_content, self.confirmed, self.results, self.drawn, self.roi_volume = \
                copy.deepcopy(self.saved)
            self.scene = scene
            self.input_seen = None
            assert self.cases.to_json() == self.saved[0].read_cases().to_json()  # (d)

    def close_scene(self):
        self.cancel()  # detached: nothing lands in the next scene
        self.scene = Scene()
        self.user_content, self.confirmed, self.results, self.drawn, self.roi_volume = {}, {}, {}, {}, {}
        self.input_seen = None

    def reload_module(self):
        """Module reload or quit: the running job is cancelled (a training stays resumable); the widget is
        made again and reads everything from the parameter node."""
        self.cancel()
        self.input_seen = self.scene.parameters["input"]

    def remove_node(self):
        """The user deletes a node (never one of their own drawings here: (a) tracks those)."""
        candidates = [n for n in self.scene.nodes if n not in self.user_content]
        if candidates:
            self.scene.remove(self.rng.choice(candidates))

    #: action -> weight: the loop's own steps more often than the rarer scene events
    ACTIONS = {"load_volume": 3, "draw": 2, "edit": 3, "add_volume": 2, "add_all": 2, "add_folder": 1, "tick": 2,
               "choose_in_table": 1, "select_input": 4, "place_roi": 1, "choose_model": 1, "segment": 6,
               "suggest": 3, "train": 2, "retrain": 1, "resume": 1, "cancel": 1, "use_as_label": 5,
               "finish_job": 8, "save_scene": 1, "load_scene": 1, "close_scene": 0.3, "reload_module": 0.5,
               "remove_node": 1}

    def step(self) -> str:
        action = self.rng.choices(list(self.ACTIONS), weights=list(self.ACTIONS.values()))[0]
        getattr(self, action)()
        self.follow_input()  # updateButtons runs after every change of the parameter node
        self.check()
        return action

    # -- the invariants --------------------------------------------------------------------------------------

    def check_training_labels(self) -> None:
        """(b) every labeled case trains on exactly the label its user confirmed, made on its own volume."""
        for row in self.cases.labeled_rows:
            if row.volume_node_id:
                assert row.segmentation_node_id == self.confirmed.get(row.volume_node_id), row
                made_on = self.scene.nodes[row.segmentation_node_id].made_on
                assert made_on in (None, row.volume_node_id), row

    def check(self) -> None:
        scene, cases = self.scene, self.cases
        # (a) what the user drew or edited is neither changed nor removed by the module
        for seg, content in self.user_content.items():
            assert scene.content.get(seg) == content, f"{seg} was changed or removed"
        self.check_training_labels()
        # (c) a result is attached only to the volume it was computed from
        for seg, volume in self.results.items():
            if seg in scene.nodes:
                assert scene.nodes[seg].made_on == volume
        output = scene.info(scene.parameters["output"])
        if output is not None and output.made_by_module:
            assert output.made_on == scene.parameters["input"], "a result shown on another volume"
        # (e) at most one engine job runs
        assert sum(job.active for job in self.jobs) <= 1
        # no case twice, and no case that is not the user's scalar volume (H3, M6)
        volumes = [r.volume_node_id for r in cases if r.volume_node_id]
        files = [r.image_path for r in cases if r.image_path]
        files += [scene.nodes[r.volume_node_id].file for r in cases if r.volume_node_id and not r.image_path
                  and scene.nodes[r.volume_node_id].file]  # a loaded file case is its file's row (M6)
        assert len(volumes) == len(set(volumes)) and len(files) == len(set(files)), "a case twice"
        for volume in volumes:  # the user's plain scalar volumes only (no uncertainty, vector or label map)
            node = scene.nodes[volume]
            assert node.class_name == review.SCALAR_VOLUME and node.name != "uncertainty", node
        # a region of interest belongs to the volume it was placed for (M7)
        roi = scene.parameters["roi"]
        assert roi is None or self.roi_volume.get(roi) in (None, scene.parameters["input"]), "another volume's ROI"
