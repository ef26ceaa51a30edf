"""serve.yaml validation and routing, the model cache's LRU eviction by memory budget, and an X-ray stored over
DICOM answered with a TID 1500 SR of its findings, probabilities and operating points."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from medsight.errors import ConfigError
from medsight.serve.config import load_config, route
from medsight.serve.models import Models
from tests.serve.conftest import serve_config, wait_for
from tests.serve.test_dicom_node import store
from tests.toolkit.test_dicom_out import MARKERS, NEEDLES, random_checkpoint

BRAIN = {"name": "brain", "checkpoint": "seg.pt", "match": {"modality": "MR"},
         "roles": {"flair": {"series_description": "flair"}, "t1c": {"series_description": r"t1.*(post|gd)"}}}
CHEST = {"name": "nodules", "checkpoint": "det.pt",
         "match": {"modality": "CT", "body_part": "CHEST", "image_type": "ORIGINAL", "min_slices": 20}}


def series(**values) -> dict:
    return {"modality": "", "body_part": "", "description": "", "image_type": [], "slices": 1} | values


def test_rules_route_by_modality_body_part_image_type_slices_and_roles_by_description(tmp_path):
    config = load_config({"rules": [BRAIN, CHEST]}, base=tmp_path)
    assert config.rules[0].checkpoint == str(tmp_path / "seg.pt"), "paths are taken from the config's folder"
    found = route(config.rules, series(modality="MR", description="Ax T1 POST gd", slices=30))
    assert (found[0].name, found[1]) == ("brain", "t1c")
    assert route(config.rules, series(modality="MR", description="DWI b1000")) is None, "no role: no rule"
    ct = series(modality="CT", body_part="chest", image_type=["ORIGINAL", "PRIMARY"], slices=120)
    assert route(config.rules, ct)[0].name == "nodules" and route(config.rules, ct)[1] is None
    assert route(config.rules, ct | {"slices": 12}) is None
    assert route(config.rules, ct | {"image_type": ["DERIVED", "SECONDARY"]}) is None


@pytest.mark.parametrize("values, message", [
    ({"rules": [{"name": "x", "checkpoint": "a.pt", "macth": {}}]}, "unknown key macth (did you mean match?)"),
    ({"rules": [{"name": "x", "checkpoint": "a.pt", "match": {"series_description": "(flair"}}]},
     "rules[0] (x): series_description '(flair' is not a regular expression"),
    ({"rules": [{"name": "x"}]}, "rules[0] (x): a rule needs a name and a checkpoint"),
    ({"results": {"send_to": ["pacs"]}}, "results.send_to names 'pacs', which is not among destinations (none)"),
    ({"dicom": {"complete_on": "never"}}, "dicom.complete_on must be timeout, association or both, not 'never'"),
    ({"dicom": {"port": "eleven"}}, "dicom.port"),
])
def test_a_bad_serve_config_is_one_line_naming_the_key(tmp_path, values, message):
    with pytest.raises(ConfigError) as caught:
        load_config(values, base=tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_models_are_loaded_once_and_the_least_recently_used_go_over_the_budget():
    made = []

    def load(path):
        made.append(path)
        return SimpleNamespace(path=path, torch_model=torch.nn.Linear(256, 256))  # 257 KiB of float32

    models = Models(budget_bytes=600 * 1024, load=load)
    a = models.get("a")
    assert models.get("a") is a and made == ["a"]
    models.get("b")
    models.get("a")  # a is now the most recently used
    models.get("c")  # three do not fit: b goes
    assert models.loaded() == ["a", "c"] and made == ["a", "b", "c"]


def test_an_xray_over_dicom_is_answered_with_a_findings_sr_and_grad_cam_captures(tmp_path, start_server):
    from medsight.datasets.synth.chestxray14 import Anatomy, render
    from medsight.datasets.synth.dicom import write_xray

    labels = ["Mass", "Nodule", "Effusion"]
    checkpoint = random_checkpoint("classification", tmp_path / "cxr.pt", "model.name=simple_cnn",
                                   "data.image_size=48", state={"labels": labels, "multi_label": True,
                                                                "negative_label": "No Finding",
                                                                "thresholds": [0.2, 0.5, 0.7]})
    rng = np.random.default_rng(0)
    picture = render({"Mass"}, Anatomy.draw(rng), 64, rng).astype(np.uint16) * 16
    path = write_xray(tmp_path / "xr" / "IM0.dcm", picture, identifiers=MARKERS)
    ds = pydicom.dcmread(path)
    server = start_server(serve_config(tmp_path, [{"name": "cxr", "checkpoint": str(checkpoint),
                                                   "match": {"modality": "DX"}, "options": {"cam": True}}]))
    assert store(server.dicom_port, [ds]) == [(0, "")]
    job = wait_for(lambda: next((j for j in server.queue.jobs() if j.state in ("done", "dead")), None), 60, "the job")
    assert job.state == "done", job.reason
    objects = {uid: pydicom.dcmread(p) for uid, p in server.queue.results(job.id)}
    (uid, sr_path), = [(u, p) for u, p in server.queue.results(job.id) if objects[u].Modality == "SR"]
    captures = [o for o in objects.values() if o.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage]
    assert len(captures) == len(objects) - 1 >= 1 and len({c.SeriesInstanceUID for c in captures}) == 1
    for capture in captures:  # the heatmap over the film, in its study, referencing it, de-identified
        assert capture.StudyInstanceUID == ds.StudyInstanceUID and capture.PhotometricInterpretation == "RGB"
        assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert capture.pixel_array.shape == (48, 48, 3) and capture.pixel_array.std() > 0
        assert "Grad-CAM" in capture.SeriesDescription and not any(n in capture.PatientName.encode() for n in NEEDLES)
    sr = hd.sr.srread(sr_path)
    groups = sr.content.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == labels
    result = __import__("medsight").load(checkpoint, engine="torch").predict(path)
    for group, label, threshold in zip(groups, labels, [0.2, 0.5, 0.7]):
        probability, operating_point = (m.value for m in group.get_measurements())
        assert probability == pytest.approx(result.probability(label), abs=1e-5)
        assert operating_point == pytest.approx(threshold)
        present = group.get_qualitative_evaluations()[0].value.meaning == "Present"
        assert present == (label in result.positive)
    assert str(sr.SOPInstanceUID) == uid and not any(n in Path(sr_path).read_bytes() for n in NEEDLES)
