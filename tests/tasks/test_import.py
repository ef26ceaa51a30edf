"""Published models in: each source's own network with random weights, saved in the source's own file
layout, run through the source's own inference code and through ``medsight import`` + ``medsight predict``
on the same input. Targets: probabilities within 1e-4 (fp32), label maps equal. And the import errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from medsight.cli.main import main
from medsight.core.registry import DATASETS

# -- the MONAI Model Zoo's brats_mri_segmentation bundle ---------------------------------------------------
#: configs/inference.json of the bundle as published (Project-MONAI/model-zoo, models/brats_mri_segmentation)
BRATS_INFERENCE = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "ckpt_dir": "$@bundle_root + '/models'",
    "output_dir": "$@bundle_root + '/eval'",
    "data_list_file_path": "$@bundle_root + '/configs/datalist.json'",
    "dataset_dir": "/workspace/data/medical/brats2018challenge",
    "test_datalist": "$monai.data.load_decathlon_datalist(@data_list_file_path, data_list_key='testing', "
                     "base_dir=@dataset_dir)",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "amp": True,
    "network_def": {"_target_": "SegResNet", "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 16,
                    "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2},
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image", "image_only": False},
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [240, 240, 160], "sw_batch_size": 1, "overlap": 0.5},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "meta_keys": "pred_meta_dict", "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
        {"_target_": "Lambdad", "keys": "pred",
         "func": "$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, torch.where(x[[1]] > 0, 2, 0)))"},
        {"_target_": "SaveImaged", "keys": "pred", "meta_keys": "pred_meta_dict", "output_dir": "@output_dir",
         "output_postfix": "seg", "output_dtype": "uint8", "resample": False, "squeeze_end_dims": True}]},
}
BRATS_METADATA = {
    "version": "0.5.3", "monai_version": "1.4.0",
    "task": "Multimodal Brain Tumor segmentation",
    "description": "A pre-trained model for volumetric (3D) segmentation of brain tumor subregions from multimodal "
                   "MRIs based on BraTS 2018 data",
    "data_source": "https://www.med.upenn.edu/sbia/brats2018/data.html",
    "eval_metrics": {"val_mean_dice": 0.8518, "val_mean_dice_tc": 0.8559, "val_mean_dice_wt": 0.9026,
                     "val_mean_dice_et": 0.7905},
    "intended_use": "This is an example, not to be used for diagnostic purposes",
    "network_data_format": {
        "inputs": {"image": {"num_channels": 4, "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}},
        "outputs": {"pred": {"num_channels": 3,
                             "channel_def": {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}}}},
}
#: roi for a CPU test: the only change, made in both pipelines alike (the import itself reads 240 x 240 x 160)
ROI = [48, 48, 32]


def make_brats_bundle(folder: Path, seed: int = 0) -> Path:
    from monai.networks.nets import SegResNet

    root = folder / "brats_mri_segmentation"
    for sub in ("configs", "models", "docs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "configs" / "inference.json").write_text(json.dumps(BRATS_INFERENCE, indent=4))
    (root / "configs" / "metadata.json").write_text(json.dumps(BRATS_METADATA, indent=4))
    (root / "docs" / "license.txt").write_text("Apache License\nVersion 2.0, January 2004\n")
    torch.manual_seed(seed)
    net = SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=16, in_channels=4, out_channels=3,
                    dropout_prob=0.2)
    with torch.no_grad():  # random weights, but decisive outputs: probabilities away from 0.5
        net.conv_final[-1].conv.weight.mul_(25.0)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def brats_case(folder: Path) -> dict[str, Path]:
    """Four modalities of one synthetic case, stored with an LPS-like affine (as BraTS files are)."""
    from medsight.datasets.synth.brats import make_case

    images, _ = make_case(np.random.default_rng(4), (40, 36, 32))
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [20.0, 30.0, -10.0]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role in ("t1c", "t1", "t2", "flair"):
        paths[role] = folder / f"case_{role}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(images[role], dtype=np.float32), affine), str(paths[role]))
    return paths


def run_bundle(root: Path, case: dict[str, Path], out: Path) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's own inference definition (its transforms, network, inferer and post-processing, from its
    config through MONAI's ConfigParser); the ignite evaluator around them is not installed here."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"], parser["output_dir"] = str(root), str(out)
    parser["device"] = "$torch.device('cpu')"
    parser["inferer"]["roi_size"] = ROI
    preprocessing = parser.get_parsed_content("preprocessing")
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    network.eval()
    inferer = parser.get_parsed_content("inferer")
    postprocessing = parser.get_parsed_content("postprocessing")
    item = preprocessing({"image": [str(case[r]) for r in ("t1c", "t1", "t2", "flair")]})
    with torch.no_grad():
        item["pred"] = inferer(item["image"][None], network)[0]
    probabilities = Compose(postprocessing.transforms[:2])(dict(item))["pred"]
    labels = Compose(postprocessing.transforms[:4])(dict(item))["pred"]
    return np.asarray(probabilities), np.asarray(labels)[0]


def test_an_imported_brats_bundle_predicts_what_the_bundle_itself_predicts(tmp_path, capsys):
    root = make_brats_bundle(tmp_path / "bundle")
    case = brats_case(tmp_path / "case")
    reference_probabilities, reference_labels = run_bundle(root, case, tmp_path / "bundle-out")
    assert np.isin(reference_labels, (1, 2, 4)).any() and (reference_labels == 0).any()

    checkpoint = tmp_path / "brats.pt"
    assert main(["import", str(root), "--out", str(checkpoint)]) == 0
    printed = capsys.readouterr().out
    assert "modalities by role: t1c, t1, t2, flair; output channels ['Tumor core', 'Whole tumor', " \
           "'Enhancing tumor'] reordered to ET, TC, WT" in printed
    assert "published: val_mean_dice 0.8518" in printed and "version: 0.5.3" in printed
    from medsight.io import checkpoint as ckpt
    state = ckpt.load(checkpoint, task="segmentation")
    assert state["config"]["infer"]["roi_size"] == [240, 240, 160] and state["config"]["data"]["orient"] == ""

    out = tmp_path / "medsight-out"
    images = [f"--image={role}={path}" for role, path in case.items()]
    # torch fp32, the bundle's own engine and precision: label maps identical voxel for voxel (OpenVINO fp32
    # agrees within 1e-5 in probability, which can flip a voxel lying on the threshold: test_engines.py)
    assert main(["predict", "--checkpoint", str(checkpoint), *images, "--out", str(out), "--precision", "fp32",
                 "--engine", "torch", "infer.probabilities=true", "infer.overlay=false",
                 f"infer.roi_size=[{','.join(map(str, ROI))}]"]) == 0
    labels = np.asarray(nib.load(str(out / "case_t1c_seg.nii.gz")).dataobj)
    probabilities = np.moveaxis(np.asarray(nib.load(str(out / "case_t1c_prob.nii.gz")).dataobj), -1, 0)
    np.testing.assert_array_equal(labels, reference_labels)
    bundle_in_medsight_order = reference_probabilities[[2, 0, 1]]  # TC, WT, ET -> ET, TC, WT
    assert np.abs(probabilities - bundle_in_medsight_order).max() < 1e-4


def test_an_imported_bundle_fine_tunes_on_two_modalities_chosen_by_role(tmp_path, capsys):
    root = make_brats_bundle(tmp_path / "bundle")
    imported = tmp_path / "brats.pt"
    assert main(["import", str(root), "--out", str(imported)]) == 0
    data = DATASETS.get("brats")().synth(tmp_path / "data", cases=3, seed=1, naming="2015", shape=(32, 32, 24))
    for extra in list(data.glob("*/T1_*")) + list(data.glob("*/T2_*")):
        extra.unlink()
    capsys.readouterr()
    run = tmp_path / "tuned"
    assert main(["train", "segmentation", "--data", str(data), "--init-weights", str(imported), "--out", str(run),
                 "--profile", "cpu-small", "data.modalities=[flair,t1c]", "trainer.max_epochs=1", "data.folds=1",
                 "data.patch_size=[32,32,24]", "infer.roi_size=[32,32,24]", "trainer.freeze_pretrained_epochs=1",
                 "optim.pretrained_lr_factor=0.1", "trainer.progress=never", "trainer.tensorboard=false"]) == 0
    printed = capsys.readouterr().out
    assert "from the starting weights' config: model.name, model.init_filters" in printed
    assert "convInit.conv.weight: input channels by role ['t1c', 't1', 't2', 'flair'] -> ['flair', 't1c']" in printed
    from medsight.io import checkpoint as ckpt
    tuned = ckpt.load(run / "checkpoints" / "last.pt")
    start = ckpt.load(imported)
    assert tuned["config"]["model"]["init_filters"] == 16 and tuned["config"]["data"]["orient"] == ""
    assert tuned["started_from"]["provenance"]["source"] == "MONAI Model Zoo: brats_mri_segmentation"
    # frozen for the one epoch: the pretrained kernels are those of FLAIR and T1c, unchanged
    first = start["model"]["convInit.conv.weight"]
    torch.testing.assert_close(tuned["model"]["convInit.conv.weight"], first[:, [3, 0]])
    pretrained = set(tuned["started_from"]["pretrained"])  # every tensor of the bundle that fits: all of them
    assert {"conv_final.2.conv.bias", "convInit.conv.weight"} <= pretrained and tuned["started_from"]["missing"] == 0
    for name in pretrained - {"convInit.conv.weight"}:
        torch.testing.assert_close(tuned["model"][name], start["model"][name], rtol=0, atol=0, msg=name)


# -- CheXNet and torchvision DenseNet121 -------------------------------------------------------------------
def chexnet_network() -> nn.Module:
    """arnoweng/CheXNet's DenseNet121: torchvision's, with a 14-way Linear + Sigmoid head."""
    import torchvision

    net = torchvision.models.densenet121(weights=None)
    net.classifier = nn.Sequential(nn.Linear(1024, 14), nn.Sigmoid())
    return net.eval()


def save_chexnet_checkpoint(net: nn.Module, path: Path) -> Path:
    """``model.pth.tar`` as CheXNet saved it: DataParallel (``module.``) around ``densenet121``, old torchvision
    layer names (``norm.1``), inside ``{"state_dict": ...}``."""
    state = {}
    for key, value in net.state_dict().items():
        key = re.sub(r"\.(norm|relu|conv)([12])\.", r".\1.\2.", key)
        state[f"module.densenet121.{key}"] = value
    torch.save({"epoch": 7, "arch": "densenet121", "state_dict": state, "best_loss": 0.15}, path)
    return path


def chexnet_reference(net: nn.Module, picture: Path) -> np.ndarray:
    """CheXNet's own preprocessing (one crop): PIL RGB, Resize(224), ToTensor, ImageNet Normalize."""
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize(224), transforms.ToTensor(),
                                    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        return net(transform(Image.open(picture).convert("RGB"))[None])[0].numpy()


