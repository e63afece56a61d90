"""Tiny models and tiny datasets in the real on-disk layouts, shared by the evaluate/backends/cli tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxforge.evaluate.synthetic import voc_palette


def seg_model(classes: int = 3, size: tuple[int, int] = (8, 12), batch: int | str = 1, out_size: tuple[int, int] | None = None,
              fp16_out: bool = False, fp16_in: bool = False, seed: int = 0, opset: int = 13, labels: bool = False,
              extra_outputs: int = 0, input_name: str = "image") -> onnx.ModelProto:
    """image (N,3,H,W) -> 1x1 Conv to `classes` -> [Resize to out_size] -> logits (or ArgMax labels)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((classes, 3, 1, 1)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32) * 0.1
    h, wd = size
    nodes, inits = [], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    x = input_name
    if fp16_in:
        nodes.append(helper.make_node("Cast", [x], ["x32"], to=TensorProto.FLOAT))
        x = "x32"
    nodes.append(helper.make_node("Conv", [x, "W", "B"], ["conv"]))
    cur, oh, ow = "conv", h, wd
    if out_size is not None and tuple(out_size) != tuple(size):
        oh, ow = out_size
        inits.append(numpy_helper.from_array(np.array([], np.float32), "roi"))
        inits.append(numpy_helper.from_array(np.array([], np.float32), "scales"))
        inits.append(numpy_helper.from_array(np.array([batch if isinstance(batch, int) else 1, classes, oh, ow], np.int64), "sizes"))
        nodes.append(helper.make_node("Resize", ["conv", "roi", "scales", "sizes"], ["small"], mode="linear",
                                      coordinate_transformation_mode="half_pixel"))
        cur = "small"
    outputs = []
    if labels:
        nodes.append(helper.make_node("ArgMax", [cur], ["labels"], axis=1, keepdims=1))
        outputs.append(helper.make_tensor_value_info("labels", TensorProto.INT64, [batch, 1, oh, ow]))
    elif fp16_out:
        nodes.append(helper.make_node("Cast", [cur], ["logits"], to=TensorProto.FLOAT16))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT16, [batch, classes, oh, ow]))
    else:
        nodes.append(helper.make_node("Identity", [cur], ["logits"]))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes, oh, ow]))
    for k in range(extra_outputs):
        nodes.append(helper.make_node("Neg", ["conv"], [f"aux{k}"]))
        outputs.append(helper.make_tensor_value_info(f"aux{k}", TensorProto.FLOAT, [batch, classes, h, wd]))
    in_type = TensorProto.FLOAT16 if fp16_in else TensorProto.FLOAT
    graph = helper.make_graph(nodes, "tiny_seg", [helper.make_tensor_value_info(input_name, in_type, [batch, 3, h, wd])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxforge-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def cls_model(classes: int = 7, size: tuple[int, int] = (8, 8), batch: int | str = 1, seed: int = 0) -> onnx.ModelProto:
    """image (N,3,H,W) -> GlobalAveragePool -> Flatten -> Gemm -> logits (N, classes)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((classes, 3)).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tiny_cls", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, *size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def rand_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_png(path: Path, arr: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        im = Image.fromarray(arr.astype(np.uint8), "P")
        im.putpalette(voc_palette())
    else:
        im = Image.fromarray(arr)
    im.save(path)


def write_voc(root: Path, sizes: list[tuple[int, int]], classes: int = 3, seed: int = 0, void: bool = True) -> list[str]:
    """VOC2012 layout with palette labels (255 on a border) and odd sizes; returns the ids."""
    rng = np.random.default_rng(seed)
    ids = []
    for k, (h, w) in enumerate(sizes):
        name = f"2007_{k:06d}"
        ids.append(name)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rand_image(h, w, seed + k)).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        lab = rng.integers(0, classes, (h, w)).astype(np.uint8)
        if void:
            lab[0, :] = 255
        write_png(root / "SegmentationClass" / f"{name}.png", lab, palette=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return ids


def write_cityscapes(root: Path, size: tuple[int, int] = (8, 16), cities: tuple[str, ...] = ("aachen", "bonn"), seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    stems = []
    for c, city in enumerate(cities):
        prefix = f"{city}_000000_{c:06d}"
        write_png(root / "leftImg8bit" / "val" / city / f"{prefix}_leftImg8bit.png", rand_image(*size, seed + c))
        ids = rng.choice(np.array([0, 1, 7, 8, 11, 26, 33, 4], np.uint8), size=size)
        write_png(root / "gtFine" / "val" / city / f"{prefix}_gtFine_labelIds.png", ids)
        stems.append(f"{prefix}_leftImg8bit")
    return stems


def write_dsb(root: Path, ids: list[str], size: tuple[int, int] = (16, 16), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for k, i in enumerate(ids):
        write_png(root / "dsb2018_96" / "images" / f"{i}.png", rand_image(*size, seed + k))
        write_png(root / "dsb2018_96" / "masks" / "0" / f"{i}.png", (rng.random(size) > 0.5).astype(np.uint8) * 255)
    (root / "val_ids.txt").write_text("\n".join(ids) + "\n")


def write_imagenet(root: Path, labels: list[int], sizes: list[tuple[int, int]], seed: int = 0) -> list[str]:
    names = []
    (root / "val").mkdir(parents=True, exist_ok=True)
    for k, (lab, (h, w)) in enumerate(zip(labels, sizes)):
        name = f"ILSVRC2012_val_{k + 1:08d}.JPEG"
        Image.fromarray(rand_image(h, w, seed + k)).save(root / "val" / name, format="JPEG", quality=95)
        names.append(name)
    (root / "val_label.txt").write_text("".join(f"{n} {lab}\n" for n, lab in zip(names, labels)))
    return names
