"""Writes the graphs the model-folder tests load: two deliberately broken ones and a VAE fixed to
one shape (a few hundred bytes each), and the dev fixture's safety checker re-saved with its
weights as external data.

Run from this directory with a Python that has `onnx` (e.g. /work/venvs/tinyflux/bin/python):
    python make_test_graphs.py
ONNX Runtime 1.31 reads IR version <= 13, so the IR version is pinned.
"""

import onnx
from onnx import TensorProto, helper


def save(graph, name):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, name)


# A VAE decoder whose input is called `latents` instead of `latent`.
save(
    helper.make_graph(
        [helper.make_node("Identity", ["latents"], ["images"])],
        "vae_wrong_input_name",
        [helper.make_tensor_value_info("latents", TensorProto.FLOAT, ["B", "C", "H", "W"])],
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", "C", "H", "W"])],
    ),
    "vae_wrong_input_name.onnx",
)

# A T5 encoder whose `input_ids` has rank 1 instead of 2.
axes = helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])
save(
    helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["ids_float"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["ids_float", "axes"], ["text_embeddings"]),
        ],
        "t5_wrong_rank",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info("text_embeddings", TensorProto.FLOAT, ["B", "L", "D"])],
        initializer=[axes],
    ),
    "t5_wrong_rank.onnx",
)

# A VAE decoder fixed to one image of 64x64 (latent [1,16,8,8]): the first three latent channels,
# each value repeated over an 8x8 block. Valid in every name, rank and channel count, so only
# the request's batch and size can be refused.
starts = helper.make_tensor("starts", TensorProto.INT64, [1], [0])
ends = helper.make_tensor("ends", TensorProto.INT64, [1], [3])
slice_axes = helper.make_tensor("slice_axes", TensorProto.INT64, [1], [1])
scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 8.0, 8.0])
save(
    helper.make_graph(
        [
            helper.make_node("Slice", ["latent", "starts", "ends", "slice_axes"], ["rgb"]),
            helper.make_node("Resize", ["rgb", "", "scales"], ["images"], mode="nearest"),
        ],
        "vae_fixed_64x64",
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        initializer=[starts, ends, slice_axes, scales],
    ),
    "vae_fixed_64x64.onnx",
)

# The dev safety checker with every initializer in `model.onnx_data` beside the graph.
import os

os.makedirs("safety_external", exist_ok=True)
checker = onnx.load("../../../../fixtures/tiny-flux-dev/safety_checker/model.onnx")
onnx.save_model(
    checker,
    "safety_external/model.onnx",
    save_as_external_data=True,
    all_tensors_to_one_file=True,
    location="model.onnx_data",
    size_threshold=0,
)