def predicted(out: Path) -> dict[str, np.ndarray]:
    from medsight.datasets.chestxray14 import FINDINGS

    with open(out / "predictions.csv", newline="") as handle:
        return {Path(r["image"]).name: np.array([float(r[n]) for n in FINDINGS]) for r in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[Path]:
    data = DATASETS.get("chestxray14")().synth(tmp_path_factory.mktemp("cxr") / "data", cases=3, seed=2, size=224)
    return sorted(data.glob("images_*/images/*.png"))


def test_an_imported_chexnet_checkpoint_predicts_what_chexnet_predicts(tmp_path, pictures, capsys):
    torch.manual_seed(1)
    net = chexnet_network()
    source = save_chexnet_checkpoint(net, tmp_path / "model.pth.tar")
    checkpoint = tmp_path / "chexnet.pt"
    assert main(["import", str(source), "--out", str(checkpoint)]) == 0
    assert "imported" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, pictures), "--out", str(out),
                 "--precision", "fp32", "--engine", "torch"]) == 0
    ours = predicted(out)
    for picture in pictures:
        assert np.abs(ours[picture.name] - chexnet_reference(net, picture)).max() < 1e-4, picture.name


def test_a_plain_torchvision_state_dict_imports_and_a_cam_follows_the_picture(tmp_path, pictures):
    torch.manual_seed(2)
    net = chexnet_network()
    plain = {k.replace("classifier.0.", "classifier."): v for k, v in net.state_dict().items()}
    torch.save(plain, tmp_path / "densenet121.pth")
    checkpoint = tmp_path / "tv.pt"
    assert main(["import", str(tmp_path / "densenet121.pth"), "--out", str(checkpoint)]) == 0
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(pictures[0]), "--out", str(out), "--precision",
                 "fp32", "--cam", "infer.cam_top_k=1"]) == 0
    assert np.abs(predicted(out)[pictures[0].name] - chexnet_reference(net, pictures[0])).max() < 1e-4
    assert len(list((out / "cam").glob("*.png"))) == 1


def test_import_errors_are_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import urllib.error

    import medsight.sources.bundles

    assert main(["import", str(tmp_path / "gone.pth.tar"), "--out", str(tmp_path / "x.pt")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'gone.pth.tar'}: file or folder not found\n"

    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pt")
    assert main(["import", str(tmp_path / "other.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'other.pt'}: no importer recognises this file")

    torch.save(chexnet_network(), tmp_path / "whole.pth")  # a whole pickled model
    assert main(["import", str(tmp_path / "whole.pth"), "--out", str(tmp_path / "x.pt"), "--format", "chexnet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'whole.pth'}: refused: loading this CheXNet checkpoint would need "
                            "arbitrary unpickling") and "torch.save(model.state_dict(), PATH)" in error

    def offline(url, timeout=30.0):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(medsight.sources.bundles, "_fetch", offline)
    assert main(["import", "monai:brats_mri_segmentation", "--out", str(tmp_path / "x.pt")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: monai:brats_mri_segmentation: cannot reach the MONAI Model Zoo (no network): on "
                            "a machine with network access download https://github.com/Project-MONAI/model-zoo/")
    assert error.count("\n") == 1 and not (tmp_path / "x.pt").exists()


def test_info_shows_where_a_checkpoint_came_from(tmp_path, capsys):
    torch.manual_seed(3)
    source = save_chexnet_checkpoint(chexnet_network(), tmp_path / "model.pth.tar")
    assert main(["import", str(source), "--out", str(tmp_path / "c.pt")]) == 0
    capsys.readouterr()
    assert main(["info", "--checkpoint", str(tmp_path / "c.pt")]) == 0
    shown = capsys.readouterr().out
    assert "classification checkpoint" in shown and "model: torchvision_densenet121" in shown
    assert "source: CheXNet (Rajpurkar et al. 2017)" in shown and "published: ChestX-ray14 mean AUROC 0.841" in shown
    assert "licence: MIT" in shown and "applies to: frontal chest X-rays" in shown


# -- the MONAI Model Zoo's lung_nodule_ct_detection bundle ---------------------------------------------------
#: configs/inference.json of the bundle as published (Project-MONAI/model-zoo, models/lung_nodule_ct_detection),
#: without the ``meta_key_postfix`` arguments its version 0.6.0 removed ("remove meta_dict usage"); today's
#: MONAI refuses them
LUNG_INFERENCE = {
    "whether_raw_luna16": False,
    "whether_resampled_luna16": "$(not @whether_raw_luna16)",
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "amp": True, "spatial_dims": 3, "num_classes": 1, "force_sliding_window": False,
    "size_divisible": [16, 16, 8], "infer_patch_size": [512, 512, 192],
    "anchor_generator": {"_target_": "monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape",
                         "feature_map_scales": [1, 2, 4], "base_anchor_shapes": [[6, 8, 4], [8, 6, 5], [10, 10, 6]]},
    "backbone": "$monai.networks.nets.resnet.resnet50(spatial_dims=3,n_input_channels=1,conv1_t_stride=[2,2,1],"
                "conv1_t_size=[7,7,7])",
    "feature_extractor": "$monai.apps.detection.networks.retinanet_network.resnet_fpn_feature_extractor(@backbone,3,"
                         "False,[1,2],None)",
    "network_def": {"_target_": "RetinaNet", "spatial_dims": "@spatial_dims", "num_classes": "@num_classes",
                    "num_anchors": 3, "feature_extractor": "@feature_extractor", "size_divisible": "@size_divisible",
                    "use_list_output": False},
    "network": "$@network_def.to(@device)",
    "detector": {"_target_": "RetinaNetDetector", "network": "@network", "anchor_generator": "@anchor_generator",
                 "debug": False, "spatial_dims": "@spatial_dims", "num_classes": "@num_classes",
                 "size_divisible": "@size_divisible"},
    "detector_ops": [
        "$@detector.set_target_keys(box_key='box', label_key='label')",
        "$@detector.set_box_selector_parameters(score_thresh=0.02,topk_candidates_per_level=1000,nms_thresh=0.22,"
        "detections_per_img=300)",
        "$@detector.set_sliding_window_inferer(roi_size=@infer_patch_size,overlap=0.25,sw_batch_size=1,"
        "mode='constant',device='cpu')"],
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image", "_disabled_": "@whether_raw_luna16"},
        {"_target_": "LoadImaged", "keys": "image", "reader": "itkreader", "affine_lps_to_ras": True,
         "_disabled_": "@whether_resampled_luna16"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [0.703125, 0.703125, 1.25],
         "_disabled_": "@whether_resampled_luna16"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1024.0, "a_max": 300.0, "b_min": 0.0,
         "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": "image"}]},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "ClipBoxToImaged", "box_keys": "box", "label_keys": "label", "box_ref_image_keys": "image",
         "remove_empty": True},
        {"_target_": "AffineBoxToWorldCoordinated", "box_keys": "box", "box_ref_image_keys": "image",
         "affine_lps_to_ras": True},
        {"_target_": "ConvertBoxModed", "box_keys": "box", "src_mode": "xyzxyz", "dst_mode": "cccwhd"},
        {"_target_": "DeleteItemsd", "keys": ["image"]}]},
}
LUNG_METADATA = {
    "version": "0.6.8", "name": "Lung nodule CT detection", "data_source": "https://luna16.grand-challenge.org/Home/",
    "eval_metrics": {"mAP_IoU_0.10_0.50_0.05_MaxDet_100": 0.852, "AP_IoU_0.10_MaxDet_100": 0.858},
    "intended_use": "This is an example, not to be used for diagnostic purposes",
}


def lung_nodules_both_ways(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(medsight's marks, the bundle's): rows x, y, z (world mm, LPS), probability, highest first, at most 100."""
    from monai.bundle import ConfigParser

    from medsight.datasets.synth.luna16 import make_scan
    from medsight.io.writers import write_nifti

    root = tmp_path / "lung_nodule_ct_detection"
    for sub in ("configs", "models"):
        (root / sub).mkdir(parents=True)
    (root / "configs" / "inference.json").write_text(json.dumps(LUNG_INFERENCE, indent=4))
    (root / "configs" / "metadata.json").write_text(json.dumps(LUNG_METADATA, indent=4))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"], parser["device"] = str(root), "$torch.device('cpu')"
    torch.manual_seed(0)
    network = parser.get_parsed_content("network")  # the bundle's own network definition
    torch.save(network.state_dict(), root / "models" / "model.pt")
    # a scan already on the bundle's voxel grid (its default, resampled-LUNA16 path reads it as is)
    scan = make_scan(0, np.random.default_rng(1), shape=(96, 96, 40), spacing=(0.703125, 0.703125, 1.25))
    image = tmp_path / "scan.nii.gz"
    write_nifti(scan.volume.astype(np.float32), scan.affine, image)

    detector = parser.get_parsed_content("detector")
    parser.get_parsed_content("detector_ops")
    detector.eval()
    item = parser.get_parsed_content("preprocessing")({"image": str(image)})
    with torch.no_grad():
        found = detector([item["image"]], use_inferer=False)[0]
    boxes = parser.get_parsed_content("postprocessing")({**found, "image": item["image"]})
    reference = np.concatenate([np.asarray(boxes["box"])[:, :3], np.asarray(found["label_scores"])[:, None]], axis=1)
    reference = reference[np.argsort(-reference[:, 3], kind="stable")][:100]

    checkpoint = tmp_path / "lung.pt"
    assert main(["import", str(root), "--out", str(checkpoint)]) == 0
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(out), "--precision", "fp32",
                 "--engine", "torch", "infer.overlays_per_scan=0"]) == 0
    with open(out / "submission.csv", newline="") as handle:
        ours = np.array([[float(r["coordX"]), float(r["coordY"]), float(r["coordZ"]), float(r["probability"])]
                         for r in csv.DictReader(handle)])
    return ours, reference


def test_an_imported_lung_nodule_bundle_marks_what_the_bundle_itself_marks(tmp_path, capsys):
    ours, reference = lung_nodules_both_ways(tmp_path)
    assert "marks per scan: the bundle keeps 300, medsight the 100 that LUNA16 scores" in capsys.readouterr().out
    assert len(ours) == len(reference) > 10
    assert np.abs(ours[:, 3] - reference[:, 3]).max() < 1e-4
    # world mm, LPS: the bundle's boxes put voxel centres at integers (model.box_voxel_centre=0.0)
    assert np.abs(ours[:, :3] - reference[:, :3]).max() < 1e-3


# -- torchxrayvision ----------------------------------------------------------------------------------------
def test_an_imported_torchxrayvision_model_predicts_what_torchxrayvision_predicts(tmp_path, pictures, capsys):
    xrv = pytest.importorskip("torchxrayvision")
    import skimage.io
    import torchvision

    weights = "densenet121-res224-nih"
    file_name = Path(xrv.models.model_urls[weights]["weights_url"]).name
    torch.manual_seed(4)
    torch.save(xrv.models.DenseNet(weights=None), tmp_path / file_name)  # its layout: a whole pickled model
    assert main(["import", str(tmp_path / file_name), "--out", str(tmp_path / "x.pt")]) == 2  # never by default
    assert "no importer recognises" in capsys.readouterr().err
    assert main(["import", str(tmp_path / file_name), "--out", str(tmp_path / "xrv.pt"), "--format", "txrv"]) == 0
    printed = capsys.readouterr().out
    assert "torchxrayvision's own loader" in printed and "18 outputs -> " in printed

    reference_model = xrv.models.DenseNet(weights=weights, cache_dir=str(tmp_path))  # its own loader
    transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(tmp_path / "xrv.pt"), *map(str, pictures), "--out", str(out),
                 "--precision", "fp32", "--engine", "torch"]) == 0
    with open(out / "predictions.csv", newline="") as handle:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(handle)}
    names = [n for n in rows[pictures[0].name] if n in reference_model.targets]
    assert len(names) >= 10
    for picture in pictures:
        image = transform(xrv.datasets.normalize(skimage.io.imread(picture), 255)[None])
        with torch.no_grad():
            reference = reference_model(torch.from_numpy(image)[None])[0].numpy()
        ours = np.array([float(rows[picture.name][n]) for n in names])
        assert np.abs(ours - reference[[reference_model.targets.index(n) for n in names]]).max() < 1e-4
